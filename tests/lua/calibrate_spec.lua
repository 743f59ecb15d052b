-- parity.calibrate and parity.recipe: the rule worked out by hand on small lists of figures, the
-- per-class bounds from components' rows, judging recorded runs again, leave-k-out counted by
-- hand; a recipe written, loaded in the sandbox, refused when edited, of a newer schema or of
-- another kind of check; and a recipe made from real checks of the fixtures' good ports that
-- still fails their bugs, used by parity.check.
local spec = require("parity.spec")
local it, eq, near, truthy, raises = spec.it, spec.eq, spec.near, spec.truthy, spec.raises
local parity = require("parity")
local calibrate = require("parity.calibrate")
local recipe = require("parity.recipe")
local thresholds = require("parity.thresholds")
local fx = assert(arg[1], "usage: calibrate_spec.lua FIXTURES_DIR")

local RULE = { quantile = 0.95, margin = 2 }

-- a recorded run with these whole-model figures and components rows
local function run(dir, f, rows)
  return { dir = dir, verdict = { verdict = "equivalent", dtype = "bf16", noise_dtype = "bf16", criteria = {} },
    baseline = "3-tensor", components = rows or {},
    e2e = { r_ratio = { p95 = f.r, p50 = f.r50 or 1 }, kl = { p95 = f.kl or 1e-3 }, own_kl = { p95 = 1e-3 },
            cosine = { p5 = 1 - (f.gap or 1e-5) }, own_cosine = { p5 = 1 - 1e-5 },
            top1_ties_excluded = { rate = f.top1 or 1 }, target_non_finite = { nan = 0, inf = 0 } },
    e2e32 = { r32 = { p95 = f.r32 or 5e-5 }, target_non_finite = { nan = 0, inf = 0 } } }
end

it("the rule: the good runs' quantile, moved past it by the margin, held at the calibration floors", function()
  eq(calibrate.quantile({ 4, 1, 3, 2 }, 0.5), 2.5)
  near(calibrate.quantile({ 1, 2, 3, 4, 5 }, 0.95), 4.8, 1e-12)
  eq(calibrate.quantile({ 7 }, 0.95), 7)
  -- R: 1 + 2 x (q - 1); q0.95 of {1.1, 1.3} = 1.1 + 0.95 x 0.2 = 1.29 -> 1.58
  local v, q, floored = calibrate.rule("r_p95", "r", { 1.3, 1.1 }, RULE)
  near(q, 1.29, 1e-12); near(v, 1.58, 1e-12); eq(floored, false)
  -- a component class whose ports compute as the reference does (R 1): its floor, 1.1
  eq({ calibrate.rule("r_p95", "r", { 1, 1, 1 }, RULE) }, { 1.1, 1, true, "1 + 2 x (q0.95 - 1), held at its"
    .. " calibration floor" })
  eq({ calibrate.rule("r_p95", "r", { 1, 1, 1 }, { quantile = 0.95, margin = 2, below_floors = true }) },
     { 1, 1, false, "1 + 2 x (q0.95 - 1)" })
  -- a ratio: 2 x q; R32 {1e-4, 2e-4}: q 1.95e-4 -> 3.9e-4
  near((calibrate.rule("r32_p95", "ratio", { 1e-4, 2e-4 }, RULE)), 3.9e-4, 1e-15)
  -- a rate: 1 - 2 x (1 - q0.05); {0.8, 1}: q 0.81 -> 0.62; all 1 -> 1, held at 0.9
  near((calibrate.rule("top1", "rate", { 1, 0.8 }, RULE)), 0.62, 1e-12)
  eq((calibrate.rule("top1", "rate", { 1, 1 }, RULE)), 0.9)
end)

it("the null's rule: a log-normal tail of the excess past a perfect port, the false-alarm rate spread over m", function()
  near(calibrate.normal_quantile(0.975), 1.959964, 1e-6)
  near(calibrate.normal_quantile(0.01), -2.326348, 1e-6)
  near(calibrate.normal_quantile(1 - 1e-4), 3.719016, 1e-6)
  -- Student's t: tables' t(0.975, 7) = 2.3646, t(0.995, 3) = 5.8409, t(0.9999, 7) = 7.0634;
  -- df 1 is Cauchy's, P(T > 1) = 1/4; many degrees of freedom, the normal's
  near(calibrate.t_quantile(0.025, 7), 2.364624, 1e-6)
  near(calibrate.t_quantile(0.005, 3), 5.840909, 1e-6)
  near(calibrate.t_quantile(1e-4, 7), 7.063433, 1e-5)
  near(calibrate.t_tail(1, 1), 0.25, 1e-12)
  near(calibrate.t_quantile(0.025, 5000), 1.959964, 1e-6)
  -- R {1.1, 1.2, 1.4}: excesses' logs have mean log(0.2) (0.1 x 0.2 x 0.4 = 0.2^3) and sd
  -- sqrt(((log 0.5)^2 + 0 + (log 2)^2) / 2) = log 2; at 1% over 4 figures t(1 - 0.0025, 2) =
  -- 1 / sqrt(2 x 0.0025 x (1 - 0.0025)) x (1 - 2 x 0.0025) = 14.089 (df 2's closed form)
  local p = 0.01 / 4
  local t = (1 - 2 * p) / math.sqrt(2 * p * (1 - p))
  near(calibrate.t_quantile(p, 2), t, 1e-9)
  local v, typical = calibrate.rule("r_p95", "r", { 1.1, 1.2, 1.4 }, { false_alarm = 0.01 }, 4)
  near(typical, 1.2, 1e-12)
  local want = 1 + 0.2 * math.exp(t * math.log(2) * math.sqrt(4 / 3))
  near(v, want, 1e-9 * want)
  -- a perfect port's figures are left out: {1, 1.1, 1.2, 1.4} gives the same bound
  near((calibrate.rule("r_p95", "r", { 1, 1.1, 1.2, 1.4 }, { false_alarm = 0.01 }, 4)), v, 1e-12)
  -- fewer than 2 off it: no bound (the default stays)
  eq((calibrate.rule("r_p95", "r", { 1, 1, 1.3 }, { false_alarm = 0.01 }, 4)), nil)
  -- a rate: 1 - the tail of 1 - x
  local r = calibrate.rule("top1", "rate", { 0.9, 0.8, 0.85, 0.88, 0.86 }, { false_alarm = 0.01, below_floors = true }, 1)
  truthy(r < 0.8 and r > 0, "below the worst rate")
  -- two figures (1 degree of freedom: Cauchy's tails) bound it only at 0, where top-1 is off
  local none, _, _, why = calibrate.rule("top1", "rate", { 0.9, 0.8 }, { false_alarm = 0.01 }, 1)
  eq({ none, why }, { nil, "2 figures bound it at that rate only where it switches off (more runs)" })
end)

it("derive: every calibrated threshold with its sample size; a class from its components' largest R", function()
  local norm = function(r, r32) return { reference = "model.norm", type = "LlamaRMSNorm", isolated = true, r = r,
                                         r32 = r32 } end
  local runs = { run("a", { r = 1.3, kl = 2e-3, r32 = 1e-4 }, { norm(1.2, 2e-4), norm(1.5, 1e-4) }),
                 run("b", { r = 1.1, kl = 4e-3, r32 = 3e-4 }, { norm(1.4, 5e-5) }) }
  local th, d = calibrate.derive(runs, RULE)
  near(th.r_p95, 1.58, 1e-12); eq(d.r_p95.n, 2); near(d.r_p95.quantile, 1.29, 1e-12)
  -- KL over the reference's own 1e-3: {2, 4} -> q 3.9 -> 7.8
  near(th.kl_ratio, 7.8, 1e-12)
  near(th.r32_p95, 2 * (1e-4 + 0.95 * 2e-4), 1e-15)
  -- norm: the largest R a run: {1.5, 1.4} -> q 1.495 -> 1.99; R32 {2e-4, 5e-5} -> q 1.925e-4 -> 3.85e-4
  near(th.by_class.norm.r_p95, 1.99, 1e-12); near(th.by_class.norm.r32_p95, 3.85e-4, 1e-15)
  eq(d["by_class.norm.r_p95"].n, 2)
  -- a class no run has gets no bounds of its own (its components judged by r_p95, r32_p95), n = 0
  eq({ th.by_class.experts, d["by_class.experts.r_p95"].n }, { nil, 0 })
  -- no run needed the KL floor (every KL under its ratio's bound): the default's
  eq({ th.kl_floor, d.kl_floor.n }, { thresholds.DEFAULTS.kl_floor, 0 })
  -- the thresholds resolve, and a component is judged by its class's bound
  local resolved = thresholds.resolve(nil, th)
  local criteria = require("parity.criteria")
  eq(criteria.for_component(resolved, norm(1, 0)).r_p95, th.by_class.norm.r_p95)
  eq(criteria.component_fails(norm(1.9, 0), resolved), false, "1.9 < 1.99")
  eq(criteria.component_fails(norm(1.9, 0), thresholds.resolve(nil)), true, "1.9 >= the default 1.2")
end)

it("a recorded run judged again, and leave-one-out counted by hand", function()
  local th = thresholds.resolve({ r_p95 = 1.5 })
  eq(calibrate.failures(run("ok", { r = 1.4 }), th), {})
  eq(calibrate.failures(run("r", { r = 1.6, r50 = 1.4 }), th), { "r_p95" })
  eq(calibrate.failures(run("r32", { r = 1.1, r32 = 1e-3 }), th), { "r32_p95" })
  local bad = run("static", { r = 1.1 })
  bad.verdict.criteria = { { name = "static", pass = false } }
  eq(calibrate.failures(bad, th), { "static" })
  -- three good runs, R p95 1.1, 1.2 and 2.0: holding 2.0 out calibrates 1 + 2 x 0.195 = 1.39 on
  -- the others, which it fails (R p50 1.4 > 1.1: no precision-ordering excuse); held in, the bound
  -- is past 2.0 and the others pass: 1 alarm in 3
  local runs = { run("g1", { r = 1.1 }), run("g2", { r = 1.2 }), run("g3", { r = 2.0, r50 = 1.4 }) }
  local bug = run("bug", { r = 1.1, r32 = 0.05 })
  local h = calibrate.holdout(runs, { bug }, 1, RULE)
  eq({ h.splits, h.held, h.false_alarms, h.alarmed }, { 3, 3, 1, { "g3 (r_p95)" } })
  eq({ h.caught, h.bug_judgements, h.missed }, { 3, 3, {} })
  raises(function() calibrate.holdout(runs, {}, 3, RULE) end, "keep at least one")
  -- 25 runs two at a time: 300 ways, 200 drawn, each two different runs held out
  local many = {}
  for i = 1, 25 do many[i] = run("m" .. i, { r = 1.1 + 0.001 * i }) end
  h = calibrate.holdout(many, {}, 2, RULE)
  eq({ h.splits, h.held }, { 200, 400 })
  eq(#calibrate.holdout(many, {}, 1, RULE).alarmed <= 25, true)
end)

local write = spec.write

local tmpdir = spec.tmpdir

it("a recipe: data-only Lua with its hash; loaded in the sandbox; an edited, newer or foreign one refused", function()
  local runs = { run("g1", { r = 1.1 }), run("g2", { r = 1.2 }) }
  local r = calibrate.recipe(runs, RULE)
  local path = tmpdir() .. ".lua"
  write(path, recipe.render(r))
  local loaded = recipe.load(path)
  eq(loaded.thresholds, r.thresholds)
  eq(loaded.sha256, recipe.digest(r))
  eq({ loaded.dtype, loaded.noise_dtype, loaded.baseline, #loaded.runs }, { "bf16", "bf16", "3-tensor", 2 })
  recipe.fits(loaded, "bf16", "bf16", "3-tensor")
  raises(function() recipe.fits(loaded, "fp16", "fp16", "3-tensor") end, "calibrated on checks of a bf16 target")
  raises(function() recipe.fits(loaded, "bf16", "bf16", "2-tensor") end, "calibrated with the 3-tensor baseline")
  local text = spec.read(path)
  local function refused(edited, needle)
    local p = tmpdir() .. ".lua"
    write(p, edited)
    raises(function() recipe.load(p) end, needle)
  end
  -- one digit of a threshold changed, and the hash no longer matches
  local edited, n = text:gsub("(r_p95 = 1%.)(%d)", function(a, b) return a .. (b == "9" and "8" or "9") end, 1)
  eq(n, 1)
  refused(edited, "does not match its sha256")
  refused((text:gsub("parity_recipe = 1,", "parity_recipe = 2,")), "made by a newer parity (recipe schema 2")
  refused("return { r_p95 = 1.3 }", "not a recipe")
  refused("os.exit(1)", "os")  -- the sandbox: no os
  refused(string.dump(function() return {} end), "bytecode")
end)

it("a recipe from checks of the fixtures' good ports fails their bugs, and parity.check uses it", function()
  local out = tmpdir()
  local function check(target, o)
    o = o or {}
    o.reference, o.target, o.out = fx .. "/reference", fx .. "/" .. target, out .. "/" .. target
    o.prompts, o.new_tokens, o.cache_dir, o.log = 2, 8, out .. "/cache", function() end
    return parity.check(o)
  end
  local good, bugs = {}, {}
  for _, t in ipairs({ "port_fused", "port_interleaved", "port_reorder" }) do check(t); good[#good + 1] = out .. "/" .. t end
  for _, t in ipairs({ "bug_eps_small", "bug_norm_bf16" }) do check(t); bugs[#bugs + 1] = out .. "/" .. t end
  local runs = calibrate.read(good, "good run")
  local r = calibrate.recipe(runs, RULE, { bugs = calibrate.read(bugs, "bug run") })
  for _, b in ipairs(r.bugs) do truthy(#b.fails > 0, b.results .. " fails under the recipe") end
  for _, p in ipairs(r.runs) do eq(#p.reference_sha256, 64) end
  local file = out .. "/recipe.lua"
  write(file, recipe.render(r))
  local v = check("bug_eps_small", { recipe_file = file })
  eq(v.verdict, "divergent")
  eq({ v.recipe.file, v.recipe.sha256, v.recipe.runs }, { file, r.sha256 or recipe.digest(r), 3 })
  eq(v.thresholds.by_class.norm.r_p95, r.thresholds.by_class.norm.r_p95)
  -- a thresholds file's single value over the recipe's
  v = check("port_fused", { recipe_file = file, thresholds = { r_p95 = 1.7 } })
  eq(v.thresholds.r_p95, 1.7)
  eq(v.thresholds.r32_p95, r.thresholds.r32_p95)
  truthy(v.verdict ~= "divergent", "a good port the recipe came from is not divergent")
  raises(function() calibrate.kind({ runs[1], { dir = "x", verdict = { dtype = "fp16", noise_dtype = "fp16" },
    baseline = "3-tensor" } }) end, "a recipe is for one kind of check")
  raises(function() calibrate.read({ out .. "/nowhere" }, "good run") end, "no verdict.json there")
end)

it("from the reference alone: its null runs, one rounding re-done at each component a seed, kept in the cache", function()
  local out = tmpdir()
  local logged = {}
  local o = { reference = fx .. "/reference", seeds = 2, prompts = 2, new_tokens = 8, cache_dir = out,
              log = function(line) logged[#logged + 1] = line end }
  local runs, null = calibrate.null_runs(o)
  eq(#runs, 2)
  eq(#logged, 2)
  -- every module with parameters of its own: the embedding, 2 x (2 norms + 7 linears), the final
  -- norm, the LM head
  eq(null.modules, 21)
  for _, run in ipairs(runs) do
    -- the reference against itself re-rounded: off its own noise (R p95 above 1), exact enough in
    -- fp32 (R32 under the default), the same argmax
    local e = run.e2e
    truthy(e.r_ratio.p95 > 1.01 and e.r_ratio.p95 < 3, "R p95 " .. e.r_ratio.p95)
    truthy(run.e2e32.r32.p95 > 0 and run.e2e32.r32.p95 < 3e-4, "R32 p95 " .. run.e2e32.r32.p95)
  end
  truthy(runs[1].e2e.r_ratio.p95 ~= runs[2].e2e.r_ratio.p95, "two seeds, two draws")
  -- again: read from the cache, nothing run
  logged = {}
  calibrate.null_runs(o)
  eq(#logged, 0)
  local r = calibrate.recipe(runs, calibrate.NULL_RULE, { null = null })
  eq({ r.rule.false_alarm, r.null.seeds, r.null.modules }, { 0.01, 2, 21 })
  truthy(r.rule.criteria > 5, "the figures a check judges")
end)

return spec.run()
