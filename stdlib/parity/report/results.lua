--- parity.report.results — what every renderer needs of a finished results directory: its
--- verdict and stage files read (their non-finite figures, which JSON carries as "NaN" and
--- "Infinity", back as numbers), the text escaped for XML and HTML, numbers formatted, and a
--- criterion's state.
local core = require("parity.core")

local M = {}

--- A figure as a number: JSON's "Infinity"/"-Infinity"/"NaN" strings too; nil for anything else.
---@param x any
---@return number|nil
function M.number(x)
  if type(x) == "number" then return x end
  if x == "Infinity" then return math.huge elseif x == "-Infinity" then return -math.huge elseif x == "NaN" then return 0 / 0 end
  return nil
end

--- A number short enough for a table, an axis or a tooltip ("-" for none).
---@param v any
---@return string
function M.fmt(v)
  v = M.number(v)
  if v == nil then return "-" end
  if v ~= v then return "NaN" end
  if v == math.huge then return "inf" elseif v == -math.huge then return "-inf" end
  return (("%.4g"):format(v))
end

--- Text as XML (and HTML) character data or attribute value: the five entities; control
--- characters, which XML 1.0 cannot carry, as their code.
---@param s any
---@return string
function M.escape(s)
  s = tostring(s)
  s = s:gsub("[%z\1-\8\11\12\14-\31]", function(c) return ("\\x%02x"):format(c:byte()) end)
  return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&apos;" }))
end

-- the non-finite figures back as numbers, in place, at any depth
local function decode(t, depth)
  if depth > 8 then return t end
  for k, x in pairs(t) do
    if type(x) == "table" then decode(x, depth + 1)
    elseif x == "NaN" or x == "Infinity" or x == "-Infinity" then t[k] = M.number(x) end
  end
  return t
end

--- A JSON file of the results in `out` ("verdict", "e2e", ...), its non-finite figures as
--- numbers; nil and "absent" or "unreadable" when it cannot be read.
---@param out string the results directory
---@param name string the file's name without .json
---@return table|nil
---@return string|nil why
---@return string|nil detail what the JSON reader said of an unreadable one
function M.read(out, name)
  local path = ("%s/%s.json"):format(out, name)
  if core.path_kind(path) ~= "file" then return nil, "absent" end
  local ok, v = pcall(core.json.read, path)
  if not ok or type(v) ~= "table" then return nil, "unreadable", ok and "not a JSON object" or tostring(v) end
  return decode(v, 0)
end

--- The verdict in `out` (M.read's: its non-finite figures as numbers). Raises, in one line,
--- when `out` holds no verdict parity wrote.
---@param out string a results directory
---@return parity.Verdict
function M.verdict(out)
  local v, why, detail = M.read(out, "verdict")
  if why == "absent" then error(("%s: no verdict.json (not a results directory of parity check)"):format(out), 0) end
  if not v or type(v.verdict) ~= "string" then
    error(("%s/verdict.json: not a verdict parity wrote (%s)"):format(out, detail or "no verdict in it"), 0)
  end
  return v
end

--- How a criterion of a verdict came out: "pass", "FAIL", "warn" or "undecided" (its interval
--- holds its bound: `open[name]`, the verdict's inconclusive).
---@param c table a verdict's criterion
---@param open table<string, boolean>
---@return string
function M.state(c, open)
  if open[c.name] then return "undecided" end
  return c.pass and "pass" or c.warn and "warn" or "FAIL"
end

--- The verdict's inconclusive names as a set.
---@param v table
---@return table<string, boolean>
function M.open(v)
  local open = {}
  for _, name in ipairs(type(v.inconclusive) == "table" and v.inconclusive or {}) do open[name] = true end
  return open
end


return M
