--- A torch.export program compiled by AOTInductor (a .pt2 package, scripts/parity_export.py
--- --format pt2) seen as a Module: what the stages ask of a TorchScript module, as far as a
--- program that runs whole allows. Its module tree and its taps come from the metadata the
--- exporter compiled into it: "parity.modules" (the tree, from the exported module's calls) and
--- "parity.outputs" (output 1.. of the program is the first floating input or the first tensor
--- output of that module's call, its `kind`; output 0 is the logits). So a tapped run records
--- what each module inherits and what it gives, but nothing can be injected or run alone:
--- components get the accumulated view only (Bundle:runs_alone is false; the components stage
--- says so in its results).
local core = require("parity.core")

local M = {}

--- M.load's: a .pt2 program in a Module's shape (the methods of parity.Module that a program that
--- runs whole allows). p(tokens) and p:forward1(tokens) give the logits; tostring(p) is
--- "Program(TYPE)".
---@class parity.ProgramModule
---@field program parity.Program the loaded package
---@field file string its path
---@overload fun(tokens: parity.Tensor): parity.Tensor
local Program = {}
Program.__index = Program

local WHOLE = "a .pt2 program runs whole (AOTInductor compiles it as one): "

local function decoded(meta, key, origin)
  local text = meta[key]
  if type(text) ~= "string" then
    error(("%s: no %s in the package's metadata: export it with scripts/parity_export.py --format pt2"):format(origin, key), 0)
  end
  local ok, v = pcall(core.json.decode, text, ("%s (%s)"):format(origin, key))
  if not ok then error(require("parity.errors").clean(v), 0) end
  if type(v) ~= "table" then error(("%s: %s is not a JSON list"):format(origin, key), 0) end
  return v
end

--- The program's tree, taps and parameter names from its metadata (string -> string), checked:
--- paths are strings, the root comes first, a parent before its children, every tapped path is in
--- the tree. Errors are one line naming `origin`. Returns modules, outputs, is_param.
---@param meta table<string, string> the package's metadata (Program:metadata)
---@param origin string names the package in errors
---@return parity.ModuleInfo[] modules the tree, root first, parents before children
---@return table[] outputs {path, call (0-based), kind "input"|"output"|nil} of output 1..
---@return table<string, boolean> is_param the constants that are parameters
function M.layout(meta, origin)
  local modules, outputs, params = decoded(meta, "parity.modules", origin), decoded(meta, "parity.outputs", origin),
    decoded(meta, "parity.parameters", origin)
  local seen = {}
  for i, m in ipairs(modules) do
    if type(m) ~= "table" or type(m.path) ~= "string" or type(m.type) ~= "string" or type(m.params) ~= "number"
       or type(m.total_params) ~= "number" or type(m.depth) ~= "number" then
      error(("%s: parity.modules entry %d is not {path, type, params, total_params, depth}"):format(origin, i), 0)
    end
    local parent = m.path:match("^(.*)%.[^.]+$") or (m.path ~= "" and "" or nil)
    if (i == 1) ~= (m.path == "") or (parent and not seen[parent]) or seen[m.path] then
      error(("%s: parity.modules is not a tree, root first, parents before children (at '%s')"):format(origin, m.path), 0)
    end
    seen[m.path] = true
  end
  for i, o in ipairs(outputs) do
    if type(o) ~= "table" or not seen[o.path] or type(o.call) ~= "number" or o.call < 0 or o.call % 1 ~= 0
       or o.call > #outputs or not (o.kind == nil or o.kind == "input" or o.kind == "output") then
      error(("%s: parity.outputs entry %d is not {path of the tree, call >= 0, kind input|output}"):format(origin, i), 0)
    end
  end
  local is_param = {}
  for _, name in ipairs(params) do is_param[tostring(name)] = true end
  return modules, outputs, is_param
end

--- Loads `path` (a .pt2 package) onto `device`; errors are one line naming the file.
---@param path string
---@param device? parity.DeviceName default: the CPU
---@return parity.ProgramModule
function M.load(path, device)
  local ok, why = core.programs_supported()
  if not ok then error(("%s: a torch.export program (.pt2); %s"):format(path, why), 0) end
  local p = core.load_program(path, device)
  local meta = p:metadata()
  local modules, outputs, is_param = M.layout(meta, path)
  -- the sizes it was exported for (the compiled code does not check them itself)
  local sizes = {}
  for _, k in ipairs({ "min_batch", "min_seq", "max_seq" }) do sizes[k] = tonumber(meta["parity." .. k] or "") end
  return setmetatable({ program = p, file = path, layout = modules, outputs = outputs, is_param = is_param,
                        sizes = sizes, tapped = {} }, Program)
end

--- Every module of the exported tree, the root first, parents before children (Module:modules).
---@return parity.ModuleInfo[]
function Program:modules()
  local out = {}
  for i, m in ipairs(self.layout) do
    out[i] = { path = m.path, type = m.type, params = m.params, total_params = m.total_params, depth = m.depth }
  end
  return out
end

--- The root's class name (a submodule's view: that module's).
---@return string
function Program:type() return self.layout[1].type end
--- Its methods: forward only.
---@return string[]
function Program:methods() return { "forward" } end
--- "cpu": where its results come back (Module:device).
---@return string
function Program:device() return "cpu" end
--- The program itself (it has no training mode).
---@return parity.ProgramModule self
function Program:eval() return self end
--- Raises: its dtype and device are compiled in.
function Program:to() error(WHOLE .. "its dtype and device are compiled in; export one per dtype", 2) end
--- forward's schema: one Tensor input_ids, one Tensor returned (Module:schema).
---@return parity.Schema
function Program:schema() return { name = "forward", arguments = { { name = "input_ids", type = "Tensor" } }, returns = { { type = "Tensor" } } } end

local function constants(self, want_params, prefix)
  local out = {}
  for name, t in pairs(self.program:constants()) do
    if (self.is_param[name] or false) == want_params and name:sub(1, #prefix) == prefix then
      out[name:sub(#prefix + 1)] = t
    end
  end
  return out
end

--- Its parameters by dotted name (a submodule's view: relative to it), from the constants.
---@return table<string, parity.Tensor>
function Program:parameters() return constants(self, true, self.prefix or "") end
--- Its buffers (the constants that are not parameters) by dotted name.
---@return table<string, parity.Tensor>
function Program:buffers() return constants(self, false, self.prefix or "") end

--- A submodule's view: its parameters and buffers; it cannot run alone.
---@param path string a dotted path relative to this module; raises when there is none
---@return parity.ProgramModule
function Program:child(path)
  local full = (self.prefix or "") .. path
  for _, m in ipairs(self.layout) do
    if m.path == full then
      return setmetatable({ program = self.program, file = self.file, layout = { m }, outputs = {}, is_param = self.is_param,
                            sizes = self.sizes, prefix = full .. ".", tapped = {}, sub = path }, Program)
    end
  end
  error(("no submodule '%s' in %s"):format(path, self.file), 2)
end

--- Taps: the paths the program has outputs of are tapped (their first output); a module without
--- any (a ModuleList, a module the forward never calls) has no calls, as in TorchScript.
---@param paths string[]
---@return parity.TapSite[]
function Program:tap(paths)
  local has = {}
  for _, o in ipairs(self.outputs) do
    has[o.path] = has[o.path] or { inputs = 0, outputs = 0 }
    if o.kind == "input" then has[o.path].inputs = 1 else has[o.path].outputs = 1 end
  end
  local sites = {}
  for i, path in ipairs(paths) do
    self.tapped[path] = has[path] and true or nil
    sites[i] = { path = path, inputs = has[path] and has[path].inputs or 0, outputs = has[path] and has[path].outputs or 0,
                 untapped = {} }
  end
  return sites
end

local function run(self, tokens)
  if self.sub then error(WHOLE .. ("its submodule %s cannot run alone"):format(self.sub), 3) end
  if not torch.is_tensor(tokens) or tokens:dim() ~= 2 then
    error("a .pt2 program takes one tensor of token ids [batch, seq]", 3)
  end
  local z = self.sizes
  local b, t = tokens:size(0), tokens:size(1)
  if b < (z.min_batch or 1) or t < (z.min_seq or 1) or (z.max_seq and t > z.max_seq) then
    error(("%s: exported for batch >= %d and %d <= seq%s, not [%d, %d]"):format(self.file, z.min_batch or 1, z.min_seq or 1,
      z.max_seq and (" <= " .. z.max_seq) or "", b, t), 3)
  end
  local out = self.program:run(tokens)
  if #out ~= 1 + #self.outputs then
    error(("%s: %d outputs where its metadata names %d taps and the logits"):format(self.file, #out, #self.outputs), 3)
  end
  return out
end

--- Module:run_tapped as far as a whole program allows: first inputs and outputs captured;
--- request.inject is refused (nothing can be injected); request.last_position is not done (the
--- whole logits come back: callers check what they got).
---@param args any[] forward's arguments: { token ids [batch, seq] }
---@param request parity.RunTappedOptions|nil
---@return parity.Tensor logits
---@return table<string, parity.TapCall[]> calls path -> its calls (one input or output each)
function Program:run_tapped(args, request)
  request = request or {}
  if request.inject and next(request.inject) then error(WHOLE .. "it cannot take injected inputs", 2) end
  local out = run(self, args[1])
  local want
  if request.capture then
    want = {}
    for _, p in ipairs(request.capture) do want[p] = true end
  end
  local calls = {}
  for i, o in ipairs(self.outputs) do
    if self.tapped[o.path] and (not want or want[o.path]) then
      local list = calls[o.path] or {}
      calls[o.path] = list
      local call = list[o.call + 1] or { inputs = {}, outputs = {} }
      list[o.call + 1] = call
      table.insert(o.kind == "input" and call.inputs or call.outputs, out[i + 1])
    end
  end
  return out[1], calls
end

--- Runs a method by name (Module:call): forward only, which gives the logits.
---@param method string
---@param ... any forward's arguments: token ids [batch, seq]
---@return parity.Tensor logits
function Program:call(method, ...)
  if method ~= "forward" then error(("a .pt2 program has forward only, not '%s'"):format(tostring(method)), 2) end
  return run(self, ...)[1]
end

--- The primary output, as Module:forward1: the logits (a program returns them first).
---@param ... any token ids [batch, seq]
---@return parity.Tensor logits
function Program:forward1(...) return run(self, ...)[1] end

--- p(tokens): the logits, as Program:forward1.
---@param ... any token ids [batch, seq]
---@return parity.Tensor logits
Program.__call = function(self, ...) return run(self, ...)[1] end
--- "Program(TYPE)".
---@return string
Program.__tostring = function(self) return ("Program(%s)"):format(self:type()) end

--- Whether `x` is a program (M.load) rather than a TorchScript module.
---@param x any
---@return boolean
function M.is_program(x) return getmetatable(x) == Program end

return M
