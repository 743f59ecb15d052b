--- parity.figures — the per-position figures the e2e legs summarise.
local core = require("parity.core")

local M = {}
--- A per-position figure's distribution (M.dist).
---@class parity.Dist
---@field p5 number
---@field p50 number
---@field p95 number
---@field max number
--- A rate with its standard error (M.rate).
---@class parity.Rate
---@field rate number hits / n (0 when n is 0)
---@field stderr number its standard error, sqrt(rate (1 - rate) / n) (0 when n is 0)
---@field count number hits
---@field of number n

local QS = { 5, 50, 95, 100 }

--- p5/p50/p95/max of a per-position tensor.
---@param t parity.Tensor the per-position figures (every element counts)
---@return parity.Dist
function M.dist(t)
  local p = core.metrics.percentiles(t, QS)
  return { p5 = p[1], p50 = p[2], p95 = p[3], max = p[4] }
end

--- A rate of `hits` in `n` with its standard error.
---@param hits number
---@param n number
---@return parity.Rate
function M.rate(hits, n)
  local r = n > 0 and hits / n or 0
  return { rate = r, stderr = n > 0 and math.sqrt(r * (1 - r) / n) or 0, count = hits, of = n }
end

return M
