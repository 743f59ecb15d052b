--- parity.refcache — the reference cache: the reference's side of a check (its greedy
--- sequences, its logits at both precisions, its own noise in the components) kept on disk under
--- a key of everything it depends on, in a private directory (an entry others could write could
--- forge a pass). Its methods are parity.Context's (refcache.install).
local core = require("parity.core")
local captures = require("parity.captures")

local M = {}

local FORMAT = 6  -- bump when what the reference cache stores changes

--- The methods M.install adds to parity.Context (context.lua declares its fields).
---@class parity.Context
local Context = {}

--- Whether the reference cache is on: asked for, a directory known, and that directory private
--- (a real directory, yours, that no one else can write: an entry others could write could
--- forge a pass). It is created (0700) when missing. Decided once; a cache that cannot be used
--- is a note, and the reference is computed.
---@return boolean
function Context:cache_on()
  if self.memo.cache_on ~= nil then return self.memo.cache_on end
  local why
  if not self.cache_enabled then
    self.memo.cache_on = false
    return false
  elseif not self.cache_dir then
    why = "no home directory to keep it in (HOME unset); --cache-dir DIR names one"
  else
    local ok, problem = pcall(core.private_dir, self.cache_dir, true)
    why = not ok and tostring(problem) or problem and ("%s: %s"):format(self.cache_dir, problem)
  end
  if why then self.log(("reference cache off: %s"):format(why)) end
  self.memo.cache_on = not why
  return self.memo.cache_on
end

--- A cache write that fails (a full or read-only disk) is a warning: the run goes on.
---@param what string what `fn` writes, for the warning
---@param fn fun() does the writing
function Context:cache_write(what, fn)
  local ok, err = pcall(fn)
  if not ok then self.log(("reference cache: %s not written (%s)"):format(what, tostring(err))) end
end

--- A file's content hash, computed once per version of the file: remembered in the cache
--- directory under its identity (device, inode, size, modification time), so that checking
--- again against an unchanged reference reads none of it.
---@param path string
---@return string hash SHA-256, 64 hex digits
function Context:content_hash(path)
  if not self:cache_on() then return core.hash_file(path) end
  local memo = ("%s/files/%s"):format(self.cache_dir, core.hash_string(path .. "\0" .. core.file_identity(path)))
  local f = io.open(memo, "rb")
  local known = f and f:read("*a")
  if f then f:close() end
  if known and known:match("^%x+$") and #known == 64 then return known end
  local h = core.hash_file(path)
  self:cache_write("a file hash", function()
    core.remove_stale_temps(self.cache_dir .. "/files")
    core.write_text(memo, h)
  end)
  return h
end

--- What the reference's side is computed from, as one string: the reference's files, the
--- inputs and every setting its outputs depend on. Its SHA-256 is the cache key; each entry
--- holds it whole in its metadata, which a read compares.
---@return string material JSON
function Context:cache_material()
  if self.memo.cache_material then return self.memo.cache_material end
  local files = {}
  for _, d in ipairs({ self.anchor, self.dtype }) do files[d] = self:content_hash(self.reference.files[d]) end
  if self.reference.manifest then files.manifest = core.hash_string(core.json.encode(self.reference.manifest)) end
  self.memo.cache_material = core.json.encode({
    format = FORMAT, files = files, dtype = self.dtype, new_tokens = self.settings.new_tokens, baseline = self.baseline,
    perturbation_seed = self.baseline == "2-tensor" and self.settings.seed or nil,  -- the 2-tensor noise
    prompts = core.hash_string(core.json.encode(self.prompts:tolist())), vocab = self.vocab,
  })
  return self.memo.cache_material
end

--- The reference's cache file, <key>.safetensors, or <key>_<name>.safetensors for more of its side.
---@param name string|nil
---@return string
function Context:cache_path(name)
  self.memo.cache_key = self.memo.cache_key or core.hash_string(self:cache_material())
  return ("%s/%s%s.safetensors"):format(self.cache_dir, self.memo.cache_key, name and "_" .. name or "")
end

--- The metadata of a cache entry `name` (nil: the reference's outputs): the format and the material.
---@param name string|nil
---@return {format: string, material: string}
function Context:cache_metadata(name)
  return { format = tostring(FORMAT), material = self:cache_material() .. (name and "\n" .. name or "") }
end

--- A cache entry's tensors when it is one of this key's (its metadata holds this key's material
--- and `name`): {name = Tensor}, or nil and why not (nil, nil: no such entry).
---@param name string|nil nil: the reference's outputs
---@return table<string, parity.Tensor>|nil tensors
---@return string|nil why the entry is not this key's (or cannot be read)
function Context:read_cache_entry(name, names)
  local path = self:cache_path(name)
  if core.path_kind(path) ~= "file" then return nil end
  local ok, t, meta = pcall(core.tensors.load, path, names and { names = names } or nil)
  if not ok then return nil, tostring(t) end
  local want = self:cache_metadata(name)
  if type(meta) ~= "table" or meta.format ~= want.format or meta.material ~= want.material then
    return nil, "written for other inputs (its metadata does not hold this key's)"
  end
  return t
end

--- More of the reference's side, cached beside its outputs (Context:reference_outputs) under the
--- same key and `name` (which says what else they depend on): {name = Tensor}, or nil when not
--- cached (or the cache is off or the entry not this key's). Context:cache_reference_extra writes them.
---@param name string
---@param names string[]|nil just these of its tensors (parity.tensors.load)
---@return table<string, parity.Tensor>|nil
function Context:reference_extra(name, names)
  if not self:cache_on() then return nil end
  local t, why = self:read_cache_entry(name, names)
  if why then self.log(("reference cache: %s ignored: %s"):format(self:cache_path(name), why)) end
  return t
end

--- Caches more of the reference's side under `name` (read back by Context:reference_extra), when
--- the cache is on; a failed write is a warning (Context:cache_write).
---@param name string
---@param tensors table<string, parity.Tensor>
function Context:cache_reference_extra(name, tensors)
  if not self:cache_on() then return end
  self:cache_write(self:cache_path(name), function()
    core.remove_stale_temps(self.cache_dir)
    core.tensors.save(self:cache_path(name), tensors, self:cache_metadata(name))
  end)
end

--- The reference's weight summary at `dtype` (parity.weights.summary: its modules and its
--- weights' fingerprints, what the scaffold stage checks the target's weights against), cached
--- beside its outputs; nil when not cached.
---@param dtype string
---@return parity.WeightSummary|nil
function Context:reference_weights(dtype)
  local t = self:reference_extra("weights_" .. dtype)
  return t and require("parity.weights").decode_summary(t, captures.tensor_json(t.index))
end

--- Caches the reference's weight summary at `dtype` (read back by Context:reference_weights).
---@param dtype string
---@param summary parity.WeightSummary
function Context:cache_reference_weights(dtype, summary)
  local t, index = require("parity.weights").encode_summary(summary)
  t.index = captures.json_tensor(index)
  self:cache_reference_extra("weights_" .. dtype, t)
end

--- The reference's calls of `paths` in its tapped forward at the anchor precision on the check's
--- sequences (the inputs the components stage feeds every component, and the reference's outputs
--- on them): those of the logits' forward when it ran tapped in this check, else the cache's (read
--- back a path at a time), else a forward run here. Cached, beside the reference's outputs, when
--- they fit in --max-capture-mb (Context.max_capture_mb: past it they spill, Context:hold); only
--- the first output of each call is kept (the one compared). Returns the calls and where they
--- came from: "logits", "cache" or "forward".
---@param paths string[] the reference paths the pairs name
---@return table<string, parity.TapCall[]> calls
---@return "logits"|"cache"|"forward" source
function Context:reference_captures(paths)
  local name = "captures_" .. core.hash_string(core.json.encode(paths))
  local calls, source = self:take_calls("reference", self.anchor), "logits"
  if not calls then
    local cached, file = self:reference_extra(name, { "index" }), self:cache_path(name)
    calls = cached and captures.decode(cached.index, paths, function(names)
      return (core.tensors.load(file, { names = names }))
    end, file)
    if calls then return calls, "cache" end
    calls = select(2, self.reference:tapped_run(self.anchor, self:reference_outputs().sequences, paths))
    calls, source = self:hold(calls, paths, "reference_" .. self.anchor), "forward"
  end
  if self:cache_on() then
    if captures.on_file(calls) then
      self.log(("reference cache: its captures (%.0f MB) are past --max-capture-mb %d: not cached, its fp32 pass"
        .. " runs again next time"):format(captures.bytes(calls, paths) / 2 ^ 20, self.max_capture_mb))
    else
      self:cache_reference_extra(name, captures.encode(calls, paths))
    end
  end
  return calls, source
end

--- Why cached reference outputs `t` cannot be these inputs' (nil when they can): each tensor of
--- the dtype and shape it must have, the sequences starting with the prompts, finite logits.
---@param t table<string, parity.Tensor> a cache entry's tensors (Context:read_cache_entry)
---@return string|nil problem
function Context:cached_outputs_problem(t)
  local k, p, n = self.prompts:size(0), self.prompts:size(1), self.settings.new_tokens
  local want = { sequences = { "int64", { k, p + n } }, own_tokens = { "int64", { k, n } },
                 ref32 = { "float32", { k, n, self.vocab } }, ref_low = { "float32", { k, n, self.vocab } } }
  for _, name in ipairs({ "sequences", "own_tokens", "ref32", "ref_low" }) do
    local x, dtype, shape = t[name], want[name][1], want[name][2]
    if not torch.is_tensor(x) then return ("it has no %s"):format(name) end
    if x:dtype() ~= dtype or table.concat(x:size(), "x") ~= table.concat(shape, "x") then
      return ("its %s is %s [%s], not %s [%s]"):format(name, x:dtype(), table.concat(x:size(), ", "), dtype,
        table.concat(shape, ", "))
    end
  end
  if t.sequences:narrow(1, 0, p) ~= self.prompts then return "its sequences do not start with these prompts" end
  for _, name in ipairs({ "ref32", "ref_low" }) do
    local bad = core.metrics.non_finite(t[name])
    if bad.nan + bad.inf > 0 then return ("its %s holds NaN or Inf"):format(name) end
  end
end

--- Adds the cache's methods to the Context class.
---@param class table the Context metatable (context.lua)
function M.install(class)
  for name, f in pairs(Context) do class[name] = f end
end

return M
