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

Derives the check's thresholds from the results directories (parity check --out) of known-good
ports of one kind of check (the same --dtype and baseline), and writes them as a recipe: a
data-only Lua file with the rule and the sample size behind each threshold, the runs it came
from (their models' file hashes, prompts, dtype, baseline), parity's version and the date, and a
SHA-256 over all of it. Use it with parity check --recipe RECIPE.lua (a --thresholds file still
overrides single values); another team's checkout gives the same verdicts with it.
Each threshold is the good runs' figure at the quantile Q (default 0.95: with few runs, about
the largest), moved past it by the margin M (default 2) away from a perfect port:
  R p95 (e2e) and each component class's R (norm, attention, experts, mlp, embedding, lm_head,
  layer, other: from the modules' types, the largest a class's components reached a run):
      1 + M x (q - 1)           (1 is the reference's own noise)
  R32 p95 and each class's R32, KL p95 and 1 - cosine p5 over the reference's own:   M x q
  top-1 agreement (near-ties excluded), its low quantile q:   1 - M x (1 - q)
  KL's and cosine's floors: the default's, unless a good run's figure was above its ratio's
  bound (M x the quantile of those figures, never below the default's without --below-floors)
The rest (the diagnosis's, the smoke's) stay the defaults'. A figure no run has (a class no
port has, an fp32 leg none ran) keeps its default, and the table says so (n = 0).

  --out FILE         the recipe to write (required; nothing else is written)
  --quantile Q       the quantile of the good runs' figures (default 0.95; 0.5..1)
  --margin M         the margin past it (default 2; at least 1)
  --below-floors     let a calibrated floor go below the default's
  --holdout K        leave-K-out on the good runs: calibrated on the others, judged on the K
                     held out (every split, or 200 drawn): the false-alarm rate, in the recipe
  --bugs DIR...      results directories of checks of known bugs: which fail under the recipe
                     (and under each held-out split's, with --holdout): the share still caught
A run is judged again from its recorded figures: its e2e and fp32-leg criteria, each component's
own rows, and what fails whatever the thresholds (the static check, NaN/Inf, a padded head).
Exit 0 written, 2 bad input (no such results, runs of different kinds, a bad number).]],
  --- parity calibrate: reads the runs, derives, judges held-out runs and bugs, writes the recipe.
  ---@param argv string[] the arguments after "calibrate"
  ---@return integer exit code
  run = function(argv)
    local o = args.parse(argv, {
      flags = { out = "string", quantile = "number", margin = "number", ["below-floors"] = "boolean",
                holdout = "number", bugs = "many" },
      positional = {}, rest = "RESULTS_DIR",
    })
    if not o.out then args.usage_error("missing --out RECIPE.lua (the recipe to write)") end
    local rule = { quantile = o.quantile or calibrate.RULE.quantile, margin = o.margin or calibrate.RULE.margin,
                   below_floors = o["below-floors"] == true }
    validate.number("--quantile", rule.quantile, 0.5, 1)
    validate.number("--margin", rule.margin, 1, 1e3)
    local runs = calibrate.read(o.RESULTS_DIR, "good run")
    local bugs = calibrate.read(o.bugs or {}, "bug run")
    local kind = calibrate.kind(runs)
    if #bugs > 0 then calibrate.kind({ runs[1], unpack(bugs) }) end
    local holdout
    if o.holdout then
      validate.number("--holdout", o.holdout, 1, #runs - 1)
      if o.holdout ~= math.floor(o.holdout) then args.usage_error("--holdout takes a whole number of runs") end
      holdout = calibrate.holdout(runs, bugs, o.holdout, rule)
    end
    local r = calibrate.recipe(runs, rule, { holdout = holdout, bugs = bugs })
    local text = recipe.render(r)
    require("parity.core").write_text(o.out, text)

    print(("parity calibrate: %d good run%s (a %s target against %s noise, the %s baseline); rule: the q%g"
      .. " of their figures, margin %g"):format(#runs, #runs == 1 and "" or "s", kind.dtype, kind.noise_dtype,
      kind.baseline, rule.quantile, rule.margin))
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
        d.quantile and (": q %.4g, %s"):format(d.quantile, d.rule) or (": " .. d.rule),
        loose > 1 + 1e-12 and "  (looser than the default)" or ""))
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
