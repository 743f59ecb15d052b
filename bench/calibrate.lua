-- bench/calibrate.lua — calibration measured: a recipe from the good ports (the fixtures' correct
-- ports of another structure and the dev set's controls), its leave-one-out false alarms and the
-- planted bugs (fixtures and dev set) it still fails; then a recipe from each reference alone
-- (calibrate --reference: its null runs), judged on that reference's bugs and on its real good
-- ports. How docs/calibration.md's figures were made.
--   parity run bench/calibrate.lua OUT FIXTURES_DIR|- [DEVSET_DIR...] [--prompts K] [--new-tokens N] [--seeds S]
-- (a dev set: a directory with truth.json, as ../shared/hf-devset or bench/make_codebugs_hf.py's; "-" for
-- no fixtures)
-- Results go under OUT (one directory a check, the recipes); the null runs under the cache.
local parity = require("parity")
local calibrate = require("parity.calibrate")
local recipe = require("parity.recipe")
local thresholds = require("parity.thresholds")

local pos, settings = {}, { prompts = 4, new_tokens = 16, seeds = 8 }
local i = 1
while i <= #arg do
  local flag = arg[i]:match("^%-%-(.+)$")
  if flag then
    settings[flag:gsub("%-", "_")] = tonumber(arg[i + 1])
    i = i + 2
  else
    pos[#pos + 1] = arg[i]
    i = i + 1
  end
end
local out, fx = assert(pos[1], "usage: calibrate.lua OUT FIXTURES_DIR|- [DEVSET_DIR...]"), assert(pos[2])

-- the cases: {reference, target, good?}
local cases = {}
local function add(ref, target, good) cases[#cases + 1] = { ref = ref, target = target, good = good } end
local names = fx ~= "-" and require("parity.core").list_dir(fx) or {}
table.sort(names)
for _, n in ipairs(names) do
  if n:find("^port_") then add(fx .. "/reference", fx .. "/" .. n, true)
  elseif n:find("^bug_") or n:find("^same_") then add(fx .. "/reference", fx .. "/" .. n, false)
  elseif n:find("^moe_bug_") then add(fx .. "/moe", fx .. "/" .. n, false)
  elseif n:find("^noisy_bug_") then add(fx .. "/noisy", fx .. "/" .. n, false)
  end
end
if fx ~= "-" then add(fx .. "/noisy", fx .. "/noisy_port", true) end
for d = 3, #pos do
  local dev = pos[d]
  local truth = parity.json.read(dev .. "/truth.json")
  local keys = {}
  for k in pairs(truth) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do add(dev .. "/" .. k:match("^[^/]+") .. "/ref", dev .. "/" .. k, truth[k].expected == "equivalent") end
end

os.execute("mkdir -p " .. out)
print(("%-44s %-6s %-12s %8s %9s"):format("check", "good", "at defaults", "R p95", "R32 p95"))
for n, c in ipairs(cases) do
  c.dir = ("%s/%02d_%s"):format(out, n, c.target:gsub("^.*/([^/]+)/([^/]+)$", "%1_%2"))
  local ok, v = pcall(parity.check, { reference = c.ref, target = c.target, out = c.dir, prompts = settings.prompts,
    new_tokens = settings.new_tokens, quiet = true, log = function() end })
  c.ok = ok
  local f = ok and require("parity.verdict").figures(v) or {}
  print(("%-44s %-6s %-12s %8.3f %9.3g"):format(c.target:sub(-44), c.good and "yes" or "no",
    ok and v.verdict or ("error: " .. tostring(v)):sub(1, 40), f.r_p95 or 0 / 0, f.r32_p95 or 0 / 0))
end

local function dirs(pred)
  local l = {}
  for _, c in ipairs(cases) do if c.ok and pred(c) then l[#l + 1] = c.dir end end
  return l
end
local function judge(th, list)
  local failing, passing = 0, {}
  for _, run in ipairs(calibrate.read(list, "run")) do
    if #calibrate.failures(run, th) > 0 then failing = failing + 1 else passing[#passing + 1] = run.dir:match("[^/]+$") end
  end
  return failing, passing
end

-- 1. from the good ports
local goods, bugs = dirs(function(c) return c.good end), dirs(function(c) return not c.good end)
local runs, bug_runs = calibrate.read(goods, "good run"), calibrate.read(bugs, "bug run")
local h = calibrate.holdout(runs, bug_runs, 1, calibrate.RULE)
local r = calibrate.recipe(runs, calibrate.RULE, { holdout = h, bugs = bug_runs })
local file = out .. "/good-ports.lua"
require("parity.core").write_text(file, recipe.render(r))
local th = thresholds.resolve(nil, r.thresholds)
local caught, missed = judge(th, bugs)
print(("\nfrom %d good ports (q%g, margin %g): R p95 < %.3g, R32 p95 < %.3g, KL ratio %.3g, top-1 > %.3g"):format(#runs,
  calibrate.RULE.quantile, calibrate.RULE.margin, th.r_p95, th.r32_p95, th.kl_ratio, th.top1))
print(("  leave-one-out: %d false alarms in %d held-out good ports%s"):format(h.false_alarms, h.held,
  #h.alarmed > 0 and (": " .. table.concat(h.alarmed, ", ")) or ""))
print(("  planted bugs failing the recipe: %d of %d%s; under the held-out splits' recipes %d of %d"):format(caught,
  #bugs, #missed > 0 and (" (passing: " .. table.concat(missed, ", ") .. ")") or "", h.caught, h.bug_judgements))

-- 2. from each reference alone
print(("\nfrom each reference alone (%d null runs, a false-alarm rate of %g a check):"):format(settings.seeds,
  calibrate.NULL_RULE.false_alarm))
local refs, order = {}, {}
for _, c in ipairs(cases) do
  if c.ok then
    if not refs[c.ref] then refs[c.ref], order[#order + 1] = { good = {}, bugs = {} }, c.ref end
    table.insert(c.good and refs[c.ref].good or refs[c.ref].bugs, c.dir)
  end
end
local total_caught, total_bugs, total_alarms, total_good = 0, 0, 0, 0
for _, ref in ipairs(order) do
  local null_runs, null = calibrate.null_runs({ reference = ref, seeds = settings.seeds, prompts = settings.prompts,
    new_tokens = settings.new_tokens, log = function() end })
  local hn = calibrate.holdout(null_runs, {}, 1, calibrate.NULL_RULE)
  local rn = calibrate.recipe(null_runs, calibrate.NULL_RULE, { holdout = hn, null = null })
  require("parity.core").write_text(("%s/null-%s.lua"):format(out, ref:gsub("^.*/([^/]+)/([^/]+)$", "%1_%2")),
    recipe.render(rn))
  local tn = thresholds.resolve(nil, rn.thresholds)
  local c, m = judge(tn, refs[ref].bugs)
  local a, _ = judge(tn, refs[ref].good)
  total_caught, total_bugs, total_alarms, total_good = total_caught + c, total_bugs + #refs[ref].bugs,
    total_alarms + a, total_good + #refs[ref].good
  print(("  %-34s R p95 < %.3g, R32 p95 < %.3g; seeds held out: %d of %d alarm; its good ports failing: %d of %d;"
    .. " its bugs failing: %d of %d%s"):format(ref:sub(-34), tn.r_p95, tn.r32_p95, hn.false_alarms, hn.held, a,
    #refs[ref].good, c, #refs[ref].bugs, #m > 0 and (" (passing: " .. table.concat(m, ", ") .. ")") or ""))
end
print(("  in all: bugs failing %d of %d; real good ports failing %d of %d"):format(total_caught, total_bugs,
  total_alarms, total_good))
