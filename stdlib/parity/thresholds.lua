--- Gate thresholds: the seeds' defaults, overridable from a Lua table or a thresholds file.
--- A thresholds file is a Lua chunk returning a table; it runs sandboxed (an empty
--- environment: no io, os, require), because such files are shared between teams.
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

local function check_table(t, origin)
  if type(t) ~= "table" then error(("%s: thresholds must be a table, got %s"):format(origin, type(t)), 0) end
  for k, v in pairs(t) do
    if M.DEFAULTS[k] == nil then
      local names = {}
      for name in pairs(M.DEFAULTS) do names[#names + 1] = name end
      table.sort(names)
      error(("%s: unknown threshold '%s' (known: %s)"):format(origin, tostring(k), table.concat(names, ", ")), 0)
    end
    if type(v) ~= "number" then error(("%s: threshold '%s' must be a number"):format(origin, k), 0) end
  end
  return t
end

--- Loads a thresholds file in a sandbox.
---@param path string
---@return table
function M.load_file(path)
  local chunk, err = loadfile(path)
  if not chunk then error(("thresholds file: %s"):format(err), 0) end
  setfenv(chunk, {})
  local ok, t = pcall(chunk)
  if not ok then error(("thresholds file %s: %s"):format(path, tostring(t)), 0) end
  return check_table(t, path)
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
