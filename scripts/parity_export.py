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
    parity_export.py --hf-config config.json --random-init --seed 0 --out DIR [--save-weights W.safetensors]
        --save-weights: the model's weights as well, named as its state_dict() (the HF checkpoint's
        names, no "m." prefix), a tied tensor once (the metadata's "tied": {alias: kept}), written
        without the safetensors package, for a port to load exactly the reference's weights.
A forward may return the logits, a dict or transformers ModelOutput holding "logits", or a tuple
or list whose first tensor (depth first) they are: the module is then traced returning that one
tensor (its class swapped for a subclass, so its module and parameter names stay its own), and the
log says so ("the model returns a dict: exporting its 'logits' [1, 8, 256]").
Whatever the exporter cannot take (a factory name the file lacks, a missing or broken --hf-config,
a --hf name neither a local directory nor on the Hub, a forward that fails or returns no tensor to
take) is one line on stderr and exit 2, as is a trace that differs from eager. Python warnings
(transformers' FutureWarnings, torch's deprecations) and transformers' log are off unless -v,
which also prints an error's traceback.
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
import traceback
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


# what a model's forward may return: the logits, or a container the exporter takes them from
_RETURN = ("return the logits [batch, seq, vocab]: a tensor, a tuple or list whose first tensor they are, "
           "or a dict (a transformers ModelOutput) with 'logits'")


def _kind(out):
    """A module output's kind in words: "a dict", "a tuple of 2", "a CausalLMOutputWithPast (a transformers
    ModelOutput)", "a NoneType"."""
    t = type(out)
    if isinstance(out, dict) and any(c.__name__ == "ModelOutput" for c in t.__mro__):
        return f"a {t.__name__} (a transformers ModelOutput)"
    if isinstance(out, (tuple, list)):
        return f"a {'tuple' if isinstance(out, tuple) else 'list'} of {len(out)}"
    return "a dict" if isinstance(out, dict) else _a(t.__name__)


def _a(word):
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _tensor_path(out):
    """The keys leading to the one tensor the exporter takes of a module output: () for a tensor, ("logits",)
    for a dict (a ModelOutput) holding a tensor "logits", a tuple's or list's first such element (depth
    first: (0,), (1, "logits")); None when there is none."""
    if torch.is_tensor(out):
        return ()
    if isinstance(out, dict):
        return ("logits",) if torch.is_tensor(out.get("logits")) else None
    if isinstance(out, (tuple, list)):
        for i, x in enumerate(out):
            path = _tensor_path(x)
            if path is not None:
                return (i,) + path
    return None


def _follow(out, path):
    for k in path:
        out = out[k]
    return out


def _output_path(out):
    """(path, said): where the exporter takes the logits of a forward's output `out` (_tensor_path), and the
    log line saying so (None for a tensor). Raises RuntimeError, in one line saying what to return, when
    `out` holds no tensor it can take."""
    path = _tensor_path(out)
    if path == ():
        return path, None
    if path is None:
        if isinstance(out, dict):
            keys = ", ".join(repr(k) for k in out.keys())
            raise RuntimeError(f"the model's forward returns {_kind(out)} without 'logits' "
                               f"({'keys: ' + keys if keys else 'empty'}): {_RETURN}")
        held = " with no tensor in it" if isinstance(out, (tuple, list)) else ", not a tensor"
        raise RuntimeError(f"the model's forward returns {_kind(out)}{held}: {_RETURN}")
    taken = _follow(out, path)
    where = "its 'logits'" if path == ("logits",) else "its first tensor, out" + "".join(f"[{k!r}]" for k in path)
    return path, f"the model returns {_kind(out)}: exporting {where} {list(taken.shape)}"


def _subclass_forward(model, forward):
    """Swaps `model`'s class for a subclass of it with this forward (same name, module and qualname), so
    that a trace or torch.export sees the module itself: its module, parameter and buffer names stay
    exactly its own, with no wrapper prefix. Returns the original class, for restoring."""
    base = type(model)
    model.__class__ = type(base.__name__, (base,), {"forward": functools.wraps(base.forward)(forward),
                                                    "__module__": base.__module__, "__qualname__": base.__qualname__})
    return base


def _returning(model, path):
    """`model` (a copy the export owns), made to return the one tensor at `path` of its forward's output
    (_output_path): what is traced or exported. A ScriptModule is left as it is (a trace of it is itself)."""
    if path and not isinstance(model, torch.jit.ScriptModule):
        base = type(model)
        _subclass_forward(model, lambda self, *args, **kwargs: _follow(base.forward(self, *args, **kwargs), path))
    return model


def _located(e):
    """' (at FILE:LINE)': the innermost frame of exception `e`'s traceback outside torch and this script,
    where the user's code (a factory, a model's forward, transformers' modeling code) raised it."""
    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not os.path.abspath(f.filename).startswith(skip) and not f.filename.startswith("<")]
    if not frames:
        return ""
    f = frames[-1]
    rel = os.path.relpath(f.filename)
    return f" (at {f.filename if rel.startswith('..') else rel}:{f.lineno})"


def _said(e):
    """An exception in one line: its type and first line, and where it was raised (_located)."""
    first = ([line for line in str(e).splitlines() if line.strip()] or [""])[0].strip()
    return f"{type(e).__name__}: {first}{_located(e)}" if first else f"{type(e).__name__}{_located(e)}"


def _eager(name, model, inputs):
    """The model's eager output on `inputs`; its failure (the model's own error, a dtype this machine
    cannot run) as a RuntimeError in one line."""
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as e:
        raise RuntimeError(f"{name}: the model's forward fails on the example inputs {_describe(inputs)}: "
                           f"{_said(e)}") from e


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
    example_inputs = (example_inputs,) if torch.is_tensor(example_inputs) else tuple(example_inputs)
    if torch.is_tensor(second_inputs):
        second_inputs = (second_inputs,)
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
    checks, taken = {}, None
    for name in dtypes:
        model = copy.deepcopy(module).to(device, DTYPES[name]).eval()
        inputs = _cast_inputs(example_inputs, DTYPES[name], device)
        if taken is None:  # what the forward returns, seen once: the logits, or where they are in it
            taken, said = _output_path(_eager(name, model, inputs))
            if said and not isinstance(model, torch.jit.ScriptModule):
                log(said)
        model = _returning(model, taken)
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
    """While active, model(...) returns (its output, tap 1, ..., tap N): `model` returns one tensor
    (_returning), and forward hooks on every
    submodule collect each call's first floating input and first tensor output, in the order the
    calls return, and `where` is refilled at each forward with their {"path", "call", "kind"} (call:
    0-based index of that module's call; kind "input" or "output").
    The model's class is swapped for a subclass whose forward wraps the original (_subclass_forward), so
    that torch.export sees the module itself: its parameter and buffer names stay exactly those of
    named_parameters() and named_buffers(), with no wrapper prefix. Restored on exit."""
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

    def forward(self, *args, **kwargs):  # wrapped: keeps the signature, to which torch.export binds the inputs
        taps.clear(), where.clear(), calls.clear()
        return (base.forward(self, *args, **kwargs), *taps)

    handles = [m.register_forward_hook(tap(p)) for p, m in model.named_modules() if p]
    base = _subclass_forward(model, forward)
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
                want[k] = model(x)
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
                want = model(x)
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


def _config_file(path):
    """Checks a --hf-config before transformers reads it (which would take a path it cannot open for a Hub
    name, and answer that it cannot connect to the Hub): a JSON file, or a directory holding config.json,
    naming its architecture in "model_type". Returns the parsed config. RuntimeError in one line."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.isfile(file):
        raise RuntimeError(f"--hf-config {path}: a directory without config.json: give the config file itself "
                           f"(or --hf {path} for a model directory that save_pretrained() wrote)")
    if not os.path.exists(file):
        raise RuntimeError(f"--hf-config {path}: no such file: give a Hugging Face config.json (a model's "
                           f"config, e.g. from its Hub page's files), or --hf NAME for a model by name")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise RuntimeError(f"--hf-config {path}: cannot read it: {e.strerror or e}") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RuntimeError(f"--hf-config {path}: not a JSON file ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise RuntimeError(f"--hf-config {path}: no \"model_type\" in it: a Hugging Face config.json names "
                           f"its architecture there (\"llama\", \"qwen2\", ...)")
    return config


def _hub_error(name, e):
    """Why transformers could not get `name` (not a local directory) from the Hub, in one line, with what
    to do."""
    text = str(e).lower()
    if "gated" in text or "401" in text or "403" in text or "access to model" in text:
        why = ("the Hub has it gated or private: accept its terms on its Hub page and log in (huggingface-cli "
               "login, or HF_TOKEN)")
    elif "is not a valid model identifier" in text or "repository not found" in text or "404" in text:
        why = "the Hugging Face Hub has no model of that name: check it (ORG/NAME, as on its Hub page)"
    elif "connect" in text or "offline" in text or "network" in text:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = (("HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub cannot be reached from here") +
               " and it is not in the local cache: download it where there is a network and pass its directory "
               "(one that save_pretrained() wrote)")
    else:
        why = f"transformers cannot get it from the Hugging Face Hub: {_said(e)}"
    return f"--hf {name}: not a local directory, and {why}; or --hf-config CONFIG.json for random weights"


def export_hf(out_dir, name_or_dir=None, config_file=None, random_init=False, seed=0, dtypes=("fp32", "bf16"),
              batch=1, seq=8, log=print, attn_implementation="eager", device="cpu", fmt="pt", save_weights=None):
    """Exports a transformers causal LM: pretrained (`name_or_dir`) or randomly initialised from
    a config (`config_file`, or `name_or_dir` with random_init) with a seeded init, through
    CausalLMLogits, with the attention implementation given (recorded in the manifest), as
    TorchScript (fmt "pt") or AOTInductor packages (fmt "pt2", seq up to max_position_embeddings).
    `save_weights` (a .safetensors path): the model's weights are written there too (save_weights),
    once the bundle is. Whatever it cannot take (a missing config file, a name neither a local
    directory nor on the Hub) raises RuntimeError in one line."""
    if save_weights is not None and not save_weights.endswith(".safetensors"):
        raise RuntimeError(f"--save-weights {save_weights}: name a .safetensors file")
    if config_file:
        _config_file(config_file)
    elif name_or_dir and os.path.exists(name_or_dir) and not os.path.isdir(name_or_dir):
        raise RuntimeError(f"--hf {name_or_dir}: a file, not a model directory: a config.json goes to --hf-config "
                           f"(random weights), --hf takes a directory that save_pretrained() wrote or a Hub name")
    elif name_or_dir and os.path.isdir(name_or_dir) and not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        raise RuntimeError(f"--hf {name_or_dir}: a directory without config.json: give one that save_pretrained() "
                           f"wrote (config.json and the weights)")
    try:
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as e:
        raise RuntimeError(f"--hf needs transformers, which is not importable here ({e}); "
                           "export where the model's Python environment lives") from e
    try:
        config = AutoConfig.from_pretrained(config_file or name_or_dir)
    except Exception as e:  # OSError (not found, no network), ValueError (an unknown model_type), ...
        if config_file is None and not os.path.isdir(name_or_dir):
            raise RuntimeError(_hub_error(name_or_dir, e)) from e
        kind = _config_file(config_file)["model_type"] if config_file else None
        known = list(getattr(transformers, "CONFIG_MAPPING", {}).keys())
        if kind is not None and known and kind not in known:
            import difflib
            close = difflib.get_close_matches(kind, known, 3)
            raise RuntimeError(f"--hf-config {config_file}: transformers {transformers.__version__} has no model_type "
                               f"{kind!r}" + (f" (close: {', '.join(close)})" if close else "") +
                               " (a newer transformers may have it)") from e
        raise RuntimeError(f"{config_file or name_or_dir}: transformers cannot read the config: {_said(e)}") from e
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
    source = f"hf:{name_or_dir or config_file}" + (f" (random init, seed {seed})" if random_init or config_file else "")
    cfg = json.loads(json.dumps(config.to_dict(), default=str))
    manifest = export(CausalLMLogits(model).eval(), example, out_dir, dtypes, second, vocab_size=vocab,
                      source=source, config=cfg, log=log,
                      made_with={"transformers": transformers.__version__, "attn_implementation": attn_implementation},
                      device=device, fmt=fmt, max_seq=getattr(config, "max_position_embeddings", None))
    if save_weights is not None:
        saved(model, save_weights, log=log, metadata={"source": source, "transformers": transformers.__version__})
    return manifest


# --save-weights: a model's state_dict as safetensors -------------------------------------------------

_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def _tensor_bytes(t):
    """A tensor's data as little-endian bytes, row-major (bf16 and fp16 through int16: numpy has no bf16)."""
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    a = t.numpy()
    return (a.byteswap() if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big")
            else a).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} to `path` in the safetensors format (no safetensors package needed): an 8-byte
    little-endian header length, the JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
    {str: str}} padded with spaces to a multiple of 8, then each tensor's little-endian bytes, in the
    header's (sorted) order, back to back. Written to a temporary file beside `path`, then renamed."""
    header, offset = {}, 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise RuntimeError(f"{path}: {name} is {t.dtype}, which safetensors has no name for here")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for name in names:
                f.write(_tensor_bytes(tensors[name]))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _ties(state):
    """{alias: kept}: the state_dict entries that are the same tensor as an earlier one (the same storage,
    offset, shape and strides: lm_head.weight tied to model.embed_tokens.weight), each with the earlier
    name, which is kept."""
    seen, ties = {}, {}
    for name, t in state.items():
        key = (t.device.type, t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            ties[name] = seen[key]
        elif key is not None:
            seen[key] = name
    return ties


def saved(model, path, log=print, metadata=None):
    """Writes `model.state_dict()` (the model's own names: a transformers model's are its checkpoint's) to
    `path` as safetensors, a tied tensor once, under its first name; the metadata says which are tied
    ("tied": JSON {alias: kept}). Says what it wrote. Returns the {alias: kept} ties."""
    state = model.state_dict()
    ties = _ties(state)
    tensors = {n: t for n, t in state.items() if n not in ties}
    write_safetensors(path, tensors, dict(metadata or {}, format="pt", tied=json.dumps(ties, sort_keys=True)))
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    count = sum(t.numel() for t in tensors.values())
    size = f"{count / 1e6:.3g}M" if count >= 1e6 else f"{count:,}"
    log(f"weights: wrote {path}: {len(tensors)} tensors, {size} values ({', '.join(dtypes)}), "
        f"named as the model's state_dict()" + (", tied ones once: " + ", ".join(
            f"{a} is {k}" for a, k in ties.items()) + " (written as the latter)" if ties else "; no tied weights"))
    return ties


def _load_factory(spec):
    """The function FILE.py:FUNCTION names, the file imported as a module (its directory on sys.path).
    What it cannot take (no ':', no such file, an error importing it, no such function) raises
    RuntimeError in one line."""
    path, _, func = spec.rpartition(":")
    if not path or not func or not path.endswith(".py"):
        raise RuntimeError(f"--module needs FILE.py:FUNCTION (a function returning the model), got {spec!r}")
    if not os.path.isfile(path):
        raise RuntimeError(f"--module {spec}: no such file {path}")
    mod_spec = importlib.util.spec_from_file_location("parity_user_module", path)
    if mod_spec is None:
        raise RuntimeError(f"--module {spec}: {path} cannot be imported")
    mod = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        mod_spec.loader.exec_module(mod)
    except Exception as e:
        raise RuntimeError(f"--module {spec}: importing {path} fails: {_said(e)}") from e
    factory = getattr(mod, func, None)
    if factory is None or not callable(factory):
        defined = [n for n, v in vars(mod).items() if callable(v) and not isinstance(v, type) and not n.startswith("_")
                   and getattr(v, "__module__", None) == mod.__name__]
        what = "no function" if factory is None else f"{_a(type(factory).__name__)}, not a function, named"
        raise RuntimeError(f"--module {spec}: {path} has {what} {func!r}; "
                           + (f"its functions: {', '.join(defined)}" if defined else "it defines no function"))
    return factory


def _made(spec, factory):
    """Calls a --module factory: (module, example_inputs, second_inputs or None). Its error, or a return
    value that is not (module, example_inputs[, second_inputs]), raises RuntimeError in one line."""
    try:
        made = factory()
    except Exception as e:
        raise RuntimeError(f"--module {spec}: {spec.rpartition(':')[2]}() fails: {_said(e)}") from e
    usage = "return (module, example_inputs[, second_inputs]), e.g. (model, (input_ids,), (other_ids,))"
    if isinstance(made, torch.nn.Module):
        raise RuntimeError(f"--module {spec} returns a module ({type(made).__name__}) alone: {usage}")
    if not isinstance(made, (tuple, list)) or len(made) not in (2, 3) or not isinstance(made[0], torch.nn.Module):
        raise RuntimeError(f"--module {spec} returns {_kind(made)}: {usage}")
    for what, inputs in (("example_inputs", made[1]), ("second_inputs", made[2] if len(made) > 2 else ())):
        if not (torch.is_tensor(inputs) or isinstance(inputs, (tuple, list))):
            raise RuntimeError(f"--module {spec}: its {what} is {_kind(inputs)}, not a tuple of inputs: {usage}")
    return made[0], made[1], made[2] if len(made) > 2 else None


def _quiet():
    """Off: Python warnings (transformers' FutureWarnings, torch's deprecation of TorchScript, ...) and
    transformers' and huggingface_hub's log below errors; -v keeps them."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    for name in ("transformers", "huggingface_hub"):
        lib = sys.modules.get(name)
        if lib is not None:  # already imported (its env variable is read at import)
            lib.utils.logging.set_verbosity_error()


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
    ap.add_argument("--save-weights", metavar="FILE.safetensors",
                    help="--hf, --hf-config: also write the model's weights there, as its state_dict() names them "
                         "(model.embed_tokens.weight: no m. prefix), a tied tensor once (the metadata's \"tied\" "
                         "says which), for a port to load exactly the reference's weights")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show Python warnings (transformers' FutureWarnings, torch's deprecations) and "
                         "transformers' log, and a traceback with an error")
    args = ap.parse_args(argv)
    dtypes = tuple(args.dtypes.split(","))
    if not args.verbose:
        _quiet()
    try:
        if args.save_weights is not None and args.module:
            raise RuntimeError("--save-weights goes with --hf or --hf-config (the reference's weights, for a "
                               "port to load); a --module's factory builds its weights itself")
        if args.format == "pt2":
            _pt2_available()  # before building the model
        if args.module:
            module, inputs, second = _made(args.module, _load_factory(args.module))
            export(module, inputs, args.out, dtypes, second, vocab_size=args.vocab_size, source=args.module,
                   device=args.device, fmt=args.format)
        else:
            export_hf(args.out, args.hf, args.hf_config, args.random_init, args.seed, dtypes, args.batch, args.seq,
                      attn_implementation=args.attn_implementation, device=args.device, fmt=args.format,
                      save_weights=args.save_weights)
    except (RuntimeError, ValueError, OSError) as e:
        if args.verbose:
            traceback.print_exc()
        # one line: a message that spans several (an OSError of transformers, torch's) is joined
        said = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
        print(f"parity_export: {said}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
