--- A small spec runner for Lua tests run inside the host (`parity run spec_file.lua`).
--- describe/it register cases; expectations count assertions; run() prints one line a case
--- and returns the exit code: 1 when a case failed or made no assertion, else 0.
local M = {}

local cases, prefix, assertions = {}, {}, 0

--- A group of cases: `body` runs now, and the cases it registers are named "NAME case".
---@param name string
---@param body fun()
function M.describe(name, body)
  prefix[#prefix + 1] = name
  body()
  prefix[#prefix] = nil
end

--- Registers a case (run by M.run), named after the enclosing describes.
--- With PARITY_SPEC_ONLY set, only the cases whose full name contains it (plain text) run.
---@param name string
---@param body fun()
function M.it(name, body)
  local full = table.concat(prefix, " ") .. (#prefix > 0 and " " or "") .. name
  local only = os.getenv("PARITY_SPEC_ONLY")
  if only and only ~= "" and not full:find(only, 1, true) then return end
  cases[#cases + 1] = { name = full, body = body }
end

local function fail(msg, level)
  error(msg, (level or 1) + 2)
end

--- A value as text; tables as { k = v, ... } (keys sorted, 3 levels, 400 characters at most).
local function show(v, depth)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) ~= "table" or getmetatable(v) ~= nil then return tostring(v) end
  depth = depth or 0
  if depth >= 3 then return "{...}" end
  local keys, parts = {}, {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == "number" and type(b) == "number" then return a < b end
    return type(a) == type(b) and tostring(a) < tostring(b) or type(a) == "number"
  end)
  for _, k in ipairs(keys) do
    local key = type(k) == "number" and k <= #v and "" or (tostring(k) .. " = ")
    parts[#parts + 1] = key .. show(v[k], depth + 1)
  end
  local text = "{ " .. table.concat(parts, ", ") .. " }"
  return #text > 400 and text:sub(1, 397) .. "..." or text
end

local function deep_equal(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do
    if not deep_equal(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

--- Equal values; tables compare deeply, tensors with torch.equal.
---@param actual any
---@param expected any
---@param what string|nil names the value in the failure message
function M.eq(actual, expected, what)
  assertions = assertions + 1
  if not deep_equal(actual, expected) then
    fail(("%sexpected %s, got %s"):format(what and (what .. ": ") or "", show(expected), show(actual)))
  end
end

--- A file's whole content (raises, naming it, when it cannot be read).
---@param path string
---@return string
function M.read(path)
  local f = assert(io.open(path, "rb"), "cannot read " .. path)
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes `text` to the file at `path`.
---@param path string
---@param text string
function M.write(path, text)
  local f = assert(io.open(path, "wb"), "cannot write " .. path)
  f:write(text)
  f:close()
end

--- A path as an absolute one (relative ones from the working directory).
---@param path string
---@return string
function M.absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("pwd")
  local cwd = p:read("*l")
  p:close()
  return cwd .. "/" .. path
end

--- A fresh path in the temporary directory, nothing there (`create`: made a directory).
---@param create boolean|nil
---@return string
function M.tmpdir(create)
  local d = os.tmpname()
  os.remove(d)
  if create then os.execute(("mkdir -p %q"):format(d)) end
  return d
end

--- `now` equals the snapshot file at `path`; with PARITY_API_UPDATE=1 the file is written first
--- (an intended change accepted).
---@param path string
---@param now string the text as it is now
---@param what string names the snapshot in the failure message
function M.snapshot(path, now, what)
  if os.getenv("PARITY_API_UPDATE") == "1" then M.write(path, now) end
  M.eq(now, M.read(path), what .. " (PARITY_API_UPDATE=1 accepts an intended change)")
end

--- |actual - expected| <= tol (default 1e-6).
---@param actual any must be a number
---@param expected number
---@param tol number|nil
---@param what string|nil names the value in the failure message
function M.near(actual, expected, tol, what)
  assertions = assertions + 1
  tol = tol or 1e-6
  if type(actual) ~= "number" or not (math.abs(actual - expected) <= tol) then
    fail(("%sexpected %s ± %g, got %s"):format(what and (what .. ": ") or "", show(expected), tol, show(actual)))
  end
end

--- `v` is neither nil nor false.
---@param v any
---@param what string|nil names the value in the failure message
function M.truthy(v, what)
  assertions = assertions + 1
  if not v then fail(("%sexpected a true value, got %s"):format(what and (what .. ": ") or "", show(v))) end
end

--- fn() must raise an error whose message contains `needle` (plain text); returns the error.
---@param fn fun()
---@param needle string
---@return any err the error value raised
function M.raises(fn, needle)
  assertions = assertions + 1
  local ok, err = pcall(fn)
  if ok then fail(("expected an error containing %q, got none"):format(needle)) end
  if not tostring(err):find(needle, 1, true) then
    fail(("expected an error containing %q, got: %s"):format(needle, tostring(err)))
  end
  return err
end

--- Runs every registered case, printing a line each and a count; returns the exit code (1 when
--- a case failed, a case made no assertion, or there was none; else 0) and forgets the cases.
---@return integer
function M.run()
  local failed = 0
  for _, case in ipairs(cases) do
    local before = assertions
    local ok, err = xpcall(case.body, debug.traceback)
    if ok and assertions == before then ok, err = false, "no assertion ran" end
    if ok then
      print("ok   " .. case.name)
    else
      failed = failed + 1
      print("FAIL " .. case.name .. "\n     " .. tostring(err):gsub("\n", "\n     "))
    end
  end
  local n = #cases
  print(("%d cases, %d failed, %d assertions"):format(n, failed, assertions))
  cases, assertions = {}, 0
  return (failed > 0 or n == 0) and 1 or 0
end

return M
