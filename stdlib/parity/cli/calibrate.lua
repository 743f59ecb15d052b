--- parity.cli.calibrate — parity calibrate: a recipe from the checks of known-good ports.
local args = require("parity.cli.args")
local calibrate = require("parity.calibrate")
local recipe = require("parity.recipe")
local thresholds = require("parity.thresholds")
local validate = require("parity.validate")

---@type table<string, parity.cli.Command>
local commands = {}

commands.calibrate = {
  help = [[
Usage: parity calibrate RESULTS_DIR... --out RECIPE.lua [options]
       parity calibrate --reference REF --out RECIPE.lua [options]

Derives the check's thresholds from the results directories (parity check --out) of known-good
ports of one kind of check (the same --dtype and baseline), and writes them as a recipe: a
data-only Lua file with the rule and the sample size behind each threshold, the runs it came
from (their models' file hashes, prompts, dtype, baseline), parity's version and the date, and a
SHA-256 over all of it. Use it with parity check --recipe RECIPE.lua (a --thresholds file still
overrides single values); another team's checkout gives the same verdicts with it.
Each threshold is the good runs' figure at the quantile Q (default 0.95: with few runs, about
the largest), moved past it by the margin M (default 2) away from a perfect port:
  R p95 (e2e) and each component class's R (norm, attention, experts, mlp, embedding, lm_head,
  layer, model, other: from the modules' types, the largest a class's components reached a run):
      1 + M x (q - 1)           (1 is the reference's own noise)
  R32 p95 and each class's R32, KL p95 and 1 - cosine p5 over the reference's own:   M x q
  top-1 agreement (near-ties excluded), its low quantile q:   1 - M x (1 - q)
  KL's and cosine's floors: the default's, unless a good run's figure was above its ratio's
  bound (M x the quantile of those figures, never below the default's without --below-floors)
The rest (the diagnosis's, the smoke's) stay the defaults'. A figure no run has (an fp32 leg
none ran) keeps its default, and the table says so (n = 0); a class no port has gets no bounds
of its own (r_p95 and r32_p95 judge it).

Without a known-good port (a new model family), --reference REF measures what correct ports of
this reference can look like from the reference alone: S checks (--seeds, default 8) of the
reference against itself, both sides with every module that has parameters of its own fed its
floating inputs re-rounded (about one rounding's independent error at each component, a fresh
draw a seed and a side: two implementations that round differently everywhere), at the settings
given (--dtype, --prompts, ...: those of the checks the recipe is for). Their figures are the
null distribution, and the rule a stated false-alarm rate (--false-alarm, default 0.01 a check):
each bound an upper prediction bound of its figure's excess past a perfect port (Student's t, for
a spread estimated from the seeds; on a log scale when every figure lies past a perfect port's),
at 0.01 / m, m the figures a check judges. A leave-one-out over the seeds says how many of them
a bound from the others fails. The null runs are kept in the cache (a second calibration with
the same reference and settings reads them). --quantile and --margin give it the good ports'
rule instead.

  --out FILE         the recipe to write (required; nothing else is written)
  --quantile Q       the quantile of the good runs' figures (default 0.95; 0.5..1)
  --margin M         the margin past it (default 2; at least 1)
  --below-floors     let a calibrated floor go below the default's
  --false-alarm A    the rule of a stated false-alarm rate a check (the default with --reference)
  --reference REF    calibrate on the reference's null runs instead of good ports' results
  --seeds S          null runs (default 8; 2..1000)
  --dtype D, --baseline B, --prompts K, --prompt-len P, --new-tokens N, --seed N,
  --cache-dir DIR, --no-cache, --quiet   as for parity check (the null runs' settings)
  --holdout K        leave-K-out on the good runs: calibrated on the others, judged on the K
                     held out (every split, or 200 drawn): the false-alarm rate, in the recipe
  --bugs DIR...      results directories of checks of known bugs (every argument up to the next
                     --flag): which fail under the recipe (and under each held-out split's,
                     with --holdout): the share still caught
A run is judged again from its recorded figures: its e2e and fp32-leg criteria, each component's
own rows, and what fails whatever the thresholds (the static check, NaN/Inf, a padded head);
stricter than a check, which passes a fault the next operation absorbs.
Exit 0 written, 2 bad input (no such results, runs of different kinds, a bad number).]],
  --- parity calibrate: reads the runs, derives, judges held-out runs and bugs, writes the recipe.
  ---@param argv string[] the arguments after "calibrate"
  ---@return integer exit code
  run = function(argv)
    local o = args.parse(argv, {
      flags = { out = "string", quantile = "number", margin = "number", ["below-floors"] = "boolean",
                holdout = "number", bugs = "many", reference = "string", ["false-alarm"] = "number",
                seeds = "number", dtype = "string", baseline = "string", prompts = "number",
                ["prompt-len"] = "number", ["new-tokens"] = "number", seed = "number", ["cache-dir"] = "string", ["no-cache"] = "boolean", quiet = "boolean" },
      positional = {}, rest = "RESULTS_DIR",
    })
    if not o.out then args.usage_error("missing --out RECIPE.lua (the recipe to write)") end
    local null_mode = o.reference ~= nil
    if null_mode and #o.RESULTS_DIR > 0 then
      args.usage_error(("calibrate takes good runs' RESULTS_DIRs or --reference REF, not both (got %s)"):format(
        o.RESULTS_DIR[1]))
    end
    if not null_mode and #o.RESULTS_DIR == 0 then
      args.usage_error("missing RESULTS_DIR... (checks of known-good ports), or --reference REF (its null runs)")
    end
    for _, flag in ipairs({ "seeds", "dtype", "baseline", "prompts", "prompt-len", "new-tokens", "seed", "cache-dir",
                            "no-cache" }) do
      if o[flag] ~= nil and not null_mode then
        args.usage_error(("--%s sets the null runs' checks: it goes with --reference REF"):format(flag))
      end
    end
    local rule
    if o["false-alarm"] and (o.quantile or o.margin) then
      args.usage_error("--false-alarm is a rule of its own: give it, or --quantile and --margin, not both")
    end
    if o["false-alarm"] or (null_mode and not (o.quantile or o.margin)) then
      rule = { false_alarm = o["false-alarm"] or calibrate.NULL_RULE.false_alarm }
      validate.number("--false-alarm", rule.false_alarm, 1e-6, 0.5)
    else
      rule = { quantile = o.quantile or calibrate.RULE.quantile, margin = o.margin or calibrate.RULE.margin }
      validate.number("--quantile", rule.quantile, 0.5, 1)
      validate.number("--margin", rule.margin, 1, 1e3)
    end
    rule.below_floors = o["below-floors"] == true
    local runs, null
    if null_mode then
      local seeds = o.seeds or 8
      validate.number("--seeds", seeds, 2, 1000)
      if seeds ~= math.floor(seeds) then args.usage_error("--seeds takes a whole number") end
      local check = { reference = o.reference, dtype = o.dtype, baseline = o.baseline, prompts = o.prompts,
        prompt_len = o["prompt-len"], new_tokens = o["new-tokens"], seed = o.seed, cache = not o["no-cache"],
        cache_dir = o["cache-dir"] }
      require("parity.context").check_options(check)
      check.seeds, check.log = seeds, o.quiet and function() end or function(line) io.stderr:write(line, "\n") end
      runs, null = calibrate.null_runs(check)
    else
      runs = calibrate.read(o.RESULTS_DIR, "good run")
    end
    local bugs = calibrate.read(o.bugs or {}, "bug run")
    local kind = calibrate.kind(runs)
    if #bugs > 0 then calibrate.kind({ runs[1], unpack(bugs) }) end
    local holdout
    if o.holdout or null_mode then
      local k = o.holdout or 1
      validate.number("--holdout", k, 1, #runs - 1)
      if k ~= math.floor(k) then args.usage_error("--holdout takes a whole number of runs") end
      holdout = calibrate.holdout(runs, bugs, k, rule)
    end
    local r = calibrate.recipe(runs, rule, { holdout = holdout, bugs = bugs, null = null })
    local text = recipe.render(r)
    require("parity.core").write_text(o.out, text)

    print(("parity calibrate: %d %s (a %s target against %s noise, the %s baseline); rule: %s"):format(#runs,
      null_mode and ("null runs of " .. o.reference) or (#runs == 1 and "good run" or "good runs"), kind.dtype,
      kind.noise_dtype, kind.baseline, rule.false_alarm and ("a false-alarm rate of %g a check (Student's t tails)"):format(
        rule.false_alarm) or ("the q%g of their figures, margin %g"):format(rule.quantile, rule.margin)))
    if null then
      print(("  the null: %d modules perturbed a run (%s); runs in %s"):format(null.modules,
        "both sides' inputs re-rounded, one rounding's error, a draw each", null.runs_dir))
    end
    print(("  %-26s %10s %11s %4s  %s"):format("threshold", "default", "calibrated", "n", "from"))
    local names = {}
    for name in pairs(r.derived) do names[#names + 1] = name end
    table.sort(names, function(a, b)
      local ca, cb = a:find("^by_class") ~= nil, b:find("^by_class") ~= nil
      if ca ~= cb then return cb end
      return a < b
    end)
    for _, name in ipairs(names) do
      local d = r.derived[name]
      local base = name:match("([%w_]+)$")
      local loose = thresholds.looseness(thresholds.KIND[base], d.default, d.value)
      print(("  %-26s %10.4g %11.4g %4d  %s%s%s"):format(name, d.default, d.value, d.n, d.figure,
        d.quantile and (": q %.4g, %s"):format(d.quantile, d.rule)
          or d.typical and (": typically %.4g, %s"):format(d.typical, d.rule) or (": " .. d.rule),
        loose > 1 + 1e-12 and "  (looser than the default)" or ""))
    end
    if rule.false_alarm then
      print(("false alarms: by the rule, at most %g%% of checks of a port like these runs fail a criterion (each bound"
        .. " a tail of %g / %d figures a check judges), were their excesses normal (or log-normal, those all past a"
        .. " perfect port)"):format(100 * rule.false_alarm,
        rule.false_alarm, r.rule.criteria))
    end
    if holdout then
      print(("held out %d at a time (%d splits): false alarms %d of %d held-out checks (%.1f%%)%s"):format(holdout.k,
        holdout.splits, holdout.false_alarms, holdout.held, 100 * holdout.false_alarm_rate,
        #holdout.alarmed > 0 and (": " .. table.concat(holdout.alarmed, ", ")) or ""))
      if holdout.bugs > 0 then
        print(("  known bugs still caught: %d of %d judgements (%.1f%%)%s"):format(holdout.caught,
          holdout.bug_judgements, 100 * holdout.caught_rate,
          #holdout.missed > 0 and ("; missed by some split: " .. table.concat(holdout.missed, ", ")) or ""))
      end
    end
    if r.bugs then
      local missed = {}
      for _, b in ipairs(r.bugs) do
        if #b.fails == 0 then missed[#missed + 1] = b.results end
      end
      print(("known bugs under this recipe: %d of %d fail%s"):format(#r.bugs - #missed, #r.bugs,
        #missed > 0 and ("; passing: " .. table.concat(missed, ", ")) or ""))
    end
    print(("wrote %s (sha256 %s)"):format(o.out, recipe.digest(r)))
    return 0
  end,
}

return commands
