--- parity.report.terminal — the terminal summary of a check, rendered from its results alone
--- (verdict.json's stage summaries, criteria and warnings): what `parity check` prints, and
--- `parity report DIR` prints again from a finished results directory. A stage without lines
--- of its own here shows its criteria only.
local core = require("parity.core")
local results = require("parity.report.results")

local M = {}

local null = core.json.null

local function g(x) return (x == nil or x == null) and "-" or ("%.3g"):format(x) end
local function d(x) return ("p5 %.4g  p50 %.4g  p95 %.4g  max %.4g"):format(x.p5, x.p50, x.p95, x.max) end

--- stage name -> function(summary) -> lines (the summary a stage's `summary` made)
---@type table<string, fun(summary: table): string[]>
M.STAGE_LINES = {}

--- How many patched components the summary lists (the others: verdict.json's unpatched).
M.PATCHED_SHOWN = 8

--- The scaffold's line: both trees and how their components were paired, and what a given
--- mapping leaves unmapped.
---@param s table the scaffold stage's summary
---@return string[]
M.STAGE_LINES.scaffold = function(s)
  local lines = { ("scaffold reference %s (%d modules), target %s (%d modules): %s"):format(s.reference.type,
    s.reference.modules, s.target.type, s.target.modules,
    s.mapping == "none" and "trees differ, no mapping" or ("%d components mapped (%s%s)"):format(s.mapped, s.mapping,
      s.mapping == "auto" and ": from the weights, see scaffold/mapping.lua" or "")) }
  local left = s.unmapped_reference or {}
  if s.mapping == "given" and #left > 0 then  -- not tested, and not said to be missing either
    local shown = {}
    for i = 1, math.min(5, #left) do shown[i] = left[i] end
    lines[#lines + 1] = ("  the mapping leaves %d reference modules with weights unmapped (untested): %s%s"):format(
      #left, table.concat(shown, ", "), #left > 5 and ", ..." or "")
  end
  return lines
end

--- The greedy match rate, beside the reference's own.
---@param s table the smoke stage's summary
---@return string[]
M.STAGE_LINES.smoke = function(s)
  return { ("smoke   greedy match %.1f%%   (the reference's own at low precision: %.1f%%)"):format(
    100 * s.match_rate, 100 * s.own_match_rate) }
end

--- R, 1 - cosine, KL, delta p (each's p5/p50/p95/max) and the top-1 and top-k agreement.
---@param e table the e2e stage's summary
---@return string[]
M.STAGE_LINES.e2e = function(e)
  return {
    "R       " .. d(e.r_ratio),
    ("1 - cos p5 %.4g  p50 %.4g  p95 %.4g  max %.4g   (1 - each cosine percentile; reference's own: p5 %.4g)"):format(1 - e.cosine.p5, 1 - e.cosine.p50, 1 - e.cosine.p95, 1 - e.cosine.max, 1 - e.own_cosine.p5),
    "KL      " .. d(e.kl) .. ("   (reference's own: p95 %.4g)"):format(e.own_kl.p95),
    "delta p " .. d(e.delta_p),
    ("top-1   %.1f%% ± %.1f%% (%d near-ties excluded; %.1f%% with them)   top-%d %.1f%%"):format(
      100 * e.top1_ties_excluded.rate, 100 * e.top1_ties_excluded.stderr, e.ties, 100 * e.top1.rate,
      e.topk.k, 100 * e.topk.rate),
  }
end

--- The fp32 leg's R32 and relative L2.
---@param e table the e2e32 stage's summary
---@return string[]
M.STAGE_LINES.e2e32 = function(e)
  return { ("R32     p5 %.3g  p50 %.3g  p95 %.3g  max %.3g   (fp32 leg; rel L2 %.3g)"):format(
    e.r32.p5, e.r32.p50, e.r32.p95, e.r32.max, e.rel_l2) }
end

--- Each lm-eval task and metric judged (parity.downstream).
M.STAGE_LINES.downstream = function(d) return require("parity.downstream").lines(d) end

--- The first divergent component and its cause, or that none adds error of its own.
---@param l table the localize stage's summary
---@return string[]
M.STAGE_LINES.localize = function(l)
  local f = l.first_divergence
  if f == null then return { "components: every one adds no error of its own" } end
  return { ("first divergence: %s (%s), R %s, R32 %s, %s%s: %s: %s"):format(f.reference, f.type,
    f.r == null and "-" or ("%.3g"):format(f.r), f.r32 == null and "-" or ("%.3g"):format(f.r32),
    f.pattern, f.absorbed and " (absorbed by the next operation)" or "", f.cause.class, f.cause.detail) }
end

--- The summary line of a confirmation: what fixing it does.
---@param c table one of verdict.json's confirmation (parity.confirm)
---@return string
function M.confirmation_line(c)
  local fig = {}
  for _, name in ipairs({ "r_p95", "r32_p95" }) do
    if c.before[name] and c.after[name] then
      fig[#fig + 1] = ("%s %.3g -> %.3g"):format(name == "r_p95" and "R p95" or "R32 p95", c.before[name], c.after[name])
    end
  end
  local figs = #fig > 0 and (": " .. table.concat(fig, ", ")) or ""
  if c.confirmed then
    return ("confirmed (%s): %s the port is equivalent%s%s"):format(c.kind, c.what, figs,
      c.rounds > 1 and (" (%d repairs: more than one bug)"):format(c.rounds) or "")
  end
  if c.error then return ("not confirmed (%s): %s"):format(c.kind, c.error) end
  local still = c.verdict == "inconclusive" and "undecided (inconclusive: its figures' intervals hold their bounds at"
    .. " these prompts; more prompts decide)" or "still divergent"
  return ("not confirmed (%s): %s the port is %s%s (results in %s)"):format(c.kind, c.what, still, figs, c.results)
end

--- Why an undecided criterion decides nothing, in words: its interval and the bound it holds,
--- and about how many prompts would decide it; nil when its interval is conclusive.
---@param c table a verdict's criterion
---@return string|nil
function M.undecided(c)
  local iv = c.interval
  if not iv or iv.conclusive then return nil end
  if iv.says then return ("%s: %s"):format(c.rule, iv.says) end
  return ("%s: %.4g, its %g%% interval %.4g..%.4g (%d sequences resampled) holds the bound%s: %s"):format(c.rule,
    c.value, 100 * iv.level, iv.lo, iv.hi, iv.sequences,
    iv.bound_lo and (" (%.4g..%.4g)"):format(iv.bound_lo, iv.bound_hi) or (" %.4g"):format(c.threshold),
    iv.prompts and ("about %d prompts would decide it (--prompts)"):format(iv.prompts)
      or "the figure is at its bound: more prompts may not decide it")
end

--- The terminal summary of a verdict: each stage's lines, the criteria, the verdict.
---@param v parity.Verdict a verdict (verdict.json's content), not an error one
---@param out string the results directory
---@param notes string[]|nil lines said last, before where the reports are (what a report could not show)
---@return string
function M.render(v, out, notes)
  local s = type(v.settings) == "table" and v.settings or {}
  local noise = v.dtype ~= "fp32" and "" or v.noise_dtype == "fp32" and " (over the reference's fp32 reassociation level)"
    or (" (over the reference's own %s noise)"):format(v.noise_dtype)
  local lines = { ("parity check: reference %s, target %s at %s%s, %d prompts x %d new tokens (teacher-forced)"):format(
    v.reference, v.target, v.dtype, noise, s.prompts or 0, s.new_tokens or 0) }
  if v.recipe then  -- the thresholds came from a calibration recipe (a --thresholds file over it)
    lines[#lines + 1] = ("  thresholds: recipe %s (sha256 %s), calibrated %s on %d %s"):format(v.recipe.file,
      v.recipe.sha256:sub(1, 12), v.recipe.made, v.recipe.runs, v.recipe.from or "good runs")
  end
  for _, p in ipairs(v.patches or {}) do  -- the target computed with these (its files untouched)
    local c = p.components
    lines[#lines + 1] = ("  patched with %s%s: %s"):format(p.file, p.sha256 ~= null and (" (sha256 " .. p.sha256:sub(1, 12)
      .. ")") or "", #c <= 3 and table.concat(c, ", ") or (("%s, ... (%d components)"):format(c[1], #c)))
  end
  local before = v.unpatched or {}
  local shown = before.components or {}
  for i, c in ipairs(shown) do  -- each patched component: unpatched -> patched
    if i > M.PATCHED_SHOWN then
      lines[#lines + 1] = ("  ... and %d more patched components (verdict.json: unpatched.components)"):format(#shown - i + 1)
      break
    end
    lines[#lines + 1] = ("  patched %s: R %s -> %s, R32 %s -> %s"):format(c.target, g(c.before.r), g(c.r), g(c.before.r32),
      g(c.r32))
  end
  if before.error then lines[#lines + 1] = "  the port's figures without its patches: " .. before.error end
  if before.verdict then
    lines[#lines + 1] = ("  without the patches the port is %s (its e2e stages: %s/)"):format(before.verdict, before.results)
  end
  for _, name in ipairs(v.stages or {}) do
    local render, summary = M.STAGE_LINES[name], (v.summaries or {})[name]
    if summary and summary ~= null and render then
      for _, line in ipairs(render(summary)) do lines[#lines + 1] = "  " .. line end
    end
  end
  for _, c in ipairs(v.criteria or {}) do
    local was = before.criteria and before.criteria[c.name]
    lines[#lines + 1] = ("  %s  %-60s %.4g%s"):format(results.state(c, {}), c.rule, c.value,
      was and ("   (unpatched %.4g)"):format(was) or "")
  end
  local open = results.open(v)
  for _, c in ipairs(v.criteria or {}) do  -- what the resamples over sequences do not agree on
    local why = open[c.name] and M.undecided(c)
    if why then lines[#lines + 1] = "  inconclusive: " .. why end
  end
  for _, w in ipairs(v.warnings or {}) do lines[#lines + 1] = "  warning: " .. w end
  for _, c in ipairs(v.confirmation or {}) do lines[#lines + 1] = "  " .. M.confirmation_line(c) end
  if v.cause ~= null and (v.first_divergence == nil or v.first_divergence == null) then
    lines[#lines + 1] = ("  cause: %s: %s"):format(v.cause.class, v.cause.detail)
  end
  local failed = v.failed or {}
  local undecided = v.verdict == "inconclusive" and (" — undecided: " .. table.concat(v.inconclusive or {}, ", ")
    .. (#failed > 0 and ("; failing within their intervals: " .. table.concat(failed, ", ")) or "")
    .. "; not a pass")
  lines[#lines + 1] = ("verdict: %s%s   (results in %s/)"):format(v.verdict:upper(),
    undecided or #failed > 0 and (" — failed: " .. table.concat(failed, ", ")) or "", out)
  for _, n in ipairs(notes or {}) do lines[#lines + 1] = "  not shown: " .. n end
  lines[#lines + 1] = M.where(out)
  return table.concat(lines, "\n")
end

--- The line that says where the reports are (those in `out`), or nil when there are none.
---@param out string the results directory
---@return string|nil
function M.where(out)
  local has = function(name) return core.path_kind(out .. "/" .. name) == "file" end
  if not has("report.html") then return nil end
  return ("report: %s/report.html (open it in a browser)%s"):format(out, has("junit.xml") and ("; JUnit: %s/junit.xml"):format(out) or "")
end

--- ANSI colours of the summary's lines, by how they start.
local COLOURS = { { "^  FAIL", "31" }, { "^  pass", "32" }, { "^  warn", "33" }, { "^  inconclusive:", "33" },
                  { "^verdict: EQUIVALENT", "1;32" }, { "^verdict: DIVERGENT", "1;31" }, { "^verdict: ERROR", "1;31" },
                  { "^verdict: INCONCLUSIVE", "1;33" }, { "^  first divergence:", "1" }, { "^  cause:", "1" } }

--- Whether a summary printed to stdout gets colour: on a terminal, unless NO_COLOR is set
--- (no-color.org: any value but the empty one).
---@param is_tty boolean stdout is a terminal
---@param no_color string|nil the NO_COLOR environment variable
---@return boolean
function M.wants_colour(is_tty, no_color)
  return is_tty == true and (no_color == nil or no_color == "")
end

--- The summary with its pass / FAIL / warning and verdict lines coloured (the text unchanged).
---@param text string M.render's
---@return string
function M.colour(text)
  local out = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local code
    for _, c in ipairs(COLOURS) do
      if not code and line:find(c[1]) then code = c[2] end
    end
    out[#out + 1] = code and ("\27[%sm%s\27[0m"):format(code, line) or line
  end
  return table.concat(out, "\n")
end

--- The summary as the command line prints it: coloured when stdout is a terminal (M.wants_colour).
---@param text string
---@return string
function M.for_stdout(text)
  return M.wants_colour(core.stdout_is_tty(), os.getenv("NO_COLOR")) and M.colour(text) or text
end

--- The summary of a verdict read from `out` (parity.report.results.verdict); an error verdict
--- is its message.
---@param v parity.Verdict
---@param out string the results directory
---@param notes string[]|nil M.render's
---@return string text
function M.text(v, out, notes)
  if v.verdict ~= "error" then return M.render(v, out, notes) end
  local lines = { ("verdict: ERROR — %s   (results in %s/)"):format(tostring(v.error), out) }
  for _, n in ipairs(notes or {}) do lines[#lines + 1] = "  not shown: " .. n end
  lines[#lines + 1] = M.where(out)
  return table.concat(lines, "\n")
end

--- The summary of the results in `out`, from its verdict.json alone (results.verdict, M.text).
---@param out string a results directory
---@param notes string[]|nil M.render's
---@return string text
---@return parity.Verdict verdict what verdict.json holds
function M.from_dir(out, notes)
  local v = results.verdict(out)
  return M.text(v, out, notes), v
end

return M
