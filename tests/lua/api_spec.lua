-- The public Lua API against a snapshot (tests/lua/api.txt): an accidental rename or removal
-- fails here. After an intended change: PARITY_API_UPDATE=1 parity run tests/lua/api_spec.lua
-- Also: the native API's type stubs (stdlib/parity/_meta) against what bindings/*.cpp registers.
local spec = require("parity.spec")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local snapshot_path = here .. "/api.txt"

local function keys(prefix, t, out)
  for k, v in pairs(t) do
    out[#out + 1] = ("%s%s: %s"):format(prefix, tostring(k), type(v))
  end
end

local function listing()
  local out = {}
  keys("torch.", torch, out)
  keys("torch.Tensor:", torch.Tensor, out)
  local parity = require("parity")
  for _, sub in ipairs({ "tensors", "metrics", "json" }) do keys("parity." .. sub .. ".", parity[sub], out) end
  for k, v in pairs(parity) do
    if type(v) ~= "table" then out[#out + 1] = ("parity.%s: %s"):format(k, type(v)) end
  end
  local m = parity.load(arg[1] .. "/reference/fp32.pt")
  keys("Module:", getmetatable(m).__index, out)
  local b = parity.bundle(arg[1] .. "/reference")
  keys("Bundle:", getmetatable(b), out)
  table.sort(out)
  return table.concat(out, "\n") .. "\n"
end

spec.it("matches the snapshot", function()
  torch.zeros(1):rsqrt()  -- ATen fallbacks are cached apart: they must not show up here
  spec.snapshot(snapshot_path, listing(), "public Lua API")
end)

-- The native API's LuaCATS stubs (stdlib/parity/_meta/*.lua, for lua-language-server): every
-- function bindings/*.cpp registers has one, and every stub of a native table names something
-- registered. Native means a C function; what the stdlib adds in Lua is typed where it is written.
local meta_dir = here .. "/../../stdlib/parity/_meta"

--- Metamethods LuaCATS cannot type (comparisons are boolean, tostring a string) or that are
--- machinery: a class's doc comment describes them. Any other metamethod needs an annotation:
--- `---@operator add(...)` for __add, `---@overload fun(...)` on the class for __call.
local UNTYPED = { __index = true, __gc = true, __eq = true, __lt = true, __le = true, __tostring = true }

--- Reads one stub file's text into classes (class -> {member = true}): `---@field NAME`,
--- `---@operator OP` (as __OP) and `---@overload` (as __call) in a `---@class` block, and
--- `function VAR.NAME(` / `function VAR:NAME(` where VAR is the table declared right after a
--- class block. What it cannot place goes to problems.
local function read_stubs(file, text, classes, problems)
  if not text:find("^%-%-%-@meta") then problems[#problems + 1] = file .. ": does not start with ---@meta" end
  local class, var_class = nil, {}
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do
    local c = line:match("^%-%-%-@class%s+([%w_.]+)")
    if c then
      class = c
      classes[c] = classes[c] or {}
    elseif class and line:find("^%-%-%-") then
      local field, op = line:match("^%-%-%-@field%s+([%w_]+)"), line:match("^%-%-%-@operator%s+(%w+)")
      if field then classes[class][field] = true
      elseif op then classes[class]["__" .. op] = true
      elseif line:find("^%-%-%-@overload") then classes[class].__call = true end
    else
      local var = class and (line:match("^local%s+([%w_]+)%s*=") or line:match("^([%w_]+)%s*="))
      if var then var_class[var] = class end
      class = nil
      local t, name = line:match("^function%s+([%w_]+)[.:]([%w_]+)%s*%(")
      if t and var_class[t] then classes[var_class[t]][name] = true
      elseif t then
        problems[#problems + 1] = ("%s: function %s.%s on a table with no ---@class"):format(file, t, name)
      end
    end
  end
end

local function stubs()
  local classes, problems = {}, {}
  local p = io.popen(("ls %q/*.lua 2>/dev/null"):format(meta_dir))
  for path in p:lines() do
    local f = assert(io.open(path, "rb"))
    read_stubs(path:match("[^/]*$"), f:read("*a"), classes, problems)
    f:close()
  end
  p:close()
  return classes, problems
end

local function native(v) return type(v) == "function" and debug.getinfo(v, "S").what == "C" end

--- class -> {member = true} of what is registered natively: parity.core's functions and tables
--- (tensors, metrics, json: fields, and classes of their own), torch's functions and tables, and
--- the methods and metamethods of the Tensor, Module and Program metatables. Also the parity.*
--- functions that are not parity.core's (they would need a class of their own).
local function registered()
  local out, strays, core = {}, {}, require("parity.core")
  local function add(class, k) out[class] = out[class] or {}; out[class][k] = true end
  for k, v in pairs(core) do
    if native(v) then add("parity.core", k)
    elseif type(v) == "table" then
      add("parity.core", k)
      for name, x in pairs(v) do
        if native(x) or type(x) ~= "function" then add("parity.core." .. k, name) end
      end
    end
  end
  for k, v in pairs(torch) do
    if native(v) or type(v) == "table" then add("torch", k) end
  end
  local reg = debug.getregistry()
  for _, class in ipairs({ "parity.Tensor", "parity.Module", "parity.Program" }) do
    local meta = assert(reg[class], class .. ": no such metatable")
    local methods = type(meta.__index) == "table" and meta.__index or meta.methods
    for k, v in pairs(methods) do
      if native(v) then add(class, k) end
    end
    for k, v in pairs(meta) do
      if type(k) == "string" and k:find("^__") and native(v) and not UNTYPED[k] then add(class, k) end
    end
  end
  local by_function = {}
  for k, v in pairs(core) do by_function[v] = k end
  for k, v in pairs(require("parity")) do
    if native(v) and not by_function[v] then strays[#strays + 1] = "parity." .. k end
  end
  table.sort(strays)
  return out, strays
end

--- "class.member" of what `a` has and `b` lacks, sorted.
local function missing(a, b)
  local out = {}
  for class, members in pairs(a) do
    for k in pairs(members) do
      if not (b[class] and b[class][k]) then out[#out + 1] = class .. "." .. k end
    end
  end
  table.sort(out)
  return out
end

spec.describe("the native API's type stubs (stdlib/parity/_meta)", function()
  local classes, problems = stubs()
  local natives, strays = registered()

  spec.it("are read as the checks below assume, and find what lacks a stub", function()
    local got, bad = {}, {}
    read_stubs("x.lua", "---@meta _\n---@class parity.X\n---@field f number\n---@operator add(number): parity.X\n"
      .. "---@overload fun(): number\nlocal X = {}\n\n--- doc\nfunction X:m() end\nfunction Y.n() end\n", got, bad)
    spec.eq(got, { ["parity.X"] = { f = true, __add = true, __call = true, m = true } })
    spec.eq(bad, { "x.lua: function Y.n on a table with no ---@class" })
    spec.eq(missing({ ["parity.X"] = { m = true, gone = true } }, got), { "parity.X.gone" })
    spec.truthy(classes["parity.Tensor"] and classes["parity.core.metrics"], "read " .. meta_dir)
    spec.truthy(natives["parity.Module"].forward1 and natives["parity.Tensor"].__add and natives["parity.core"].json,
      "found the natives")
  end)

  spec.it("cover every native function, method, operator and table", function()
    spec.eq(table.concat(missing(natives, classes), ", "), "", "natives without a stub")
    spec.eq(table.concat(problems, "; "), "", "stub files")
    spec.eq(table.concat(strays, ", "), "", "native parity.* functions that are not parity.core's")
  end)

  spec.it("name nothing that is not registered", function()
    local stubbed = {}
    for class in pairs(natives) do stubbed[class] = classes[class] end
    spec.eq(table.concat(missing(stubbed, natives), ", "), "", "stubs of no native")
  end)

  spec.it("are not embedded in the binary", function()
    local embedded = {}
    for name in pairs(package.preload) do
      if name:find("_meta", 1, true) then embedded[#embedded + 1] = name end
    end
    spec.eq(embedded, {})
  end)
end)

return spec.run()
