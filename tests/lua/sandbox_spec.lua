-- parity.sandbox and thresholds files: text only, an allow-list of globals, limits, data checks.
local spec = require("parity.spec")
local sandbox = require("parity.sandbox")
local thresholds = require("parity.thresholds")
local eq, raises, truthy = spec.eq, spec.raises, spec.truthy

local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)
local function file(name, text, mode)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, mode or "w"))
  f:write(text)
  f:close()
  return path
end

spec.describe("sandbox", function()
  spec.it("refuses precompiled bytecode, however harmless", function()
    local path = file("bc.lua", string.dump(loadstring("return { r_p95 = 1 }")), "wb")
    raises(function() sandbox.run_file(path, "thresholds file") end, "precompiled bytecode is refused")
    raises(function() thresholds.load_file(path) end, "bc.lua: precompiled bytecode is refused")
  end)

  spec.it("offers exactly the allow-list: every other global of the host is nil", function()
    local names = {}
    for name in pairs(_G) do names[#names + 1] = name end
    for _, name in ipairs({ "io", "os", "debug", "jit", "load", "loadstring", "loadfile", "dofile", "require",
                            "package", "getfenv", "setfenv", "getmetatable", "setmetatable", "rawget", "rawset",
                            "collectgarbage", "coroutine", "module", "newproxy", "print", "xpcall", "unpack",
                            "next", "torch", "parity", "_G" }) do
      names[#names + 1] = name
    end
    -- a file that names each global literally and says which ones exist
    local fields = {}
    for _, name in ipairs(names) do
      if name:match("^[%a_][%w_]*$") then fields[#fields + 1] = ("[%q] = %s ~= nil"):format(name, name) end
    end
    local present = sandbox.run_file(file("globals.lua", "return { " .. table.concat(fields, ", ") .. " }"))
    local allowed = {}
    for _, name in ipairs(sandbox.GLOBALS) do allowed[name] = true end
    for _, name in ipairs(names) do eq(present[name], allowed[name] == true, "global " .. name) end
    for _, name in ipairs(sandbox.GLOBALS) do eq(present[name], true, "allowed global " .. name) end
  end)

  spec.it("has no string.dump, neither as a field nor through a string's methods", function()
    local t = sandbox.run_file(file("dump.lua", [[
      return { field = string.dump == nil, method = ("").dump == nil, rep = ("ab"):rep(2) }
    ]]))
    eq(t, { field = true, method = true, rep = "abab" })
    truthy(("").dump ~= nil, "outside the sandbox strings keep their methods")
  end)

  spec.it("keeps a file's changes to its libraries inside its environment", function()
    sandbox.run_file(file("patch.lua", "string.format = nil; math.huge = 0; table.concat = nil; return 1"))
    eq(math.huge > 0 and type(string.format) == "function" and type(table.concat) == "function", true)
  end)

  spec.it("stops an endless loop with the instruction budget, naming the file", function()
    raises(function() sandbox.run_file(file("loop.lua", "while true do end"), "thresholds file") end,
      "thresholds file " .. dir .. "/loop.lua: instruction budget of 100000000 exceeded")
  end)

  spec.it("does not let pcall swallow a tripped limit", function()
    raises(function()
      sandbox.run_file(file("swallow.lua", "while true do pcall(function() while true do end end) end"))
    end, "instruction budget")
    raises(function()
      sandbox.run_file(file("swallow_mem.lua", [[
        local keep = {}
        while true do pcall(function() keep[#keep + 1] = ("x"):rep(2 ^ 20) .. #keep end) end
      ]]))
    end, "memory cap of 64 MB exceeded")
  end)

  spec.it("caps memory, for one big allocation and for many small ones", function()
    raises(function() sandbox.run_file(file("big.lua", "local s = ('x'):rep(1e9) return {}")) end,
      "memory cap of 64 MB exceeded")
    raises(function() sandbox.run_file(file("many.lua", "local t = {} for i = 1, 1e9 do t[i] = i end")) end,
      "memory cap of 64 MB exceeded")
    local after = ("y"):rep(200 * 2 ^ 20)  -- the cap holds only while sandboxed code runs
    eq(#after, 200 * 2 ^ 20)
  end)

  spec.it("bounds recursion through built-ins that call back into Lua (the C stack), naming the file", function()
    for name, text in pairs({
      gsub = 'local d = 0 local function f(s) d = d + 1 if d >= 1000 then return "" end return (s:gsub(".", f)) end return f("a")',
      gsub_fn = 'local d = 0 local function f(s) d = d + 1 return (string.gsub("a", ".", f)) end return f("a")',
      sort = 'local function f(a, b) table.sort({ 3, 2, 1 }, f) return a < b end table.sort({ 2, 1 }, f)',
      foreachi = 'local function f() table.foreachi({ 1 }, f) end f()',
      foreach = 'local function f() table.foreach({ x = 1 }, f) end f()',
    }) do
      raises(function() sandbox.run_file(file(name .. ".lua", text), "mapping file") end,
        ("mapping file %s/%s.lua: %s/%s.lua:1: callbacks nest deeper than 100 levels"):format(dir, name, dir, name))
    end
    -- what stays allowed: a callback that calls another built-in, a pcall that catches the limit
    eq(sandbox.run_file(file("ok.lua", [[
      local t = { 3, 1, 2 } table.sort(t, function(a, b) return ("%d"):format(a) < ("%d"):format(b) end)
      local caught = pcall(function() local function f() table.foreachi({ 1 }, f) end f() end)
      return { t = t, s = ("a.b"):gsub("%a", string.upper), caught = caught }
    ]])), { t = { 1, 2, 3 }, s = "A.B", caught = false })
  end)

  spec.it("counts every built-in that calls back, even into a built-in, even where the JIT would compile", function()
    for name, text in pairs({
      foreachi = 'local t = {} for i = 1, 4000 do t[i] = i end table.foreachi(t, function() table.foreachi(t, math.randomseed) end)',
      foreach = 'local t = {} for i = 1, 4000 do t[i] = i end table.foreach(t, function() table.foreach(t, math.randomseed) end)',
      gsub = 'local s = ("x"):rep(4000) s:gsub(".", function() s:gsub(".", string.lower) end)',
    }) do
      local budget = sandbox.DEFAULTS.instructions
      sandbox.DEFAULTS.instructions = 1e6
      local ok, err = pcall(sandbox.run_file, file(name .. ".lua", text))
      sandbox.DEFAULTS.instructions = budget
      truthy(not ok and tostring(err):find("instruction budget of 1000000 exceeded", 1, true), name .. ": " .. tostring(err))
    end
  end)

  spec.it("reports a file's own errors with their line", function()
    raises(function() sandbox.run_file(file("err.lua", "local x = 1\nreturn os.time()"), "thresholds file") end,
      "err.lua:2: attempt to index global 'os' (a nil value)")
    raises(function() sandbox.run_file(file("syntax.lua", "return {")) end, "syntax.lua:1:")
  end)
end)

spec.describe("thresholds", function()
  spec.it("are data: non-finite, negative, out-of-range or wrong-typed values are refused by key", function()
    for text, needle in pairs({
      ["return { r_p95 = 0/0 }"] = "threshold 'r_p95' must be a finite number >= 0, got nan",
      ["return { kl_floor = -1 }"] = "threshold 'kl_floor' must be a finite number >= 0, got -1",
      ["return { kl_ratio = 1/0 }"] = "threshold 'kl_ratio' must be a finite number >= 0, got inf",
      ["return { kl_ratio = '0.1' }"] = "threshold 'kl_ratio' must be a number, got the string \"0.1\"",
      ["return { top1 = 1.5 }"] = "threshold 'top1' must be a finite number in 0..1, got 1.5",
      ["return { cosine_floor = -2 }"] = "threshold 'cosine_floor' must be a finite number in 0..2, got -2",
      ["return { r_p59 = 1 }"] = "unknown threshold 'r_p59'",
      ["return 42"] = "thresholds must be a table, got number",
    }) do
      raises(function() thresholds.load_file(file("t.lua", text)) end, needle)
    end
    raises(function() thresholds.resolve({ tie_factor = 0 / 0 }) end, "threshold 'tie_factor' must be a finite number")
  end)

  spec.it("may use the allowed libraries", function()
    local t = thresholds.load_file(file("ok.lua", [[
      local base = { r_p95 = 1.2 }
      local ok = pcall(error, "caught")
      return { r_p95 = base.r_p95 * 2, kl_floor = math.max(0.01, select(2, 0, 0.02)), top1 = tonumber("0.6"),
               smoke_match = ok and 1 or 0.25 }
    ]]))
    eq(t, { r_p95 = 2.4, kl_floor = 0.02, top1 = 0.6, smoke_match = 0.25 })
  end)
end)

local code = spec.run()
os.execute("rm -rf " .. dir)
return code
