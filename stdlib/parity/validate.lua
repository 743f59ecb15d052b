--- One validation helper for every entry point (CLI flags, parity.gate{}, parity.check{}):
--- numbers must be finite and in range, counts whole. Errors name the setting and the value.
local M = {}

local function finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end

--- A whole number in lo..hi.
---@param name string
---@param v any
---@param lo integer
---@param hi integer
---@return integer
function M.integer(name, v, lo, hi)
  if not finite(v) or v ~= math.floor(v) or v < lo or v > hi then
    if hi >= 2 ^ 53 then
      error(("%s must be a whole number >= %d, got %s"):format(name, lo, tostring(v)), 0)
    end
    error(("%s must be a whole number in %d..%d, got %s"):format(name, lo, hi, tostring(v)), 0)
  end
  return v
end

--- A finite number in lo..hi.
---@param name string
---@param v any
---@param lo number
---@param hi number
---@return number
function M.number(name, v, lo, hi)
  if not finite(v) or v < lo or v > hi then
    local range = hi == math.huge and (">= %g"):format(lo) or ("in %g..%g"):format(lo, hi)
    error(("%s must be a finite number %s, got %s"):format(name, range, tostring(v)), 0)
  end
  return v
end

--- The number a decimal literal writes ("12", "-0.5", "1e-3"), else nil: unlike tonumber, no
--- hexadecimal ("0x2"), no surrounding spaces (" 2"), no "nan" or "inf" (an overflowing literal,
--- "1e999", is inf: range checks then refuse it, naming the setting).
---@param text string
---@return number|nil
function M.decimal(text)
  if type(text) ~= "string" then return nil end
  local mantissa, exponent = text:match("^[-+]?(%d*%.?%d*)([eE]?[-+]?%d*)$")
  if not mantissa or not mantissa:find("%d") or (exponent ~= "" and not exponent:find("^[eE][-+]?%d+$")) then
    return nil
  end
  return tonumber(text)
end

--- A number from the environment: `default` when unset or empty, else `text` must be a number
--- (whole when `whole`) in lo..hi; an error names the variable and quotes what it held, like
--- the host's env_integer.
---@param name string the environment variable
---@param default number
---@param lo number
---@param hi number
---@param whole boolean|nil digits only, a whole number
---@return number
function M.env(name, default, lo, hi, whole)
  local text = os.getenv(name)
  if not text or text == "" then return default end
  local v = M.decimal(text)
  local ok = v and v == v and v >= lo and v <= hi and (not whole or (text:match("^%d+$") and v == math.floor(v)))
  if not ok then
    error(("%s must be a %s in %s..%s, got '%s'"):format(name, whole and "whole number" or "finite number",
      whole and ("%d"):format(lo) or ("%g"):format(lo), whole and ("%d"):format(hi) or ("%g"):format(hi), text), 0)
  end
  return v
end

--- Validates the settings present in `values` against `rules` (name -> {kind, lo, hi} with kind
--- "integer" or "number"); absent ones stay absent. Names are checked in sorted order, so the
--- first error is the same on every run.
---@param values table
---@param rules table
---@return table values
function M.settings(values, rules)
  local names = {}
  for name in pairs(rules) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local rule, v = rules[name], values[name]
    if v ~= nil then M[rule[1]](name, v, rule[2], rule[3]) end
  end
  return values
end

--- Limits of the sizes parity accepts, checked before anything is allocated.
M.MAX = { rows = 1024, tokens = 131072, new_tokens = 4096, topk = 1000, vocab = 2 ^ 31 - 1, seed = 2 ^ 53 }

--- A table's keys, sorted (what an "unknown X (known: ...)" message lists, and a stable order
--- to walk a table in).
---@param t table
---@return string[]
function M.sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

return M
