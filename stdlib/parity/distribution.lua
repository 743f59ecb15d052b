--- parity.distribution — the error distributions a report plots (the seeds' pair of plots for a
--- component test, 002's tensor_compare.py): the target's error against the reference's own
--- low-precision error, as matched quantiles (a QQ plot: a port that adds no error of its own lies
--- on the diagonal) and as histograms over shared bins. Bounded: a few hundred numbers, whatever
--- the tensors' size.
local core = require("parity.core")
local m = core.metrics

local M = {}

local function finite(t)
  local bad = m.non_finite(t)
  return bad.nan == 0 and bad.inf == 0
end

--- The percentiles a sketch keeps (dense in the tails, where a bug shows first).
M.PERCENTILES = { 0.1, 0.5 }
for p = 1, 99 do M.PERCENTILES[#M.PERCENTILES + 1] = p end
M.PERCENTILES[#M.PERCENTILES + 1] = 99.5
M.PERCENTILES[#M.PERCENTILES + 1] = 99.9
M.BINS = 40
--- Elements beyond this are sampled (the same seeded uniform draw, with replacement, for every
--- output), and the sketch says so.
M.MAX_ELEMENTS = 262144

-- the elements kept of a tensor of n: all, or the seeded draw `pick` (sampled before any copy:
-- an output of a large vocabulary is never copied whole in float64)
local function flat(t, pick)
  local x = t:reshape({ -1 })
  if pick then x = x:index_select(0, pick) end
  return x:double()
end

local function bins(lo, hi)
  if not (hi > lo) then lo, hi = lo - 1e-12, hi + 1e-12 end
  local edges, width = {}, (hi - lo) / M.BINS
  for i = 0, M.BINS do edges[i + 1] = lo + i * width end
  return edges
end

--- The sketch of errors against a reference output: quantiles and histograms of each
--- `outputs[name] - reference` (signed, in float64). The histograms of the names in `shared`
--- share their bins (the reference's own error and the target's at the same precision, to be
--- read against each other); any other has its own.
---@param reference parity.Tensor the reference's fp32 output
---@param outputs table<string, parity.Tensor> name -> an output of the same shape ("reference": the reference's own low precision)
---@param order string[] the names, in the order the sketch lists them
---@param shared table<string, boolean> the names whose histograms share bins
---@return table|nil sketch {elements, sampled, percentiles, quantiles = {name = {...}}, histograms = {name = {edges, counts}}, clipped, excluded = {name = why}}: an output holding NaN or Inf is left out and said so in excluded (reference_fp32: the reference's own, then nothing else); nil when no output matches
function M.sketch(reference, outputs, order, shared)
  local errs, names, n, excluded = {}, {}, reference:numel(), {}
  if n == 0 then return nil end
  local function bad(t)
    local c = m.non_finite(t)
    return (c.nan > 0 or c.inf > 0) and ("%d NaN and %d infinite values"):format(c.nan, c.inf) or nil
  end
  local why = bad(reference)
  if why then return { elements = n, excluded = { reference_fp32 = why } } end
  -- (a seeded uniform draw past M.MAX_ELEMENTS: strides could keep picking the same vocabulary columns)
  local pick = n > M.MAX_ELEMENTS and torch.randint(0, n, { M.MAX_ELEMENTS }, { seed = 0 }) or nil
  local r = flat(reference, pick)
  for _, name in ipairs(order) do
    local t = outputs[name]
    if t and t:is_same_size(reference) then
      why = bad(t)
      if why then excluded[name] = why
      else
        errs[name] = flat(t, pick) - r
        names[#names + 1] = name
      end
    end
  end
  if #names == 0 then return next(excluded) and { elements = n, excluded = excluded } or nil end
  local quantiles, lo, hi = {}, math.huge, -math.huge
  for _, name in ipairs(names) do
    local q = m.percentiles(errs[name], M.PERCENTILES)
    quantiles[name] = q
    if shared[name] then lo, hi = math.min(lo, q[1]), math.max(hi, q[#q]) end
  end
  -- bins over the 0.1 .. 99.9 percentile range; the rest counted in the end bins
  local common = lo <= hi and bins(lo, hi) or nil
  local histograms = {}
  for _, name in ipairs(names) do
    local q, x = quantiles[name], errs[name]
    local edges = shared[name] and common or bins(q[1], q[#q])
    local a, b = edges[1], edges[#edges]
    histograms[name] = { edges = edges, counts = x:clamp(a, b):histc(M.BINS, a, b):tolist() }
  end
  return { elements = n, sampled = pick and M.MAX_ELEMENTS or core.json.null, percentiles = M.PERCENTILES, quantiles = quantiles,
           histograms = histograms, clipped = "values past the 0.1 and 99.9 percentiles are counted in the end bins",
           excluded = next(excluded) and excluded or nil }
end

return M
