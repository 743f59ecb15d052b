#!/usr/bin/env python3
"""A second development set of real Hugging Face traces, in the style of
../shared/refbench/make_devset.py (set up transformers with ../shared/refbench/README.md first): transformers 4.47.1 on Debian's torch 1.13 (CPU), tiny random-init
models, eager attention, one trace per dtype (fp32, bf16) of a wrapper `Logits` (module tree under
`m.`) that returns the logits with attention_mask = ones_like(ids), checked on a second shape.
Per architecture: ref, control (same weights re-traced) and planted bugs (weights or config only):
  qwen2_moe, mixtral  bug_expert_scale  layer-1 down projection of ONE routed expert x1.05
                      bug_topk          num_experts_per_tok 2 -> 1 (config: routing differs)
  mistral             bug_window        sliding_window 3 -> None (out-of-window tokens leak in)
  phi3, gemma2        bug_eps           every norm epsilon x1000 (config)
                      bug_wscale        layer-1 mlp.down_proj.weight x1.05
truth.json says, per variant, the expected verdict and the parameters / config touched.
Usage: /usr/bin/python3 bench/make_devset_hf.py OUT_DIR [arch ...]"""
import copy, json, os, sys, warnings
RB = os.environ.get("REFBENCH", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".refbench"))
for p in reversed([f"{RB}/transformers-src/src", f"{RB}/huggingface_hub-src/src", f"{RB}/stubs"]):
    sys.path.insert(0, p)
import torch
warnings.filterwarnings("ignore")
from transformers import AutoConfig, AutoModelForCausalLM
out = sys.argv[1]
only = sys.argv[2:]
small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ARCHS = {
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "mistral": dict(sliding_window=3),
    "phi3": {},
    "gemma2": dict(head_dim=16),
}
# where the routed experts of a MoE layer live, and the name of their output projection
MOE = {"qwen2_moe": ("mlp", "down_proj"), "mixtral": ("block_sparse_moe", "w2")}
class Logits(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, ids): return s.m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, return_dict=True).logits
def save(m, d, cfg):
    os.makedirs(d, exist_ok=True)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        w = Logits(copy.deepcopy(m).to(dt)).eval()
        with torch.no_grad():
            t = torch.jit.trace(w, (ids,), check_trace=False)
            other = torch.randint(0, 256, (2, 11))
            assert torch.equal(t(other), w(other)), "trace is not shape-generic"
        t.save(f"{d}/{name}.pt")
    json.dump({"format": 1, "dtypes": ["fp32", "bf16"], "vocab_size": 256, "source": f"hf:{cfg.model_type} (transformers 4.47.1, random init)"},
              open(f"{d}/parity.json", "w"), indent=1)
def busiest_expert(m, block, n_experts):
    """the layer-1 expert that receives tokens most reliably on random (2, 11) inputs"""
    experts = getattr(m.model.layers[1], block).experts
    counts = [[0] * n_experts for _ in range(32)]
    hooks = []
    for e in range(n_experts):
        def h(mod, inp, outp, e=e): counts[cur[0]][e] += inp[0].shape[0]
        hooks.append(experts[e].register_forward_hook(h))
    cur = [0]
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for i in range(32):
            cur[0] = i; m(input_ids=torch.randint(0, 256, (2, 11), generator=g), use_cache=False)
    for hk in hooks: hk.remove()
    score = [(min(c[e] for c in counts), sum(c[e] for c in counts), e) for e in range(n_experts)]
    best = max(score)
    print(f"  layer-1 expert token counts (min over 32 inputs, total): {[(s[0], s[1]) for s in score]} -> expert {best[2]}", flush=True)
    return best[2]
truth_path = f"{out}/truth.json"
truth = json.load(open(truth_path)) if os.path.exists(truth_path) else {}
for arch, extra in ARCHS.items():
    if only and arch not in only: continue
    kw = dict(small); kw.update(extra)
    cfg = AutoConfig.for_model(arch, **kw); cfg._attn_implementation = "eager"
    torch.manual_seed(0); m = AutoModelForCausalLM.from_config(cfg).eval()
    sd = m.state_dict()
    def rebuild(c):
        torch.manual_seed(0); x = AutoModelForCausalLM.from_config(c).eval(); x.load_state_dict(sd); return x
    save(m, f"{out}/{arch}/ref", cfg)
    save(rebuild(cfg), f"{out}/{arch}/control", cfg); truth[f"{arch}/control"] = {"expected": "equivalent"}
    if arch in MOE:
        block, proj = MOE[arch]
        n_exp = cfg.num_experts if arch == "qwen2_moe" else cfg.num_local_experts
        e = busiest_expert(m, block, n_exp)
        m4 = copy.deepcopy(m); pn = f"model.layers.1.{block}.experts.{e}.{proj}.weight"
        dict(m4.named_parameters())[pn].data.mul_(1.05)
        save(m4, f"{out}/{arch}/bug_expert_scale", cfg); truth[f"{arch}/bug_expert_scale"] = {"expected": "divergent", "params": [pn]}
        c2 = copy.deepcopy(cfg); c2.num_experts_per_tok = 1
        save(rebuild(c2), f"{out}/{arch}/bug_topk", cfg); truth[f"{arch}/bug_topk"] = {"expected": "divergent", "config": {"num_experts_per_tok": 1}}
    if arch == "mistral":
        c2 = copy.deepcopy(cfg); c2.sliding_window = None
        save(rebuild(c2), f"{out}/{arch}/bug_window", cfg); truth[f"{arch}/bug_window"] = {"expected": "divergent", "config": {"sliding_window": None}}
    if arch in ("phi3", "gemma2"):
        eps = [k for k in cfg.to_dict() if "eps" in k]
        c2 = copy.deepcopy(cfg); [setattr(c2, k, getattr(cfg, k) * 1000) for k in eps]
        save(rebuild(c2), f"{out}/{arch}/bug_eps", cfg); truth[f"{arch}/bug_eps"] = {"expected": "divergent", "config": {k: getattr(c2, k) for k in eps}}
        m4 = copy.deepcopy(m); hit = []
        for n, p in m4.named_parameters():
            if ".layers.1." in n and n.endswith("mlp.down_proj.weight"):
                p.data.mul_(1.05); hit.append(n)
        save(m4, f"{out}/{arch}/bug_wscale", cfg); truth[f"{arch}/bug_wscale"] = {"expected": "divergent", "params": hit}
    print(arch, "ok", flush=True)
    json.dump(truth, open(truth_path, "w"), indent=1, sort_keys=True)
