--- parity.patches — patch files: Lua that computes a component's outputs in place of the port's
--- own, inside the port's forward (Module:patch, through its taps), the port's files untouched.
---
--- A patch file returns a list of entries:
---   return {
---     { target = "model.layers.{i}.input_layernorm",   -- a module path; {i} stands for any index
---       forward = function(self, x)                     -- the component's tensor inputs, in order
---         local v = x:float():pow(2):mean(-1, true)
---         return (x:float() * torch.rsqrt(v + 1e-6)):to(x:dtype()) * self.weight, x
---       end },
---   }
--- `forward` returns the component's tensor outputs (a tuple's, flattened: a traced HF RMSNorm
--- returns (out, input)), each of the original's shape and dtype. `self` holds the component's
--- parameters and buffers by name (self.weight, self.q_proj.weight as self["q_proj.weight"]),
--- self.original(...) (the component as it is, on other inputs: to wrap it), self.children
--- (its child modules by name, callable: self.children.attn(h), self.children.attn:forward1(h),
--- computing as they are, their own patches and taps inert), self.path, self.call (1-based) and self.outputs (how
--- many tensors the component returns). The file runs in parity.sandbox with the tensor API added (torch, minus
--- what reads files or reaches other libraries' operators); so does every call of its functions.
local core = require("parity.core")
local descends = require("parity.mapping").descends
local sandbox = require("parity.sandbox")

local M = {}

--- What a patch may not reach through torch: operators that read files, and the Tensor class
--- (changing its methods would change every other tensor's).
M.DENIED = { from_file = true, Tensor = true, load = true, save = true }

--- Whether torch.NAME (or NAME.overload) is denied.
local function is_denied(name) return M.DENIED[tostring(name):match("^[^%.]*")] end

local function denied(name)
  error(("torch.%s is not available to a patch (docs/patches.md: what a patch may use)"):format(name), 3)
end

local aten = setmetatable({}, {
  __index = function(_, name)
    if is_denied(name) then denied("ops.aten." .. name) end
    return torch.ops.aten[name]
  end,
  __newindex = function() error("torch is read-only in a patch", 2) end,
})

--- The tensor API as a patch sees it: torch's functions and torch.ops.aten, read-only.
M.TORCH = setmetatable({}, {
  __index = function(_, name)
    if name == "ops" then
      return setmetatable({}, { __index = function(_, ns)
        if ns ~= "aten" then error(("torch.ops.%s is not available to a patch: aten operators only"):format(ns), 2) end
        return aten
      end, __newindex = function() error("torch is read-only in a patch", 2) end })
    end
    if is_denied(name) then denied(name) end
    return torch[name]
  end,
  __newindex = function() error("torch is read-only in a patch", 2) end,
})

--- A sandbox environment with the tensor API.
---@return table
function M.environment()
  local env = sandbox.environment()
  env.torch = M.TORCH
  return env
end

local ENTRY_KEYS = { target = true, forward = true }

--- Checks a list of entries; returns it.
local function check_entries(entries, origin)
  if type(entries) ~= "table" or #entries == 0 then
    error(("%s: a patch file returns a list of entries { target = PATH, forward = function(self, ...) }, got %s"):format(
      origin, type(entries) == "table" and "an empty table" or type(entries)), 0)
  end
  for i, e in ipairs(entries) do
    if type(e) ~= "table" then error(("%s: entry %d is a %s, not a table"):format(origin, i, type(e)), 0) end
    for k in pairs(e) do
      if not ENTRY_KEYS[k] then
        error(("%s: entry %d: unknown key '%s' (an entry has target and forward)"):format(origin, i, tostring(k)), 0)
      end
    end
    if type(e.target) ~= "string" or e.target == "" then
      error(("%s: entry %d: target must be a module path (a string), got %s"):format(origin, i, type(e.target)), 0)
    end
    if type(e.forward) ~= "function" then
      error(("%s: entry %d (%s): forward must be a function(self, inputs...), got %s"):format(origin, i, e.target,
        type(e.forward)), 0)
    end
  end
  return entries
end

---@class parity.PatchSet
---@field origin string   where it comes from: "patch file PATH", or what a script named it
---@field file string|nil its file
---@field sha256 string|nil its file's hash
---@field entries table[] {target, forward}

--- Loads a patch file in the sandbox (with the tensor API).
---@param path string
---@return parity.PatchSet
function M.load_file(path)
  local chunk, err = sandbox.load_text(path)
  if not chunk then error(("patch file %s"):format(tostring(err)), 0) end  -- err names the file
  local origin = "patch file " .. path
  setfenv(chunk, M.environment())
  local entries = check_entries(sandbox.call(origin, chunk), origin)
  return { origin = origin, file = path, sha256 = core.hash_file(path), entries = entries }
end

--- A patch set from entries given in a script (their functions run as they are: not sandboxed).
---@param entries table[] {target, forward}
---@param origin string|nil what to call it in messages (default "patches")
---@return parity.PatchSet
function M.from_entries(entries, origin)
  origin = origin or "patches"
  return { origin = origin, entries = check_entries(entries, origin), trusted = true }
end

--- The module paths an entry's target names: itself, or with {i} any index.
local function expand(target, paths)
  if not target:find("{i}", 1, true) then return paths[target] and { target } or {} end
  local pattern = "^" .. target:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"):gsub("{i}", "%%d+") .. "$"
  local out = {}
  for _, p in ipairs(paths) do
    if p:find(pattern) then out[#out + 1] = p end
  end
  return out
end

local function pack(...) return { n = select("#", ...), ... } end

--- Each entry of a patch set with the module paths its target names ({entry, paths}...).
--- Errors when a target names no module, with the paths that look like it.
---@param module parity.Module
---@param set parity.PatchSet
---@return table[]
function M.targets(module, set)
  local paths, ordered = {}, {}
  for _, m in ipairs(module:modules()) do
    if m.path ~= "" then paths[m.path], ordered[#ordered + 1] = true, m.path end
  end
  local out = {}
  for _, e in ipairs(set.entries) do
    local hits = expand(e.target, e.target:find("{i}", 1, true) and ordered or paths)
    if #hits == 0 then
      local last, like = e.target:match("([^%.]+)$"), {}
      for _, p in ipairs(ordered) do
        if #like < 3 and p:match("([^%.]+)$") == last then like[#like + 1] = p end
      end
      error(("%s: target '%s' names no module of the model%s"):format(set.origin, e.target,
        #like > 0 and (" (it has " .. table.concat(like, ", ") .. ", ...; {i} stands for an index)") or ""), 0)
    end
    out[#out + 1] = { entry = e, paths = hits }
  end
  return out
end

--- Applies a patch set to a module (its targets tapped): each entry's forward computes its
--- components' calls. Returns the paths patched, in entry order.
---@param module parity.Module
---@param set parity.PatchSet
---@return string[]
function M.apply(module, set)
  local done = {}
  for _, t in ipairs(M.targets(module, set)) do
    local e = t.entry
    for _, path in ipairs(t.paths) do
      local child = module:child(path)
      local named = {}
      for k, v in pairs(child:parameters()) do named[k] = v end
      for k, v in pairs(child:buffers()) do named[k] = v end
      local forward = e.forward
      -- its children, callable and nothing more (a Module would hand out :patch, :to, ...)
      local children = setmetatable({}, { __index = function(t, name)
        local ok, c = pcall(module.child, module, path .. "." .. tostring(name))
        if not ok then error(("%s has no child '%s'"):format(path, tostring(name)), 2) end
        local view = setmetatable({ forward1 = function(_, ...) return c:forward1(...) end },
          { __call = function(_, ...) return c(...) end, __newindex = function() error("a child is read-only", 2) end })
        rawset(t, name, view)
        return view
      end, __newindex = function() error("children are read-only", 2) end })
      for _, other in ipairs(module:patched()) do  -- inside a patch, a patch never runs
        if descends(path, other) or descends(other, path) then
          error(("%s: %s and the patched %s: one lies inside the other, where a patch never runs (patch one of them)")
            :format(set.origin, path, other), 0)
        end
      end
      module:patch(path, function(c, ...)
        local self = setmetatable({ original = c.original, path = c.path, call = c.call, outputs = c.outputs,
                                    params = named, children = children }, { __index = named })
        local out = set.trusted and pack(forward(self, ...)) or pack(pcall(sandbox.call, set.origin, forward, self, ...))
        if not set.trusted then
          -- the origin, the component and the call: the host's prefix, said once
          if not out[1] then error(tostring(out[2]):gsub("^" .. set.origin:gsub("%p", "%%%0") .. ": ", ""), 0) end
          return unpack(out, 2, out.n)
        end
        return unpack(out, 1, out.n)
      end, set.origin)
      done[#done + 1] = path
    end
  end
  return done
end

--- What verdict.json says of patch sets: {file, sha256, targets}... (a script's: its origin).
---@param sets parity.PatchSet[]
---@param applied table<parity.PatchSet, string[]> the paths each patched
---@return table[]
function M.describe(sets, applied)
  local out = core.json.array()
  for _, s in ipairs(sets) do
    out[#out + 1] = { file = s.file or s.origin, sha256 = s.sha256 or core.json.null,
                      components = core.json.array(applied[s] or {}) }
  end
  return out
end

return M
