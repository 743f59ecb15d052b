--- parity: the public Lua API.
--- Native pieces (models, tensor files, metrics, JSON) come from `parity.core`; Lua adds bundles
--- and everything built on top. Tensors live in the global `torch` (also `require("torch")`).
local core = require("parity.core")

local M = {
  version = core.version,
  --- The --device of `parity run` ("cuda:0"; nil: the CPU), which parity.load and parity.bundle
  --- default to.
  device = nil,
  --- Loads a shared library of custom operators (call before loading a model that uses them).
  load_library = core.load_library,
  --- Tensor files: tensors.load(path) -> {name = Tensor}, tensors.save(path, tbl[, metadata]).
  tensors = core.tensors,
  --- Comparison metrics, computed natively in float64.
  metrics = core.metrics,
  --- JSON: encode/decode/read/write (atomic), json.null, json.array(t).
  json = core.json,
  --- A full Lua collection (frees tensors no longer referenced); returns GC accounting figures.
  collect = core.collect,
  gc_stats = core.gc_stats,
  --- "file", "dir" or nil.
  path_kind = core.path_kind,
  --- Stable content hashes (16 hex digits) for cache keys.
  hash_file = core.hash_file,
  hash_string = core.hash_string,
}

--- Loads one TorchScript file as a Module, onto `device` (default parity.device, else the CPU).
--- A model off the CPU takes Lua's (CPU) tensors and gives its results back on the CPU.
M.load = function(path, device) return core.load(path, device or M.device) end

--- Opens a bundle: a directory of per-dtype traces (fp32.pt, bf16.pt, fp16.pt) with an
--- optional parity.json manifest, or a single .pt file (a bundle of one); its models load onto
--- `device` (default parity.device, else the CPU).
M.bundle = function(path, device) return require("parity.bundle").open(path, device or M.device) end

--- The logit verifier: target vs reference logits at one dtype (see stages/gate.lua).
M.gate = function(opts) return require("parity.stages.gate").run(opts) end

--- Two per-layer dumps compared (see diff.lua): the report of `parity diff`.
M.diff = function(ref, target, opts) return require("parity.diff").run(ref, target, opts) end

--- The default workflow (see check.lua, workflow.lua, context.lua): writes each stage's JSON and verdict.json to opts.out.
M.check = function(opts) return require("parity.check").run(opts) end

return M
