--- parity.confidence — how sure the end-to-end criteria's figures are: a bootstrap over sequences.
---
--- The positions of one sequence are correlated (they share a prompt and a context), so the
--- unit resampled is the sequence: each resample draws K of the K sequences with replacement,
--- every position of a drawn sequence with it, and computes the criterion's figure and its bound
--- again (the reference's own figure, which a relative bound scales, is resampled with it). The
--- interval is the resamples' central LEVEL share (the percentile bootstrap). A criterion is
--- inconclusive when the resamples do not agree on it: its bound lies inside the interval of the
--- figure, or (a relative bound) the interval of figure / bound holds 1. The resamples' seed is
--- fixed: the same results give the same intervals.
local core = require("parity.core")

local M = { RESAMPLES = 1000, LEVEL = 0.95, SEED = 0, CHUNK_ELEMENTS = 2 ^ 22 }
--- A criterion's interval (verdict.json: each e2e criterion's `interval`).
---@class parity.Interval
---@field lo number the figure's interval, LEVEL of the resamples between lo and hi
---@field hi number
---@field bound_lo number|nil a relative bound's own interval (it moves with the reference's figure)
---@field bound_hi number|nil
---@field level number
---@field resamples integer
---@field sequences integer K, the unit resampled
---@field conclusive boolean the resamples agree on pass or fail
---@field prompts integer|nil an inconclusive criterion: about how many prompts would decide it
---@field excused string|nil set by parity.verdict: why an open interval decides nothing (the precision-ordering rule)

--- The per-position list `rows` ([K][N] numbers, or booleans: 1 and 0) as a float64 tensor [K, N].
local function tensor(rows)
  if type(rows[1][1]) == "boolean" then
    local n = {}
    for i, row in ipairs(rows) do
      n[i] = {}
      for j, v in ipairs(row) do n[i][j] = v and 1 or 0 end
    end
    rows = n
  end
  return torch.tensor(rows, { dtype = "float64" })
end

--- [B, K*N]: B resamples of the K sequences of `t` [K, N] (drawn by `idx` [B, K]).
local function draw(t, idx)
  return t:index_select(0, idx:reshape({ -1 })):reshape({ idx:size(0), -1 })
end

--- The statistics a criterion is judged on, for each of B resamples: `needs`, the per-position
--- figures it reads, and `f(q, d, th, n)` -> figure [B] and bound [B] (nil: a fixed bound), where
--- d.<name> is figure <name> resampled [B, K*N], q(x, p) each resample's p-quantile and n the
--- positions a resample holds.
M.STATISTICS = {
  r_p95 = { needs = { "r_ratio" }, f = function(q, d) return q(d.r_ratio, 0.95) end },
  r32_p95 = { needs = { "r32" }, f = function(q, d) return q(d.r32, 0.95) end },
  kl = { needs = { "kl", "own_kl" }, f = function(q, d, th)
    return q(d.kl, 0.95), torch.clamp_min(q(d.own_kl, 0.95) * th.kl_ratio, th.kl_floor)
  end },
  cosine = { needs = { "cosine", "own_cosine" }, f = function(q, d, th)
    return 1 - q(d.cosine, 0.05), torch.clamp_min((1 - q(d.own_cosine, 0.05)) * th.cosine_ratio, th.cosine_floor)
  end },
  top1 = { needs = { "top1", "near_tie" }, f = function(_, d, _, n)
    return d.top1:sum(1) / torch.clamp_min(n - d.near_tie:sum(1), 1)
  end },
}

--- The interval lo..hi of the values of `v` [B] at LEVEL.
local function central(v, level)
  local a = (1 - level) / 2
  local p = core.metrics.percentiles(v, { 100 * a, 100 * (1 - a) })
  return p[1], p[2]
end

--- Whether the resamples agree on a criterion, whichever side passes: the figure's interval
--- lo..hi all on one side of a fixed bound (or the interval of figure / bound of 1).
local function agrees(lo, hi, bound) return hi < bound or lo > bound end

--- About how many prompts would decide an inconclusive criterion: the interval's half-width
--- shrinks as 1/sqrt(K), and it must shrink below the figure's distance to its bound. nil when
--- the figure is at its bound (no number of prompts decides it).
---@param k integer the prompts now
---@param half number the interval's half-width now
---@param distance number |figure - bound|
---@return integer|nil
function M.prompts_needed(k, half, distance)
  if distance <= 0 then return nil end
  return math.max(k + 1, math.ceil(k * (half / distance) ^ 2))
end

--- The intervals of the e2e criteria judged in `criteria` (verdict.decide's, each {name, value,
--- threshold, stage}), from the per-position figures of the e2e and e2e32 results: sets
--- `interval` on each criterion it can resample; a check with a single sequence gets none
--- (nothing to resample).
---@param criteria parity.CriterionResult[]
---@param results table<string, table> stage name -> result
---@param th_at fun(dtype: string): parity.Thresholds the thresholds as they apply at a stage's dtype
---@param opts {resamples: integer|nil, level: number|nil, seed: integer|nil}|nil
function M.intervals(criteria, results, th_at, opts)
  opts = opts or {}
  local level, b = opts.level or M.LEVEL, opts.resamples or M.RESAMPLES
  for _, c in ipairs(criteria) do
    local res = results[c.stage]
    local stat = M.STATISTICS[c.name]
    local pp = stat and (c.stage == "e2e" or c.stage == "e2e32") and res and not res.skipped and res.per_position
    local k = pp and pp[stat.needs[1]] and #pp[stat.needs[1]] or 0
    for _, name in ipairs(stat and stat.needs or {}) do
      if not (pp and pp[name]) then k = 0 end  -- results of an older parity: not every figure kept
    end
    if k >= 2 then
      local idx, x = torch.randint(0, k, { b, k }, { seed = opts.seed or M.SEED }), {}
      for _, name in ipairs(stat.needs) do x[name] = tensor(pp[name]) end
      local n = k * #pp[stat.needs[1]][1]
      -- the resamples in chunks of at most M.CHUNK_ELEMENTS drawn positions (memory bounded)
      local chunk, figures, bounds = math.max(1, math.floor(M.CHUNK_ELEMENTS / n)), {}, {}
      for first = 0, b - 1, chunk do
        local d, rows = {}, idx:slice(0, first, math.min(b, first + chunk))
        for name, t in pairs(x) do d[name] = draw(t, rows) end
        figures[#figures + 1], bounds[#bounds + 1] = stat.f(function(t, p) return torch.quantile(t, p, 1) end, d,
          th_at(res.dtype or "fp32"), n)
      end
      local figure, bound = torch.cat(figures), #bounds > 0 and torch.cat(bounds) or nil
      local lo, hi = central(figure, level)
      if lo == lo and hi == hi then  -- (a NaN figure has no interval: the finite criteria judge it)
        local iv = { lo = lo, hi = hi, level = level, resamples = b, sequences = k }
        if bound then
          iv.bound_lo, iv.bound_hi = central(bound, level)
          local rlo, rhi = central(figure / torch.clamp_min(bound, 1e-300), level)
          iv.conclusive = agrees(rlo, rhi, 1)
        else
          iv.conclusive = agrees(lo, hi, c.threshold)
        end
        if not iv.conclusive then
          iv.prompts = M.prompts_needed(k, (hi - lo) / 2, math.abs(c.value - c.threshold))
        end
        c.interval = iv
      end
    end
  end
end

return M
