-- parity.downstream (stage 7): lm-eval results judged against a tolerance. Small results files
-- written here in lm-eval 0.4's layout pin the arithmetic by hand (unpaired: each run's stderr;
-- paired: the same documents' differences); the real files of tests/data/lmeval/ (lm-eval 0.4
-- run on a tiny counting model, its bf16 port and a port with an MLP sign flipped:
-- bench/make_lmeval.py) are judged paired and unpaired; and check --downstream carries it into
-- the verdict.
local spec = require("parity.spec")
local it, eq, near, truthy, raises = spec.it, spec.eq, spec.near, spec.truthy, spec.raises
local parity = require("parity")
local downstream = require("parity.downstream")
local fx = assert(arg[1], "usage: downstream_spec.lua FIXTURES_DIR")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local data = here .. "/../data/lmeval"

local function tmpdir() return spec.tmpdir(true) end

local write = spec.write

-- a results file of one task, acc (and its stderr), n samples; optional per-document scores
local function run(dir, acc, stderr, n, scores)
  os.execute(("mkdir -p %q"):format(dir))
  local stamp = "2026-12-03T10-00-00.000000"
  write(dir .. "/results_" .. stamp .. ".json", parity.json.encode({
    results = { counting = { alias = "counting", ["acc,none"] = acc, ["acc_stderr,none"] = stderr or "N/A" } },
    ["n-samples"] = { counting = { original = n, effective = n } },
    higher_is_better = { counting = { acc = true } }, lm_eval_version = "0.4.9" }))
  if scores then
    local lines = {}
    for i, s in ipairs(scores) do
      lines[i] = parity.json.encode({ doc_id = i - 1, doc_hash = "h" .. i, filter = "none", metrics = { "acc" }, acc = s })
    end
    write(dir .. "/samples_counting_" .. stamp .. ".jsonl", table.concat(lines, "\n") .. "\n")
  end
  return dir
end

it("unpaired: the difference over sqrt(se_r^2 + se_t^2); past, within or holding the tolerance", function()
  local d = tmpdir()
  -- a drop of 0.10 with SEs 0.03 and 0.04: SE 0.05, interval 0.10 +- 0.098 = 0.002..0.198: holds 0.02
  local r = downstream.judge(run(d .. "/r", 0.8, 0.03, 100), run(d .. "/t", 0.7, 0.04, 100))
  local row = r.tasks[1]
  eq({ row.task, row.metric, row.filter, row.paired }, { "counting", "acc", "none", false })
  near(row.regression, 0.1, 1e-12); near(row.se, 0.05, 1e-12)
  near(row.lo, 0.1 - downstream.Z * 0.05, 1e-12)
  eq({ row.verdict, r.verdict, r.undecided }, { "inconclusive", "inconclusive", 1 })
  -- the SE narrows as 1/sqrt(n): lo reaches the tolerance at n x (1.96 x 0.05 / 0.08)^2 = 150.06
  eq(row.samples_needed, 151)
  -- a drop of 0.2 with SE 0.05: 0.102..0.298, past 0.02
  eq(downstream.judge(run(d .. "/r", 0.8, 0.03, 100), run(d .. "/t2", 0.6, 0.04, 100)).verdict, "divergent")
  -- a rise, or a drop of 0.001 with small SEs: within
  eq(downstream.judge(run(d .. "/r", 0.8, 0.003, 1e4), run(d .. "/t3", 0.799, 0.004, 1e4)).verdict, "equivalent")
  eq(downstream.judge(run(d .. "/r", 0.8, 0.003, 1e4), run(d .. "/t4", 0.85, 0.004, 1e4)).tasks[1].regression < 0, true)
  -- a looser tolerance decides the first case
  eq(downstream.judge(d .. "/r", d .. "/t", { tolerance = 0.25 }).verdict, "equivalent")
  -- no stderr (lm-eval's "N/A") and no samples: nothing to resolve it with
  local none = downstream.judge(run(d .. "/rn", 0.8, nil, 100), run(d .. "/tn", 0.8, nil, 100))
  eq({ none.verdict, none.tasks[1].why }, { "inconclusive", "no standard error in either run's results (and no"
    .. " per-sample logs)" })
end)

it("paired: the same documents' differences and their standard error, by hand", function()
  local d = tmpdir()
  -- d = target - reference per document: 0, -1, 0, 0: mean -0.25, sd 0.5, SE 0.25
  local r = downstream.judge(run(d .. "/r", 0.75, 0.25, 4, { 1, 1, 0, 1 }), run(d .. "/t", 0.5, 0.29, 4, { 1, 0, 0, 1 }))
  local row = r.tasks[1]
  eq({ row.paired, row.n }, { true, 4 })
  near(row.regression, 0.25, 1e-12); near(row.se, 0.25, 1e-12)
  -- 8 documents, the same two flips each way, as in pairs: mean 0, sd sqrt(2/7), SE 0.189
  r = downstream.judge(run(d .. "/r8", 0.5, 0.19, 8, { 1, 0, 1, 0, 1, 0, 1, 0 }),
                       run(d .. "/t8", 0.5, 0.19, 8, { 0, 1, 1, 0, 1, 0, 1, 0 }))
  near(r.tasks[1].se, math.sqrt(2 / 7) / math.sqrt(8), 1e-12)
end)

it("pairs the documents both runs scored (the same doc_hash), centred on their difference; skips groups", function()
  local d = tmpdir()
  run(d .. "/r", 0.75, 0.2, 4, { 1, 1, 0, 1 })
  run(d .. "/t", 0.25, 0.2, 4, { 1, 0, 0, 0 })
  -- document 4's hash differs in the target: it is another document, left out of the pairs
  local file = d .. "/t/samples_counting_2026-12-03T10-00-00.000000.jsonl"
  local text = spec.read(file):gsub('"doc_hash":"h4"', '"doc_hash":"other"')
  write(file, text)
  local row = downstream.judge(d .. "/r", d .. "/t").tasks[1]
  -- pairs 0, -1, 0: mean -1/3, the regression 1/3 (the whole runs' 0.5 is not what was paired)
  eq({ row.n, row.other_documents }, { 3, 1 })
  near(row.regression, 1 / 3, 1e-12)
  truthy(row.why:find("1 with another doc_hash left out", 1, true), row.why)
  -- a group's row (lm-eval's "groups") is listed, not judged twice
  write(d .. "/g.json", parity.json.encode({ results = { counting = { ["acc,none"] = 0.5, ["acc_stderr,none"] = 0.1 },
    all = { ["acc,none"] = 0.5, ["acc_stderr,none"] = "N/A" } }, groups = { all = { ["acc,none"] = 0.5 } } }))
  write(d .. "/g2.json", parity.json.encode({ results = { counting = { ["acc,none"] = 0.5, ["acc_stderr,none"] = 0.1 },
    all = { ["acc,none"] = 0.5, ["acc_stderr,none"] = "N/A" } }, groups = { all = { ["acc,none"] = 0.5 } } }))
  local g = downstream.judge(d .. "/g.json", d .. "/g2.json")
  eq({ #g.tasks, g.tasks[1].task, g.missing }, { 1, "counting", { "all: a group (its tasks are judged each)" } })
  -- a regression at the tolerance itself: undecided, no sample count to give
  local at = downstream.judge(run(d .. "/r2", 0.5, 0.05, 100), run(d .. "/t2", 0.48, 0.05, 100))
  eq({ at.verdict, at.tasks[1].samples_needed }, { "inconclusive", nil })
end)

it("reads real lm-eval 0.4 results: the port in bf16 within 2 points, the flipped MLP past them", function()
  local ref, bf16, bug = data .. "/reference", data .. "/port_bf16", data .. "/port_bug"
  local ok = downstream.judge(ref, bf16)
  local row = ok.tasks[1]
  eq({ row.task, row.metric, row.paired, ok.verdict }, { "counting", "acc", true, "equivalent" })
  truthy(row.n >= 100, "documents paired: " .. row.n)
  local bad = downstream.judge(ref, bug)
  eq({ bad.verdict, bad.tasks[1].paired }, { "divergent", true })
  truthy(bad.tasks[1].regression > 0.1, "the flipped MLP's drop: " .. bad.tasks[1].regression)
  -- the results files alone (no per-sample logs): unpaired, from each run's stderr, far wider
  local d = tmpdir()
  for _, name in ipairs({ "reference", "port_bf16" }) do
    os.execute(("mkdir -p %q/%s && cp %q/%s/*/results_*.json %q/%s/"):format(d, name, data, name, d, name))
  end
  local unpaired = downstream.judge(d .. "/reference", d .. "/port_bf16")
  eq(unpaired.tasks[1].paired, false)
  truthy(unpaired.tasks[1].se > 2 * row.se, ("unpaired SE %g, paired %g"):format(unpaired.tasks[1].se, row.se))
  eq(unpaired.verdict, "inconclusive", "a 2-point tolerance the unpaired SE cannot resolve")
end)

it("refuses what it cannot compare, in one line", function()
  local d = tmpdir()
  raises(function() downstream.judge(d .. "/nowhere", d .. "/x") end, "no such file or directory")
  raises(function() downstream.judge(d, d) end, "no results*.json there")
  write(d .. "/results_x.json", "{\"x\": 1}")
  raises(function() downstream.judge(d .. "/results_x.json", d .. "/results_x.json") end,
    "not an lm-eval results file")
  local a = run(d .. "/a", 0.5, 0.1, 10)
  write(d .. "/b.json", parity.json.encode({ results = { other = { ["acc,none"] = 0.5 } } }))
  raises(function() downstream.judge(a, d .. "/b.json") end, "share no task and metric")
  raises(function() downstream.judge(a, a) end, "are the same file")
  run(d .. "/both/m1", 0.5, 0.1, 10)
  run(d .. "/both/m2", 0.5, 0.1, 10)
  raises(function() downstream.judge(d .. "/both", a) end, "hold several models'")
end)

it("check --downstream: the verdict includes it; a regression past the tolerance is divergent, with its cause", function()
  local out = tmpdir()
  local function check(target_results)
    return parity.check({ reference = fx .. "/reference", target = fx .. "/port_fused", out = out, prompts = 2,
      new_tokens = 8, cache_dir = out .. "-cache", log = function() end,
      downstream = { reference = data .. "/reference", target = target_results } })
  end
  local v = check(data .. "/port_bf16")
  local c
  for _, x in ipairs(v.criteria) do if x.name == "downstream" then c = x end end
  eq({ c.pass, c.stage }, { true, "downstream" })
  truthy(v.verdict ~= "divergent", v.verdict)
  eq(parity.json.read(out .. "/downstream.json").verdict, "equivalent")
  v = check(data .. "/port_bug")
  eq({ v.verdict, v.cause.class }, { "divergent", "downstream" })
  truthy(require("parity.report.terminal").render(v, out):find("FAIL         counting acc", 1, true))
  raises(function() check(out .. "/nowhere") end, "no such file or directory")
  -- one task past the tolerance and another undecided: divergent, not inconclusive
  local d = tmpdir()
  local function two(dir, a, b)
    os.execute(("mkdir -p %q"):format(dir))
    write(dir .. "/results_x.json", parity.json.encode({ results = {
      t1 = { ["acc,none"] = a, ["acc_stderr,none"] = 0.01 }, t2 = { ["acc,none"] = b, ["acc_stderr,none"] = 0.05 } } }))
    return dir
  end
  v = parity.check({ reference = fx .. "/reference", target = fx .. "/port_fused", out = out, prompts = 2,
    new_tokens = 8, cache_dir = out .. "-cache", log = function() end,
    downstream = { reference = two(d .. "/r", 0.8, 0.5), target = two(d .. "/t", 0.6, 0.49) } })
  eq({ v.verdict, v.cause.class }, { "divergent", "downstream" })
end)

return spec.run()
