--- Mappings: which target component computes what which reference component(s) compute.
--- An entry pairs reference paths with a target path; `{i}` in both stands for every layer index
--- the reference has:
---   { reference = "model.norm", target = "final_norm" }
---   { reference = { "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
---                   "model.layers.{i}.self_attn.v_proj" }, target = "blocks.{i}.attn.qkv_proj",
---     transform = "concat" }       -- the target's output is theirs concatenated on the last dim
---   { reference = "model.rotary_emb", target = false, reason = "the port computes RoPE per layer" }
--- A projection feeding an interleaved-pairs RoPE (GPT-J, llama.cpp-style engines) holds the rows
--- of a rotate-half one re-ordered per head; `interleave` says which reference parts are (and
--- `rows`, how many leading rows of each, when not all: q and k of a fused q/k/v weight):
---   { reference = { q, k, v }, target = "blocks.{i}.attn.qkv_proj", transform = "concat",
---     interleave = { head_dim = 16, parts = { 1, 2 } } }
--- Identical trees map by identity; otherwise parity.weights proposes a mapping from the
--- weights. A mapping file is Lua returning a list of entries, run in parity.sandbox.
local sandbox = require("parity.sandbox")

local M = {}
--- An interleaved-pairs RoPE layout (see above): which reference parts, and how many leading rows.
---@class parity.Interleave
---@field head_dim integer even
---@field parts integer[]|nil indices into the entry's reference paths (default { 1 })
---@field rows integer|nil a multiple of head_dim (default: every row)
--- An entry of a mapping (a file's, a script's, or one parity.weights.auto proposes).
---@class parity.MappingEntry
---@field reference string|string[] reference path(s); `{i}` stands for every layer index
---@field target string|false the target's path, or false: no counterpart
---@field transform "identity"|"concat"|nil default "identity"
---@field interleave parity.Interleave|nil
---@field reason string|nil why there is no counterpart (target = false)
--- A mapping entry expanded over the layers (M.expand, parity.pairing): one pair of components.
---@class parity.MappingPair
---@field reference string[] the reference paths it computes
---@field target string
---@field transform "identity"|"concat"
---@field interleave parity.Interleave|nil
---@field type string the first reference module's type
---@field depth integer the first reference module's depth
---@field order integer|nil its place in the reference's execution order (M.expand's pairs)
--- An entry declared without a counterpart (target = false), expanded by M.expand.
---@class parity.NoCounterpart
---@field reference string[]
---@field reason string

M.TRANSFORMS = { identity = true, concat = true }
M.MAX_ENTRIES = 10000

local function list(x) return type(x) == "table" and x or { x } end

--- Whether the module at `path` lies inside the one at `ancestor` (a dotted-path prefix).
---@param path string
---@param ancestor string
---@return boolean
function M.descends(path, ancestor) return path:sub(1, #ancestor + 1) == ancestor .. "." end

--- The module paths mapping pairs name: the reference's (each once, in order) and the target's.
---@param pairs_ parity.MappingPair[]
---@return string[] reference paths
---@return string[] target paths
function M.paths(pairs_)
  local ref_paths, tgt_paths, seen = {}, {}, {}
  for _, pair in ipairs(pairs_) do
    for _, p in ipairs(pair.reference) do
      if not seen[p] then ref_paths[#ref_paths + 1], seen[p] = p, true end
    end
    tgt_paths[#tgt_paths + 1] = pair.target
  end
  return ref_paths, tgt_paths
end

--- Checks entries (from a file or a script) and names the first bad one.
---@param entries table
---@param origin string for messages
---@return parity.MappingEntry[] entries
function M.validate(entries, origin)
  if type(entries) ~= "table" then error(("%s: a mapping is a list of entries, got %s"):format(origin, type(entries)), 0) end
  if #entries > M.MAX_ENTRIES then
    error(("%s: %d entries; at most %d (use {i} for what repeats per layer)"):format(origin, #entries, M.MAX_ENTRIES), 0)
  end
  for n, e in ipairs(entries) do
    local where = ("%s: entry %d"):format(origin, n)
    if type(e) ~= "table" then error(where .. ": not a table", 0) end
    if #list(e.reference) > 64 then error(("%s: %d reference paths; at most 64"):format(where, #list(e.reference)), 0) end
    for _, p in ipairs(list(e.reference)) do
      if type(p) ~= "string" then error(where .. ": reference paths must be strings", 0) end
    end
    if e.target == false then
      if type(e.reason) ~= "string" then error(where .. ": an entry without a counterpart needs a reason", 0) end
    elseif type(e.target) ~= "string" then
      error(where .. ": target must be a path or false", 0)
    end
    local t = e.transform or "identity"
    if not M.TRANSFORMS[t] then error(("%s: unknown transform '%s' (identity, concat)"):format(where, tostring(t)), 0) end
    if t == "identity" and #list(e.reference) ~= 1 then error(where .. ": several reference paths need transform = \"concat\"", 0) end
    local il = e.interleave
    if il ~= nil then
      local d = type(il) == "table" and il.head_dim
      if type(d) ~= "number" or d < 2 or d % 2 ~= 0 or d > 65536 then
        error(where .. ": interleave = { head_dim = <an even number>, parts = { ... } }", 0)
      end
      if il.parts ~= nil and type(il.parts) ~= "table" then error(where .. ": interleave.parts must be a list", 0) end
      if il.rows ~= nil and (type(il.rows) ~= "number" or il.rows < d or il.rows % d ~= 0 or il.rows > 2 ^ 24) then
        error(where .. ": interleave.rows must be a multiple of head_dim, at most 2^24", 0)
      end
      for _, k in ipairs(type(il.parts) == "table" and il.parts or {}) do
        if type(k) ~= "number" or k % 1 ~= 0 or k < 1 or k > #list(e.reference) then
          error(("%s: interleave.parts must index the reference paths (1..%d)"):format(where, #list(e.reference)), 0)
        end
      end
    end
  end
  return entries
end

--- Loads a mapping file in the sandbox.
---@param path string
---@return parity.MappingEntry[] entries validated
function M.load_file(path)
  return M.validate((sandbox.run_file(path, "mapping file")), "mapping file " .. path)
end

--- Levenshtein distance of two strings (bounded by the caller: paths are short).
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a:byte(i) == b:byte(j) and 0 or 1))
    end
    prev = cur
  end
  return prev[#b]
end

--- The three paths of `at` nearest to `path` (its {i} read as 0), for a message.
local function nearest(path, at)
  path = path:gsub("{i}", "0")
  local scored = {}
  for p in pairs(at) do
    if p ~= "" and #p <= 256 then scored[#scored + 1] = { distance(path:sub(1, 256), p), p } end
  end
  table.sort(scored, function(x, y) return x[1] < y[1] or (x[1] == y[1] and x[2] < y[2]) end)
  local out = {}
  for i = 1, math.min(3, #scored) do out[i] = "'" .. scored[i][2] .. "'" end
  return table.concat(out, ", ")
end

--- Expands `{i}` over the layer indices the reference has and keeps entries whose paths all
--- exist; returns pairs {reference = {paths}, target, transform} in the reference's execution
--- order, and the entries without a counterpart. With `origin` (a given mapping: a file or a
--- script's), an entry that pairs nothing, or names a reference module that does not exist, is
--- an error naming the entry, the path and the nearest paths that exist; so is an entry that
--- pairs a reference module another entry pairs already.
---@param entries parity.MappingEntry[]
---@param ref_modules parity.ModuleInfo[] the reference's modules (Module:modules), in execution order
---@param target_modules parity.ModuleInfo[] the target's
---@param origin string|nil a given mapping's name for messages (nil: a proposed one, not checked)
---@return parity.MappingPair[] pairs
---@return parity.NoCounterpart[] absent
function M.expand(entries, ref_modules, target_modules, origin)
  local ref_at, tgt_at, order = {}, {}, {}
  for i, m in ipairs(ref_modules) do ref_at[m.path], order[m.path] = m, i end
  for _, m in ipairs(target_modules) do tgt_at[m.path] = m end
  local function missing_path(n, e)  -- the first path of entry n that exists for no layer index
    local function exists(p, at)
      if not p:find("{i}", 1, true) then return at[p] ~= nil end
      for i = 0, 4095 do
        if at[(p:gsub("{i}", tostring(i)))] then return true end
      end
      return false
    end
    for _, p in ipairs(list(e.reference)) do
      if not exists(p, ref_at) then return "reference", p, ref_at end
    end
    if e.target and not exists(e.target, tgt_at) then return "target", e.target, tgt_at end
  end
  local function refuse(n, why)
    error(("%s: entry %d: %s"):format(origin, n, why), 0)
  end
  local pairs_, absent, taken = {}, {}, {}
  for n, e in ipairs(entries) do
    local found = #pairs_
    if origin then
      local side, p, at = missing_path(n, e)
      if side then
        refuse(n, ("the %s has no module '%s' (nearest: %s)"):format(side, p, nearest(p, at)))
      end
    end
    if e.target == false then
      absent[#absent + 1] = { reference = list(e.reference), reason = e.reason }
    else
      local has_i = e.target:find("{i}", 1, true) ~= nil
      for i = 0, has_i and 4095 or 0 do
        local function sub(p) return (p:gsub("{i}", tostring(i))) end
        local refs, ok = {}, tgt_at[sub(e.target)] ~= nil
        for k, p in ipairs(list(e.reference)) do
          refs[k] = sub(p)
          ok = ok and ref_at[refs[k]] ~= nil
        end
        if ok then
          local first = ref_at[refs[1]]
          pairs_[#pairs_ + 1] = { reference = refs, target = sub(e.target), transform = e.transform or "identity",
                                  interleave = e.interleave, type = first.type, depth = first.depth, order = order[refs[1]] }
        elseif has_i and not ref_at[sub(list(e.reference)[1])] then
          break
        end
      end
      if origin and #pairs_ == found then
        refuse(n, ("'%s' and '%s' exist, but for no layer index both"):format(table.concat(list(e.reference), "+"), e.target))
      end
      for k = found + 1, origin and #pairs_ or 0 do
        local key = table.concat(pairs_[k].reference, "+")
        if taken[key] then refuse(n, ("pairs '%s' again (entry %d pairs it already)"):format(key, taken[key])) end
        taken[key] = n
      end
    end
  end
  table.sort(pairs_, function(a, b) return a.order < b.order end)
  return pairs_, absent
end

--- A mapping as a Lua file a user can save, edit and pass back with --mapping.
---@param entries parity.MappingEntry[]
---@param unmapped string[]|nil target modules with parameters that matched nothing (listed as comments)
---@return string
function M.to_lua(entries, unmapped)
  local lines = { "-- parity mapping: reference component(s) -> target component (proposed from weight fingerprints)",
                  "return {" }
  for _, e in ipairs(entries) do
    local refs = list(e.reference)
    local r = #refs == 1 and ("%q"):format(refs[1]) or ("{ %s }"):format(table.concat((function()
      local q = {}
      for i, p in ipairs(refs) do q[i] = ("%q"):format(p) end
      return q
    end)(), ", "))
    local il = e.interleave and (", interleave = { head_dim = %d, parts = { %s }%s }"):format(e.interleave.head_dim,
      table.concat(e.interleave.parts or { 1 }, ", "), e.interleave.rows and (", rows = %d"):format(e.interleave.rows) or "") or ""
    lines[#lines + 1] = ("  { reference = %s, target = %q%s%s },"):format(r, e.target,
      e.transform and e.transform ~= "identity" and (", transform = %q"):format(e.transform) or "", il)
  end
  lines[#lines + 1] = "}"
  for _, p in ipairs(unmapped or {}) do lines[#lines + 1] = ("-- unmapped target module with parameters: %s"):format(p) end
  return table.concat(lines, "\n") .. "\n"
end

return M
