#!/usr/bin/python3
"""Export a PyTorch nn.Module to a parity bundle: one TorchScript trace per dtype + parity.json.

A trace bakes its dtypes into the graph, so a model is traced once per dtype (fp32.pt, bf16.pt,
fp16.pt). Each trace is checked against the eager module on the example inputs and on a second
input shape, and the result is said.

Library:
    from parity_export import export
    manifest = export(model, (input_ids,), "out/bundle", dtypes=("fp32", "bf16"),
                      second_inputs=(other_ids,), vocab_size=32000)
Command line:
    parity_export.py --module path/to/file.py:factory --out DIR [--dtypes fp32,bf16]
        factory() returns (module, example_inputs_tuple[, second_inputs_tuple])
    parity_export.py --hf NAME_OR_DIR --out DIR               (needs transformers)
    parity_export.py --hf-config config.json --random-init --seed 0 --out DIR
        Hugging Face causal LMs (transformers 4.x and 5.x), traced through a wrapper whose
        forward(input_ids) returns the logits (module paths under "m.": m.model.layers.0...),
        with an all-ones attention mask so that the trace takes any batch and length;
        --attn-implementation eager (default; sdpa traces an operator LibTorch 1.13 lacks).
        Inputs are seeded random token ids.
The manifest records the versions of torch (and transformers) that made the bundle, and the
device it was traced on (--device cuda:0 traces on a GPU, for parity's --device cuda).
Runs where torch lives (Debian: /usr/bin/python3 with python3-torch).
"""
import argparse
import copy
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cast_inputs(inputs, dtype, device="cpu"):
    return tuple((x.to(device, dtype) if x.is_floating_point() else x.to(device)) if torch.is_tensor(x) else x
                 for x in inputs)


def _first_tensor(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _describe(inputs):
    return [{"dtype": str(x.dtype).replace("torch.", ""), "shape": list(x.shape)} for x in inputs if torch.is_tensor(x)]


def _check(name, traced, eager, inputs):
    with torch.no_grad():
        want = _first_tensor(eager(*inputs))
        try:
            got = _first_tensor(traced(*inputs))
        except RuntimeError as e:  # a trace that baked in the example's shape
            last = [line for line in str(e).splitlines() if line.strip()][-1]
            raise RuntimeError(f"{name} trace fails on inputs {_describe(inputs)}: {last}") from e
    if want.shape != got.shape:
        raise RuntimeError(f"trace output shape {list(got.shape)} != eager {list(want.shape)}")
    if not want.numel():
        return 0.0
    # the same NaN/Inf at the same place is a faithful trace; a mismatched one is infinitely off
    diff = (want.double() - got.double()).abs()
    same = (want == got) | (want.isnan() & got.isnan())
    diff = torch.where(same, torch.zeros_like(diff), diff.nan_to_num(float("inf")))
    return diff.max().item()


def export(module, example_inputs, out_dir, dtypes=("fp32", "bf16"), second_inputs=None,
           vocab_size=None, source=None, config=None, log=print, made_with=None, device="cpu"):
    """Traces `module` at each dtype into out_dir/{dtype}.pt and writes out_dir/parity.json.

    Raises RuntimeError when a trace does not reproduce the eager output exactly on the example
    inputs or on `second_inputs` (which should have another shape: a trace that baked in a shape
    fails there). `vocab_size` defaults to the last dim of the traced [batch, seq, vocab] output.
    The manifest's `made_with` holds torch's version and the entries of `made_with`. The model is
    traced on `device` ("cuda:0": a trace may keep the device of tensors it creates in its graph,
    so trace where parity will run it), recorded as the manifest's `traced_on`.
    The bundle is built in a temporary directory beside out_dir and moved into place at the end:
    a failed export leaves no half-written bundle (and an earlier bundle at out_dir untouched)."""
    example_inputs = tuple(example_inputs)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r}: no CUDA device here (torch {torch.__version__})")
    for name in dtypes:
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r} (use {', '.join(DTYPES)})")
    out_dir = os.path.normpath(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        manifest = _export_into(tmp, module, example_inputs, dtypes, second_inputs, vocab_size, source, config,
                                lambda msg: log(msg.replace(tmp, out_dir)), dict(made_with or {}, torch=torch.__version__),
                                device)
        if os.path.isdir(out_dir):  # replace an earlier bundle only once the new one is complete
            old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "bundle"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _export_into(out_dir, module, example_inputs, dtypes, second_inputs, vocab_size, source, config, log, made_with,
                 device):
    checks = {}
    for name in dtypes:
        model = copy.deepcopy(module).to(device, DTYPES[name]).eval()
        inputs = _cast_inputs(example_inputs, DTYPES[name], device)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(model, inputs, check_trace=False)
        except RuntimeError as e:  # e.g. no fp16 matmul on CPU in torch 1.13
            raise RuntimeError(f"{name}: tracing failed: {str(e).splitlines()[0]}") from e
        checks[name] = {"example": _check(name, traced, model, inputs)}
        if second_inputs is not None:
            checks[name]["second"] = _check(name, traced, model, _cast_inputs(tuple(second_inputs), DTYPES[name], device))
        bad = {k: v for k, v in checks[name].items() if v != 0.0}
        if bad:
            raise RuntimeError(f"{name} trace differs from eager: max |diff| {bad}")
        if vocab_size is None:
            with torch.no_grad():
                out = _first_tensor(traced(*inputs))
            if out.dim() == 3:
                vocab_size = out.shape[-1]
        path = os.path.join(out_dir, f"{name}.pt")
        traced.save(path)
        shapes = " and ".join(str(list(_first_tensor(x).shape)) for x in
                              ([example_inputs] + ([tuple(second_inputs)] if second_inputs is not None else [])))
        log(f"{name}: traced {path}; reproduces eager exactly on inputs {shapes}")
    manifest = {
        "format": 1,
        "dtypes": list(dtypes),
        "inputs": _describe(example_inputs),
        "vocab_size": vocab_size,
        "source": source or type(module).__name__,
        "config": config,
        "modules": [n for n, _ in module.named_modules() if n],
        "trace_checks": checks,
        "made_with": made_with,
        "traced_on": str(torch.device(device)),
    }
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


class CausalLMLogits(torch.nn.Module):
    """What is traced of a transformers causal LM: forward(input_ids) -> logits, the model under
    `m`. The 2-D all-ones attention mask keeps the trace shape-generic: without one, transformers
    5's mask code bakes the example's batch and length into the trace. (A prepared 4-D mask traces
    too, but silently breaks sliding-window models.) transformers 5 dropped the tuple outputs of
    `torchscript=True`; the wrapper takes `.logits` on 4.x and 5.x alike."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, input_ids):
        return self.m(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                      return_dict=True).logits


def export_hf(out_dir, name_or_dir=None, config_file=None, random_init=False, seed=0, dtypes=("fp32", "bf16"),
              batch=1, seq=8, log=print, attn_implementation="eager", device="cpu"):
    """Exports a transformers causal LM: pretrained (`name_or_dir`) or randomly initialised from
    a config (`config_file`, or `name_or_dir` with random_init) with a seeded init, through
    CausalLMLogits, with the attention implementation given (recorded in the manifest)."""
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise RuntimeError(f"--hf needs transformers, which is not importable here ({e}); "
                           "export where the model's Python environment lives") from e
    config = AutoConfig.from_pretrained(config_file or name_or_dir)
    config.use_cache = False
    try:
        if random_init or config_file:
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        else:
            model = AutoModelForCausalLM.from_pretrained(name_or_dir, config=config,
                                                         attn_implementation=attn_implementation)
    except Exception as e:  # an attention implementation it refuses, a config its class rejects, a checkpoint
        what = (f"attn_implementation {attn_implementation!r}" if "attn_implementation" in str(e)
                else f"{config_file or name_or_dir}: cannot build the model")
        raise RuntimeError(f"{what}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
    vocab = config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    example = (torch.randint(0, vocab, (batch, seq), generator=gen),)
    second = (torch.randint(0, vocab, (batch + 1, seq + 3), generator=gen),)
    source = name_or_dir or config_file
    cfg = json.loads(json.dumps(config.to_dict(), default=str))
    return export(CausalLMLogits(model).eval(), example, out_dir, dtypes, second, vocab_size=vocab,
                  source=f"hf:{source}" + (f" (random init, seed {seed})" if random_init or config_file else ""),
                  config=cfg, log=log,
                  made_with={"transformers": transformers.__version__, "attn_implementation": attn_implementation},
                  device=device)


def _load_factory(spec):
    path, _, func = spec.partition(":")
    if not func:
        raise SystemExit(f"--module needs FILE.py:FUNCTION, got {spec!r}")
    mod_spec = importlib.util.spec_from_file_location("parity_user_module", path)
    if mod_spec is None:
        raise SystemExit(f"{path}: cannot import")
    mod = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    mod_spec.loader.exec_module(mod)
    return getattr(mod, func)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--module", help="FILE.py:FUNCTION returning (module, inputs[, second_inputs])")
    what.add_argument("--hf", metavar="NAME_OR_DIR", help="a Hugging Face causal LM (hub name or local dir)")
    what.add_argument("--hf-config", metavar="CONFIG_JSON", help="a Hugging Face config; weights randomly initialised")
    ap.add_argument("--random-init", action="store_true", help="with --hf: ignore the weights, seeded random init")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random init and the example token ids")
    ap.add_argument("--batch", type=int, default=1, help="--hf: example batch (the second check uses batch+1)")
    ap.add_argument("--seq", type=int, default=8, help="--hf: example length (the second check uses seq+3)")
    ap.add_argument("--attn-implementation", default="eager",
                    help="--hf: the attention transformers runs (default eager, which LibTorch 1.13 loads; "
                         "sdpa traces aten::scaled_dot_product_attention, which needs LibTorch 2.x)")
    ap.add_argument("--device", default="cpu",
                    help="trace on this device (default cpu; cuda:0 for bundles parity runs with --device cuda)")
    ap.add_argument("--out", required=True, help="bundle directory to write")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16,fp16 (default fp32,bf16)")
    ap.add_argument("--vocab-size", type=int,
                    help="--module: vocabulary size for the manifest (default: the logits' last dim)")
    args = ap.parse_args(argv)
    dtypes = tuple(args.dtypes.split(","))
    try:
        if args.module:
            made = _load_factory(args.module)()
            second = made[2] if len(made) > 2 else None
            export(made[0], made[1], args.out, dtypes, second, vocab_size=args.vocab_size, source=args.module,
                   device=args.device)
        else:
            export_hf(args.out, args.hf, args.hf_config, args.random_init, args.seed, dtypes, args.batch, args.seq,
                      attn_implementation=args.attn_implementation, device=args.device)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"parity_export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
