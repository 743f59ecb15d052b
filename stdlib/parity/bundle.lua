--- A bundle: one model traced once per dtype, because a trace bakes its dtypes into the graph.
--- A directory holds fp32.pt, bf16.pt and/or fp16.pt (TorchScript) or .pt2 packages of the
--- same names (torch.export programs compiled by AOTInductor: parity.program) plus an optional
--- parity.json manifest; a single .pt or .pt2 file is a bundle of one, its dtype read off its
--- first floating parameter.
local core = require("parity.core")
local patches = require("parity.patches")
local program = require("parity.program")
local validate = require("parity.validate")

local M = {}

local DTYPES = { "fp32", "bf16", "fp16" }
local CANONICAL = { float32 = "fp32", bfloat16 = "bf16", float16 = "fp16",
                    fp32 = "fp32", bf16 = "bf16", fp16 = "fp16" }

local function is_program(file) return file:sub(-4) == ".pt2" end

-- One model at a time (M.one_at_a_time): the one a bundle holds now ({bundle, file}), released
-- when any bundle loads another
local single, resident = false, nil

--- Lets go of the model held under the one-at-a-time policy (its bundle loads it again when
--- asked; modules and submodules taken from it stay usable, and keep what they use alive).
local function release()
  if not resident then return end
  resident.bundle.modules[resident.file], resident.bundle.refused[resident.file] = nil, nil
  resident = nil
  core.collect()
end

--- A model file loaded: a .pt2 package as a program, anything else as TorchScript.
local function load(file, device)
  local m = is_program(file) and program.load(file, device) or core.load(file, device)
  require("parity.forwards").loaded(file)
  return m
end

--- Taps a freshly loaded module of `file` everywhere it can and keeps it as the bundle's (Bundle:at).
local function keep(self, file, module)
  if single then resident = { bundle = self, file = file } end
  local paths, refused = {}, {}
  for _, m in ipairs(module:modules()) do
    if m.path ~= "" then paths[#paths + 1] = m.path end
  end
  for _, site in ipairs(module:tap(paths, { skip_shared = true })) do refused[site.path] = site.refused end
  self.modules[file], self.refused[file] = module, refused
  for _, set in ipairs(self.patch_sets or {}) do self.patched[set] = patches.apply(module, set) end
end

---@class parity.Bundle
---@field path string
---@field manifest table|nil   parity.json, when the bundle has one
---@field device string|nil    where its models run ("cuda:0"; nil: the CPU)
---@field files table<string, string>  "fp32"/"bf16"/"fp16" -> its model file
local Bundle = {}
Bundle.__index = Bundle

--- The dtypes this bundle has traces for, in fp32, bf16, fp16 order.
---@return string[]
function Bundle:dtypes()
  local out = {}
  for _, d in ipairs(DTYPES) do
    if self.files[d] then out[#out + 1] = d end
  end
  return out
end

--- Whether the bundle has a trace at `dtype` ("fp32", "bf16", "fp16"; PyTorch names work too).
---@param dtype string
---@return boolean
function Bundle:has(dtype)
  return self.files[CANONICAL[dtype] or dtype] ~= nil
end

--- The trace file of `dtype`; errors name the dtypes the bundle has.
---@param dtype string
---@return string
function Bundle:file(dtype)
  local d = CANONICAL[dtype]
  if not d then error(("unknown bundle dtype '%s' (use fp32, bf16 or fp16)"):format(tostring(dtype)), 3) end
  if not self.files[d] then
    error(("%s has no %s trace (it has: %s); export one per dtype with scripts/parity_export.py")
      :format(self.path, d, table.concat(self:dtypes(), ", ")), 3)
  end
  return self.files[d]
end

--- The module traced at `dtype` ("fp32", "bf16", "fp16"; PyTorch names work too), loaded once,
--- with taps on every submodule that can have them (Module:tap; a scripted model's modules that
--- share a type cannot): outside a tapped run the taps change nothing, so one module a dtype
--- serves plain forwards, tapped ones (Bundle:tapped_run) and runs of its children.
---@param dtype string
---@return parity.Module|parity.ProgramModule module
function Bundle:at(dtype)
  local file = self:file(dtype)
  if not self.modules[file] then
    if single then release() end
    keep(self, file, load(file, self.device))
  end
  return self.modules[file]
end

--- Runs `f(...)` with at most one model held by the bundles at a time (what a check does: a
--- model's weights are held while its passes run, then let go when another loads): Bundle:at
--- releases the one held before it loads another. Returns what f returns; the policy before is
--- restored after, and the last model held let go.
---@param f function
---@return any ...
function M.one_at_a_time(f, ...)
  local was = single
  single = true
  local out = { pcall(f, ...) }
  single = was
  if not was then release() end
  if not out[1] then error(out[2], 0) end
  return unpack(out, 2, table.maxn(out))
end

--- Applies patch sets (parity.patches) to the bundle's models, those loaded and those it loads
--- later (every dtype's): from now on they compute with the patches. Bundle.patched says which
--- paths each set patched ({[set] = paths}) once a model has loaded. A .pt2 program runs whole
--- and cannot be patched.
---@param sets parity.PatchSet[]
---@return table<parity.PatchSet, string[]>
function Bundle:patch(sets)
  for _, f in pairs(self.files) do
    if is_program(f) then error(("%s: a .pt2 program runs whole (AOTInductor compiled it as one): its components"
      .. " cannot be patched; patch its TorchScript export"):format(f), 0) end
  end
  self.patch_sets, self.patched = sets, {}
  for _, module in pairs(self.modules) do
    for _, set in ipairs(sets) do self.patched[set] = patches.apply(module, set) end
  end
  return self.patched
end

--- A freshly loaded module of `dtype` on the bundle's device, without taps.
---@param dtype string
---@return parity.Module|parity.ProgramModule module
function Bundle:fresh(dtype)
  return load(self:file(dtype), self.device)
end

--- Whether the model at `dtype` can run its components alone and take injected inputs
--- (TorchScript); a .pt2 program runs whole: its components have the accumulated view only.
---@param dtype string
---@return boolean
function Bundle:runs_alone(dtype)
  return not is_program(self:file(dtype))
end

--- Runs the module at `dtype` (Bundle:at) tapped on `tokens`, capturing the calls of `paths`
--- (Module:run_tapped; `request` adds inject or last_position); returns its output and the
--- calls. Errors when one of `paths` could not be tapped, saying why.
---@param dtype string
---@param tokens parity.Tensor token ids [batch, seq], int64
---@param paths string[] the submodules whose calls are captured (none: nothing captured)
---@param request parity.RunTappedOptions|nil inject and/or last_position (its capture is `paths`)
---@return any output the forward's output
---@return table<string, parity.TapCall[]> calls path -> its calls, in call order
function Bundle:tapped_run(dtype, tokens, paths, request)
  local module = self:at(dtype)
  local refused = self.refused[self:file(dtype)]
  for _, p in ipairs(paths) do
    if refused[p] then error(refused[p], 0) end
  end
  local r = { capture = #paths > 0 and paths or { "" } }  -- the root has no taps: capture nothing
  for k, v in pairs(request or {}) do r[k] = v end
  return module:run_tapped({ tokens }, r)
end

--- Vocabulary size: the manifest's `vocab_size`, else rows of the embedding weight (a parameter
--- named like *embed_tokens.weight, *wte.weight or *embeddings.weight), else the last dim of the
--- logits of a one-token forward.
---@return integer
function Bundle:vocab_size()
  if self.vocab then return self.vocab end
  local v = self.manifest and self.manifest.vocab_size
  if v ~= nil and v ~= core.json.null then
    self.vocab = v  -- checked by M.check_manifest
    return v
  end
  local module = self:at(self:dtypes()[1])
  local params = module:parameters()
  local names = validate.sorted_keys(params)
  for _, pattern in ipairs({ "embed_tokens%.weight$", "wte%.weight$", "embeddings?%.weight$", "embed[^.]*%.weight$" }) do
    for _, name in ipairs(names) do
      if name:find(pattern) and params[name]:dim() == 2 then
        self.vocab = params[name]:size(0)
        return self.vocab
      end
    end
  end
  local ok, out = pcall(module, torch.zeros(1, 1, { dtype = "int64" }))
  while ok and type(out) == "table" do out = out[1] end
  if ok and torch.is_tensor(out) and out:dim() == 3 then
    self.vocab = out:size(2)
    return self.vocab
  end
  error(("%s: cannot tell the vocabulary size: no vocab_size in parity.json, no embedding weight among"
    .. " its parameters and no [batch, seq, vocab] logits from a one-token forward; pass --vocab-size"):format(self.path), 0)
end

--- The longest sequence the model takes, when its manifest's config says (max_position_embeddings
--- or n_positions), else nil.
---@return integer|nil
function Bundle:max_positions()
  local cfg = self.manifest and self.manifest.config
  if type(cfg) ~= "table" then return nil end
  local v = cfg.max_position_embeddings or cfg.n_positions
  return type(v) == "number" and v or nil
end

local function first_float_dtype(module)
  local params = module:parameters()
  for _, name in ipairs(validate.sorted_keys(params)) do
    local d = CANONICAL[params[name]:dtype()]
    if d then return d end
  end
  return "fp32"
end

--- Opens a bundle directory or a single .pt file, its models to run on `device` ("cpu",
--- "cuda:N"; checked: core.usable_device) or the CPU; an already open bundle is returned as is.
---@param path string|parity.Bundle
---@param device string|nil
---@return parity.Bundle
function M.open(path, device)
  if getmetatable(path) == Bundle then return path end
  local kind = core.path_kind(path)
  if not kind then error(("%s: no such file or directory"):format(path), 2) end
  local b = setmetatable({ path = path, files = {}, modules = {}, refused = {},
                           device = device and core.usable_device(device) or nil }, Bundle)
  if kind == "file" then
    if single then release() end
    local m = load(path, b.device)
    local d = first_float_dtype(m)
    b.files[d] = path
    keep(b, path, m)
    return b
  end
  for _, d in ipairs(DTYPES) do
    for _, ext in ipairs({ ".pt", ".pt2" }) do
      local f = path .. "/" .. d .. ext
      if core.path_kind(f) == "file" then
        if b.files[d] then error(("%s: both %s.pt and %s.pt2: keep one model a dtype"):format(path, d, d), 2) end
        b.files[d] = f
      end
    end
  end
  local manifest = path .. "/parity.json"
  if core.path_kind(manifest) == "file" then b.manifest = M.check_manifest(core.json.read(manifest), manifest) end
  if not next(b.files) then
    error(("%s: not a bundle (no fp32.pt, bf16.pt or fp16.pt inside, nor .pt2 packages of those names)"):format(path), 2)
  end
  return b
end

local function is_object(v)
  local mt = type(v) == "table" and getmetatable(v)
  return type(v) == "table" and not (mt and mt.__jsontype == "array")
end

--- Checks a decoded parity.json (errors name `origin`): an object; `vocab_size` null or a whole
--- number in range; `config` an object whose max_position_embeddings or n_positions, where
--- present, is a whole number >= 1 (its other fields are read only where they make sense).
---@param m any the decoded JSON
---@param origin string names the manifest in errors
---@return table the manifest
function M.check_manifest(m, origin)
  if not is_object(m) then error(("%s: a manifest is a JSON object, got %s"):format(origin, type(m)), 0) end
  local v = m.vocab_size
  if v ~= nil and v ~= core.json.null then
    if type(v) ~= "number" then error(("%s: vocab_size must be a whole number, got %s"):format(origin, type(v)), 0) end
    validate.integer(origin .. ": vocab_size", v, 1, validate.MAX.vocab)
  end
  local cfg = m.config
  if cfg ~= nil and cfg ~= core.json.null then
    if not is_object(cfg) then error(("%s: config must be an object, got %s"):format(origin, type(cfg)), 0) end
    for _, key in ipairs({ "max_position_embeddings", "n_positions" }) do  -- what bounds a run's length
      local x = cfg[key]
      if x ~= nil and x ~= core.json.null then
        if type(x) ~= "number" then error(("%s: config.%s must be a whole number, got %s"):format(origin, key, type(x)), 0) end
        validate.integer(("%s: config.%s"):format(origin, key), x, 1, 2 ^ 40)
      end
    end
  end
  return m
end

--- A manifest from its text (M.check_manifest); errors name `origin`.
---@param text string parity.json's text
---@param origin string
---@return table the manifest
function M.read_manifest(text, origin)
  return M.check_manifest(core.json.decode(text, origin), origin)
end

--- Opens what a target may be: a bundle, or the logits a foreign engine saved (parity.saved).
---@param path string|parity.Bundle|parity.Saved
---@param device string|nil where a bundle's models run (M.open); saved logits ignore it
---@return parity.Bundle|parity.Saved
function M.open_target(path, device)
  local saved = require("parity.saved")
  if saved.is_saved(path) then return saved.open(path) end
  return M.open(path, device)
end

return M
