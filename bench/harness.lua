-- bench/harness.lua — time to verdict on generated models (bench/make_models.py), next to what
-- it costs at least: the process start and the bare forwards each command needs, timed alone in
-- the same run. Prints a table and writes JSON. Wall clock, median of REPEATS runs each.
--   parity run bench/harness.lua MODELS_DIR OUT.json [REPEATS] [SIZE[@fp32]...]
-- SIZE@fp32 checks that size as an fp32-only port (check --dtype fp32: LibTorch 1.13's bf16
-- forwards on a CPU are too slow at xl's 1.1B parameters). Each size's peak RSS is set against
-- the memory goal: 1.3 x (its largest trace and that trace's activations) + the start-up's RSS.
local core = require("parity.core")
local lm = require("parity.lm")
local models, out_json, repeats = arg[1], arg[2], tonumber(arg[3]) or 3
local sizes = { select(4, unpack(arg)) }
if #sizes == 0 then sizes = { "s", "m" } end
local parity_bin = assert(os.getenv("PARITY_BIN"), "set PARITY_BIN to the parity binary (make bench does)")
local tmp = os.tmpname()
os.remove(tmp)

local function median(xs)
  table.sort(xs)
  return xs[math.floor((#xs + 1) / 2)]
end

--- A command's wall time and peak RSS (median of `repeats`): /usr/bin/time -f "%e %M".
local function run(cmd)
  local walls, rss, text = {}, {}, nil
  for i = 1, repeats do
    local p = io.popen(("/usr/bin/time -f '@@ %%e %%M' %s 2>&1"):format(cmd))
    text = p:read("*a")
    p:close()
    local wall, kb = text:match("@@ ([%d.]+) (%d+)")
    if not wall then error("no timing from: " .. cmd .. "\n" .. text, 0) end
    walls[i], rss[i] = tonumber(wall), tonumber(kb) / 1024
  end
  return median(walls), median(rss), text
end

--- The first forward of a freshly loaded trace, load included (what a command pays).
local function fresh_forward(file, tokens)
  local times = {}
  for i = 1, repeats do
    local t0 = core.clock()
    local m = parity.load(file)
    m(tokens)
    times[i] = core.clock() - t0
    parity.collect()
  end
  return median(times)
end

local results, rows = { repeats = repeats, threads = torch.get_num_threads(), sizes = {} }, {}
local start = run(parity_bin .. " version")
results.start_s = start
-- the largest trace and its activations: a process that loads it and runs it once on the
-- check's sequences, less the start-up's RSS
local one_script = tmp .. ".one.lua"
local f = assert(io.open(one_script, "w"))
f:write("local m = parity.load(arg[1])\nm(torch.randint(0, tonumber(arg[2]), { 4, 32 }, { seed = 0 }))\n")
f:close()
local start_rss = select(2, run(parity_bin .. " version"))
for _, spec in ipairs(sizes) do
  local size, only32 = spec:match("^([^@]+)(@?f?p?3?2?)$")
  only32 = only32 == "@fp32"
  local low = only32 and "fp32" or "bf16"
  local dtype_flag = only32 and " --dtype fp32" or ""
  local ref, port = models .. "/" .. size .. "/ref", models .. "/" .. size .. "/port"
  local rb, pb = parity.bundle(ref), parity.bundle(port)
  local params = 0
  for _, t in pairs(rb:at("fp32"):parameters()) do params = params + t:numel() end
  local bytes = 0
  for _, f in pairs(rb.files) do bytes = bytes + tonumber(io.popen("stat -c %s " .. f):read("*l")) end
  -- gate: both models once at fp32 on [2, 32] tokens
  local gate_tokens = torch.randint(0, rb:vocab_size(), { 2, 32 }, { seed = 0 })
  local gate_fw = fresh_forward(rb.files.fp32, gate_tokens) + fresh_forward(pb.files.fp32, gate_tokens)
  local gate = run(("%s gate %s %s"):format(parity_bin, ref, port))
  -- check: 4 prompts x 16 + 16 tokens; the reference side (fp32 greedy, both teacher-forced
  -- passes) and the target's two teacher-forced passes
  local prompts = torch.randint(0, rb:vocab_size(), { 4, 16 }, { seed = 0 })
  local t0 = core.clock()
  local seqs = lm.greedy(rb, "fp32", prompts, 16)
  local greedy = core.clock() - t0
  local ref_fw = greedy + fresh_forward(rb.files.fp32, seqs) + (only32 and 0 or fresh_forward(rb.files.bf16, seqs))
  local tgt_fw = (only32 and 0 or fresh_forward(pb.files.bf16, seqs)) + fresh_forward(pb.files.fp32, seqs)
  local common = ("--out %s --cache-dir %s%s"):format(tmp .. "/out", tmp .. "/cache", dtype_flag)
  local largest, largest_bytes = nil, 0
  for _, b in ipairs({ rb, pb }) do
    for _, file in pairs(b.files) do
      local n = tonumber(io.popen("stat -c %s " .. file):read("*l"))
      if n > largest_bytes and (b.files.fp32 == file or not only32) then largest, largest_bytes = file, n end
    end
  end
  local one_rss = select(2, run(("%s run %s %s %d"):format(parity_bin, one_script, largest, rb:vocab_size())))
  local rss_goal = 1.3 * (one_rss - start_rss) + start_rss
  local cold, cold_rss, cold_log = run(("%s check %s %s %s --no-cache"):format(parity_bin, ref, port, common))
  local cold_forwards = parity.json.read(tmp .. "/out/run.json").forwards
  os.execute(("%s check %s %s %s --quiet >/dev/null 2>&1"):format(parity_bin, ref, port, common))  -- fills the cache
  local warm, warm_rss, log = run(("%s check %s %s %s"):format(parity_bin, ref, port, common))
  local warm_forwards = parity.json.read(tmp .. "/out/run.json").forwards
  -- what the log says the model runs took: the reference's side (its greedy decoding, its passes,
  -- its own low-precision decoding), the smoke's decoding past the divergences, the sweep (all of
  -- it, and its model runs: tapped forwards and component runs)
  local function spent(text)
    local reference = tonumber(text:match("reference: computed in ([%d.]+) s")) or 0
    local smoke = tonumber(text:match("smoke: %d+ forwards? in ([%d.]+) s"))
    local sweep, tapped, runs = text:match(
      "components: %d+ tested in ([%d.]+) s: %d+ tapped forwards %(([%d.]+) s;[^)]*%), %d+ component runs %(([%d.]+) s%)")
    return reference, smoke, tonumber(sweep), tapped and tonumber(tapped) + tonumber(runs)
  end
  local _, smoke, sweep, sweep_runs = spent(log)
  local cold_reference, cold_smoke, _, cold_sweep_runs = spent(cold_log)
  -- what the cached check spends beyond the start, the target's two passes, the smoke's decoding
  -- and the component sweep's model runs: parity's own work
  local rest = sweep_runs and smoke and warm - start - tgt_fw - smoke - sweep_runs
  local r = {
    size = spec, parameters = params, reference_bytes = bytes, low_precision = low,
    gate_s = gate, gate_forwards_s = gate_fw, gate_ratio = gate / (start + gate_fw),
    check_cold_s = cold, check_cold_forwards_s = ref_fw + tgt_fw, check_cold_ratio = cold / (start + ref_fw + tgt_fw),
    check_cold_reference_s = cold_reference,
    check_cold_rest_s = cold_smoke and cold_sweep_runs and cold - start - cold_reference - tgt_fw - cold_smoke
      - cold_sweep_runs,
    check_cached_s = warm, check_cached_forwards_s = tgt_fw, check_cached_ratio = warm / (start + tgt_fw),
    component_sweep_s = sweep, component_sweep_ratio = sweep and sweep / tgt_fw, smoke_s = smoke,
    check_cached_rest_s = rest,
    peak_rss_mb = math.max(cold_rss, warm_rss),
    -- the memory goal: 1.3 x (the largest trace and its activations) + the start-up's RSS
    largest_trace_mb = largest_bytes / 2 ^ 20, largest_trace_run_rss_mb = one_rss, start_rss_mb = start_rss,
    rss_goal_mb = rss_goal, rss_over_goal = math.max(cold_rss, warm_rss) / rss_goal,
    -- the cached check over what it cannot do without: the start and the model runs it makes
    check_cached_overhead = rest and warm / (warm - rest),
    peak_rss_per_model_size = math.max(cold_rss, warm_rss) / (bytes / 2 ^ 20),
    check_cold_peak_rss_mb = cold_rss, check_cached_peak_rss_mb = warm_rss,
    -- what each check ran, by kind (OUT/run.json: parity.forwards)
    check_cold_forwards = cold_forwards, check_cached_forwards = warm_forwards,
  }
  results.sizes[#results.sizes + 1] = r
  rows[#rows + 1] = r
end
os.execute("rm -rf " .. tmp)
os.remove(one_script)
parity.json.write(out_json, results)
print(("start-up (parity version): %.2f s, RSS %.0f MB; %d threads; median of %d"):format(start, start_rss,
  results.threads, repeats))
print(("%-5s %8s | %7s %7s %6s | %8s %8s %6s %6s | %8s %8s %6s | %6s %6s %6s %6s %8s"):format("size", "params", "gate",
  "fwds", "ratio", "check", "fwds", "ratio", "rest", "cached", "fwds", "ratio", "sweep", "smoke", "rest", "ovh",
  "RSS MB"))
for _, r in ipairs(rows) do
  print(("%-5s %7.1fM | %7.2f %7.2f %6.2f | %8.2f %8.2f %6.2f %6.1f | %8.2f %8.2f %6.2f | %6.1f %6.1f %6.1f %6.2f %8.0f")
    :format(r.size, r.parameters / 1e6, r.gate_s, r.gate_forwards_s, r.gate_ratio, r.check_cold_s,
    r.check_cold_forwards_s, r.check_cold_ratio, r.check_cold_rest_s or 0, r.check_cached_s, r.check_cached_forwards_s,
    r.check_cached_ratio, r.component_sweep_ratio or 0, r.smoke_s or 0, r.check_cached_rest_s or 0,
    r.check_cached_overhead or 0, r.peak_rss_mb))
end
local function counts(f) return ("%d tf, %d dec, %d comp, %d loads (%d reloads)"):format(f.teacher_forced,
  f.decoding_steps, f.component_runs, f.loads, f.reloads) end
print("memory: peak RSS of the checks against the goal, 1.3 x (the largest trace and its activations: a process")
print("running it once on [4, 32] tokens, less the start-up's RSS) + the start-up's RSS")
for _, r in ipairs(rows) do
  print(("%-8s largest trace %6.0f MB, its run %6.0f MB; goal %6.0f MB; cold %6.0f MB, cached %6.0f MB: %.2f x the goal")
    :format(r.size, r.largest_trace_mb, r.largest_trace_run_rss_mb, r.rss_goal_mb, r.check_cold_peak_rss_mb,
    r.check_cached_peak_rss_mb, r.rss_over_goal))
end
print("forwards (run.json): teacher-forced passes, decoding steps, component runs, model loads (reloads)")
for _, r in ipairs(rows) do
  print(("%-5s cold: %s; cached: %s"):format(r.size, counts(r.check_cold_forwards), counts(r.check_cached_forwards)))
end
print("ratio = command / (start-up + the bare forwards it needs, each a fresh load and first call);")
print("check's needed forwards: the reference's fp32 greedy and teacher-forced passes (cold only) and the")
print("target's bf16 and fp32 passes; components add their sweep on top (sweep: its time over the target's")
print("two passes, which it reuses: it runs the target's component runs; the reference's captures and")
print("own noise come from the cache); smoke: seconds its decoding past the first")
print("divergences takes (one forward a token); rest: the check less start-up, the target's two passes,")
print("the smoke's decoding, the sweep's model runs and (cold) the reference's side as its log times it:")
print("parity's own work (loading, scaffold, metrics); ovh: the cached check over start-up and the model")
print("runs it makes, i.e. over itself less its rest. JSON: " .. out_json)
