--- parity: the public Lua API.
--- Native pieces (models, tensor files, metrics, JSON) come from `parity.core`; Lua adds bundles
--- and everything built on top. Tensors live in the global `torch` (also `require("torch")`).
local core = require("parity.core")

local M = {
  --- The version line: "parity X.Y.Z (LuaJIT ..., LibTorch ..., N threads, N CUDA devices)".
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
  --- The GC accounting figures, without collecting.
  gc_stats = core.gc_stats,
  --- "file", "dir" or nil.
  path_kind = core.path_kind,
  --- Stable content hashes (SHA-256, 64 hex digits) for cache keys: of a file's bytes, of a string.
  hash_file = core.hash_file,
  hash_string = core.hash_string,
}

--- Loads one TorchScript file as a Module, onto `device` (default parity.device, else the CPU).
--- A model off the CPU takes Lua's (CPU) tensors and gives its results back on the CPU.
---@param path string a TorchScript file
---@param device? parity.DeviceName
---@return parity.Module
M.load = function(path, device) return core.load(path, device or M.device) end

--- Opens a bundle: a directory of per-dtype traces (fp32.pt, bf16.pt, fp16.pt) with an
--- optional parity.json manifest, or a single .pt file (a bundle of one); its models load onto
--- `device` (default parity.device, else the CPU).
---@param path string|parity.Bundle a bundle directory or a .pt/.pt2 file (an open bundle is returned as is)
---@param device? parity.DeviceName
---@return parity.Bundle
M.bundle = function(path, device) return require("parity.bundle").open(path, device or M.device) end

--- The logit verifier: target vs reference logits at one dtype (see stages/gate.lua).
---@param opts parity.GateOptions
---@return table result the gate's result (docs/cli.md, "gate")
M.gate = function(opts) return require("parity.stages.gate").run(opts) end

--- Two per-layer dumps compared (see diff.lua): the report of `parity diff`.
---@param ref string|parity.Dump the reference's dump: a path, or parity.dump.read's
---@param target string|parity.Dump the engine's
---@param opts? parity.DiffOptions
---@return parity.DiffReport
M.diff = function(ref, target, opts) return require("parity.diff").run(ref, target, opts) end

--- The default workflow (see check.lua, workflow.lua, context.lua): writes each stage's JSON and verdict.json to opts.out.
---@param opts parity.CheckOptions
---@return parity.Verdict verdict
M.check = function(opts) return require("parity.check").run(opts) end

return M
