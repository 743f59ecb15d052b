--- parity.downstream — stage 7: the port's task scores against the reference's, from
--- lm-evaluation-harness 0.4.x results (parity downstream, check --downstream).
---
--- A results file is lm-eval's `results_<date>.json` (`results`: task -> "metric,filter" ->
--- value, and "metric_stderr,filter"; `n-samples`; `higher_is_better`), or the directory
--- lm-eval wrote it in (its newest results file there, or one level down). Per-sample logs
--- (`--log_samples`: samples_<task>_<date>.jsonl beside it, one document a line with `doc_id`,
--- `filter` and each metric's value) make the difference paired: the same documents' scores, the
--- standard error from the pairs. Each task and metric both runs have is judged: its regression
--- (the drop, where higher is better) beyond the tolerance fails, within it passes, and one the
--- samples cannot resolve (the 95% interval of the regression holds the tolerance) is
--- inconclusive, never a pass (docs/downstream.md).
local core = require("parity.core")

local M = {}

--- The two-sided 95% normal quantile: a regression's interval is its estimate +- Z x its SE.
M.Z = 1.959964

local function refuse(fmt, ...) error(fmt:format(...), 0) end

local function is_results_name(name) return name:find("^results.*%.json$") ~= nil end

--- The results file a path names: itself, or the newest results*.json in the directory (or one
--- level down, where lm-eval puts it under the model's name).
---@param path string
---@param what string "reference" or "target", for messages
---@return string file
local function results_file(path, what)
  local kind = core.path_kind(path)
  if kind == "file" then return path end
  if kind ~= "dir" then refuse("downstream: the %s's results %s: no such file or directory", what, path) end
  local found = {}
  local function scan(dir, depth)
    for _, name in ipairs(core.list_dir(dir)) do
      local p = dir .. "/" .. name
      local k = core.path_kind(p)
      if k == "file" and is_results_name(name) then found[#found + 1] = p
      elseif k == "dir" and depth < 1 then scan(p, depth + 1) end
    end
  end
  scan(path, 0)
  if #found == 0 then
    refuse("downstream: the %s's results %s: no results*.json there (lm-eval's --output_path holds one a run)", what,
      path)
  end
  local dirs, list = {}, {}
  for _, f in ipairs(found) do
    local d = f:match("^(.*)/[^/]+$")
    if not dirs[d] then dirs[d], list[#list + 1] = true, d end
  end
  if #list > 1 then
    table.sort(list)
    refuse("downstream: the %s's results %s hold several models' (%s): give the one to compare", what, path,
      table.concat(list, ", "))
  end
  table.sort(found, function(a, b) return a:match("[^/]+$") < b:match("[^/]+$") end)
  return found[#found]
end

--- The per-sample logs beside a results file: task -> its samples file (the same run's date).
local function samples_files(file)
  local dir, name = file:match("^(.*)/([^/]+)$")
  if not dir then dir, name = ".", file end
  local stamp = name:match("^results_(.+)%.json$")
  local out = {}
  if not stamp then return out end
  for _, entry in ipairs(core.list_dir(dir)) do
    local task = entry:match("^samples_(.+)_" .. stamp:gsub("%p", "%%%0") .. "%.jsonl$")
    if task then out[task] = dir .. "/" .. entry end
  end
  return out
end

--- A run's results: {file, tasks = {task -> {metrics = {"metric,filter" -> {value, stderr}},
--- n, higher = {metric -> boolean}}}, samples = {task -> file}}.
---@param path string a results file or the directory lm-eval wrote it in
---@param what string "reference" or "target"
---@return table
function M.read(path, what)
  local file = results_file(path, what)
  local ok, r = pcall(core.json.read, file)
  if not ok or type(r) ~= "table" or type(r.results) ~= "table" then
    refuse("downstream: the %s's results %s: not an lm-eval results file (no \"results\" table)%s", what, file,
      ok and "" or (": " .. tostring(r)))
  end
  local run = { file = file, tasks = {}, samples = samples_files(file), version = r.lm_eval_version, groups = {} }
  -- a group's row aggregates its tasks (judged each): listed, not judged again
  for group in pairs(type(r.groups) == "table" and r.groups or {}) do run.groups[group] = true end
  for task, metrics in pairs(r.results) do
    if type(metrics) ~= "table" then refuse("downstream: %s: results.%s is not a table", file, tostring(task)) end
    local t = { metrics = {}, higher = (r.higher_is_better or {})[task] or {} }
    local n = (r["n-samples"] or {})[task]
    t.n = type(n) == "table" and (n.effective or n.original) or nil
    for key, value in pairs(metrics) do
      local metric, filter = tostring(key):match("^([^,]+),(.*)$")
      if metric and not metric:find("_stderr$") and type(value) == "number" then
        local se = metrics[metric .. "_stderr," .. filter]
        t.metrics[key] = { metric = metric, filter = filter, value = value,
                           stderr = type(se) == "number" and se or nil }
      end
    end
    if not run.groups[task] then run.tasks[task] = t end
  end
  return run
end

--- A samples file's lines, decoded (read once a judgement: `read` holds what it read).
local function samples(file, read)
  if read[file] then return read[file] end
  local f = io.open(file, "r")
  if not f then refuse("downstream: %s cannot be read", file) end
  local out = {}
  for line in f:lines() do
    if line:find("%S") then
      local ok, s = pcall(core.json.decode, line)
      if not ok or type(s) ~= "table" then f:close(); refuse("downstream: %s: a line that is not JSON", file) end
      out[#out + 1] = s
    end
  end
  f:close()
  read[file] = out
  return out
end

--- One metric's per-document scores from a samples file: doc_id -> {value, hash} for `filter`.
local function per_document(file, metric, filter, read)
  local out = {}
  for _, s in ipairs(samples(file, read)) do
    local v = s[metric]
    if (s.filter == nil or s.filter == filter) and type(v) == "number" and s.doc_id ~= nil then
      out[s.doc_id] = { value = v, hash = s.doc_hash }
    end
  end
  return out
end

local function mean_sd(xs)
  local n, sum, sq = #xs, 0, 0
  for _, x in ipairs(xs) do sum = sum + x end
  local m = sum / n
  for _, x in ipairs(xs) do sq = sq + (x - m) ^ 2 end
  return m, n > 1 and math.sqrt(sq / (n - 1)) or 0
end

--- Judges one task's metric: the difference, its standard error (paired from both runs'
--- per-sample logs when both have them for the same documents, else from each run's stderr),
--- the regression's 95% interval against the tolerance.
---@return table row {task, metric, filter, reference, target, difference, regression, se, paired, n, lo, hi, verdict, why, samples_needed}
local function judge_metric(task, key, ref, target, rs, ts, tolerance, read)
  local r, t = ref.tasks[task].metrics[key], target.tasks[task].metrics[key]
  local higher = ref.tasks[task].higher[r.metric]
  if higher == nil then higher = true end
  local row = { task = task, metric = r.metric, filter = r.filter, reference = r.value, target = t.value,
                difference = t.value - r.value, higher_is_better = higher }
  row.regression = (higher and -row.difference or row.difference) + 0  -- (+ 0: never a -0)
  local paired
  if rs and ts then
    local a = per_document(rs, r.metric, r.filter, read)
    local b = per_document(ts, r.metric, r.filter, read)
    local ds, other = {}, 0
    for id, x in pairs(a) do
      local y = b[id]
      if y and (x.hash == nil or y.hash == nil or x.hash == y.hash) then ds[#ds + 1] = y.value - x.value
      elseif y then other = other + 1 end
    end
    if #ds >= 2 then
      local m, sd = mean_sd(ds)
      paired = { n = #ds, mean = m, se = sd / math.sqrt(#ds), other_documents = other }
    end
  end
  if paired then
    -- the difference over the documents both scored, the SE from the same documents
    row.paired, row.n, row.se = true, paired.n, paired.se
    row.regression = (higher and -paired.mean or paired.mean) + 0
    row.other_documents = paired.other_documents
    row.why = ("paired over %d documents both runs scored%s"):format(paired.n, paired.other_documents > 0
      and ("; %d with another doc_hash left out"):format(paired.other_documents) or "")
  elseif r.stderr and t.stderr then
    row.paired, row.n, row.se = false, ref.tasks[task].n, math.sqrt(r.stderr ^ 2 + t.stderr ^ 2)
    row.why = "unpaired: each run's standard error"
  else
    row.paired, row.n = false, ref.tasks[task].n
    row.verdict, row.why = "inconclusive", "no standard error in either run's results (and no per-sample logs)"
    return row
  end
  row.lo, row.hi = row.regression - M.Z * row.se + 0, row.regression + M.Z * row.se + 0
  if row.lo > tolerance then
    row.verdict = "divergent"
  elseif row.hi <= tolerance then
    row.verdict = "equivalent"
  else
    row.verdict = "inconclusive"
    -- the SE narrows as 1/sqrt(n): the samples that would put the interval's edge at the tolerance
    local gap = math.abs(tolerance - row.regression)
    local needed = gap > 1e-9 and row.n and row.n * (M.Z * row.se / gap) ^ 2
    if needed and needed < 1e9 then row.samples_needed = math.ceil(needed) end
  end
  return row
end

--- Judges the target's results against the reference's: every task and metric both have.
---@param reference_path string
---@param target_path string
---@param opts table|nil {tolerance (default 0.02: 2 points)}
---@return table result {reference, target, tolerance, tasks = rows..., regressions, undecided, missing, verdict}
function M.judge(reference_path, target_path, opts)
  local tolerance = (opts or {}).tolerance or 0.02
  local ref, target = M.read(reference_path, "reference"), M.read(target_path, "target")
  if ref.file == target.file then
    refuse("downstream: the reference's and the target's results are the same file, %s", ref.file)
  end
  local rows, missing, names, read = core.json.array(), core.json.array(), {}, {}  -- (read: samples files, once)
  for task in pairs(ref.tasks) do names[#names + 1] = task end
  table.sort(names)
  for _, task in ipairs(names) do
    if not target.tasks[task] then
      missing[#missing + 1] = ("%s: not in the target's results"):format(task)
    else
      local keys = {}
      for key in pairs(ref.tasks[task].metrics) do keys[#keys + 1] = key end
      table.sort(keys)
      for _, key in ipairs(keys) do
        if target.tasks[task].metrics[key] then
          rows[#rows + 1] = judge_metric(task, key, ref, target, ref.samples[task], target.samples[task], tolerance,
            read)
        else
          missing[#missing + 1] = ("%s %s: not in the target's results"):format(task, key)
        end
      end
    end
  end
  for task in pairs(target.tasks) do
    if not ref.tasks[task] then missing[#missing + 1] = ("%s: not in the reference's results"):format(task) end
  end
  local groups = {}
  for group in pairs(ref.groups) do groups[#groups + 1] = group end
  table.sort(groups)
  for _, group in ipairs(groups) do
    missing[#missing + 1] = ("%s: a group (its tasks are judged each)"):format(group)
  end
  if #rows == 0 then
    refuse("downstream: %s and %s share no task and metric: nothing to compare", ref.file, target.file)
  end
  local failed, open = 0, 0
  for _, row in ipairs(rows) do
    if row.verdict == "divergent" then failed = failed + 1 elseif row.verdict == "inconclusive" then open = open + 1 end
  end
  return { stage = "downstream", reference = ref.file, target = target.file, tolerance = tolerance, z = M.Z,
           tasks = rows, regressions = failed, undecided = open, missing = missing,
           verdict = failed > 0 and "divergent" or open > 0 and "inconclusive" or "equivalent" }
end

--- The result's lines for a summary: one a task and metric, then what could not be compared.
---@param d table M.judge's result
---@return string[]
function M.lines(d)
  local lines = { ("downstream (lm-eval): %d task metrics, tolerance %g (a regression past it fails); reference %s,"
    .. " target %s"):format(#d.tasks, d.tolerance, d.reference, d.target) }
  for _, row in ipairs(d.tasks) do
    lines[#lines + 1] = ("  %-12s %s %-26s %.4f -> %.4f  regression %+.4f%s  %s%s"):format(
      row.verdict == "divergent" and "FAIL" or row.verdict == "inconclusive" and "inconclusive" or "pass",
      row.task, row.metric .. (row.filter ~= "none" and ("," .. row.filter) or ""), row.reference, row.target,
      row.regression, row.lo and (" (95%% %+.4f..%+.4f)"):format(row.lo, row.hi) or "", row.why,
      row.samples_needed and ("; about %d samples would decide it"):format(row.samples_needed) or "")
  end
  for _, m in ipairs(d.missing) do lines[#lines + 1] = "  not compared: " .. m end
  return lines
end

return M
