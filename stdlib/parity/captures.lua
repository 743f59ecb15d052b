--- parity.captures — what a tapped forward captured (Module:run_tapped's calls: each path's
--- calls, their inputs and outputs) as named tensors in a file, read back one path at a time:
--- the reference cache keeps the reference's this way, and a check spills the captures past
--- --max-capture-mb to its results directory, so that the sweep over a large model holds a
--- component's captures at a time, not the whole model's.
local core = require("parity.core")

local M = {}

--- A JSON value as a tensor (its text's bytes, uint8): a file's index among its tensors.
---@param value any
---@return parity.Tensor
function M.json_tensor(value)
  local text, bytes = core.json.encode(value), {}
  for i = 1, #text do bytes[i] = text:byte(i) end
  return torch.tensor(bytes, { dtype = "uint8" })
end

--- M.json_tensor's tensor back as its value (nil when it is not one).
---@param t parity.Tensor|nil
---@return any
function M.tensor_json(t)
  if not (t and t:dtype() == "uint8" and t:dim() == 1) then return nil end
  local bytes, parts = t:tolist(), {}
  for i = 1, #bytes, 4096 do parts[#parts + 1] = string.char(unpack(bytes, i, math.min(i + 4095, #bytes))) end
  local ok, value = pcall(core.json.decode, table.concat(parts), "a captures index")
  return ok and value or nil
end

--- The captured tensors' size in bytes (a tensor captured more than once counted once: a tapped
--- run copies it once, NOTE [ Captures shared ]).
---@param calls table<string, parity.TapCall[]>
---@param paths string[]
---@return number bytes
function M.bytes(calls, paths)
  local mt = getmetatable(calls)
  if mt and mt.bytes then return mt.bytes end
  local seen, bytes = {}, 0
  for _, p in ipairs(paths) do
    for _, c in ipairs(calls[p] or {}) do
      for j = 0, #c.inputs do
        local x = j == 0 and c.outputs[1] or c.inputs[j]
        if x and not seen[x] then seen[x], bytes = true, bytes + x:nbytes() end
      end
    end
  end
  return bytes
end

--- Captured calls of `paths` as named tensors: every call's inputs and first output (the one
--- compared), each tensor once as "t<n>" (a layer's output is the next layer's input), and
--- "index": per path, per call, its inputs' and output's n ({i = {n...}, o = n}).
---@param calls table<string, parity.TapCall[]>
---@param paths string[]
---@return table<string, parity.Tensor> tensors
function M.encode(calls, paths)
  local out, ids, index = {}, {}, {}
  local function id(t)
    if not ids[t] then
      ids[#ids + 1] = t
      ids[t], out["t" .. #ids] = #ids, t:contiguous()
    end
    return ids[t]
  end
  for i, p in ipairs(paths) do
    index[i] = {}
    for k, c in ipairs(calls[p] or {}) do
      local inputs = {}
      for j, x in ipairs(c.inputs) do inputs[j] = id(x) end
      index[i][k] = { i = core.json.array(inputs), o = c.outputs[1] and id(c.outputs[1]) or nil }
    end
    index[i] = core.json.array(index[i])
  end
  out.index = M.json_tensor(core.json.array(index))
  return out
end

local function whole(n) return type(n) == "number" and n >= 1 and n % 1 == 0 end

--- Whether `index` (M.encode's, decoded) is one of `paths`' calls.
local function valid(index, paths)
  if type(index) ~= "table" or #index ~= #paths then return false end
  for _, list in ipairs(index) do
    if type(list) ~= "table" then return false end
    for _, c in ipairs(list) do
      if type(c) ~= "table" or type(c.i) ~= "table" or not (c.o == nil or whole(c.o)) then return false end
      for _, n in ipairs(c.i) do if not whole(n) then return false end end
    end
  end
  return true
end

--- Calls read back from M.encode's tensors, a path's when it is first indexed: `read(names)`
--- gives those tensors ({name = Tensor}); a path's calls stay while they are in use (weakly
--- held), and are read again after. Paths with no call are nil, as in the run's calls. Nil when
--- `index` is not an encoding of `paths`. M.paths lists the paths called.
---@param index_tensor parity.Tensor|nil the encoding's "index"
---@param paths string[]
---@param read fun(names: string[]): table<string, parity.Tensor>
---@param where string the file, for the error when a tensor is missing from it
---@param bytes number|nil their size (M.bytes)
---@return table<string, parity.TapCall[]>|nil
function M.decode(index_tensor, paths, read, where, bytes)
  local index = M.tensor_json(index_tensor)
  if not valid(index, paths) then return nil end
  local at, called = {}, {}
  for i, p in ipairs(paths) do
    if #index[i] > 0 then at[p], called[#called + 1] = index[i], p end
  end
  local held = setmetatable({}, { __mode = "v" })
  return setmetatable({}, { called = called, bytes = bytes, __index = function(_, path)
    local list = held[path]
    if list or not at[path] then return list end
    local names = {}
    for _, c in ipairs(at[path]) do
      for _, n in ipairs(c.i) do names[#names + 1] = "t" .. n end
      names[#names + 1] = c.o and "t" .. c.o or nil
    end
    local t = read(names)
    local function get(n)
      local x = t["t" .. n]
      if not x then error(("%s: captures file without its tensor t%d (of %s)"):format(where, n, path), 0) end
      return x
    end
    list = {}
    for k, c in ipairs(at[path]) do
      local inputs = {}
      for j, n in ipairs(c.i) do inputs[j] = get(n) end
      list[k] = { inputs = inputs, outputs = { c.o and get(c.o) or nil } }
    end
    held[path] = list
    return list
  end })
end

--- M.decode's calls read from a safetensors file M.encode's tensors were saved to (nil when its
--- index is not one of `paths`).
---@param file string
---@param paths string[]
---@param bytes number|nil their size (M.bytes)
---@return table<string, parity.TapCall[]>|nil
function M.open(file, paths, bytes)
  local index = core.tensors.load(file, { names = { "index" } }).index
  return M.decode(index, paths, function(names) return (core.tensors.load(file, { names = names })) end, file, bytes)
end

--- The paths with calls: of M.decode's calls, those it read; of a run's, its keys.
---@param calls table<string, parity.TapCall[]>|nil
---@return string[]
function M.paths(calls)
  local mt = getmetatable(calls or {})
  if mt and mt.called then return mt.called end
  local out = {}
  for p in pairs(calls or {}) do out[#out + 1] = p end
  table.sort(out)
  return out
end

--- Whether `calls` are read from a file (M.decode's).
---@param calls any
---@return boolean
function M.on_file(calls)
  local mt = getmetatable(calls or {})
  return (mt and mt.called) ~= nil
end

return M
