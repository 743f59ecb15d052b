--- The sandbox for Lua from elsewhere: thresholds files, mappings, recipes shared between teams.
--- Such a file is loaded as text only (never precompiled bytecode, which can break out of any
--- Lua sandbox), sees an allow-list of safe globals and nothing else, and runs under an
--- instruction budget, a memory cap and a wall-clock backstop (NOTE [ Sandbox limits ] in
--- bindings/vm.hpp). What it returns is data for the caller to validate.
local core = require("parity.core")
local validate = require("parity.validate")

local M = {}

--- The globals a sandboxed file may use; every other name is nil there.
M.GLOBALS = { "assert", "error", "ipairs", "math", "pairs", "pcall", "select", "string", "table",
              "tonumber", "tostring", "type" }

--- Default limits; PARITY_SANDBOX_INSTRUCTIONS, PARITY_SANDBOX_MB and PARITY_SANDBOX_SECONDS
--- override them (whole numbers).
M.DEFAULTS = { instructions = 100000000, memory_mb = 64, seconds = 10 }
local ENV = { instructions = { "PARITY_SANDBOX_INSTRUCTIONS", 1000, 1e12 },
              memory_mb = { "PARITY_SANDBOX_MB", 1, 65536 }, seconds = { "PARITY_SANDBOX_SECONDS", 1, 86400 } }

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

--- The limits in force: defaults, overridden by the environment (validated).
---@return {instructions: integer, memory_mb: integer, seconds: integer}
function M.limits()
  local out = {}
  for key, default in pairs(M.DEFAULTS) do
    out[key] = validate.env(ENV[key][1], default, ENV[key][2], ENV[key][3], true)
  end
  return out
end

-- `("s"):dump()` reaches the string table through the strings' metatable, not the
-- environment: while sandboxed code runs, that metatable points at this copy instead.
local SAFE_STRING = copy(string)
SAFE_STRING.dump = nil

--- A sandbox's pcall cannot swallow a tripped limit: it re-raises it.
local function pass_limits(ok, ...)
  if not ok and core.limit_tripped() then error((...), 0) end
  return ok, ...
end

--- How deeply the built-ins that call back into Lua (string.gsub with a function, table.sort's
--- comparator, table.foreach and foreachi) may nest: each level is a C frame of several KB, and
--- recursion through them overflows the C stack long before Lua's own recursion limit.
M.MAX_NESTING = 100
local nesting = 0

local function unnest(ok, ...)
  nesting = nesting - 1
  if not ok then error((...), 0) end
  return ...
end

local function pack(...) return { n = select("#", ...), ... } end

--- `f` with its nesting counted, and its callback (argument `at`) called through a Lua function,
--- so that each call back costs instructions even when the callback is a built-in (math.max).
local function counted(f, at)
  return function(...)
    if nesting >= M.MAX_NESTING then
      error(("callbacks nest deeper than %d levels (gsub, sort or foreach calling back into itself)")
        :format(M.MAX_NESTING), 2)
    end
    local args = pack(...)
    local callback = args[at]
    if type(callback) == "function" then args[at] = function(...) return callback(...) end end
    nesting = nesting + 1
    return unnest(pcall(f, unpack(args, 1, args.n)))
  end
end

SAFE_STRING.gsub = counted(string.gsub, 3)  -- methods of strings too: ("a"):gsub(".", f)

--- A fresh environment holding copies of the allowed libraries (changes stay inside it).
---@return table
function M.environment()
  local env = {}
  for _, name in ipairs(M.GLOBALS) do env[name] = _G[name] end
  env.math, env.table, env.string = copy(math), copy(table), copy(SAFE_STRING)
  env.table.sort, env.table.foreach, env.table.foreachi = counted(table.sort, 2), counted(table.foreach, 2),
    counted(table.foreachi, 2)
  env.pcall = function(f, ...) return pass_limits(pcall(f, ...)) end
  return env
end

--- Calls `fn(...)` under the limits; an error (from fn, with its line, or a limit) is raised
--- as "WHAT: message". Functions a sandboxed file returned must be called through here too.
---@param what string names the file for messages, e.g. "thresholds file t.lua"
---@param fn function
---@param ... any fn's arguments
---@return any ... what fn returns (at most 100 values)
function M.call(what, fn, ...)
  local lim = M.limits()
  -- count hooks do not run inside compiled traces, and built-ins written in Lua (table.foreachi)
  -- are compiled wherever they are called from: no compiled code runs while a sandbox does
  local jit_was_on = jit.status()
  jit.off()
  jit.flush()
  local smt = debug.getmetatable("")
  local saved = smt.__index
  smt.__index = SAFE_STRING
  local outer = nesting
  nesting = 0
  local res = pack(core.run_limited(fn, { instructions = lim.instructions, memory = lim.memory_mb * 2 ^ 20,
                                          seconds = lim.seconds, what = what }, ...))
  nesting = outer
  smt.__index = saved
  if jit_was_on then jit.on() end
  if res[1] then
    if res.n > 101 then error(("%s: returns %d values; at most 100 (a file returns a table)"):format(what, res.n - 1), 0) end
    return unpack(res, 2, res.n)
  end
  local msg, tripped = res[2], res[3]
  if tripped == "instructions" then
    msg = ("instruction budget of %d exceeded (an endless loop?); PARITY_SANDBOX_INSTRUCTIONS raises it")
      :format(lim.instructions)
  elseif tripped == "memory" then
    msg = ("memory cap of %d MB exceeded; PARITY_SANDBOX_MB raises it"):format(lim.memory_mb)
  end
  error(("%s: %s"):format(what, tostring(msg)), 0)
end

--- Loads a Lua file as text only: precompiled bytecode is refused with a clear message.
---@param path string
---@return function|nil chunk
---@return string|nil error
function M.load_text(path)
  local chunk, err = loadfile(path, "t")
  if not chunk and tostring(err):find("wrong mode", 1, true) then
    err = ("%s: precompiled bytecode is refused; Lua files are loaded as text only"):format(path)
  end
  return chunk, err
end

--- Loads a Lua file as text into a fresh sandbox environment and runs it; returns what it returns.
---@param path string
---@param what string|nil what the file is, for messages (default "sandboxed file")
---@return any ... what the file returns (at most 100 values)
function M.run_file(path, what)
  what = what or "sandboxed file"
  local chunk, err = M.load_text(path)
  if not chunk then error(("%s: %s"):format(what, tostring(err)), 0) end  -- err names the file
  what = ("%s %s"):format(what, path)
  setfenv(chunk, M.environment())
  return M.call(what, chunk)
end

return M
