--- Thresholds of the verdict's criteria: defaults, overridable from a Lua table or a thresholds file.
--- A thresholds file is a Lua chunk returning a table; it runs in parity.sandbox (text only,
--- safe globals, limits), because such files are shared between teams. Values are validated.
local sandbox = require("parity.sandbox")
local validate = require("parity.validate")

local M = {}

--- name -> default. Criteria compare per-position percentiles of the e2e stages; the
--- distributional ones are relative to what the reference itself does at the low precision
--- on the same positions, with an absolute floor for the near-zero case. The README
--- ("Thresholds") gives the measurements behind each default.
M.DEFAULTS = {
  r_p95 = 1.2,          -- R = ||t - r32|| / ||r_low - r32||: p95 must be below this (seeds: tau_R)
  r_p50_precision = 1.1,  -- with an exact fp32 leg, R p95 >= r_p95 is only a warning (precision
                          -- ordering) while R p50 stays below this
  r32_p95 = 3e-4,       -- the fp32 leg, R32 = ||t32 - r32|| / ||r_low - r32||: p95 must be below this
  kl_ratio = 2.0,       -- KL(P_r32 || P_t) p95 <= max(kl_ratio x the reference's own KL p95, kl_floor)
  kl_floor = 1e-4,      --   (the reference's own: KL(P_r32 || P_r_low)), in nats
  cosine_ratio = 2.0,   -- 1 - cosine p5 <= max(cosine_ratio x the reference's own 1 - cosine p5,
  cosine_floor = 1e-6,  --   cosine_floor)
  top1 = 0.5,           -- top-1 agreement, near-ties excluded, must be above this (seeds: > 50%)
  tie_factor = 2.0,     -- a flip is a near-tie when the reference's top-2 gap <= tie_factor x its
                        -- own precision noise at that position (max |ref_low - ref32|)
  smoke_match = 0.3,    -- smoke: a greedy match rate below this x the reference's own low-precision
                        -- match rate is a warning (seeds: 30% liveness)
  r_over = 0.8,         -- a component whose own R is below this is markedly more precise than the
                        -- reference at the low precision (seeds: over-precision, an extra upcast): a warning
  row_z = 4,            -- a component is consistently less precise than the reference when its rows'
  row_r_p50 = 1.05,     --   R_i > 1 at more rows than chance allows (the sign test's z >= row_z: one
                        --   in 30,000 components by chance) and their R p50 >= row_r_p50
}

--- name -> {lo, hi}: the closed range a value must lie in (finite numbers only).
M.RANGES = {
  r_p95 = { 0, math.huge }, r_p50_precision = { 0, math.huge }, r32_p95 = { 0, math.huge },
  kl_ratio = { 0, math.huge }, kl_floor = { 0, math.huge }, cosine_ratio = { 0, math.huge },
  cosine_floor = { 0, 2 }, top1 = { 0, 1 }, tie_factor = { 0, math.huge }, smoke_match = { 0, 1 }, r_over = { 0, 1 },
  row_z = { 0, math.huge }, row_r_p50 = { 0, math.huge },
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
    if type(v) ~= "number" then
      error(("%s: threshold '%s' must be a number, got %s"):format(origin, k,
        type(v) == "string" and ("the string %q"):format(v) or type(v)), 0)
    end
    validate.number(("%s: threshold '%s'"):format(origin, k), v, M.RANGES[k][1], M.RANGES[k][2])
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
