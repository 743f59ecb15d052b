--- Gate thresholds: the seeds' defaults, overridable from a Lua table or a thresholds file.
--- A thresholds file is a Lua chunk returning a table; it runs in parity.sandbox (text only,
--- safe globals, limits), because such files are shared between teams. Values are validated.
local sandbox = require("parity.sandbox")

local M = {}

--- name -> {default, meaning}. Gates compare per-position percentiles of the e2e stage.
M.DEFAULTS = {
  r_p95 = 1.2,         -- R-ratio p95 must be below this (seeds: tau_R)
  cosine_p5 = 0.95,    -- cosine p5 must be at least this (seeds: theta)
  kl_p95 = 0.05,       -- KL(P_ref32 || P_target) p95 must be at most this, in nats (seeds: delta,
                       -- "calibrated from known-good ports"; this default is a loose one)
  top1 = 0.5,          -- top-1 agreement, near-ties excluded, must be above this (seeds: > 50%)
  tie_factor = 2.0,    -- a flip is a near-tie when the reference's top-2 gap <= tie_factor x its
                       -- own precision noise at that position (max |ref_low - ref32|)
  smoke_match = 0.3,   -- smoke: greedy match rate below this is reported as not live (seeds: 30%)
}

--- name -> {lo, hi}: the closed range a value must lie in (finite numbers only).
M.RANGES = {
  r_p95 = { 0, math.huge }, cosine_p5 = { -1, 1 }, kl_p95 = { 0, math.huge }, top1 = { 0, 1 },
  tie_factor = { 0, math.huge }, smoke_match = { 0, 1 },
}

local function check_table(t, origin)
  if type(t) ~= "table" then error(("%s: thresholds must be a table, got %s"):format(origin, type(t)), 0) end
  for k, v in pairs(t) do
    if M.DEFAULTS[k] == nil then
      local names = {}
      for name in pairs(M.DEFAULTS) do names[#names + 1] = name end
      table.sort(names)
      error(("%s: unknown threshold '%s' (known: %s)"):format(origin, tostring(k), table.concat(names, ", ")), 0)
    end
    local lo, hi = M.RANGES[k][1], M.RANGES[k][2]
    if type(v) ~= "number" then
      error(("%s: threshold '%s' must be a number, got %s"):format(origin, k,
        type(v) == "string" and ("the string %q"):format(v) or type(v)), 0)
    end
    if not (v >= lo and v <= hi and v > -math.huge and v < math.huge) then
      local range = hi == math.huge and (">= %g"):format(lo) or ("in %g..%g"):format(lo, hi)
      error(("%s: threshold '%s' must be a finite number %s, got %s"):format(origin, k, range, tostring(v)), 0)
    end
  end
  return t
end

--- Loads a thresholds file in a sandbox.
---@param path string
---@return table
function M.load_file(path)
  return check_table((sandbox.run_file(path, "thresholds file")), "thresholds file " .. path)
end

--- Defaults overlaid with `overrides` (a table, or nil).
---@param overrides table|nil
---@return table
function M.resolve(overrides)
  local out = {}
  for k, v in pairs(M.DEFAULTS) do out[k] = v end
  for k, v in pairs(check_table(overrides or {}, "thresholds")) do out[k] = v end
  return out
end

return M
