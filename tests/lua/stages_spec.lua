-- The stages' maths and the runner on small hand-made tensors whose figures are known by hand:
-- KL's direction, Δp's sign, which flips are near-ties, smoke's first divergence, R32, the
-- relative criteria and the verdict's cause.
local spec = require("parity.spec")
local e2e = require("parity.stages.e2e")
local e2e32 = require("parity.stages.e2e32")
local smoke = require("parity.stages.smoke")
local components = require("parity.stages.components")
local localize = require("parity.stages.localize")
local workflow = require("parity.workflow")
local verdict = require("parity.verdict")
local judge = require("parity.judge")
local pairing = require("parity.pairing")
local fits = require("parity.fits")
local causes = require("parity.causes")
local thresholds = require("parity.thresholds")
local criteria = require("parity.criteria")
local describe, it, eq, near, truthy = spec.describe, spec.it, spec.eq, spec.near, spec.truthy

local function logits(rows) return torch.tensor({ rows }) end  -- [1, N, V]
local function tokens(row) return torch.tensor({ row }, { dtype = "int64" }) end
local TH = thresholds.resolve()
local OPTS = { topk = 1, tie_factor = 2, dtype = "bf16" }

describe("e2e", function()
  it("computes KL(P_ref32 || P_target), not the other direction", function()
    -- P_ref = (1/2, 1/2), P_t = (1/4, 3/4): KL(P_ref||P_t) = .5 ln(4/3) = 0.1438; reversed it is 0.1308
    local r32 = logits({ { 0, 0 } })
    local t = logits({ { 0, math.log(3) } })
    local e = e2e.compare(t, r32, r32, tokens({ 0 }), OPTS)
    near(e.kl.max, 0.5 * math.log(4 / 3), 1e-6, "KL")
    near(e.own_kl.max, 0, 1e-12, "the reference's own KL against itself")
  end)

  it("gives Δp = P_ref32(token) - P_target(token): positive when the target gives the token less", function()
    local r32 = logits({ { 0, 0 }, { 0, 0 } })
    local t = logits({ { 0, math.log(3) }, { 0, math.log(3) } })
    local e = e2e.compare(t, r32, r32, tokens({ 0, 1 }), OPTS)
    eq(e.per_position.delta_p[1][1] > 0, true, "token 0: 1/2 - 1/4")
    near(e.per_position.delta_p[1][1], 0.25, 1e-6)
    near(e.per_position.delta_p[1][2], -0.25, 1e-6, "token 1: 1/2 - 3/4")
  end)

  it("counts a flip as a near-tie only within tie_factor x the reference's own noise", function()
    -- position 0: top-2 gap 0.1, own noise max|r_low - r32| = 0.05: 0.1 <= 2 x 0.05, a near-tie
    -- position 1: gap 2, same noise: a real flip
    local r32 = logits({ { 1.0, 0.9 }, { 2.0, 0.0 } })
    local rlow = logits({ { 1.0, 0.95 }, { 2.0, 0.05 } })
    local t = logits({ { 0.9, 1.0 }, { 0.0, 2.0 } })
    local e = e2e.compare(t, r32, rlow, tokens({ 0, 0 }), OPTS)
    eq(e.ties.count, 1)
    eq(e.per_position.near_tie[1], { true, false })
    eq(e.top1.count, 0)
    eq(e.top1_ties_excluded.of, 1, "one flip is judged, the near-tie is left out")
  end)

  it("computes R per position against the reference's own noise", function()
    -- ||t - r32|| = 5 (3, 4), ||r_low - r32|| = 2.5 (1.5, 2): R = 2
    local r32 = logits({ { 0, 0 } })
    local e = e2e.compare(logits({ { 3, 4 } }), r32, logits({ { 1.5, 2 } }), tokens({ 0 }), OPTS)
    near(e.r_ratio.max, 2.0, 1e-9)
  end)

  it("judges KL and cosine relative to the reference's own, with a floor", function()
    local function crit(name, fig)
      for _, c in ipairs(criteria.evaluate("e2e", fig, TH, {})) do
        if c.name == name then return c end
      end
    end
    local base = { target_non_finite = { nan = 0, inf = 0 }, r_ratio = { p50 = 1, p95 = 1 },
                   top1_ties_excluded = { rate = 1 }, own_cosine = { p5 = 0.99 }, cosine = { p5 = 0.99 } }
    local function with(kl, own_kl)
      local f = {}
      for k, v in pairs(base) do f[k] = v end
      f.kl, f.own_kl = { p95 = kl }, { p95 = own_kl }
      return f
    end
    eq(crit("kl", with(0.22, 0.2256)).pass, true, "as large as the reference's own: passes")
    eq(crit("kl", with(0.44, 0.2256)).pass, true, "under 2x the reference's own")
    eq(crit("kl", with(0.46, 0.2256)).pass, false, "over 2x")
    eq(crit("kl", with(9e-5, 0)).pass, true, "the floor, when the reference has no noise of its own")
    eq(crit("kl", with(2e-4, 0)).pass, false)
    local f = with(0, 0)
    f.cosine = { p5 = 0.975 }  -- 1 - cos = 0.025 > 2 x 0.01
    eq(crit("cosine", f).pass, false)
    f.cosine = { p5 = 0.985 }
    eq(crit("cosine", f).pass, true)
  end)

  it("warns instead of failing R when the fp32 leg is exact and R p50 stays low (the verdict's rule)", function()
    local fig = { target_non_finite = { nan = 0, inf = 0 }, r_ratio = { p50 = 0.98, p95 = 1.4 },
                  kl = { p95 = 0.1 }, own_kl = { p95 = 0.1 }, cosine = { p5 = 1 }, own_cosine = { p5 = 1 },
                  top1_ties_excluded = { rate = 1 } }
    local function judged(results)
      results.e2e = fig
      return verdict.precision_ordering(criteria.evaluate("e2e", fig, TH)[2], results, TH)
    end
    local exact = { e2e32 = { r32 = { p95 = 1e-5 } } }
    local r = judged(exact)
    eq({ r.name, r.pass, r.warn }, { "r_p95", false, true })
    truthy(r.why:find("precision%-ordering"), r.why)
    fig.r_ratio.p50 = 1.3  -- typically worse than the reference: a lower precision, not an order
    eq(judged(exact).warn, nil)
    fig.r_ratio.p50 = 0.98
    eq(judged({ e2e32 = { r32 = { p95 = 0.01 } } }).warn, nil, "not with a failing fp32 leg")
    eq(judged({ e2e32 = { skipped = "no fp32" } }).warn, nil, "not without an fp32 leg")
    exact.localize = { less_precise = { { reference = "model.norm" } } }
    eq(judged(exact).warn, nil, "not while a component is consistently less precise")
  end)
end)

describe("e2e32", function()
  it("computes R32 = ||t32 - r32|| / ||r_low - r32|| per position", function()
    local r32 = logits({ { 1, 1 }, { 0, 0 } })
    local rlow = logits({ { 1, 2 }, { 0, 4 } })  -- own noise 1 and 4
    local t32 = logits({ { 1, 1.003 }, { 0.006, 0.008 } })  -- target error 0.003 and 0.01
    local e = e2e32.compare(t32, r32, rlow)
    near(e.per_position.r32[1][1], 0.003, 1e-6)
    near(e.per_position.r32[1][2], 0.0025, 1e-6)
  end)
end)

describe("smoke", function()
  it("reports the first divergence (0-based) and the match rates, the reference's own beside", function()
    local s = smoke.compare(tokens({ 1, 2, 3, 4 }), tokens({ 1, 2, 9, 4 }), tokens({ 1, 2, 3, 5 }))
    eq(s.per_prompt[1].first_divergence, 2)
    near(s.match_rate, 0.75)
    near(s.own_match_rate, 0.75)
    eq(smoke.compare(tokens({ 1, 2 }), tokens({ 1, 2 }), tokens({ 1, 2 })).per_prompt[1].first_divergence,
      parity.json.null, "no divergence: null")
    local c = criteria.evaluate("smoke", { match_rate = 0.2, own_match_rate = 1 }, TH)[1]
    eq({ c.pass, c.warn }, { false, true }, "a low match rate is a warning, not a failure")
  end)

  it("decodes greedily from the teacher-forced pass: the same tokens, fewer forwards", function()
    local lm = require("parity.lm")
    local fx = assert(arg[1], "usage: stages_spec.lua FIXTURES_DIR")
    local ref, target = parity.bundle(fx .. "/reference"), parity.bundle(fx .. "/bug_eps")
    local prompts = torch.randint(0, ref:vocab_size(), { 3, 6 }, { seed = 5 })
    local n = 10
    local seqs = lm.greedy(ref, "fp32", prompts, n)
    local want = lm.greedy(target, "fp32", prompts, n):narrow(1, 6, n)
    local predicted = lm.forward(target, "fp32", seqs):narrow(1, 5, n):argmax(-1)
    local calls = 0
    local got, forwards = lm.greedy_from(function(seq) calls = calls + 1; return lm.forward(target, "fp32", seq) end,
      prompts, seqs:narrow(1, 6, n), predicted)
    eq(got:tolist(), want:tolist())
    eq(forwards, calls)
    truthy(forwards > 0 and forwards < n, ("%d forwards for %d tokens"):format(forwards, n))
    -- a model that follows the reference exactly needs none
    local _, none = lm.greedy_from(function() error("no forward expected") end, prompts, seqs:narrow(1, 6, n),
      seqs:narrow(1, 6, n))
    eq(none, 0)
  end)

  it("runs the LM head on the last position only where that gives the whole forward's last position", function()
    local lm = require("parity.lm")
    local fx = assert(arg[1], "usage: stages_spec.lua FIXTURES_DIR")
    local ids = torch.randint(0, 64, { 3, 9 }, { seed = 7 })
    local forward, info = lm.decoding_forward(parity.bundle(fx .. "/reference"), "bf16")
    local whole = forward(ids)
    eq({ info.head, whole:size() }, { "lm_head", { 3, 9, 512 } }, "the first call: the whole forward, the head found")
    local last = forward(ids)
    eq(last:size(), { 3, 1, 512 })
    truthy(torch.equal(last:select(1, 0), whole:select(1, -1)), "the last position as the whole forward gives it")
    truthy(lm.decoding_note(info):find("LM head lm_head on the last position only", 1, true))
    -- where the cut is not safe, or not possible, every call is the whole forward, and says why
    for name, why in pairs({ mixed_head = "the last position's logits differ from the whole forward's",
                             two_heads = "with other on the last position only, the logits are [3, 9, 64]" }) do
      local f, i = lm.decoding_forward(parity.bundle(fx .. "/" .. name), "fp32")
      f(ids)
      eq({ f(ids):size(), i.head }, { { 3, 9, 64 }, nil }, name)
      truthy(i.why and i.why:find(why, 1, true), ("%s: %s"):format(name, tostring(i.why)))
    end
    -- a scripted LM (its Linear layers share a type and go untapped, its head is tapped), and a
    -- head tied to the embedding (its hidden states are its second input)
    for name, input in pairs({ scripted_lm = 1, tied_head = 2 }) do
      local f, i = lm.decoding_forward(parity.bundle(fx .. "/" .. name), "fp32")
      local w = f(ids)
      local cut = f(ids)
      eq({ cut:size(), i.head, i.input }, { { 3, 1, 64 }, "head", input }, name)
      -- (a matmul over fewer rows may round otherwise: equal to float32 rounding)
      local d = (cut:select(1, 0) - w:select(1, -1)):abs():max():item()
      truthy(d <= 1e-5 * w:abs():max():item(), ("%s: %g"):format(name, d))
    end
  end)
end)

describe("localize signatures", function()
  local r = torch.randn({ 2, 5, 8 }, { seed = 3, dtype = "float64" })
  local noise = torch.randn({ 2, 5, 8 }, { seed = 4, dtype = "float64" }) * 0.01

  it("scale: fits c when t = c x r, not when the difference is noise", function()
    local c, resid = fits.fit_scale(r * 1.05, r)
    near(c, 1.05, 1e-9)
    near(resid, 0, 1e-9)
    local _, resid2 = fits.fit_scale(r + noise, r)
    truthy(resid2 > 0.5, "noise is not a scale: " .. resid2)
  end)

  local function rmsnorm(x, w, eps) return x / (x:pow(2):mean({ -1 }, true) + eps):sqrt() * w end
  local function layernorm(x, w, b, eps)
    local c = x - x:mean({ -1 }, true)
    return c / (c:pow(2):mean({ -1 }, true) + eps):sqrt() * w + b
  end
  local x = torch.randn({ 2, 5, 8 }, { seed = 5, dtype = "float64" }) * 0.05  -- small: eps matters
  local w = torch.randn({ 8 }, { seed = 6, dtype = "float64" }) + 2
  local b = torch.randn({ 8 }, { seed = 7, dtype = "float64" })

  it("epsilon: recovers both eps of an RMSNorm and a LayerNorm, and explains nothing else", function()
    local e_t, e_ref, resid = fits.fit_epsilon(x, rmsnorm(x, w, 1e-6), rmsnorm(x, w, 1e-3), w, nil, false)
    near(e_t, 1e-3, 1e-9)
    near(e_ref, 1e-6, 1e-9)
    truthy(resid < 1e-6, "one scalar per row explains it")
    -- Gemma stores the offset: the scale is 1 + w (and w is all zeros as initialised)
    for _, gw in ipairs({ w - 1, torch.zeros({ 8 }, { dtype = "float64" }) }) do
      e_t, e_ref = fits.fit_epsilon(x, rmsnorm(x, gw + 1, 1e-6), rmsnorm(x, gw + 1, 1e-3), gw, nil, false)
      near(e_t, 1e-3, 1e-9)
      near(e_ref, 1e-6, 1e-9)
    end
    e_t, e_ref = fits.fit_epsilon(x, layernorm(x, w, b, 1e-5), layernorm(x, w, b, 1e-4), w, b, true)
    near(e_t, 1e-4, 1e-9)
    near(e_ref, 1e-5, 1e-9)
    -- a norm computed differently (no centering where the reference centres) is not an eps change
    local _, _, bad = fits.fit_epsilon(x, layernorm(x, w, b, 1e-5), rmsnorm(x, w, 1e-5) + b, w, b, true)
    truthy(bad > 0.05, "another formula leaves a residual: " .. bad)
  end)

  it("position: no error at position 0 and growing; not when position 0 is off too", function()
    local ramp = torch.arange(5, { dtype = "float64" }):view({ 1, 5, 1 }) * 0.01
    local zero0, rising = fits.fit_position(r + r * ramp, r)
    eq({ zero0, rising }, { true, 1 })
    local zero0b = fits.fit_position(r + noise, r)
    eq(zero0b, false)
    -- within a port's reassociation at position 0 (a fused q/k/v: 2e-5 of the largest error) is no error in fp32
    local off0 = torch.tensor({ 2e-5, 0.2, 0.4, 0.6, 0.8 }, { dtype = "float64" }):view({ 1, 5, 1 })
    eq((fits.fit_position(r + r * off0, r)), false, "at the default tolerance, exactly")
    eq((fits.fit_position(r + r * off0, r, 1e-4)), true)
    -- exact at 0 but at full size from position 1 on, where no temperature of the scores fits (the
    -- temperature signature re-runs the reference: the fixtures test it): RoPE's layout
    local step = torch.tensor({ 0, 1, 1, 1, 1 }, { dtype = "float64" }):view({ 1, 5, 1 })
    local TH = thresholds.resolve()
    local c = causes.cause({ r = 9, r32 = 9, type = "Attention" }, { r32 = r, t32 = r + noise * step, params = {} }, TH)
    eq(c.class, "formula", "without fp32 legs to re-run, no temperature was tried")
    local fp32 = { dtypes = { target = "fp32", reference = "fp32" }, pairs = {}, bundles = {} }  -- re-runs fail: no fit
    c = causes.cause({ r = 9, r32 = 9, type = "Attention", reference = "a", target = "a" },
      { r32 = r, t32 = r + noise * step, params = {}, isolated = true, inputs = { r } }, TH, { inside = fp32 })
    eq(c.class, "position")
    truthy(c.detail:find("no scale of the attention scores explains it"), c.detail)
    c = causes.cause({ r = 9, r32 = 9, type = "Attention" }, { r32 = r, t32 = r + r * ramp, params = {} }, TH)
    eq(c.class, "position")
  end)

  it("residual: t = r + alpha x fits alpha; a difference unrelated to the input does not", function()
    local inp = torch.randn({ 2, 5, 8 }, { seed = 8, dtype = "float64" })
    local alpha, resid = fits.fit_residual(r + inp, r, inp)
    near(alpha, 1, 1e-9)
    near(resid, 0, 1e-9)
    local _, bad = fits.fit_residual(r + noise, r, inp)
    truthy(bad > 0.5, "noise is no residual: " .. bad)
    eq(fits.fit_residual(r + inp, r, torch.zeros({ 3 })), nil, "an input of another shape: no fit")
    local TH = thresholds.resolve()
    local c = causes.cause({ r = 9, r32 = 9, type = "Layer" }, { r32 = r, t32 = r - inp, input = inp, params = {} }, TH)
    eq({ c.class, c.parameter.name }, { "residual", "alpha" })
    truthy(c.detail:find("dropped"), c.detail)
  end)

  it("mask: a position that sees one the reference cannot is a leak; a causal change of formula is not", function()
    local x = torch.randn({ 2, 6, 4 }, { seed = 9, dtype = "float64" })
    local n = 6
    -- y_p = mean of x_0..x_(p + ahead), the reference causal (ahead 0)
    local function mixer(ahead, scale)
      return function(inputs)
        local v, rows = inputs[1], {}
        for p = 0, n - 1 do
          rows[#rows + 1] = v:narrow(1, 0, math.min(p + ahead + 1, n)):mean({ 1 }, true) * (scale or 1)
        end
        return torch.cat(rows, 1)
      end
    end
    local leak = fits.fit_mask(mixer(0), mixer(1), { x })
    truthy(leak.leaks > 0 and leak.hides == 0, "a future token leaks in")
    truthy(leak.example:find("sees position"), leak.example)
    local tight = fits.fit_mask(mixer(1), mixer(0), { x })
    truthy(tight.hides > 0 and tight.leaks == 0, "a mask too tight hides a position")
    local same = fits.fit_mask(mixer(0), mixer(0, 1.1), { x })
    eq({ same.leaks, same.hides }, { 0, 0 }, "a scaled causal mixer sees what the reference sees")
    local pointwise = function(inputs) return inputs[1] * 2 end
    eq(fits.fit_mask(pointwise, function(inputs) return inputs[1] * 3 end, { x }), nil, "no position mixing: no fit")
    local TH = thresholds.resolve()
    local ev = { r32 = mixer(0)({ x }), t32 = mixer(1)({ x }), inputs = { x }, run_reference = mixer(0), run_target = mixer(1),
                 params = {} }
    eq(causes.cause({ r = 9, r32 = 9, type = "Attention" }, ev, TH).class, "mask")
  end)

  it("activation: names the nonlinearity between an MLP's children, plain or gated; tells GELU's two forms apart", function()
    local g = torch.randn({ 2, 5, 6 }, { seed = 10 }) * 2
    local u = torch.randn({ 2, 5, 6 }, { seed = 11 })
    local function call(inputs, outputs) return { inputs = inputs, outputs = outputs } end
    local x = torch.randn({ 2, 5, 3 }, { seed = 12 })
    local by_hand = {  -- the formulas, written out
      silu = function(v) return v / ((-v):exp() + 1) end,
      gelu = function(v) return v * ((v / math.sqrt(2)):erf() + 1) * 0.5 end,
      gelu_tanh = function(v) return v * (((v + v:pow(3) * 0.044715) * math.sqrt(2 / math.pi)):tanh() + 1) * 0.5 end,
      relu = function(v) return v:clamp_min(0) end,
    }
    for _, name in ipairs({ "silu", "gelu", "gelu_tanh", "relu" }) do
      local act = by_hand[name](g)
      local fit, resid, other = fits.fit_activation({ call({ x }, { g }), call({ act }, { x }) })
      eq(fit, name, "fc1 -> " .. name .. " -> fc2")
      truthy(resid < 1e-5 and other > 1e-4, ("%s fits to %g, the next best to %g"):format(name, resid, other))
      local fused = torch.cat({ g, u }, 2)
      eq(fits.fit_activation({ call({ x }, { fused }), call({ act * u }, { x }) }), name, "gate_up -> " .. name)
      eq(fits.fit_activation({ call({ x }, { g }), call({ x }, { u }), call({ act * u }, { x }) }), name,
        "gate, up -> " .. name)
    end
    local _, resid = fits.fit_activation({ call({ x }, { g }), call({ g * 0.5 + 1 }, { x }) })
    truthy(resid > 0.01, "an affine map fits no nonlinearity: " .. resid)
    eq(fits.fit_activation({ call({ x }, { x }) }), nil, "one child: nothing between")
  end)

  it("missing: a reference module with weights inside the fault that the target lacks; not one elsewhere", function()
    local TH = thresholds.resolve()
    local row = { r = 9, r32 = 9, type = "Layer", reference = "model.layers.0" }
    local ev = { r32 = r, t32 = r + noise, params = {} }
    local c = causes.cause(row, ev, TH, { no_counterpart = { "model.layers.0.post_feedforward_layernorm" } })
    eq(c.class, "missing")
    truthy(c.detail:find("post_feedforward_layernorm has no counterpart"), c.detail)
    eq(causes.cause(row, ev, TH, { no_counterpart = { "model.layers.1.post_feedforward_layernorm" } }).class, "formula")
  end)

  it("cause: precision when exact in fp32, and the fitted class otherwise", function()
    local TH = thresholds.resolve()
    eq(causes.cause({ r = 3, r32 = 1e-6, type = "Linear" }, nil, TH).class, "precision")
    local ev = { r32 = r, t32 = r * 0.9, params = {} }
    local cause = causes.cause({ r = 9, r32 = 9, type = "Linear" }, ev, TH)
    eq({ cause.class, cause.parameter.name }, { "scale", "scale" })
    near(cause.parameter.value, 0.9, 1e-9)
    ev = { r32 = rmsnorm(x, w, 1e-6), t32 = rmsnorm(x, w, 1e-2), input = x, params = { weight = w } }
    cause = causes.cause({ r = 9, r32 = 9, type = "LlamaRMSNorm" }, ev, TH)
    eq(cause.class, "epsilon")
    near(cause.parameter.value, 1e-2, 1e-8)
    eq(causes.cause({ r = 9, r32 = 9, type = "Linear" }, { r32 = r, t32 = r + noise, params = {} }, TH).class, "formula")
  end)
end)

describe("signatures", function()
  local signatures = require("parity.signatures")
  it("temperature_hint: a head size's square root missing, or divided by instead of its root", function()
    eq(signatures.temperature_hint(4), "the 1/sqrt(16) scale of the scores missing")
    eq(signatures.temperature_hint(1 / math.sqrt(128)), "the scores divided by 128 instead of sqrt(128)")
    eq(signatures.temperature_hint(1.7), nil, "1.7^2 = 2.89 is no head size")
  end)
end)

describe("components per row", function()
  it("row_ratios: R_i of the rows with reference noise, ties left out of the sign test", function()
    local q = judge.row_ratios({ { error = torch.tensor({ 2, 1, 3, 1 }, { dtype = "float64" }),
                                        noise = torch.tensor({ 1, 1, 1, 0 }, { dtype = "float64" }) } })
    eq({ q.rows, q.p50, q.above }, { 3, 2, 1 })
    near(q.ties, 1 / 3, 1e-12)
    near(q.z, 1 / math.sqrt(0.5), 1e-12)
    eq(judge.row_ratios({ { error = torch.ones({ 2 }), noise = torch.zeros({ 2 }) } }), nil, "no noise to judge against")
  end)

  -- 512 rows of 64: the reference's own rounding e, a port rounding in another order (its own e',
  -- as large, independent), one less precise (e plus a per-row relative error, as a variance
  -- rounded to bf16 gives), one more precise (half of e)
  local r32 = torch.randn({ 512, 64 }, { seed = 1 })
  local e = torch.randn({ 512, 64 }, { seed = 2 }) * 4e-3
  local function less(t, r32_ratio)
    local rows = function(a) return (a - r32):norm(2, { -1 }) end
    local q = judge.row_ratios({ { error = rows(t), noise = rows(r32 + e) } })
    return judge.less_precise({ rows_r = q, r32 = r32_ratio or 0 }, TH), q
  end

  it("less_precise: a lower precision at every row, not another rounding order or an upcast", function()
    local other = torch.randn({ 512, 64 }, { seed = 3 }) * 4e-3
    local per_row = torch.randn({ 512, 1 }, { seed = 4 }) * 3e-3
    eq((less(r32 + other)), false, "another order: R_i > 1 at about half of the rows")
    eq((less(r32 + e * 0.5)), false, "an upcast: R_i < 1")
    local lp, q = less(r32 + e + r32 * per_row)
    eq(lp, true, ("a per-row error on top of the reference's: above %.2f, p50 %.3f, z %.1f"):format(q.above, q.p50, q.z))
    eq((less(r32 + e + r32 * per_row, 5)), false, "a component off in fp32 too is no precision fault")
    eq((less(r32 + e * 1.01 + other * 0.01)), false, "consistent, but within row_r_p50 of 1")
  end)
end)

describe("localize", function()
  local TH = thresholds.resolve()
  local function row(path, depth, r32, acc)
    return { reference = path, target = path, type = "M", depth = depth, r = r32 > 1 and r32 or 1, r32 = r32,
             acc_r32 = acc or r32, calls = 1, isolated = true }
  end
  local function run(rows)
    local ctx = { thresholds = TH }
    return localize.run(ctx, { components = { components = rows }, kept = {} })
  end

  it("puts the fault at the failing component none of whose children fail, the earliest first", function()
    local l = run({ row("a", 1, 0), row("b", 1, 5), row("b.x", 2, 0), row("b.y", 2, 5), row("c", 1, 1e-6, 5),
                    row("d", 1, 9), row("d.z", 2, 9) })
    eq(l.first_divergence.reference, "b.y")
    eq(l.faults, 2)
    eq({ l.suspects[1].reference, l.suspects[2].reference }, { "d.z", "b.y" }, "ranked by how far off")
    eq(l.first_divergence.pattern, "step", "the next component carries the error on")
  end)

  it("calls an error the next component does not carry a spike, absorbed, not a failure", function()
    local l = run({ row("a", 1, 0), row("a.mlp", 2, 5), row("a.norm", 2, 0, 1e-6) })
    eq({ l.first_divergence.reference, l.first_divergence.pattern, l.first_divergence.absorbed }, { "a.mlp", "spike", true })
    eq(criteria.evaluate("localize", l, TH)[1].pass, true)
    eq(criteria.evaluate("localize", run({ row("a", 1, 5) }), TH)[1].pass, false)
  end)

  it("never calls a fault consistently less precise than the reference a spike: no later operation undoes noise", function()
    local norm = row("a.norm", 2, 0, 1.3)
    norm.r, norm.rows_r = 1.1, { rows = 128, p50 = 1.15, above = 0.8, z = 6.8, ties = 0 }
    local l = run({ row("a", 1, 0, 1e-6), norm, row("a.mlp", 2, 0) })
    eq({ l.first_divergence.reference, l.first_divergence.pattern, l.first_divergence.cause.class },
      { "a.norm", "step", "precision" })
    eq({ #l.less_precise, l.less_precise[1].reference }, { 1, "a.norm" })
    norm.rows_r.z = 3
    eq(run({ row("a", 1, 0, 1e-6), norm, row("a.mlp", 2, 0) }).first_divergence, parity.json.null, "z below row_z")
  end)

  it("follows a fault inside a component to it: an expert's sibling does not carry its error, the MoE block does", function()
    local l = run({ row("moe", 1, 0, 5), row("moe.e0", 2, 5), row("moe.e1", 2, 0, 1e-6) })
    eq({ l.first_divergence.reference, l.first_divergence.pattern }, { "moe.e0", "step" })
    eq(l.first_divergence.evidence.followed_to, "moe")
    l = run({ row("a", 1, 0, 1e-6), row("a.b", 2, 0, 1e-6), row("a.b.c", 3, 5) })
    eq({ l.first_divergence.pattern, l.first_divergence.evidence.followed_to }, { "spike", "a.b" }, "the innermost absorbs")
  end)

  it("lists components markedly more precise than the reference as over-precision, a warning", function()
    local over = row("a", 1, 0)
    over.r, over.isolated = 0.6, true
    local l = run({ over, row("b", 1, 0) })
    eq(l.first_divergence, parity.json.null)
    eq({ #l.over_precision, l.over_precision[1].target, l.over_precision[1].cause.class }, { 1, "a", "over_precision" })
    local crit = criteria.evaluate("localize", l, TH)
    eq({ crit[2].name, crit[2].pass, crit[2].warn }, { "over_precision", false, true })
    eq(#run({ row("a", 1, 0), row("b", 1, 0) }).over_precision, 0, "R = 1 is not over-precise")
  end)

  it("tells a source of divergence from an amplifier and a carrier of it", function()
    local function r(t) t.type, t.depth, t.isolated = "M", 1, true; return t end
    eq(judge.role(r({ r = 5, r32 = 1, acc_r32 = 1, inherited_r32 = 0 }), TH), "source")
    eq(judge.role(r({ r = 1, r32 = 0, acc_r32 = 0.01, inherited_r32 = 1e-3 }), TH), "amplifier")
    eq(judge.role(r({ r = 1, r32 = 0, acc_r32 = 0.01, inherited_r32 = 0.009 }), TH), "carrier")
    eq(judge.role(r({ r = 1, r32 = 0, acc_r32 = 1e-5, inherited_r32 = 1e-5 }), TH), nil, "nothing reaches it")
    eq(judge.role(r({ r = 1, acc_r = 3, inherited_r = 1 }), TH), "amplifier", "at the low precision without fp32")
  end)

  it("judges a component whose inputs differ on its output in the whole runs, unless its input is off already", function()
    local function acc(t) t.type, t.depth, t.isolated = "M", 1, false; return t end
    eq(judge.fails(acc({ acc_r32 = 0.01, inherited_r32 = 1e-5 }), TH), true, "it starts the error")
    eq(judge.fails(acc({ acc_r32 = 0.01, inherited_r32 = 0.005 }), TH), false, "it inherits it")
    eq(judge.fails(acc({ acc_r32 = 1e-5, r = 9 }), TH), false, "its own R is not judged: its inputs differ")
    eq(judge.fails(acc({ acc_r = 3, inherited_r = 0.5 }), TH), true, "at the low precision without fp32")
    eq(judge.fails(acc({ acc_r = 3, inherited_r = 2 }), TH), false)
    eq(judge.fails(acc({ acc_r32 = 1e-5, inherited_r32 = 0, acc_r = 3, inherited_r = 0.5 }), TH), false,
      "fp32 when the target has it: a low-precision R above the bound is its rounding")
  end)

  it("evaluates a criterion only on the component class it applies to", function()
    local norm = { reference = "model.norm", type = "LlamaRMSNorm", isolated = true, r = 1.1 }
    local mlp = { reference = "model.layers.0.mlp", type = "LlamaMLP", isolated = true, r = 1.1 }
    eq({ criteria.class(norm), criteria.class(mlp), criteria.class({ reference = "lm_head", type = "Linear" }) },
      { "norm", "mlp", "lm_head" })
    local strict = { name = "norm_r", stage = "component", reads = "r", rule = "below", threshold = 1.05, applies_to = "norm" }
    eq(criteria.judge(strict, norm, TH).pass, false)
    eq(criteria.judge(strict, mlp, TH), nil, "not an MLP's")
    truthy(not pcall(criteria.judge, { name = "x", stage = "e2e", reads = "a", rule = "below", threshold = "no_such" },
      { a = 1 }, TH), "a threshold name that is none is an error")
  end)

  it("maps identical trees by identity, and says when trees differ", function()
    local mods = { { path = "", type = "LM" }, { path = "a", type = "Linear", depth = 1 } }
    eq(pairing.identity_mapping(mods, mods),
      { { reference = { "a" }, target = "a", transform = "identity", type = "Linear", depth = 1 } })
    local m, why = pairing.identity_mapping(mods, { { path = "", type = "LM" }, { path = "b", type = "Linear" } })
    eq(m, nil)
    truthy(why:find("the module trees differ"), why)
  end)
end)

describe("workflow", function()
  local out = os.tmpname()
  os.remove(out)
  local logged = {}
  local function ctx()
    return { out = out, results = {}, thresholds = TH, dtype = "bf16", settings = { prompts = 1, new_tokens = 1 },
             reference = { path = "ref" }, target = { path = "target" }, log = function(l) logged[#logged + 1] = l end }
  end
  local function stage(name, result, criteria)
    return { name = name, run = function() return result end, summary = function(r) return { x = r.x } end,
             criteria = criteria }
  end

  it("writes each stage's JSON, records skipped stages and warnings, and passes when all criteria do", function()
    local v = workflow.run(ctx(), {
      stage("a", { x = 1 }, { { name = "ok", reads = "x", rule = "below", threshold = 2, says = "x < %g" } }),
      stage("b", { skipped = "no fp32 trace" }),
      stage("c", { x = 3 }, { { name = "soft", reads = "x", rule = "below", threshold = "r_p95", warn = true } }),
    })
    eq(v.verdict, "equivalent")
    eq(v.cause, parity.json.null)
    eq(v.skipped, { { stage = "b", reason = "no fp32 trace" } })
    eq(#v.warnings, 2)
    eq(v.stages, { "a", "b", "c" })
    eq(parity.json.read(out .. "/b.json").skipped, "no fp32 trace")
    eq(parity.json.read(out .. "/verdict.json").summaries.c.x, 3)
    truthy(logged[#logged - 1]:find("^stages: a [%d.]+ s, b [%d.]+ s, c [%d.]+ s$"), "each stage's time, logged")
    eq(logged[#logged], "forwards: 0 teacher-forced passes, 0 decoding steps, 0 component runs, 0 model loads (0 reloads)")
    local run = parity.json.read(out .. "/run.json")
    eq({ run.order, run.forwards.teacher_forced, run.stages.b.forwards.loads }, { { "a", "b", "c" }, 0, 0 })
  end)

  it("names the cause: a computation difference when fp32 differs too, precision when it does not", function()
    -- the criteria table's own rows judge these results (parity.criteria)
    local function run(r32_p95, nan)
      return workflow.run(ctx(), {
        stage("e2e", { r_ratio = { p50 = 1.5, p95 = 2 }, target_non_finite = { nan = nan or 0, inf = 0 } }),
        stage("e2e32", { r32 = { p95 = r32_p95 } }),
      })
    end
    local v = run(0.5)
    eq({ v.verdict, v.cause.class, v.failed }, { "divergent", "formula", { "r_p95", "r32_p95" } })
    v = run(1e-5)
    eq({ v.cause.class, v.failed }, { "precision", { "r_p95" } })
    truthy(v.cause.detail:find("exact in fp32"), v.cause.detail)
    v = run(1e-5, 3)
    eq(v.cause.class, "non_finite")
  end)
end)

return spec.run()
