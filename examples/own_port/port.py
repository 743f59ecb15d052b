"""A hand-written port of Qwen2 (config.json beside this file) in plain PyTorch: the kind of code you
write for your own framework or engine. Its structure is not Hugging Face's: fused q/k/v and gate/up
projections, other module names (tok, blocks.N.{norm1, attn.{qkv, out}, norm2, mlp.{gate_up, down}},
norm, head), RoPE computed inside each attention. It loads the reference's weights, which

    parity_export.py --hf-config config.json --random-init --seed 0 --save-weights ref.safetensors ...

wrote under their Hugging Face names, by mapping those names onto its own (load_reference_weights).

    parity_export.py --module port.py:make --out port/      (PORT_WEIGHTS=ref.safetensors)

make() returns (model, example inputs, other inputs): the exporter traces the model per dtype and
checks each trace against eager on both shapes.
"""
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()  # the variance in fp32, as the reference computes it
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope(x, theta):
    """Rotary position embedding, rotate-half layout (the first half of each head pairs with the second)."""
    t, d = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device).float() / d)
    angles = torch.arange(t, device=x.device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.head_dim = c["hidden_size"] // self.heads
        self.theta = c["rope_theta"]
        # q, k and v in one projection (Qwen2's have biases); out has none
        self.qkv = nn.Linear(c["hidden_size"], (self.heads + 2 * self.kv_heads) * self.head_dim, bias=True)
        self.out = nn.Linear(self.heads * self.head_dim, c["hidden_size"], bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                                     self.kv_heads * self.head_dim], dim=-1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)     # [b, heads, t, head_dim]
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # [b, kv_heads, t, head_dim]
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, self.theta), rope(k, self.theta)
        # grouped-query attention: each kv head serves heads // kv_heads consecutive query heads
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = F.softmax(scores.float(), dim=-1).to(q.dtype)  # the softmax in fp32
        return self.out((probs @ v).transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_up = nn.Linear(c["hidden_size"], 2 * c["intermediate_size"], bias=False)  # gate, then up
        self.down = nn.Linear(c["intermediate_size"], c["hidden_size"], bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1 = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.attn = Attention(c)
        self.norm2 = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Port(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.tok = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        if c.get("tie_word_embeddings"):
            self.head.weight = self.tok.weight

    def forward(self, input_ids):
        x = self.tok(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # the logits [batch, seq, vocab]


def load_reference_weights(port, path):
    """The reference's weights (Hugging Face names, as --save-weights writes them) into the port."""
    from safetensors.torch import load_file
    hf = load_file(path)
    own = {"tok.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    own["head.weight"] = hf.get("lm_head.weight", hf["model.embed_tokens.weight"])  # tied: written once
    for i in range(len(port.blocks)):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        own[q + "norm1.weight"] = hf[p + "input_layernorm.weight"]
        own[q + "norm2.weight"] = hf[p + "post_attention_layernorm.weight"]
        for part in ("weight", "bias"):  # fused in the order forward() splits them: q, k, v
            own[q + "attn.qkv." + part] = torch.cat([hf[p + f"self_attn.{n}_proj.{part}"] for n in "qkv"])
        own[q + "attn.out.weight"] = hf[p + "self_attn.o_proj.weight"]
        own[q + "mlp.gate_up.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        own[q + "mlp.down.weight"] = hf[p + "mlp.down_proj.weight"]
    port.load_state_dict(own, strict=True)  # every parameter set, none left over
    return port


def make():
    """For parity_export.py --module port.py:make. PORT_CONFIG (default: config.json beside this file)
    and PORT_WEIGHTS (the reference's --save-weights file) say what to build and load."""
    with open(os.environ.get("PORT_CONFIG", os.path.join(HERE, "config.json"))) as f:
        config = json.load(f)
    port = load_reference_weights(Port(config), os.environ["PORT_WEIGHTS"]).eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, config["vocab_size"], (1, 8), generator=gen)
    other = torch.randint(0, config["vocab_size"], (2, 11), generator=gen)  # another shape
    return port, (example,), (other,)
