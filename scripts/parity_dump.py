#!/usr/bin/python3
"""Dump a reference model's per-layer states for `parity diff`, where the model's Python lives.

Runs the model on the token ids of an inputs file (input_ids of a .safetensors, as `parity inputs`
writes it) with forward hooks and writes one float32 .npy a name into --out, each [K, T, width]:
    emb, h{l}_in, h{l}_postattn, h{l}_preffn, h{l}_ffnout, h{l}, post_norm, logits
found the way `parity dump` finds them in a TorchScript bundle (the same layout for both):
the layers are the ModuleList with the most children; a layer's FFN is its child with weights
named like mlp/ffn/feed_forward/moe (not a norm), h{l}_preffn its input and h{l}_ffnout its
output; the last child before it whose output the FFN takes (its norm) gives h{l}_postattn; the
final norm is the first module after the stack that takes the last layer's output.

    parity_dump.py --hf NAME_OR_DIR --inputs in.safetensors --out DIR [--dtype fp32]   (transformers)
    parity_dump.py --module FILE.py:FUNCTION --inputs in.safetensors --out DIR
        FUNCTION() returns a torch.nn.Module taking token ids (its logits: the output, or its first tensor)
A parity bundle (TorchScript) is dumped by parity itself: parity dump MODEL --inputs F --out DIR.
Runs where torch lives (Debian: /usr/bin/python3 with python3-torch).
"""
import argparse
import json
import os
import re
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_export import _first_tensor, _load_factory  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_input_ids(path):
    """input_ids of a safetensors file (8-byte header length, JSON header, data), as int64 [K, T]."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.get("input_ids") or next((v for k, v in header.items() if k != "__metadata__"), None)
    kinds = {"I64": "<i8", "I32": "<i4"}
    if meta is None or meta["dtype"] not in kinds:
        raise ValueError(f"{path}: no integer tensor input_ids")
    start, end = meta["data_offsets"]
    ids = np.frombuffer(blob[8 + n + start:8 + n + end], dtype=kinds[meta["dtype"]]).reshape(meta["shape"])
    return torch.from_numpy(ids.astype(np.int64)).reshape(-1, meta["shape"][-1])


def _tensor(out):
    """The tensor an output stands for: itself, its logits, or the first tensor of a tuple."""
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    if hasattr(out, "to_tuple"):  # a transformers ModelOutput
        out = out.to_tuple()
    return _first_tensor(out)


def _is_norm(name):
    return "norm" in name or name.startswith("ln")


def dump(model, ids, out_dir):
    """Runs `model` on `ids` with hooks and writes the dump; returns the names written."""
    # the layer stack: not a list inside a numbered module (a layer's experts), as parity dump
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
              and not re.search(r"(^|\.)\d+\.", n)]
    if not stacks:
        raise ValueError("no layer stack (a torch.nn.ModuleList of layers) in this model")
    stack_name, stack = max(stacks, key=lambda s: len(s[1]))
    seen = {}  # module -> (first input tensor, first output tensor) of its first call
    order = []

    def hook(module, args, *rest):  # (module, args, output), or (module, args, kwargs, output)
        if module not in seen:
            kwargs = rest[0] if len(rest) == 2 else {}
            x = next((a for a in list(args) + [kwargs.get("hidden_states"), kwargs.get("input")] if torch.is_tensor(a)), None)
            seen[module] = (x, _tensor(rest[-1]))
            order.append(module)

    def register(m):  # with keyword arguments where torch has them (2.x): transformers 5 passes hidden_states so
        try:
            return m.register_forward_hook(hook, with_kwargs=True)
        except TypeError:
            return m.register_forward_hook(hook)

    handles = [register(m) for _, m in model.named_modules() if m is not model]
    try:
        with torch.no_grad():
            logits = _tensor(model(ids))
    finally:
        for h in handles:
            h.remove()
    states = {}
    layers = list(stack)
    states["emb"] = seen[layers[0]][0]
    for i, layer in enumerate(layers):
        states[f"h{i}_in"] = seen[layer][0]
        # the layer's children in the order they ran
        children = sorted(((n, m) for n, m in layer.named_children() if m in seen), key=lambda c: order.index(c[1]))
        ffn = next((m for n, m in children if any(k in n.lower() for k in ("mlp", "ffn", "feed_forward", "moe"))
                    and not _is_norm(n.lower()) and any(True for _ in m.parameters())), None)  # not a dropout
        if ffn is not None:
            ffn_in = seen[ffn][0]
            before = [m for _, m in children[:[m for _, m in children].index(ffn)]]
            for c in reversed(before):  # the last module before the FFN whose output it takes: its norm
                if seen[c][1] is not None and ffn_in is not None \
                        and seen[c][1].shape == ffn_in.shape and torch.equal(seen[c][1], ffn_in):
                    states[f"h{i}_postattn"] = seen[c][0]
                    break
            states[f"h{i}_preffn"] = ffn_in
            states[f"h{i}_ffnout"] = seen[ffn][1]
        states[f"h{i}"] = seen[layer][1]
    inside = {m for m in stack.modules()}
    last = seen[layers[-1]][1]
    after = order[order.index(layers[-1]) + 1:]
    final = next((m for m in after if m not in inside and seen[m][0] is not None and seen[m][0].shape == last.shape
                  and torch.equal(seen[m][0], last)), None)
    if final is not None:
        states["post_norm"] = seen[final][1]
    states["logits"] = logits
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty: dump into a new or empty directory "
                         "(a tensor left from another dump would be compared too)")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, x in states.items():
        if x is not None:
            np.save(os.path.join(out_dir, name + ".npy"), x.detach().float().cpu().numpy())
            written.append(name)
    return written


def _hf_model(name_or_dir, dtype):
    try:
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        raise RuntimeError(f"--hf needs transformers, which is not importable here ({e})") from e
    return AutoModelForCausalLM.from_pretrained(name_or_dir, torch_dtype=dtype, attn_implementation="eager")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--module", help="FILE.py:FUNCTION returning a torch.nn.Module")
    what.add_argument("--hf", metavar="NAME_OR_DIR", help="a Hugging Face causal LM (hub name or local dir)")
    ap.add_argument("--inputs", required=True, help="token ids: input_ids of a .safetensors (parity inputs)")
    ap.add_argument("--out", required=True, help="the dump directory to write")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="the model's dtype (default fp32)")
    args = ap.parse_args(argv)
    try:
        ids = read_input_ids(args.inputs)
        if args.module:
            model = _load_factory(args.module)()
            model = model.to(DTYPES[args.dtype])
        else:
            model = _hf_model(args.hf, DTYPES[args.dtype])
        names = dump(model.eval(), ids, args.out)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"parity_dump: {e}", file=sys.stderr)
        return 2
    print(f"parity_dump: wrote {len(names)} tensors to {args.out}/ ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
