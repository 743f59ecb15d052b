-- parity.confidence: the e2e criteria's intervals, resampled over sequences, against the
-- resampling worked out by hand on two sequences (each resample is AA, BB or a mix, with
-- probabilities 1/4, 1/4 and 1/2, so the central 95% of 1000 resamples runs from AA's figure to
-- BB's); and a borderline port at two prompts, inconclusive, exit 3.
local spec = require("parity.spec")
local it, eq, near, truthy = spec.it, spec.eq, spec.near, spec.truthy
local conf = require("parity.confidence")
local fx = assert(arg[1], "usage: confidence_spec.lua FIXTURES_DIR")

local function interval(name, per_position, value, threshold, th, opts)
  local c = { name = name, stage = "e2e", value = value, threshold = threshold }
  conf.intervals({ c }, { e2e = { dtype = "bf16", per_position = per_position } }, function() return th or {} end, opts)
  return c.interval
end

it("R p95: from the p95 of the first sequence alone to the second's, and whether the bound lies inside", function()
  -- A = {1, 2}: AA's p95 (of 1, 1, 2, 2) is 2; BB's (3, 3, 4, 4) 4; AB's (1, 2, 3, 4) 3.85
  local rows = { r_ratio = { { 1, 2 }, { 3, 4 } } }
  local iv = interval("r_p95", rows, 3.85, 3)
  eq(iv.lo, 2); eq(iv.hi, 4); eq(iv.sequences, 2); eq(iv.level, 0.95)
  eq(iv.conclusive, false, "3 lies inside 2..4")
  -- half-width 1 over a distance of 0.85: 2 x (1 / 0.85)^2 = 2.77 -> 3 prompts
  eq(iv.prompts, 3)
  eq(interval("r_p95", rows, 3.85, 5).conclusive, true, "every resample passes")
  eq(interval("r_p95", rows, 3.85, 1.5).conclusive, true, "every resample fails")
  -- the central 60% still reaches AA and BB (25% each); the central 40% holds the mixes only
  iv = interval("r_p95", rows, 3.85, 3, nil, { level = 0.6 })
  eq({ iv.lo, iv.hi }, { 2, 4 })
  iv = interval("r_p95", rows, 3.85, 3, nil, { level = 0.4 })
  near(iv.lo, 3.85, 1e-12); near(iv.hi, 3.85, 1e-12); eq(iv.conclusive, true)
  -- resampled a chunk at a time (memory bounded): the same resamples, the same interval
  local whole = interval("r_p95", { r_ratio = { { 1, 2 }, { 3, 4 }, { 2, 5 } } }, 4, 3)
  local saved = conf.CHUNK_ELEMENTS
  conf.CHUNK_ELEMENTS = 7  -- one resample (6 positions) a chunk
  local chunked = interval("r_p95", { r_ratio = { { 1, 2 }, { 3, 4 }, { 2, 5 } } }, 4, 3)
  conf.CHUNK_ELEMENTS = saved
  eq({ chunked.lo, chunked.hi }, { whole.lo, whole.hi })
end)

it("top-1 (near-ties excluded): agreements over the positions that are not near-ties, resampled", function()
  -- A agrees at one of two, B at none: AA 1/2, AB 1/4, BB 0
  local rows = { top1 = { { 1, 0 }, { 0, 0 } }, near_tie = { { false, false }, { false, false } } }
  local iv = interval("top1", rows, 0.25, 0.5)
  eq(iv.lo, 0); eq(iv.hi, 0.5)
  eq(iv.conclusive, false, "a rate above 0.5 is needed: the best resample reaches 0.5 exactly")
  -- A's flip a near-tie: AA 2/2, BB 0/4, AB 1/3
  rows.near_tie[1][2] = true
  iv = interval("top1", rows, 1 / 3, 0.5)
  eq(iv.lo, 0); eq(iv.hi, 1)
end)

it("KL: the figure over its relative bound, both resampled (max(ratio x own, floor))", function()
  local rows = { kl = { { 0.1, 0.1 }, { 0.3, 0.3 } }, own_kl = { { 0.1, 0.1 }, { 0.1, 0.1 } } }
  local iv = interval("kl", rows, 0.3, 0.2, { kl_ratio = 2, kl_floor = 0 })
  eq(iv.lo, 0.1); eq(iv.hi, 0.3); eq(iv.bound_lo, 0.2); eq(iv.bound_hi, 0.2)
  eq(iv.conclusive, false)
  eq(interval("kl", rows, 0.3, 0.4, { kl_ratio = 4, kl_floor = 0 }).conclusive, true)
  eq(interval("kl", rows, 0.3, 0.5, { kl_ratio = 1, kl_floor = 0.5 }).conclusive, true, "the floor decides")
end)

it("a near-uniform reference (random init) is said: entropy over log V, 1 when uniform, near 0 when peaked", function()
  local entropy = require("parity.stages.e2e").entropy
  near(entropy(torch.zeros({ 3, 8 })), 1, 1e-12)
  near(entropy(torch.tensor({ { 0, 0, 0, 100 } })), 0, 1e-12)
  near(entropy(torch.tensor({ { 0, math.log(3) } })), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2), 1e-6)
  local signal
  for _, c in ipairs(require("parity.criteria").TABLE) do if c.name == "signal" then signal = c end end
  local judged = require("parity.criteria").judge(signal, { reference_entropy = 0.998 }, {})
  eq({ judged.pass, judged.warn }, { false, true })
  truthy(judged.rule:find("random%-init"), judged.rule)
  eq(require("parity.criteria").judge(signal, { reference_entropy = 0.3 }, {}).pass, true)
end)

it("one sequence has nothing to resample, and older results without the own figures get no interval", function()
  eq(interval("r_p95", { r_ratio = { { 1, 2 } } }, 2, 3), nil)
  eq(interval("kl", { kl = { { 1 }, { 2 } } }, 2, 3, { kl_ratio = 2, kl_floor = 0 }), nil)
end)

it("a borderline port is inconclusive: exit 3, verdict.json says which criterion; one the precision-ordering rule"
  .. " would excuse is decided either way", function()
  local out = os.tmpname()
  os.remove(out)
  -- noisy_port against noisy at 3 prompts, its cosine bound put at its figure (1 - cosine p5 over
  -- the reference's own): resamples fall on both sides, on any LibTorch
  local o = { reference = fx .. "/noisy", target = fx .. "/noisy_port", out = out, prompts = 3, new_tokens = 12,
              cache_dir = out .. "-cache", log = function() end }
  local e = parity.check(o).summaries.e2e
  o.thresholds = { cosine_ratio = (1 - e.cosine.p5) / (1 - e.own_cosine.p5) }
  local v = parity.check(o)
  local listed = {}
  for _, name in ipairs(v.inconclusive) do listed[name] = true end
  truthy(listed.cosine, "cosine at its bound")
  if v.verdict ~= "divergent" then
    eq({ v.verdict, require("parity.verdict").exit_code(v) }, { "inconclusive", 3 })
    local text = require("parity.report.terminal").render(v, out)
    truthy(text:find("inconclusive: 1 %- cosine p5 <= max%([%d.]+ x own [%d.e-]+, 1e%-06%): [%d.e-]+, its 95%% interval"
      .. " [%d.e-]+%.%.[%d.e-]+ %(3 sequences resampled%) holds the bound %([%d.e-]+%.%.[%d.e-]+%)"), text)
    -- (cosine among them: another figure near its bound, as KL is on some machines, may be too)
    truthy(text:find("verdict: INCONCLUSIVE — undecided: [%w_, ]*cosine"), text)
    truthy(text:find("; not a pass", 1, true), text)
  end
  local json = parity.json.read(out .. "/verdict.json")
  eq(json.verdict, v.verdict)
  for _, c in ipairs(json.criteria) do
    if c.name == "cosine" then eq(c.interval.conclusive, false) end
  end
  -- port_reorder at 2 prompts: R p95 near 1.2 on LibTorch 1.13 (1.18 on one machine, past it on
  -- another), its interval holding the bound. On LibTorch 1.13 it is exact in fp32 with R p50 under 1.1, so a
  -- failure would be a warning: decided either way (a pass excused, a failure a warning). Where the
  -- rule would not excuse it (2.x: its SiLU differs in fp32), the open interval leaves it undecided
  v = parity.check({ reference = fx .. "/reference", target = fx .. "/port_reorder", out = out, prompts = 2,
                     new_tokens = 16, cache = false, log = function() end })
  local r
  for _, c in ipairs(v.criteria) do if c.name == "r_p95" then r = c end end
  local results = { e2e = parity.json.read(out .. "/e2e.json"), e2e32 = parity.json.read(out .. "/e2e32.json"),
                    localize = parity.json.read(out .. "/localize.json") }
  local th = require("parity.thresholds").resolve(nil)
  local excusable = require("parity.verdict").precision_ordering({ pass = false }, results, th).warn == true
  local undecided = {}
  for _, name in ipairs(v.inconclusive) do undecided[name] = true end
  -- (on 2.x its R p95 is 1.12 at 2 prompts, its interval clear of the bound: nothing undecided)
  if parity.version():find("LibTorch 1%.") then eq(r.interval.conclusive, false) end
  eq(undecided.r_p95 == true, r.interval.conclusive == false and not excusable)
  if r.pass then eq(r.interval.excused ~= nil, r.interval.conclusive == false and excusable)
  else eq(r.warn == true, excusable) end
  if excusable and v.verdict ~= "divergent" then eq({ v.verdict, v.inconclusive }, { "equivalent", {} }) end
end)

return spec.run()
