--- parity.figures — the per-position figures the e2e legs summarise.
local core = require("parity.core")

local M = {}

local QS = { 5, 50, 95, 100 }

--- p5/p50/p95/max of a per-position tensor.
function M.dist(t)
  local p = core.metrics.percentiles(t, QS)
  return { p5 = p[1], p50 = p[2], p95 = p[3], max = p[4] }
end

--- A rate of `hits` in `n` with its standard error.
function M.rate(hits, n)
  local r = n > 0 and hits / n or 0
  return { rate = r, stderr = n > 0 and math.sqrt(r * (1 - r) / n) or 0, count = hits, of = n }
end

return M
