#!/usr/bin/python3
"""Export a PyTorch nn.Module to a parity bundle: one TorchScript trace per dtype + parity.json.

A trace bakes its dtypes into the graph, so a model is traced once per dtype (fp32.pt, bf16.pt,
fp16.pt). Each trace is checked against the eager module on the example inputs and on a second
input shape, and the result is said.

--format pt2 (torch >= 2.6) writes instead one AOTInductor package per dtype (fp32.pt2, ...):
torch.export (non-strict) of a module taking one int64 input_ids [batch, seq] (both dims dynamic),
compiled ahead of time to a shared library by torch._inductor.aoti_compile_and_package, which
LibTorch 2.x loads with torch::inductor::AOTIModelPackageLoader (parity's pt2 path; PyPI's LibTorch
has no torch::nativert). Output 0 is the logits, outputs 1..N the first floating input and the
first tensor output of every call of every submodule (taps, in the order the calls return); the
package's metadata says which
(parity.outputs), the module tree (parity.modules) and the parameter names (parity.parameters).
Compiling takes some 15-40 s per dtype on CPU (tiny models; more for big ones) and needs a C++
compiler (g++). Each package is checked on the smallest shape allowed ([1, 1]), the example and
the second inputs: the exported program against eager (exact in fp32), the compiled package
loaded back against eager (AOTInductor fuses kernels, so it rounds differently: bounded).
parity.json then says "program": "pt2" and holds "program_checks" for "trace_checks".

Library:
    from parity_export import export
    manifest = export(model, (input_ids,), "out/bundle", dtypes=("fp32", "bf16"),
                      second_inputs=(other_ids,), vocab_size=32000)
Command line:
    parity_export.py --module path/to/file.py:factory --out DIR [--dtypes fp32,bf16] [--format pt2]
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
import contextlib
import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
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
           vocab_size=None, source=None, config=None, log=print, made_with=None, device="cpu", fmt="pt",
           max_seq=None):
    """Traces `module` at each dtype into out_dir/{dtype}.pt and writes out_dir/parity.json.

    Raises RuntimeError when a trace does not reproduce the eager output exactly on the example
    inputs or on `second_inputs` (which should have another shape: a trace that baked in a shape
    fails there). `vocab_size` defaults to the last dim of the traced [batch, seq, vocab] output.
    The manifest's `made_with` holds torch's version and the entries of `made_with`. The model is
    traced on `device` ("cuda:0": a trace may keep the device of tensors it creates in its graph,
    so trace where parity will run it), recorded as the manifest's `traced_on`.
    The bundle is built in a temporary directory beside out_dir and moved into place at the end:
    a failed export leaves no half-written bundle (and an earlier bundle at out_dir untouched).
    fmt="pt2" writes AOTInductor packages out_dir/{dtype}.pt2 instead (see _export_pt2), for
    sequences up to `max_seq` (default: the config's max_position_embeddings, else unbounded)."""
    example_inputs = tuple(example_inputs)
    if fmt not in ("pt", "pt2"):
        raise ValueError(f"unknown format {fmt!r} (use pt or pt2)")
    if fmt == "pt2":
        _pt2_available()
        if max_seq is None and isinstance(config, dict):
            max_seq = config.get("max_position_embeddings")
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
                                device, fmt, max_seq)
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
                 device, fmt="pt", max_seq=None):
    checks = {}
    for name in dtypes:
        model = copy.deepcopy(module).to(device, DTYPES[name]).eval()
        inputs = _cast_inputs(example_inputs, DTYPES[name], device)
        if fmt == "pt2":
            checks[name] = _export_pt2(os.path.join(out_dir, f"{name}.pt2"), name, model, inputs, second_inputs,
                                       max_seq, log)
            if vocab_size is None:
                vocab_size = checks[name]["vocab_size"]
            continue
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
    if fmt == "pt2":
        manifest["program"] = "pt2"
        manifest["program_checks"] = {n: {k: v for k, v in c.items() if k != "vocab_size"} for n, c in checks.items()}
        del manifest["trace_checks"]
    with open(os.path.join(out_dir, "parity.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


# --format pt2: torch.export + AOTInductor ---------------------------------------------------------

# relative L2 of the compiled package's logits against eager above which the export fails: AOTInductor
# fuses kernels (and reassociates their sums), so it rounds differently from eager. Measured on a tiny
# random Llama (hidden 64, 2 layers, CPU): fp32 ~2e-7, bf16 ~5e-3 (1e-2 on another), fp16 ~7e-4; the bounds
# leave room for bigger models.
PT2_REL_L2 = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
# relative L2 of the exported program (ep.module(): the same aten ops as eager, measured exact) against eager
# above which fp32 fails (the half types: said), and a program traced for sizes from 1 counts as wrong at size 1
PT2_PROGRAM_REL_L2 = {"fp32": 1e-6, "bf16": 1e-2, "fp16": 1e-2}


def _pt2_available():
    version = tuple(int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    if version < (2, 6):
        raise RuntimeError(f"--format pt2 needs torch >= 2.6 (torch.export + AOTInductor); this is torch "
                           f"{torch.__version__}")


def _tensor_in(out):
    """A module output's first tensor: itself, a tuple's or list's first tensor element, a dict's (a
    transformers ModelOutput's) first tensor value; None when it holds none."""
    if torch.is_tensor(out):
        return out
    for x in (out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()):
        t = _tensor_in(x)
        if t is not None:
            return t
    return None


def _last_line(e):
    return ([line for line in str(e).splitlines() if line.strip()] or [type(e).__name__])[-1]


def _export_error(e):
    """torch.export's error in one line: its first line, and the first "- " detail under it."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    return " ".join(lines[:1] + [line for line in lines[1:] if line.startswith("- ")][:1])


def _agreement(want, got):
    """max |diff| and relative L2 (||got - want|| / ||want||) of `got` against `want`, in float64. The
    same NaN or Inf at the same place agrees; a mismatched one is infinitely off."""
    if want.shape != got.shape:
        raise RuntimeError(f"output shape {list(got.shape)} != eager {list(want.shape)}")
    w, g = want.double(), got.double().to(want.device)
    same = (w == g) | (w.isnan() & g.isnan())
    diff = torch.where(same, torch.zeros_like(w), (w - g).abs().nan_to_num(float("inf")))
    if not diff.numel():
        return {"max_abs_diff": 0.0, "rel_l2": 0.0}
    norm = torch.where(w.isfinite(), w, torch.zeros_like(w)).norm().item()
    err = diff.norm().item()
    return {"max_abs_diff": diff.max().item(), "rel_l2": err / norm if norm else (0.0 if err == 0 else float("inf"))}


def _module_table(model, inputs):
    """parity.modules: every module, root first, in the order of its first call in an eager forward
    (forward pre-hooks), then those never called in definition order; a parent always before its
    children (a container never called itself, like a ModuleList, goes just before its first child)."""
    called = {}

    def first_call(path):
        return lambda mod, args: called.setdefault(path, None)

    handles = [m.register_forward_pre_hook(first_call(p)) for p, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    modules, placed = dict(model.named_modules()), {}

    def place(path):
        if path not in placed:
            if path:
                place(path.rpartition(".")[0])
            placed[path] = None

    for path in list(called) + list(modules):
        place(path)
    return [{"path": p, "type": type(modules[p]).__name__,
             "params": sum(x.numel() for x in modules[p].parameters(recurse=False)),
             "total_params": sum(x.numel() for x in modules[p].parameters()),
             "depth": p.count(".") + 1 if p else 0} for p in placed]


@contextlib.contextmanager
def _tapped(model, where):
    """While active, model(...) returns (its first output, tap 1, ..., tap N): forward hooks on every
    submodule collect each call's first floating input and first tensor output, in the order the
    calls return, and `where` is refilled at each forward with their {"path", "call", "kind"} (call:
    0-based index of that module's call; kind "input" or "output").
    The model's class is swapped for a subclass whose forward wraps the original, so that torch.export
    sees the module itself: its parameter and buffer names stay exactly those of named_parameters()
    and named_buffers(), with no wrapper prefix. Restored on exit."""
    taps, calls = [], {}

    def tap(path):
        def hook(mod, args, out):
            call = calls.get(path, 0)
            x = _tensor_in(args)  # what it inherits: its first floating input (token ids are not)
            if x is not None and x.is_floating_point():
                taps.append(x)
                where.append({"path": path, "call": call, "kind": "input"})
            t = _tensor_in(out)
            if t is not None:
                taps.append(t)
                where.append({"path": path, "call": call, "kind": "output"})
            calls[path] = call + 1
        return hook

    base = type(model)

    @functools.wraps(base.forward)  # keeps the signature, to which torch.export binds the inputs
    def forward(self, *args, **kwargs):
        taps.clear(), where.clear(), calls.clear()
        out = base.forward(self, *args, **kwargs)
        return (_first_tensor(out), *taps)

    handles = [m.register_forward_hook(tap(p)) for p, m in model.named_modules() if p]
    model.__class__ = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__,
                                                    "__qualname__": base.__qualname__})
    try:
        yield
    finally:
        model.__class__ = base
        for h in handles:
            h.remove()


def _dim_range(ep, dim):
    """(min, max) torch.export settled for dim `dim` of the program's input (max None: unbounded)."""
    name = ep.graph_signature.user_inputs[0]
    size = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"].shape[dim]
    if isinstance(size, int):  # export refuses a dim it specializes, but say so if it ever does
        return size, size
    r = ep.range_constraints[size.node.expr]
    return int(r.lower), (int(r.upper) if r.upper < sys.maxsize else None)


def _export_pt2(path, name, model, inputs, second_inputs, max_seq, log):
    """One dtype of --format pt2: torch.export (non-strict) of `model` tapped (_tapped), input_ids'
    batch and seq dynamic (min 1 where torch.export allows it, else 2; seq up to max_seq), compiled
    by AOTInductor into the package `path` with parity's metadata (values strings, JSON where
    structured). Checks (returned, and said), on the smallest shape allowed, the example inputs and
    the second inputs: the exported program run in Python against eager (exact, or within
    PT2_PROGRAM_REL_L2 in fp32; said for the half types), the package loaded back against eager
    (PT2_REL_L2), the number of outputs. Raises RuntimeError where any fails."""
    import torch._inductor  # torch >= 2.6; not imported for TorchScript bundles

    ids = inputs[0] if len(inputs) == 1 else None
    if not torch.is_tensor(ids) or ids.dtype != torch.int64 or ids.dim() != 2:
        raise RuntimeError(f"--format pt2 takes one int64 input_ids [batch, seq]; got {_describe(inputs)}")
    gen = torch.Generator().manual_seed(0)  # made-up ids are of the example's token range

    def made_up(batch, seq):
        return torch.randint(0, int(ids.max()) + 1, (batch, seq), generator=gen).to(ids.device)

    second = made_up(ids.shape[0] + 1, ids.shape[1] + 3) if second_inputs is None else \
        tuple(second_inputs)[0].to(ids.device)
    # torch.export fixes a dim its example has at size 1 (0/1 specialization), so the program is traced
    # on a shape with batch and seq >= 2: the example's, else the second's (by default batch+1, seq+3)
    trace = next((x for x in (ids, second) if min(x.shape) >= 2), None)
    if trace is None:
        raise RuntimeError(f"{name}: --format pt2 needs example or second inputs with batch >= 2 and seq >= 2 "
                           f"(torch.export fixes a dim traced at size 1); got {list(ids.shape)} and "
                           f"{list(second.shape)}")
    table = _module_table(model, (ids,))
    want, where = {}, []

    def eager(k, x):
        if k not in want:
            with torch.no_grad():
                want[k] = _first_tensor(model(x))
        return want[k]

    def run(what, fn, x):
        try:
            with torch.no_grad():
                got = fn(x)
        except Exception as e:
            raise RuntimeError(f"{name}: {what} fails on inputs {list(x.shape)}: {_last_line(e)}") from e
        if len(got) != 1 + len(where):
            raise RuntimeError(f"{name}: {what} returns {len(got)} outputs on inputs {list(x.shape)}, not "
                               f"1 + {len(where)} taps")
        return got[0]

    # min 1 where torch.export allows it, else 2: a guard that excludes size 1 makes export refuse min 1,
    # and code that branches on a size being 1 is traced for sizes > 1, which the check at the smallest
    # shape catches: the dim whose size 1 the program gets wrong (or both) is exported again from 2
    t0, low, probes = time.time(), [1, 1], {}
    while True:
        dims = {0: torch.export.Dim("batch", min=low[0]), 1: torch.export.Dim("seq", min=low[1], max=max_seq)}
        try:
            with torch.no_grad(), _tapped(model, where):
                ep = torch.export.export(model, (trace,), dynamic_shapes=(dims,), strict=False)
        except torch._dynamo.exc.UserError as e:  # constraints violated: a dim fixed, or excluded from 1 up
            if low == [1, 1]:
                low = [2, 2]
                continue
            raise RuntimeError(f"{name}: torch.export failed (input_ids' batch and seq not dynamic from "
                               f"{min(low)} up): {_export_error(e)}") from e
        except Exception as e:  # e.g. a data-dependent branch (MoE experts run only where tokens are routed)
            hint = (" (a data-dependent branch or loop, e.g. MoE experts run only where tokens are routed: "
                    "its taps would depend on the input)" if "data-dependent" in str(e).lower() else "")
            raise RuntimeError(f"{name}: torch.export failed{hint}: {_export_error(e)}") from e
        program = ep.module()

        def wrong(shape):  # the program disagrees with eager on made-up ids of this shape
            x = probes.setdefault(shape, made_up(*shape))
            with torch.no_grad():
                want = _first_tensor(model(x))
            return _agreement(want, run("the exported program", program, x))["rel_l2"] > PT2_PROGRAM_REL_L2[name]

        if 1 not in low or not wrong(tuple(low)):
            break
        raised = [max(low[0], 2 if wrong((1, 2)) else 1), max(low[1], 2 if wrong((2, 1)) else 1)]
        low = raised if raised != low else [2, 2]
        log(f"{name}: the program exported for sizes from 1 differs from eager at size 1 (code that branches on "
            f"a size being 1); exporting again for batch >= {low[0]}, seq >= {low[1]}")
    shapes = {"min": probes.setdefault(tuple(low), made_up(*low)), "example": ids, "second": second}
    export_s = time.time() - t0
    (min_batch, _), (min_seq, max_seq) = _dim_range(ep, 0), _dim_range(ep, 1)
    # every name of a parameter, a tied one (lm_head.weight = embed_tokens.weight) under each, as torch.export
    # names the program's parameters
    params = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    if sorted(ep.graph_signature.parameters) != sorted(params):
        raise RuntimeError(f"{name}: exported parameter names differ from named_parameters(): "
                           f"{sorted(set(ep.graph_signature.parameters) ^ set(params))[:5]}")
    outputs = list(where)
    # the taps must not depend on the input: eager calls the same modules as often on the other shapes
    for x in shapes.values():
        with torch.no_grad(), _tapped(model, where):
            model(x)
        if where != outputs:
            raise RuntimeError(f"{name}: the modules called depend on the input ({len(outputs)} taps traced, "
                               f"{len(where)} on inputs {list(x.shape)}), e.g. a data-dependent MoE loop: "
                               f"no fixed tap list")
    where[:] = outputs

    checks = {"traced_shape": list(trace.shape), "min_batch": min_batch, "min_seq": min_seq, "max_seq": max_seq,
              "outputs": 1 + len(outputs), "program": {}, "aoti": {}, "aoti_rel_l2_bound": PT2_REL_L2[name]}
    program = ep.module()
    for k, x in shapes.items():
        checks["program"][k] = a = _agreement(eager(k, x), run("the exported program", program, x))
        if name == "fp32" and a["rel_l2"] > PT2_PROGRAM_REL_L2[name]:
            raise RuntimeError(f"{name}: the exported program differs from eager on inputs {list(x.shape)}: "
                               f"max |diff| {a['max_abs_diff']:.3g}, relative L2 {a['rel_l2']:.3g}")
    del program
    metadata = {
        "parity.format": "1",
        "parity.dtype": name,
        "parity.min_batch": str(min_batch),
        "parity.min_seq": str(min_seq),
        "parity.max_seq": "" if max_seq is None else str(max_seq),  # "": unbounded
        "parity.modules": json.dumps(table),
        "parity.outputs": json.dumps(outputs),
        "parity.parameters": json.dumps(params),
    }
    t0 = time.time()
    try:
        torch._inductor.aoti_compile_and_package(ep, package_path=path,
                                                 inductor_configs={"aot_inductor.metadata": metadata})
    except Exception as e:
        raise RuntimeError(f"{name}: AOTInductor compile failed (it needs a C++ compiler): {_last_line(e)}") from e
    compile_s = time.time() - t0
    package = torch._inductor.aoti_load_package(path)
    for k, x in shapes.items():
        checks["aoti"][k] = a = _agreement(want[k], run("the AOTInductor package", package, x))
        if not a["rel_l2"] <= PT2_REL_L2[name]:
            raise RuntimeError(f"{name}: the AOTInductor package differs from eager on inputs {list(x.shape)}: "
                               f"relative L2 {a['rel_l2']:.3g} > {PT2_REL_L2[name]:g}, max |diff| "
                               f"{a['max_abs_diff']:.3g}")
    del package
    logits = want["example"]
    checks["vocab_size"] = logits.shape[-1] if logits.dim() == 3 else None  # taken out of the manifest's checks

    def said(c):
        return " and ".join(f"{list(shapes[k].shape)}: max |diff| {v['max_abs_diff']:.2g}, rel L2 {v['rel_l2']:.2g}"
                            for k, v in c.items())

    exact = all(v["max_abs_diff"] == 0 for v in checks["program"].values())
    log(f"{name}: exported {path}: logits + {len(outputs)} taps, batch >= {min_batch}, "
        f"{min_seq} <= seq <= {max_seq or 'any'} (traced at {list(trace.shape)}); export {export_s:.1f} s, "
        f"AOTInductor compile {compile_s:.1f} s")
    log(f"{name}: the exported program " + ("reproduces eager exactly on inputs " + " and ".join(
        str(list(x.shape)) for x in shapes.values()) if exact else "against eager: " + said(checks["program"])))
    log(f"{name}: the AOTInductor package against eager: {said(checks['aoti'])} (bound: rel L2 {PT2_REL_L2[name]:g})")
    return checks


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
              batch=1, seq=8, log=print, attn_implementation="eager", device="cpu", fmt="pt"):
    """Exports a transformers causal LM: pretrained (`name_or_dir`) or randomly initialised from
    a config (`config_file`, or `name_or_dir` with random_init) with a seeded init, through
    CausalLMLogits, with the attention implementation given (recorded in the manifest), as
    TorchScript (fmt "pt") or AOTInductor packages (fmt "pt2", seq up to max_position_embeddings)."""
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
                  device=device, fmt=fmt, max_seq=getattr(config, "max_position_embeddings", None))


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
    ap.add_argument("--format", default="pt", choices=("pt", "pt2"),
                    help="pt (default): a TorchScript trace per dtype, <dtype>.pt, for LibTorch 1.13 and 2.x. "
                         "pt2: an AOTInductor package per dtype, <dtype>.pt2 (torch.export + "
                         "aoti_compile_and_package; needs torch >= 2.6 and a C++ compiler; compiling takes some "
                         "15-40 s per dtype on CPU for a small model), which parity built against LibTorch 2.x loads with "
                         "torch::inductor::AOTIModelPackageLoader: one int64 input_ids [batch, seq] (both "
                         "dynamic), output 0 the logits, outputs 1..N every submodule call's first tensor "
                         "(taps), described by the package's parity.* metadata; parity.json says "
                         '"program": "pt2"')
    ap.add_argument("--out", required=True, help="bundle directory to write")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32,bf16,fp16 (default fp32,bf16)")
    ap.add_argument("--vocab-size", type=int,
                    help="--module: vocabulary size for the manifest (default: the logits' last dim)")
    args = ap.parse_args(argv)
    dtypes = tuple(args.dtypes.split(","))
    try:
        if args.format == "pt2":
            _pt2_available()  # before building the model
        if args.module:
            made = _load_factory(args.module)()
            second = made[2] if len(made) > 2 else None
            export(made[0], made[1], args.out, dtypes, second, vocab_size=args.vocab_size, source=args.module,
                   device=args.device, fmt=args.format)
        else:
            export_hf(args.out, args.hf, args.hf_config, args.random_init, args.seed, dtypes, args.batch, args.seq,
                      attn_implementation=args.attn_implementation, device=args.device, fmt=args.format)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"parity_export: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
