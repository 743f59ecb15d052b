--- parity.recipe — calibration recipes: thresholds with their provenance, shared between teams.
---
--- A recipe is a data-only Lua file `parity calibrate` writes: a table with the thresholds it
--- derived (and per component class), the rule and the sample size behind each, the runs they
--- came from (their models' file hashes, dtype, prompts, baseline), parity's version and the
--- recipe schema, and a SHA-256 of all of that. It loads in parity.sandbox like every shared
--- file; one edited after calibration (its hash), of a newer schema, or for another dtype or
--- baseline than the check's is refused, saying why (docs/calibration.md).
local core = require("parity.core")
local sandbox = require("parity.sandbox")
local thresholds = require("parity.thresholds")

local M = {}

--- The recipe schema this parity writes and reads (a recipe of a newer one is refused).
M.SCHEMA = 1

--- A recipe as it loads: the fields `parity calibrate` writes.
---@class parity.Recipe
---@field parity_recipe integer its schema (M.SCHEMA)
---@field parity_version string
---@field made string when (UTC, ISO 8601)
---@field dtype string the target's precision its checks compared ("bf16", "fp16")
---@field noise_dtype string the precision whose noise was their yardstick
---@field baseline string "3-tensor" or "2-tensor"
---@field rule table {quantile, margin, floors}: how each threshold was derived
---@field thresholds table threshold name -> value, with by_class (parity.thresholds.PER_CLASS)
---@field derived table threshold name -> {value, default, n, figure, quantile, rule}
---@field runs table[] {results, reference, target, reference_sha256, target_sha256, prompts, new_tokens, verdict}
---@field holdout table|nil {k, splits, false_alarm_rate, ...} (parity calibrate --holdout)
---@field null table|nil {seeds, perturbation, modules, runs_dir} (parity calibrate --reference)
---@field bugs table[]|nil the --bugs runs, each with the criteria it fails under the recipe
---@field sha256 string of the rest (M.digest)
---@field file string|nil where it was loaded from (not in the file)

--- The hash a recipe carries: SHA-256 of its canonical JSON (keys sorted) without `sha256`.
---@param r table
---@return string
function M.digest(r)
  local copy = {}
  for k, v in pairs(r) do
    if k ~= "sha256" and k ~= "file" then copy[k] = v end
  end
  return core.hash_string(core.json.encode(copy))
end

local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local function literal(v, indent)
  local kind = type(v)
  if kind == "number" then
    if v ~= v or v == math.huge or v == -math.huge then error("recipe: a figure is not finite", 0) end
    return v == math.floor(v) and math.abs(v) < 2 ^ 53 and ("%d"):format(v) or ("%.17g"):format(v)
  elseif kind == "string" then
    return ("%q"):format(v):gsub("\\\n", "\\n")
  elseif kind == "boolean" then
    return tostring(v)
  elseif kind == "table" then
    if next(v) == nil then return "{}" end
    local inner, lines = indent .. "  ", {}
    if is_list(v) then
      for _, x in ipairs(v) do lines[#lines + 1] = inner .. literal(x, inner) .. "," end
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do
        local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[%s]"):format(literal(k, inner))
        lines[#lines + 1] = ("%s%s = %s,"):format(inner, key, literal(v[k], inner))
      end
    end
    return "{\n" .. table.concat(lines, "\n") .. "\n" .. indent .. "}"
  end
  error(("recipe: cannot write a %s"):format(kind), 0)
end

--- A recipe's file text: a comment saying what it is, then `return { ... }` with its hash.
---@param r table the recipe without its hash (M.digest adds it)
---@return string
function M.render(r)
  local copy = {}
  for k, v in pairs(r) do copy[k] = v end
  copy.sha256 = M.digest(r)
  return ("-- A parity calibration recipe (docs/calibration.md), written by parity calibrate: data only.\n"
    .. "-- Use it with parity check --recipe FILE; a --thresholds file overrides single values. Its sha256\n"
    .. "-- covers every other field: an edited recipe is refused (calibrate again instead).\n"
    .. "return %s\n"):format(literal(copy, ""))
end

local function refuse(path, why) error(("recipe %s: %s"):format(path, why), 0) end

--- Loads a recipe file in the sandbox and checks its schema, its hash and its thresholds.
---@param path string
---@return parity.Recipe
function M.load(path)
  local r = sandbox.run_file(path, "recipe")
  if type(r) ~= "table" then refuse(path, ("a recipe returns a table, got %s"):format(type(r))) end
  local schema = r.parity_recipe
  if type(schema) ~= "number" then
    refuse(path, "not a recipe (no parity_recipe schema field): a thresholds file goes to --thresholds")
  end
  if schema > M.SCHEMA then
    refuse(path, ("made by a newer parity (recipe schema %s; this parity %s reads up to %d): upgrade parity, or"
      .. " calibrate again with this one"):format(tostring(schema), core.version():match("^parity (%S+)") or "",
        M.SCHEMA))
  end
  if schema < 1 or schema ~= math.floor(schema) then refuse(path, ("schema %s is no recipe schema"):format(schema)) end
  if type(r.sha256) ~= "string" or r.sha256 ~= M.digest(r) then
    refuse(path, "its content does not match its sha256: it was changed after calibration (calibrate again, or"
      .. " put single values in a --thresholds file)")
  end
  for _, field in ipairs({ "dtype", "noise_dtype", "baseline", "made" }) do
    if type(r[field]) ~= "string" then refuse(path, ("its %s is missing"):format(field)) end
  end
  thresholds.check(r.thresholds, "recipe " .. path)
  r.file = path
  return r
end

--- Refuses a recipe made for other checks than this one: another precision under test, another
--- noise yardstick or another baseline.
---@param r parity.Recipe
---@param dtype string the target's precision under test (Context.target_dtype)
---@param noise string the precision whose noise is the yardstick (Context.dtype)
---@param baseline string the check's baseline (Context.baseline)
function M.fits(r, dtype, noise, baseline)
  if r.dtype ~= dtype or r.noise_dtype ~= noise then
    refuse(r.file, ("calibrated on checks of a %s target against %s noise, this check is of a %s target against %s"
      .. " noise: its bounds are in units of another precision's noise (calibrate on checks like this one, or pass"
      .. " --dtype %s)"):format(r.dtype, r.noise_dtype, dtype, noise, r.dtype))
  end
  if r.baseline ~= baseline then
    refuse(r.file, ("calibrated with the %s baseline, this check uses %s: R is measured against another yardstick"
      .. " (pass --baseline %s, or calibrate on %s checks)"):format(r.baseline, baseline, r.baseline, baseline))
  end
end

--- What verdict.json says of the recipe a check used.
---@param r parity.Recipe
---@return table {file, sha256, made, dtype, noise_dtype, baseline, runs, from ("good runs" or "null runs")}
function M.summary(r)
  return { file = r.file, sha256 = r.sha256, made = r.made, dtype = r.dtype, noise_dtype = r.noise_dtype,
           baseline = r.baseline, runs = #(r.runs or {}), from = r.null and "null runs" or "good runs" }
end

return M
