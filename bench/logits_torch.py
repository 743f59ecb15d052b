#!/usr/bin/python3
"""The e2e stage's per-position logits metrics in plain PyTorch, for bench/logits.lua to time
against parity's fused pass on the same tensors: R, both cosines, both KLs, delta p, top-1,
top-k overlap, the reference's top-2 gap and max |low - ref|, written the way a Python script
would (log_softmax, topk), in float32 on torch's threads.
Usage: logits_torch.py TENSORS.safetensors THREADS REPEATS -> prints the median seconds."""
import statistics
import sys
import time

import torch


def load(path):  # safetensors without the package: an 8-byte header length, a JSON header, data
    import json
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"F32": torch.float32, "I64": torch.int64}[info["dtype"]]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=dtype).reshape(info["shape"])
    return out


def metrics(t, a, b, tok, k=5):
    lt, la, lb = t.log_softmax(-1), a.log_softmax(-1), b.log_softmax(-1)
    pa = la.exp()
    r = (t - a).norm(dim=-1) / (b - a).norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(t, a, dim=-1)
    own_cos = torch.nn.functional.cosine_similarity(b, a, dim=-1)
    kl = (pa * (la - lt)).sum(-1)
    own_kl = (pa * (la - lb)).sum(-1)
    dp = pa.gather(-1, tok[..., None])[..., 0] - lt.exp().gather(-1, tok[..., None])[..., 0]
    top1 = (t.argmax(-1) == a.argmax(-1))
    it, ia = t.topk(k, -1).indices, a.topk(k, -1).indices
    topk = (it[..., :, None] == ia[..., None, :]).sum((-1, -2)) / k
    top2 = a.topk(2, -1).values
    gap = top2[..., 0] - top2[..., 1]
    noise = (b - a).abs().amax(-1)
    return r, cos, own_cos, kl, own_kl, dp, top1, topk, gap, noise


def main():
    x = load(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]))
    times = []
    with torch.no_grad():
        for _ in range(int(sys.argv[3])):
            t0 = time.perf_counter()
            metrics(x["t"], x["a"], x["b"], x["tokens"])
            times.append(time.perf_counter() - t0)
    print(statistics.median(times))


if __name__ == "__main__":
    main()
