#!/usr/bin/env python3
"""Seed corpus for the fuzz targets, generated at build time (Python's standard library only):
well-formed safetensors and .npy files covering every dtype, byte order, layout and version the
readers accept, JSON documents of every kind of value, and bundle manifests (parity.json), so the
fuzzer starts from inputs that reach deep into the parsers.
Usage: make_corpus.py OUT_DIR  (writes OUT_DIR/{safetensors,npy,json,manifest}/*)"""
import json
import os
import struct
import sys


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def npy(descr, shape, raw, fortran=False, version=1):
    dims = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    h = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {dims}, }}"
    pre = 10 if version == 1 else 12
    h += " " * ((64 - (pre + len(h) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + size + h.encode() + raw


def main(out):
    st_dir, npy_dir = os.path.join(out, "safetensors"), os.path.join(out, "npy")
    os.makedirs(st_dir, exist_ok=True)
    os.makedirs(npy_dir, exist_ok=True)
    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8, "F16": 2, "BF16": 2, "F32": 4,
             "F64": 8, "C64": 8, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
    seeds = {f"{d}.safetensors": safetensors({"t": (d, [2, 3], bytes(range(6 * n)))}) for d, n in sizes.items()}
    seeds["multi.safetensors"] = safetensors({"a": ("F32", [2], b"\0" * 8), "b": ("I64", [1, 1], b"\1" * 8),
                                              "empty": ("F32", [0, 4], b""), "scalar": ("F16", [], b"\0<")},
                                             {"format": "pt"})
    seeds["header_only.safetensors"] = safetensors({})
    for name, blob in seeds.items():
        with open(os.path.join(st_dir, name), "wb") as f:
            f.write(blob)
    types = {"b1": 1, "u1": 1, "i1": 1, "i2": 2, "i4": 4, "i8": 8, "u2": 2, "u4": 4, "u8": 8, "f2": 2, "f4": 4,
             "f8": 8, "c8": 8, "c16": 16}
    for t, n in types.items():
        for order in ("<", ">") if n > 1 else ("|",):
            for version in (1, 2, 3):
                blob = npy(order + t, [2, 3], bytes(range(6 * n)), fortran=version == 2, version=version)
                with open(os.path.join(npy_dir, f"{order.replace('<', 'le').replace('>', 'be').replace('|', 'na')}"
                                                f"_{t}_v{version}.npy"), "wb") as f:
                    f.write(blob)
    for name, shape in {"scalar": [], "vector": [4], "empty": [0, 3]}.items():
        count = 1
        for d in shape:
            count *= d
        with open(os.path.join(npy_dir, f"{name}.npy"), "wb") as f:
            f.write(npy("<f4", shape, b"\0" * 4 * count))
    json_seeds(os.path.join(out, "json"))
    manifest_seeds(os.path.join(out, "manifest"))
    return 0


def write_all(directory, seeds):
    os.makedirs(directory, exist_ok=True)
    for name, text in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)


def json_seeds(directory):
    write_all(directory, {
        "scalars.json": '[null, true, false, 0, -0, 1, -1, 3.5, 1e300, -2.5e-300, 9007199254740993, '
                        '18446744073709551615, -9223372036854775808]',
        "strings.json": json.dumps(["", "plain", "tab\tnewline\nquote\"", "\u0000nul", "\u00e9\u4e2d\ud83d\ude00",
                                    "NaN", "Infinity", "-Infinity"]),
        "containers.json": '{"a": [], "b": {}, "c": [[], {}], "d": {"e": {"f": [1, {"g": null}]}}, "1": "one"}',
        "nested.json": "[" * 100 + "]" * 100,
        "verdict.json": json.dumps({"verdict": "equivalent", "stages": [{"name": "e2e", "rows": [
            {"position": 0, "r": 1.01, "kl": 1e-6, "top1": True}]}], "figures": {"r_p95": 1.05}}, indent=2),
        "empty_object.json": "{}",
        "number.json": "42",
        "whitespace.json": " \t\r\n [ 1 , 2 ] \n",
    })


def manifest_seeds(directory):
    config = {"hidden_size": 64, "intermediate_size": 176, "max_position_embeddings": 2048,
              "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
              "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "vocab_size": 512}
    full = {"config": config, "dtypes": ["fp32", "bf16"], "format": 1,
            "inputs": [{"dtype": "int64", "shape": [1, 8]}], "made_with": {"torch": "1.13.0a0"},
            "modules": ["model", "model.embed_tokens", "model.layers", "model.layers.0", "lm_head"],
            "vocab_size": 512}
    write_all(directory, {
        "full.json": json.dumps(full, indent=2, sort_keys=True),
        "minimal.json": json.dumps({"format": 1}),
        "vocab_null.json": json.dumps({"vocab_size": None, "config": {"n_positions": 1024}}),
        "vocab_bad.json": json.dumps({"vocab_size": 0.5, "config": []}),
        "not_object.json": "[1, 2, 3]",
    })


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
