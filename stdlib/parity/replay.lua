--- Replaying a component on captured inputs: its floating inputs cast to a model's dtype, its
--- arguments rebuilt from the flat captured tensors, its output's tensors, and a re-run of a
--- module of a fresh copy of a model with its children tapped (or its parameters changed),
--- which the stages and the cause signatures share.
local M = {}

--- Whether `t` has a floating dtype.
---@param t parity.Tensor
---@return boolean
local function is_float(t) return t:dtype():find("float") ~= nil end
M.is_float = is_float

--- The floating tensors of `list` cast to `dtype`, the others as they are.
---@param list parity.Tensor[]
---@param dtype parity.DtypeName
---@return parity.Tensor[]
function M.cast(list, dtype)
  local out = {}
  for i, t in ipairs(list) do out[i] = is_float(t) and t:to(dtype) or t end
  return out
end

--- The tensors of a forward's output, tuples flattened, in order.
---@param v any a forward's output: a Tensor, or arrays of them (other values are skipped)
---@param out parity.Tensor[]|nil appended to and returned (default: a new list)
---@return parity.Tensor[]
function M.tensors(v, out)
  out = out or {}
  if torch.is_tensor(v) then
    out[#out + 1] = v
  elseif type(v) == "table" then
    for _, x in ipairs(v) do M.tensors(x, out) end
  end
  return out
end

--- Rebuilds a call's arguments from the flat captured tensors using the forward's schema:
--- "Tensor" takes one, "Tuple[Tensor, ...]" as many as it names. Nil when they do not fit.
---@param schema parity.Schema the forward's (Module:schema)
---@param flat parity.Tensor[] the captured inputs, in order
---@return any[]|nil args forward's arguments (a tuple: an array of tensors)
---@return string|nil why they do not fit
function M.arguments(schema, flat)
  local args, k = {}, 1
  for _, a in ipairs(schema.arguments) do
    local n = select(2, a.type:gsub("Tensor", ""))
    if a.type == "Tensor" then
      args[#args + 1], k = flat[k], k + 1
    elseif a.type:find("^Tuple%[") and n > 0 then
      local tup = {}
      for j = 1, n do tup[j] = flat[k + j - 1] end
      args[#args + 1], k = tup, k + n
    else
      return nil, ("argument %s is %s"):format(a.name, a.type)
    end
  end
  if k - 1 ~= #flat then return nil, ("%d captured inputs for %d in the schema"):format(#flat, k - 1) end
  return args
end

--- The first floating tensor of `inputs` shaped like `like`: a block's hidden states, which a
--- traced module may take after its mask (Gemma's layers take the causal mask first); or nil.
---@param inputs parity.Tensor[]|nil
---@param like parity.Tensor
---@return parity.Tensor|nil
function M.stream_input(inputs, like)
  for _, x in ipairs(inputs or {}) do
    if is_float(x) and x:is_same_size(like) then return x end
  end
  return nil
end

--- The module at `path` of a fresh copy of bundle `b` at `dtype` (its own weights: a signature
--- may change them), or nil when it cannot be loaded.
---@param b parity.Bundle
---@param dtype string
---@param path string the module's dotted path
---@return parity.Module|parity.ProgramModule|nil
function M.fresh_module(b, dtype, path)
  local ok, model = pcall(function() return b:fresh(dtype):child(path) end)
  return ok and model or nil
end

--- Runs `model` (a module, e.g. M.fresh_module's) on `inputs` (captured, cast to `dtype`),
--- with the children at `taps` (paths relative to it) tapped: its first output and the calls
--- (path -> {{inputs, outputs}...}), or nil when it cannot run on them.
---@param model parity.Module
---@param dtype parity.DtypeName
---@param inputs parity.Tensor[] the captured inputs
---@param taps string[]|nil
---@return parity.Tensor|nil output its first output tensor
---@return table<string, parity.TapCall[]>|nil calls (empty without taps)
function M.run(model, dtype, inputs, taps)
  local args = M.arguments(model:schema(), M.cast(inputs, dtype))
  if not args then return nil end
  if taps and #taps > 0 then
    local ok_tap = pcall(model.tap, model, taps)
    if not ok_tap then return nil end
    local ok, out, calls = pcall(model.run_tapped, model, args)
    if not ok then return nil end
    return M.tensors(out)[1], calls
  end
  local ok, out = pcall(model, unpack(args))
  if not ok then return nil end
  return M.tensors(out)[1], {}
end

return M
