#!/usr/bin/env python3
"""Real Hugging Face traces with bugs planted in the FORWARD CODE, the way a port's author gets
them wrong: the weights and the config are the reference's, and a modeling function or a module's
forward is patched while the bug's trace is made (transformers 4.47.1 on Debian's torch 1.13, set
up with ../shared/refbench/README.md; tiny random-init models, eager attention, a `Logits` wrapper
returning the logits with attention_mask = ones_like(ids), one trace per dtype, checked on a
second shape). Per architecture: ref, control (re-traced) and
  bug_norm_nocast  every RMSNorm computes its variance in the input dtype (no fp32 upcast): the
                   seeds' "variance computed in BF16 instead of FP32"       (precision)
  port_rope_fp32   RoPE applied in fp32 and cast back: a correct port that rounds in another
                   order                                                    (equivalent)
  port_norm_div    RMSNorm as x / sqrt(var + eps) in fp32: a hand-written, correct norm (equivalent)
truth.json says, per variant, the expected verdict, and for a bug where (a Lua pattern on the path
of the first divergent component: the bug is in every norm, any of them) and the cause class.
Usage: /usr/bin/python3 bench/make_codebugs_hf.py OUT_DIR [arch ...]"""
import copy, json, os, sys, types, warnings
RB = os.environ.get("REFBENCH", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".refbench"))
for p in reversed([f"{RB}/transformers-src/src", f"{RB}/huggingface_hub-src/src", f"{RB}/stubs"]):
    sys.path.insert(0, p)
import importlib
import torch
warnings.filterwarnings("ignore")
from transformers import AutoConfig, AutoModelForCausalLM
out = sys.argv[1]
only = sys.argv[2:]
small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ARCHS = {
    "llama": {}, "qwen2": {}, "mistral": {}, "phi3": {},
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=64),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gemma2": dict(head_dim=16), "olmo2": {}, "granite": {},
}


class Logits(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, ids): return s.m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, return_dict=True).logits


def save(m, d, cfg, patch=None):
    """Traces m at fp32 and bf16 into d, with `patch(model)` applied to each copy first."""
    os.makedirs(d, exist_ok=True)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        w = Logits(copy.deepcopy(m).to(dt)).eval()
        undo = patch(w.m) if patch else None
        with torch.no_grad():
            t = torch.jit.trace(w, (ids,), check_trace=False)
            other = torch.randint(0, 256, (2, 11))
            assert torch.equal(t(other), w(other)), "trace is not shape-generic"
        if undo: undo()
        t.save(f"{d}/{name}.pt")
    json.dump({"format": 1, "dtypes": ["fp32", "bf16"], "vocab_size": 256,
               "source": f"hf:{cfg.model_type} (transformers 4.47.1, random init)"}, open(f"{d}/parity.json", "w"), indent=1)


def norms(m):
    return [(n, mod) for n, mod in m.named_modules() if type(mod).__name__.endswith("RMSNorm")]


def gemma_style(mod):  # Gemma's norms scale by (1 + weight)
    return "Gemma" in type(mod).__name__


def norm_nocast(model):
    """Every RMSNorm without its fp32 upcast: the variance and the scaling in the input dtype."""
    for _, mod in norms(model):
        def fwd(self, x):
            var = x.pow(2).mean(-1, keepdim=True)
            h = x * torch.rsqrt(var + self.eps if hasattr(self, "eps") else var + self.variance_epsilon)
            return h * (1.0 + self.weight) if gemma_style(self) else self.weight * h
        mod.forward = types.MethodType(fwd, mod)


def norm_div(model):
    """Every RMSNorm written by hand: x / sqrt(var + eps) in fp32 (the reference: x * rsqrt(...))."""
    for _, mod in norms(model):
        def fwd(self, x):
            h = x.float()
            eps = self.eps if hasattr(self, "eps") else self.variance_epsilon
            h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
            if gemma_style(self):
                return (h * (1.0 + self.weight.float())).type_as(x)
            return self.weight * h.to(x.dtype)
        mod.forward = types.MethodType(fwd, mod)


def rope_fp32(arch):
    """apply_rotary_pos_emb in fp32, cast back to the input dtype."""
    mod = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    orig = mod.apply_rotary_pos_emb

    def patched(q, k, cos, sin, *a, **kw):
        qe, ke = orig(q.float(), k.float(), cos.float(), sin.float(), *a, **kw)
        return qe.to(q.dtype), ke.to(k.dtype)

    def apply(model):
        mod.apply_rotary_pos_emb = patched
        return lambda: setattr(mod, "apply_rotary_pos_emb", orig)
    return apply


truth_path = f"{out}/truth.json"
truth = json.load(open(truth_path)) if os.path.exists(truth_path) else {}
for arch, extra in ARCHS.items():
    if only and arch not in only: continue
    kw = dict(small); kw.update(extra)
    cfg = AutoConfig.for_model(arch, **kw); cfg._attn_implementation = "eager"
    torch.manual_seed(0); m = AutoModelForCausalLM.from_config(cfg).eval()
    save(m, f"{out}/{arch}/ref", cfg)
    save(m, f"{out}/{arch}/control", cfg); truth[f"{arch}/control"] = {"expected": "equivalent"}
    save(m, f"{out}/{arch}/bug_norm_nocast", cfg, norm_nocast)
    truth[f"{arch}/bug_norm_nocast"] = {"expected": "divergent", "where": "norm$", "cause": "precision"}
    save(m, f"{out}/{arch}/port_norm_div", cfg, norm_div); truth[f"{arch}/port_norm_div"] = {"expected": "equivalent"}
    if hasattr(importlib.import_module(f"transformers.models.{arch}.modeling_{arch}"), "apply_rotary_pos_emb"):
        save(m, f"{out}/{arch}/port_rope_fp32", cfg, rope_fp32(arch))
        truth[f"{arch}/port_rope_fp32"] = {"expected": "equivalent"}
    print(arch, "ok", flush=True)
    json.dump(truth, open(truth_path, "w"), indent=1, sort_keys=True)
