--- A target that is not a model but the logits a foreign engine (a C++ runtime, a compiled graph
--- only its own runtime runs) dumped for the token sequences `parity inputs` wrote. It stands in
--- for a bundle wherever only the target's teacher-forced logits are needed: its "forward" gives
--- the saved logits back for exactly the sequences they were computed on, and refuses any other.
---
--- Accepted: a tensor file (.safetensors: the tensor `logits`, or its only floating one, and
--- optionally `input_ids`; .npy; raw .bin with a .json sidecar) or a directory holding
--- logits.{safetensors,npy,bin}, optionally logits_fp32.* (an fp32 run of the engine: the check's
--- fp32 leg) and input_ids.* (the tokens the engine ran, checked against the check's).
local core = require("parity.core")

local M = {}

M.EXTENSIONS = { "safetensors", "npy", "bin" }

--- The tensor-file extension of a path (one of M.EXTENSIONS), or nil.
---@param path string
---@return string|nil
function M.extension(path)
  for _, ext in ipairs(M.EXTENSIONS) do
    if path:sub(-#ext - 1) == "." .. ext then return ext end
  end
end

--- The file STEM.<ext> in `dir` for one of the tensor extensions; nil when none, an error when several.
---@param dir string
---@param stem string
---@return string|nil path
function M.find(dir, stem)
  local found = {}
  for _, ext in ipairs(M.EXTENSIONS) do
    local f = ("%s/%s.%s"):format(dir, stem, ext)
    if core.path_kind(f) == "file" then found[#found + 1] = f end
  end
  if #found > 1 then error(("%s: %s are both there; keep one"):format(dir, table.concat(found, " and ")), 0) end
  return found[1]
end

--- True when `path` is saved logits rather than a bundle: a tensor file, or a directory with
--- logits.* and no trace. A non-string is saved logits when it is a parity.Saved.
---@param path string|parity.Bundle|parity.Saved
---@return boolean
function M.is_saved(path)
  if type(path) ~= "string" then return getmetatable(path) == M.Saved end
  local kind = core.path_kind(path)
  if kind == "file" then return M.extension(path) ~= nil end
  if kind ~= "dir" then return false end
  for _, d in ipairs({ "fp32", "bf16", "fp16" }) do
    if core.path_kind(path .. "/" .. d .. ".pt") then return false end
  end
  return M.find(path, "logits") ~= nil
end

--- One tensor of a file: `name` in a safetensors file (else its only tensor of the wanted kind),
--- the array of a .npy or .bin.
local function tensor_of(file, name, floating, tensors)
  tensors = tensors or core.tensors.load(file)
  if tensors[name] then return tensors[name] end
  local found, names = nil, {}
  for n, t in pairs(tensors) do
    names[#names + 1] = n
    if (t:dtype():find("float") ~= nil) == floating then
      if found then
        error(("%s: several tensors and none named %s (%s)"):format(file, name, table.concat(names, ", ")), 0)
      end
      found = t
    end
  end
  if not found then
    error(("%s: no %s tensor inside (found: %s)"):format(file, name, table.concat(names, ", ")), 0)
  end
  return found
end

local function logits_from(file, tensors)
  local t = tensor_of(file, "logits", true, tensors)
  if t:dim() == 2 then t = t:unsqueeze(0) end
  while t:dim() > 3 and t:size(0) == 1 do t = t:squeeze(0) end  -- an engine's extra leading dimension
  if t:dim() ~= 3 then
    error(("%s: logits must be [batch, seq, vocab] (or [seq, vocab], or with leading dimensions of 1), got [%s]"):format(file, table.concat(t:size(), ", ")), 0)
  end
  return t:float()
end

---@class parity.Saved
---@field path string
---@field saved string   why stages that run the target's modules are skipped
---@field no_fp32 string  how to get the fp32 leg
---@field input_ids parity.Tensor|nil  the tokens the engine ran, int64 [batch, seq], when saved
local Saved = {}
Saved.__index = Saved
M.Saved = Saved

--- Opens saved logits (see the module comment).
---@param path string
---@return parity.Saved
function M.open(path)
  if getmetatable(path) == Saved then return path end
  local s = setmetatable({ path = path, files = {}, logits = {} }, Saved)
  s.saved = ("the target %s is saved logits, not a model"):format(path)
  s.no_fp32 = "for the fp32 leg, make the target a directory holding logits.* and the engine's fp32 run as logits_fp32.*"
  if core.path_kind(path) == "file" then
    s.files.run = path
    local tensors = core.tensors.load(path)  -- read once: the logits, and input_ids when there
    s.logits[path] = logits_from(path, tensors)
    s.input_ids = tensors.input_ids
  else
    s.files.run = M.find(path, "logits")
    if not s.files.run then
      error(("%s: no logits.safetensors, logits.npy or logits.bin inside (a saved-logits target)"):format(path), 0)
    end
    s.files.fp32 = M.find(path, "logits_fp32")
    local ids = M.find(path, "input_ids")
    if ids then s.input_ids = tensor_of(ids, "input_ids", false) end
  end
  if s.input_ids then  -- compared with int64 token ids; checked against the vocabulary where used
    s.input_ids = (s.input_ids:dim() == 1 and s.input_ids:unsqueeze(0) or s.input_ids):long()
  end
  return s
end

--- fp32 only when the engine's fp32 run was saved too (the check's fp32 leg); every other
--- dtype is the one run.
---@param dtype string
---@return boolean
function Saved:has(dtype)
  return dtype ~= "fp32" or self.files.fp32 ~= nil
end

--- The dtypes it stands in for: bf16 and fp16 (the one run), fp32 first when that was saved too.
---@return string[]
function Saved:dtypes()
  return self.files.fp32 and { "fp32", "bf16", "fp16" } or { "bf16", "fp16" }
end

--- The file behind `dtype`'s logits: the fp32 run for fp32 when saved, else the one run (what
--- `parity gate --dtype D` compares with the reference at D).
---@param dtype string
---@return string
function Saved:file(dtype)
  return dtype == "fp32" and self.files.fp32 or self.files.run
end

--- The saved logits at `dtype`, loaded once.
---@param dtype string
---@return parity.Tensor logits float32 [batch, seq, vocab]
function Saved:logits_at(dtype)
  local file = self:file(dtype)
  self.logits[file] = self.logits[file] or logits_from(file)
  return self.logits[file]
end

--- A callable standing in for a module: token ids -> the saved logits, when they are the
--- sequences the logits were computed on (input_ids when saved, else the logits' batch and length).
---@param dtype string
---@return fun(tokens: parity.Tensor): parity.Tensor module a callable table
function Saved:at(dtype)
  local file = self:file(dtype)
  return setmetatable({}, { __call = function(_, tokens)
    local logits = self:logits_at(dtype)
    local k, t = tokens:size(0), tokens:size(1)
    if self.input_ids then
      if self.input_ids ~= tokens then
        error(("%s: the saved input_ids [%s] are not the token ids this run uses [%d, %d]; make the engine"
          .. " run the file parity inputs writes with the same settings"):format(self.path,
          table.concat(self.input_ids:size(), ", "), k, t), 0)
      end
    end
    if logits:size(0) ~= k or logits:size(1) ~= t then
      error(("%s: logits [%s] are not for this run's %d sequences of %d tokens; make the engine run the"
        .. " file parity inputs writes with the same settings"):format(file, table.concat(logits:size(), ", "), k, t), 0)
    end
    return logits
  end })
end

--- The vocabulary size: the width of the logits run.
---@return integer
function Saved:vocab_size()
  return self:logits_at("bf16"):size(2)
end

--- nil: saved logits say nothing of the longest sequence the engine takes (Bundle:max_positions).
---@return nil
function Saved:max_positions() return nil end

return M
