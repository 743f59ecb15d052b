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
and, by editing the source of HF's modeling code (the text replaced is asserted to be there):
  bug_attn_1_over_d    scores / head_dim instead of / sqrt(head_dim)       (scale of the scores)
  bug_attn_noscale     the scores' scale missing                           (scale of the scores)
  bug_gqa_tile         kv heads repeated as a tile, not interleaved         (layout)
  bug_gate_up_swap     act(up(x)) * gate(x) in the MLP                      (layout)
  bug_attn_residual    layer 0 drops its attention residual: h = attn(x)    (residual)
  bug_final_norm       the final norm skipped: the module exists, never called (missing)
  bug_moe_renorm       top-k routing weights renormalised / not, against the config (routing)
  bug_emb_scale        Gemma's x sqrt(hidden) on the embedding missing      (scale)
  bug_rope_gptj        rotate_half written GPT-J style (interleaved pairs)  (position)
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


def source_patch(owner, name, old, new, count=1):
    """owner.name (a function of a module, or a method of a class) recompiled from its source
    with `old` replaced by `new` (count times; -1: all), in its module's globals. Returns a patch
    for save(): it installs the function and returns how to restore the original."""
    import inspect, textwrap
    fn = getattr(owner, name)
    src = textwrap.dedent(inspect.getsource(fn))
    assert old in src, f"{owner.__name__}.{name}: {old!r} is not in its source"
    src = src.replace(old, new, count)
    mod = importlib.import_module(fn.__module__)
    scope = dict(mod.__dict__)
    exec(compile(src, f"<{fn.__module__}.{name}, patched>", "exec"), scope)
    patched = scope[name]

    def apply(model):
        setattr(owner, name, patched)
        return lambda: setattr(owner, name, fn)
    return apply


def code_bugs(arch, m, cfg):
    """name -> (patch, where (a Lua pattern on the first divergent component's path), cause)"""
    mod = importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")
    cls = lambda suffix: next(getattr(mod, n) for n in dir(mod) if n.lower() == (arch.replace("_", "") + suffix).lower())
    attn, layer, model = cls("Attention"), cls("DecoderLayer"), cls("Model")
    bugs = {}
    scale = "/ math.sqrt(self.head_dim)"
    if scale in __import__("inspect").getsource(attn.forward):
        bugs["bug_attn_1_over_d"] = (source_patch(attn, "forward", scale, "/ self.head_dim"), "self_attn$", "scale")
        bugs["bug_attn_noscale"] = (source_patch(attn, "forward", scale, ""), "self_attn$", "scale")
    elif hasattr(mod, "GEMMA2_ATTENTION_FUNCTION"):  # gemma2: a module-level function, called through a table
        patch = source_patch(mod, "eager_attention_forward", "* config.scaling", "")

        def noscale(model, patch=patch, table=mod.GEMMA2_ATTENTION_FUNCTION):
            undo, orig = patch(model), table["eager"]
            table["eager"] = mod.eager_attention_forward
            return lambda: (undo(), table.__setitem__("eager", orig))
        bugs["bug_attn_noscale"] = (noscale, "self_attn$", "scale")
    if cfg.num_key_value_heads < cfg.num_attention_heads:
        bugs["bug_gqa_tile"] = (source_patch(mod, "repeat_kv",
            "hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)",
            "hidden_states[:, None, :, :, :].expand(batch, n_rep, num_key_value_heads, slen, head_dim)"), "self_attn$", "layout")
    mlp = type(getattr(m.model.layers[0], "mlp", None))  # (Mixtral's layers have none: experts)
    msrc = __import__("inspect").getsource(mlp.forward) if mlp is not type(None) else ""
    if "self.act_fn(self.gate_proj(x)) * self.up_proj(x)" in msrc:
        bugs["bug_gate_up_swap"] = (source_patch(mlp, "forward", "self.act_fn(self.gate_proj(x)) * self.up_proj(x)",
                                                 "self.act_fn(self.up_proj(x)) * self.gate_proj(x)"), "mlp$", "layout")
    elif "gate, up_states = up_states.chunk(2, dim=-1)" in msrc:  # phi3's fused gate_up_proj
        bugs["bug_gate_up_swap"] = (source_patch(mlp, "forward", "gate, up_states = up_states.chunk(2, dim=-1)",
                                                 "up_states, gate = up_states.chunk(2, dim=-1)"), "mlp$", "layout")
    lsrc = __import__("inspect").getsource(layer.forward)
    for res, dropped in (("hidden_states = residual + hidden_states", "hidden_states = hidden_states"),
                         ("hidden_states = residual + self.resid_attn_dropout(attn_outputs)",  # phi3
                          "hidden_states = self.resid_attn_dropout(attn_outputs)")):
        if res in lsrc:
            bugs["bug_attn_residual"] = (source_patch(layer, "forward", res, dropped), "layers%.%d+$", "residual")
            break
    bugs["bug_final_norm"] = (source_patch(model, "forward", "hidden_states = self.norm(hidden_states)",
                                           "hidden_states = hidden_states"), "^m%.model%.norm$", "missing")
    if arch == "qwen2_moe":
        sparse = mod.Qwen2MoeSparseMoeBlock
        bugs["bug_moe_renorm"] = (source_patch(sparse, "forward", "if self.norm_topk_prob:", "if True:"),
                                  "layers%.0%.mlp$", "routing")
    if arch == "mixtral":
        sparse = mod.MixtralSparseMoeBlock
        bugs["bug_moe_renorm"] = (source_patch(sparse, "forward", "routing_weights /= routing_weights.sum(dim=-1, keepdim=True)",
                                               "pass"), "layers%.0%.block_sparse_moe$", "routing")
    if arch == "gemma2":
        bugs["bug_emb_scale"] = (source_patch(model, "forward", "hidden_states = hidden_states * normalizer",
                                              "hidden_states = hidden_states"), "^m%.model$", "scale")
    if hasattr(mod, "rotate_half"):
        bugs["bug_rope_gptj"] = (source_patch(mod, "rotate_half",
            "x1 = x[..., : x.shape[-1] // 2]\n    x2 = x[..., x.shape[-1] // 2 :]\n    return torch.cat((-x2, x1), dim=-1)",
            "x1 = x[..., ::2]\n    x2 = x[..., 1::2]\n    return torch.stack((-x2, x1), dim=-1).flatten(-2)"), "self_attn$", "position")
    return bugs


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
    for name, (patch, where, cause) in code_bugs(arch, m, cfg).items():
        save(m, f"{out}/{arch}/{name}", cfg, patch)
        truth[f"{arch}/{name}"] = {"expected": "divergent", "where": where, "cause": cause}
    print(arch, "ok", flush=True)
    json.dump(truth, open(truth_path, "w"), indent=1, sort_keys=True)
