#!/usr/bin/python3
"""Generated models for the benchmark harness (bench/harness.lua): the tiny Llama of the fixtures
(tests/fixtures/tiny_llama.py) at a few sizes, each exported once per dtype (fp32, bf16), and a
port of it (the fused-projection layout, same weights: equivalent). Kept between runs.
Usage: make_models.py OUT_DIR [SIZE ...]   sizes: s (~14M parameters), m (~60M), l (~200M), xl (~1.1B)"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures"))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
import tiny_llama  # noqa: E402
from parity_export import export  # noqa: E402

SIZES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "s": (256, 704, 4, 4, 2, 32000),
    "m": (512, 1408, 8, 8, 4, 32000),
    "l": (1024, 2816, 12, 16, 8, 32000),
    # TinyLlama-1.1B's shapes: four traces (fp32 4.4 GB and bf16 2.2 GB a side) past half of a
    # 24 GiB machine's memory; checked with --dtype fp32 on LibTorch 1.13 (issue 26)
    "xl": (2048, 5632, 22, 32, 4, 32000),
}


def main():
    out, sizes = sys.argv[1], sys.argv[2:] or ["s", "m"]
    torch.set_num_threads(os.cpu_count() or 1)
    for size in sizes:
        size = size.split("@")[0]  # (the harness's xl@fp32: that size, checked at fp32)
        h, i, n, heads, kv, vocab = SIZES[size]
        config = dict(tiny_llama.CONFIG, hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab)
        torch.manual_seed(0)
        ref = tiny_llama.LlamaForCausalLM(config).eval()
        ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(1))
        other = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(2))
        params = sum(p.numel() for p in ref.parameters())
        for name, model in (("ref", ref), ("port", tiny_llama.port_from(ref))):
            d = os.path.join(out, size, name)
            if os.path.exists(os.path.join(d, "parity.json")):
                continue
            export(model, (ids,), d, ("fp32", "bf16"), (other,), vocab_size=vocab,
                   source=f"bench/make_models.py:{size}:{name} ({params} parameters)", config=config,
                   log=lambda msg, d=d: print(f"{d}: {msg}"))
        print(f"{size}: {params / 1e6:.1f}M parameters", flush=True)


if __name__ == "__main__":
    main()
