--- parity.report.html — a finished check as one self-contained HTML page (OUT/report.html):
--- the verdict and why, each component's R and R32 in execution order (isolated and
--- accumulated, the bounds drawn, the first divergence marked, each one's role), the per-position
--- figures, the first divergence's error distributions against the reference's own (QQ plot and
--- histograms, and the logits'), both module trees with the mapping between them, and the
--- settings, versions and thresholds. Inline SVG and CSS and a few lines of script; no network.
--- It reads the results directory only, renders what is there and says what is not (a run of an
--- older parity, a stage that did not run). docs/reports.md says what each part shows.
local core = require("parity.core")
local criteria = require("parity.criteria")
local results = require("parity.report.results")
local svg = require("parity.report.svg")
local terminal = require("parity.report.terminal")
local thresholds = require("parity.thresholds")

local M = {}
local null = core.json.null
local esc, fmt, num = results.escape, results.fmt, results.number

--- Per-position series longer than this are downsampled (each point the worst of a bucket), and
--- the chart says so.
M.MAX_POINTS = 1500
--- A strip's cells per sequence beyond which positions are bucketed.
M.MAX_CELLS = 300

local COLOUR = { target = "#2f6db5", reference = "#7f8c8d", fail = "#c0392b", first = "#8e44ad", fp32 = "#d35400",
                 ok = "#27ae60", warn = "#e0a800" }

local CSS = [[
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1600px;padding:0 18px 40px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:700;letter-spacing:.04em}
.v-equivalent{background:#27ae60}.v-divergent,.v-error{background:#c0392b}.v-inconclusive{background:#e0a800;color:#222}
table{border-collapse:collapse;margin:6px 0}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.fail td:first-child{border-left:3px solid #c0392b}tr.first{background:#f5eefa}tr.open td:first-child{border-left:3px solid #e0a800}
.fail-t{color:#c0392b;font-weight:600}.pass-t{color:#27ae60}.warn-t{color:#b08800}
figure{display:inline-block;margin:8px 14px 8px 0;vertical-align:top}figcaption{max-width:660px;margin-bottom:2px}
.good{display:block;color:#555;font-size:12.5px}.note{color:#555;font-size:12.5px;margin:2px 0;max-width:660px}
svg.chart{background:#fff;font-size:11px}svg .plot{fill:#fcfcfc;stroke:#bbb}svg .grid{stroke:#eee}
svg .tick{fill:#555}svg .label{fill:#333;font-size:12px}svg .bound{stroke-width:1.4;stroke-dasharray:6 3}
svg .marker{stroke-width:1.3}svg .boundlabel{font-size:11px}svg .diagonal{stroke:#999;stroke-dasharray:4 3}svg .legend{font-size:11.5px}
.trees{display:flex;gap:24px}.tree{flex:1;font:12px/1.5 ui-monospace,monospace;max-height:640px;overflow:auto;border:1px solid #ddd;padding:6px}
.node{white-space:nowrap;cursor:default}.node.mapped{cursor:pointer}.node small{color:#888}.peer{color:#2f6db5}
.node.unmapped{color:#c0392b}.node.hl{background:#fff3c4}.badge{font-size:10.5px;border-radius:3px;padding:0 4px;margin-left:4px;background:#fbe3e0;color:#c0392b}
.missing{background:#fff8e1;border-left:3px solid #e0a800;padding:4px 10px;margin:6px 0}
code{font-size:12.5px}details summary{cursor:pointer;color:#2f6db5}.scroll{overflow-x:auto}
]]

-- (first in <head>: an error in any later script is counted where a test can read it)
local SCRIPT_HEAD = [[
window.parityErrors=[];window.addEventListener("error",function(e){window.parityErrors.push(String(e.message));
document.documentElement.setAttribute("data-errors",String(window.parityErrors.length));});]]
local SCRIPT_END = [[
(function(){var b=document.body;b.setAttribute("data-svgs",String(document.querySelectorAll("svg").length));
document.querySelectorAll(".node[data-peer]").forEach(function(n){n.addEventListener("click",function(){
document.querySelectorAll(".node.hl").forEach(function(x){x.classList.remove("hl");});
n.classList.add("hl");n.getAttribute("data-peer").split(" ").forEach(function(id){var p=document.getElementById(id);
if(p){p.classList.add("hl");p.scrollIntoView({block:"nearest"});}});});});
b.setAttribute("data-ready","1");})();]]

local function is(x) return x ~= nil and x ~= null end

local function table_html(head, rows, classes)
  local out = { "<table><tr>" }
  for _, h in ipairs(head) do out[#out + 1] = "<th>" .. esc(h) .. "</th>" end
  out[#out + 1] = "</tr>"
  for i, r in ipairs(rows) do
    out[#out + 1] = ("<tr%s>"):format(classes and classes[i] and (' class="%s"'):format(classes[i]) or "")
    for _, c in ipairs(r) do
      if type(c) == "table" then out[#out + 1] = ('<td class="%s">%s</td>'):format(c.class or "", c.html or esc(c.text))
      else out[#out + 1] = (type(c) == "number" and '<td class="num">%s</td>' or "<td>%s</td>"):format(
        type(c) == "number" and fmt(c) or esc(c)) end
    end
    out[#out + 1] = "</tr>"
  end
  out[#out + 1] = "</table>"
  return table.concat(out)
end

-- what the page being rendered cannot show, one line each (M.render returns them)
local gaps = {}
local function missing(text)
  gaps[#gaps + 1] = text
  return ('<p class="missing">%s</p>'):format(esc(text))
end

--- The verdict, why, the criteria, the first divergence, confirmations and patches.
local function summary_section(v)
  local out = {}
  local function add(s) out[#out + 1] = s end
  local kind = tostring(v.verdict)
  add(('<h1><span class="verdict v-%s">%s</span> %s <small>against</small> %s</h1>'):format(esc(kind), esc(kind:upper()),
    esc(v.target or "?"), esc(v.reference or "?")))
  local s = type(v.settings) == "table" and v.settings or {}
  add(('<p>At <b>%s</b>%s; %s prompts × %s new tokens, teacher-forced. Exit code %s.</p>'):format(esc(v.dtype or "?"),
    v.dtype == "fp32" and is(v.noise_dtype) and (" (over the reference's own %s noise)"):format(esc(v.noise_dtype)) or "",
    esc(s.prompts or "?"), esc(s.new_tokens or "?"), esc(require("parity.verdict").exit_code(v))))
  if kind == "error" then
    add(('<p class="fail-t">%s</p>'):format(esc(v.error or "the check did not finish")))
    return table.concat(out)
  end
  local f = v.first_divergence
  if is(f) then
    add(('<p><b>First divergence:</b> <code>%s</code> (%s) ↔ <code>%s</code>: R %s, R32 %s, a %s%s.</p>'):format(
      esc(f.reference), esc(f.type or "?"), esc(f.target or "?"), fmt(f.r), fmt(f.r32), esc(f.pattern or "?"),
      f.absorbed and " (absorbed by the next operation)" or ""))
  end
  if is(v.cause) then
    add(('<p><b>Cause:</b> %s: %s</p>'):format(esc(v.cause.class), esc(v.cause.detail)))
  elseif kind ~= "equivalent" then
    add("<p><b>Cause:</b> none fitted.</p>")
  end
  for _, c in ipairs(v.confirmation or {}) do
    add(('<p class="%s"><b>Confirmation:</b> %s</p>'):format(c.confirmed and "pass-t" or "fail-t",
      esc(terminal.confirmation_line(c))))
  end
  for _, p in ipairs(v.patches or {}) do
    add(('<p><b>Patched</b> with <code>%s</code>%s: %s</p>'):format(esc(p.file), is(p.sha256) and (" (sha256 " .. esc(p.sha256:sub(1, 12)) .. ")") or "",
      esc(table.concat(p.components or {}, ", "))))
  end
  local before = type(v.unpatched) == "table" and v.unpatched or {}
  if before.components and #before.components > 0 then
    local rows = {}
    for _, c in ipairs(before.components) do
      rows[#rows + 1] = { c.target, num(c.before and c.before.r) or "-", num(c.r) or "-", num(c.before and c.before.r32) or "-", num(c.r32) or "-" }
    end
    add("<p>Each patched component, unpatched → patched:</p>" .. table_html({ "component", "R before", "R", "R32 before", "R32" }, rows))
  end
  local open = results.open(v)
  local rows, classes, undecided = {}, {}, {}
  for _, c in ipairs(v.criteria or {}) do
    local state = results.state(c, open)
    undecided[#undecided + 1] = state == "undecided" and terminal.undecided(c) or nil
    local was = before.criteria and before.criteria[c.name]
    local iv = c.interval
    rows[#rows + 1] = { { class = state == "FAIL" and "fail-t" or state == "pass" and "pass-t" or "warn-t", text = state },
      c.stage or "", c.rule or c.name, num(c.value) or "-", num(c.threshold) or "-",
      iv and is(iv.lo) and ("%s..%s"):format(fmt(iv.lo), fmt(iv.hi)) or "",
      was and fmt(was) or "" }
    classes[#rows] = state == "FAIL" and "fail" or state == "undecided" and "open" or nil
  end
  if #rows > 0 then
    add("<h2>Criteria</h2>")
    add(table_html({ "", "stage", "rule", "value", "bound", "95% interval", "unpatched" }, rows, classes))
  end
  for _, u in ipairs(undecided) do add(('<p class="warn-t">undecided: %s</p>'):format(esc(u))) end
  for _, w in ipairs(v.warnings or {}) do add(('<p class="warn-t">warning: %s</p>'):format(esc(w))) end
  for _, sk in ipairs(v.skipped or {}) do
    add(('<p class="note">stage %s skipped: %s</p>'):format(esc(sk.stage), esc(sk.reason)))
  end
  return table.concat(out)
end

-- a path shortened from the left for an axis label
local function short(p, n)
  if #p <= n then return p end
  return "…" .. p:sub(-(n - 1)):gsub("^[\128-\191]+", "")  -- (not from inside a UTF-8 character)
end

local SHAPES = { source = "circle", amplifier = "triangle", carrier = "square" }

--- Each component's R and R32 in execution order, isolated and accumulated, and the table.
local function components_section(v, comp, th)
  if not comp then return missing("components.json is not in this directory: no per-component figures (the components stage did not run or did not finish)") end
  if comp.skipped then return missing("the components stage was skipped: " .. tostring(comp.skipped)) end
  local rows, number = {}, {}  -- the tested components, and each one's number in the table
  for i, r in ipairs(comp.components or {}) do
    if not r.skipped then rows[#rows + 1], number[r] = r, i end
  end
  local first = is(v.first_divergence) and v.first_divergence.reference or nil
  local out = { "<h2>Components, in the reference's execution order</h2>" }
  if num(comp.untested) and comp.untested > 0 then
    out[#out + 1] = ("<p>%d components tested; %d inside clean ones were not: a clean component holding no norm vouches for those inside it"
      .. " (the adaptive sweep; <code>--sweep full</code> tests every one).</p>"):format(#(comp.components or {}), comp.untested)
  end
  local function chart(key, acc, bound_key, label, has)
    if not has then return end
    local iso, accum, bounds, vlines, differs = {}, {}, {}, {}, false
    for i, r in ipairs(rows) do
      local fails = th and criteria.component_fails(r, th)
      local value = num(r[key])
      local cth = th and criteria.for_component(th, r) or {}
      if cth[bound_key] and th[bound_key] and cth[bound_key] ~= th[bound_key] then differs = true end
      bounds[#bounds + 1] = { i, cth[bound_key] }
      -- red: past this chart's bound (a component failing on another figure says so on hover)
      local past = value and cth[bound_key] and (value ~= value or value >= cth[bound_key])
      local tip = ("#%d %s (%s) ~ %s: %s %s, accumulated %s; %s%s"):format(number[r], r.reference, tostring(r.type),
        tostring(r.target), label, fmt(value), fmt(r[acc]), r.role or "no role",
        past and "; past its bound" or fails and "; fails on another figure" or "")
      if value then
        iso[#iso + 1] = { i, value, tip, r.reference == first and COLOUR.first or past and COLOUR.fail or COLOUR.target,
                          SHAPES[r.role] or "ring" }
      end
      if num(r[acc]) then accum[#accum + 1] = { i, num(r[acc]), tip } end
      if r.reference == first then vlines[#vlines + 1] = { i, "first divergence", COLOUR.first } end
    end
    local series = { { name = "isolated (on the reference's inputs)", kind = "dots", colour = COLOUR.target, points = iso },
                     { name = "accumulated (in the whole runs)", kind = "line", colour = COLOUR.reference, dash = true, points = accum } }
    local hlines = {}
    if th and th[bound_key] then hlines[1] = { th[bound_key], ("bound %s"):format(fmt(th[bound_key])) } end
    if differs then series[#series + 1] = { name = "its class's bound", kind = "step", colour = COLOUR.fail, points = bounds, width = 1 } end
    local ticks = {}
    local every = math.max(1, math.ceil(#rows / 40))
    for i, r in ipairs(rows) do
      if (i - 1) % every == 0 then ticks[#ticks + 1] = { i, short(r.reference, 24) } end
    end
    out[#out + 1] = svg.chart({ title = ("%s of each component: its own added error over the reference's own %s noise (log scale)")
        :format(label, label == "R" and tostring(v.noise_dtype or v.dtype) or "low-precision"),
      good = "every marker below the dashed red bound; the first divergence (purple) is the earliest component past it, and the accumulated line shows the error it starts growing",
      ylog = true, series = series, hlines = hlines, vlines = vlines, xticks = ticks, height = 340,
      ylabel = label, notes = { "marker: ● source (adds an error itself)  ▲ amplifier (enlarges what it inherits)  ■ carrier (passes it on)  ○ none; red: past its bound; hover a marker for its figures" } })
  end
  local any32 = false
  for _, r in ipairs(rows) do any32 = any32 or num(r.r32) ~= nil or num(r.acc_r32) ~= nil end
  chart("r", "acc_r", "r_p95", "R", true)
  chart("r32", "acc_r32", "r32_p95", "R32", any32)
  local trs, classes = {}, {}
  for i, r in ipairs(comp.components or {}) do
    local fails = not r.skipped and th and criteria.component_fails(r, th)
    trs[#trs + 1] = { i, r.reference, tostring(r.type), tostring(r.target), r.skipped and ("skipped: " .. r.skipped) or (r.role or ""),
      num(r.r) or "-", num(r.r32) or "-", num(r.acc_r) or "-", num(r.acc_r32) or "-",
      r.isolated == false and "accumulated only" or "" }
    classes[#trs] = r.reference == first and "first fail" or fails and "fail" or nil
  end
  out[#out + 1] = ('<details%s><summary>the %d components\' figures</summary><div class="scroll">%s</div></details>'):format(#trs <= 80 and " open" or "",
    #trs, table_html({ "#", "reference", "type", "target", "role", "R", "R32", "accumulated R", "accumulated R32", "" }, trs, classes))
  return table.concat(out)
end

--- A per-position series, sequence after sequence, downsampled to M.MAX_POINTS (each point the
--- largest, the worst, of its bucket; NaN worst of all).
---@param nested number[][] a stage's per_position figure, [sequence][position]
---@param f (fun(x: number): number)|nil applied to each value first (1 - cosine)
---@return table points {{x, y, tip}...}
---@return string|nil note what the downsampling did, and the NaN; nil when neither
function M.series(nested, f)
  local flat = {}
  for _, row in ipairs(type(nested) == "table" and nested or {}) do
    for _, x in ipairs(type(row) == "table" and row or {}) do
      x = num(x) or 0 / 0
      flat[#flat + 1] = f and f(x) or x
    end
  end
  local k = math.max(1, math.ceil(#flat / M.MAX_POINTS))
  local pts, nan = {}, 0
  for i = 1, #flat, k do
    local w = flat[i]
    for j = i, math.min(i + k - 1, #flat) do
      local x = flat[j]
      if x ~= x then nan = nan + 1 end
      w = (w ~= w or x ~= x) and 0 / 0 or math.max(w, x)
    end
    -- (NaN is drawn at the top edge, as infinity; the tooltip says NaN)
    pts[#pts + 1] = { i - 1, w == w and w or math.huge, ("position %d%s: %s"):format(i - 1,
      k > 1 and ("..%d"):format(math.min(i + k - 1, #flat) - 1) or "", fmt(w)) }
  end
  local notes = {}
  if k > 1 then notes[1] = ("downsampled: %d positions, each point the worst of %d"):format(#flat, k) end
  if nan > 0 then notes[#notes + 1] = ("%d positions NaN, drawn at the top edge"):format(nan) end
  return pts, #notes > 0 and table.concat(notes, "; ") or nil
end

local function boundaries(nested)
  local v = {}
  local rows = type(nested) == "table" and #nested or 0
  if rows > 1 and rows <= 16 and type(nested[1]) == "table" then
    for k = 1, rows - 1 do v[#v + 1] = { k * #nested[1], ("seq %d"):format(k + 1), "#bbb" } end
  end
  return v
end

--- R, KL, cosine and the top-1 flips of each position, and the fp32 leg's R32.
local function positions_section(v, e, e32, smoke, th)
  local out = { "<h2>Per position (sequence after sequence)</h2>" }
  if not e then out[#out + 1] = missing("e2e.json is not in this directory: no per-position figures at the low precision")
  elseif e.skipped then out[#out + 1] = missing("e2e was skipped: " .. tostring(e.skipped))
  elseif not e.per_position then out[#out + 1] = missing("e2e.json holds no per-position figures")
  else
    local pp = e.per_position
    local vl = boundaries(pp.r_ratio)
    local r, note = M.series(pp.r_ratio)
    out[#out + 1] = svg.chart({ title = "R at each position: the target's logits' error over the reference's own low-precision error (log scale)",
      good = ("near 1 (the target errs as much as the reference's own %s run); the verdict bounds its p95"):format(tostring(v.dtype)),
      ylog = true, series = { { name = "R", kind = "line", marks = #r <= 200, colour = COLOUR.target, points = r } },
      hlines = th and { { th.r_p95, ("p95 bound %s"):format(fmt(th.r_p95)) }, { 1, "1: as the reference's own", COLOUR.ok, left = true } } or nil,
      vlines = vl, xlabel = "position", ylabel = "R", notes = { note } })
    local kl, n1 = M.series(pp.kl)
    local own = M.series(pp.own_kl)
    out[#out + 1] = svg.chart({ title = "KL(reference fp32 ‖ target) at each position, beside the reference's own low-precision KL (log scale)",
      good = "the target's line no higher than the reference's own (grey)", ylog = true,
      series = { { name = "target", kind = "line", colour = COLOUR.target, points = kl },
                 { name = "reference's own", kind = "line", colour = COLOUR.reference, points = own, dash = true } },
      vlines = vl, xlabel = "position", ylabel = "KL", notes = { n1 } })
    local function one_minus(x) return 1 - x end
    local cos, n2 = M.series(pp.cosine, one_minus)
    local ocos = M.series(pp.own_cosine, one_minus)
    out[#out + 1] = svg.chart({ title = "1 − cosine of the logits at each position, the target's beside the reference's own (log scale)",
      good = "the target's line no higher than the reference's own (grey)", ylog = true,
      series = { { name = "target", kind = "line", colour = COLOUR.target, points = cos },
                 { name = "reference's own", kind = "line", colour = COLOUR.reference, points = ocos, dash = true } },
      vlines = vl, xlabel = "position", ylabel = "1 − cosine", notes = { n2 } })
    -- the top-1 flips, a strip a sequence
    local srows, flips, ties = {}, 0, 0
    for k, row in ipairs(type(pp.top1) == "table" and pp.top1 or {}) do
      local tie_row = pp.near_tie and pp.near_tie[k] or {}
      local per = math.max(1, math.ceil(#row / M.MAX_CELLS))
      local cells = {}
      for j = 1, #row, per do
        local state, tip = "agree", {}
        for q = j, math.min(j + per - 1, #row) do
          local flip, tie = num(row[q]) == 0, tie_row[q] == true or num(tie_row[q]) == 1
          if flip and tie then ties = ties + 1 if state == "agree" then state = "tie" end tip[#tip + 1] = q - 1 .. ": near-tie"
          elseif flip then flips = flips + 1 state = "flip" tip[#tip + 1] = q - 1 .. ": flip" end
        end
        cells[#cells + 1] = { state, ("sequence %d, position %d%s: %s"):format(k, j - 1, per > 1 and ("..%d"):format(math.min(j + per - 1, #row) - 1) or "",
          #tip > 0 and table.concat(tip, ", ") or "top-1 agrees") }
      end
      srows[#srows + 1] = { label = ("seq %d"):format(k), cells = cells }
    end
    out[#out + 1] = svg.strip({ title = ("Top-1 agreement at each position: %d flips, %d of them near-ties (a flip within the reference's own noise)")
        :format(flips + ties, ties), good = "all green; amber near-ties are noise, red flips are not",
      rows = srows, colours = { agree = "#cfe9d6", tie = COLOUR.warn, flip = COLOUR.fail },
      legend = { { "agree", "agrees" }, { "tie", "near-tie" }, { "flip", "flip" } } })
  end
  if e32 and not e32.skipped and e32.per_position and th then
    local r32, note = M.series(e32.per_position.r32)
    out[#out + 1] = svg.chart({ title = "R32 at each position: the target's fp32 logits' error over the reference's own low-precision error (log scale)",
      good = "far below 1: in fp32 a port errs only by reassociation; the verdict bounds its p95",
      ylog = true, series = { { name = "R32", kind = "line", marks = #r32 <= 200, colour = COLOUR.fp32, points = r32 } },
      hlines = { { th.r32_p95, ("p95 bound %s"):format(fmt(th.r32_p95)) } }, vlines = boundaries(e32.per_position.r32),
      xlabel = "position", ylabel = "R32", notes = { note } })
  elseif not e32 then
    out[#out + 1] = missing("e2e32.json is not in this directory: no fp32 leg shown")
  end
  if smoke and not smoke.skipped and smoke.per_prompt then
    local rows = {}
    for k, p in ipairs(smoke.per_prompt) do
      rows[#rows + 1] = { k, num(p.match_rate) or "-", is(p.first_divergence) and p.first_divergence or "none" }
    end
    out[#out + 1] = ("<p>Greedy decoding (smoke): the target's tokens match the reference's %.1f%% (the reference's own at low precision: %.1f%%).</p>")
      :format(100 * (num(smoke.match_rate) or 0), 100 * (num(smoke.own_match_rate) or 0))
      .. table_html({ "prompt", "match rate", "first differing token" }, rows)
  end
  return table.concat(out)
end

--- The QQ plot and the histograms of one error sketch (parity.distribution). `yardstick`
--- names the reference's own error ("the reference at bf16 − in fp32", "perturbed − as is").
local function errors_charts(d, what, yardstick)
  local out = {}
  local q, pct = d.quantiles or {}, d.percentiles or {}
  for name, why in pairs(d.excluded or {}) do
    out[#out + 1] = missing(("%s: the %s output holds %s: left out of the plots"):format(what,
      name == "reference_fp32" and "reference's" or name == "reference" and "reference's own" or name:gsub("_", " "), why))
  end
  local notes = { ("%s; %d elements%s; %s"):format(tostring(d.view or what), d.elements,
    is(d.sampled) and (", %d of them drawn at random (seeded)"):format(d.sampled) or "", tostring(d.clipped or "")) }
  if q.reference and (q.target or q.target_fp32) then
    local series = {}
    for _, s in ipairs({ { "target", "target at the low precision", COLOUR.target }, { "target_fp32", "target in fp32", COLOUR.fp32 } }) do
      if q[s[1]] then
        local pts = {}
        for i, p in ipairs(pct) do
          pts[i] = { num(q.reference[i]), num(q[s[1]][i]), ("p%g: reference's own %s, %s %s"):format(p, fmt(q.reference[i]), s[2], fmt(q[s[1]][i])) }
        end
        series[#series + 1] = { name = s[2], kind = "dots", colour = s[3], points = pts, radius = 2.6 }
      end
    end
    out[#out + 1] = svg.chart({ title = ("QQ plot, %s: the target's error quantiles against the reference's own error's"):format(what),
      good = "points on the diagonal (the target errs as the reference's own low precision does); steeper or off it: an error of its own (fp32 points near 0: exact up to reassociation)",
      diagonal = true, series = series, xlabel = "reference's own error (" .. yardstick .. ")", ylabel = "target − reference",
      height = 330, notes = notes })
  elseif d.quantiles and not q.reference then
    out[#out + 1] = missing(("no QQ plot %s: %s"):format(what, tostring(d.reference_missing or "the reference's own error is not recorded")))
  end
  local h = d.histograms or {}
  local function hist(names, title, good)
    local series = {}
    for _, s in ipairs(names) do
      local hh = h[s[1]]
      if hh then
        local pts = {}
        for i, c in ipairs(hh.counts) do pts[i] = { num(hh.edges[i]), num(c), ("%s..%s: %d"):format(fmt(hh.edges[i]), fmt(hh.edges[i + 1]), c) } end
        pts[#pts + 1] = { num(hh.edges[#hh.edges]), num(hh.counts[#hh.counts]) }
        series[#series + 1] = { name = s[2], kind = "step", colour = s[3], points = pts, dash = s[1] == "reference" }
      end
    end
    if #series > 0 then
      out[#out + 1] = svg.chart({ title = title, good = good, yrange = { 0 },
        series = series, xlabel = "error", ylabel = "count", height = 250 })
    end
  end
  hist({ { "reference", "reference's own", COLOUR.reference }, { "target", "target (low precision)", COLOUR.target } },
    ("Histograms of the errors, %s: the target's beside the reference's own, on shared bins"):format(what),
    "the two outlines on top of each other (same shape, same width)")
  if h.target_fp32 then
    local e = h.target_fp32.edges
    hist({ { "target_fp32", "target in fp32", COLOUR.fp32 } }, ("Histogram of the target's fp32 error, %s (its own bins)"):format(what),
      ("its x-axis span (%s..%s) against the low-precision one above: far narrower, for a port that errs in fp32 only by reassociation")
        :format(fmt(e[1]), fmt(e[#e])))
  end
  return table.concat(out)
end

local function errors_section(v, loc, e)
  local out = { "<h2>Error distributions</h2>" }
  local yardstick = e and e.baseline == "2-tensor" and "the reference with its inputs perturbed by one rounding − as is"
    or ("the reference at %s − in fp32"):format(tostring(v.noise_dtype or v.dtype))
  local d = loc and loc.error_distribution
  if is(d) then
    out[#out + 1] = ("<p>The first divergence, <code>%s</code>, at its call %s.</p>"):format(esc(d.component), esc(d.call or "?"))
    out[#out + 1] = errors_charts(d, "at the first divergence", yardstick)
  elseif is(v.first_divergence) then
    out[#out + 1] = missing(loc and "localize.json records no error distribution for the first divergence (a run of an older parity, or a fault found at a component's input)"
      or "localize.json is not in this directory: no error distributions for the first divergence")
  end
  local de = e and e.error_distribution
  if is(de) then
    out[#out + 1] = "<p>The logits (the whole model's output), at the judged positions.</p>"
    out[#out + 1] = errors_charts(de, "of the logits", yardstick)
  elseif e and not e.skipped then
    out[#out + 1] = missing("e2e.json records no error distribution of the logits (a run of an older parity)")
  elseif e then
    out[#out + 1] = missing("no error plots of the logits: e2e, which records them, was skipped")
  end
  return table.concat(out)
end

--- Both module trees side by side, each mapped module naming (and highlighting) its counterpart.
local function trees_section(out_dir, sc, comp)
  local out = { "<h2>Module trees and the mapping between them</h2>" }
  local function flat(side)
    local path = ("%s/scaffold/%s.flat.tsv"):format(out_dir, side)
    local f = core.path_kind(path) == "file" and io.open(path, "r")
    if not f then return nil end
    local text = f:read("*a")
    f:close()
    local list = {}
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      local p, t, n = line:match("^([^\t]+)\t([^\t]*)\t?(.*)$")
      if p then list[#list + 1] = { path = p, type = t, params = tonumber(n) } end
    end
    return list
  end
  local ref, tgt = flat("reference"), flat("target")
  if not (ref and tgt) then
    out[#out + 1] = missing("scaffold/*.flat.tsv are not in this directory: no module trees (the scaffold stage did not run)")
    return table.concat(out)
  end
  local peer = { reference = {}, target = {} }
  for _, r in ipairs(comp and comp.components or {}) do
    local t = tostring(r.target)
    for p in tostring(r.reference):gmatch("[^+]+") do
      peer.reference[p] = peer.reference[p] or {}
      table.insert(peer.reference[p], t)
      peer.target[t] = peer.target[t] or {}
      table.insert(peer.target[t], p)
    end
  end
  local unmapped = { reference = {}, target = {} }
  for _, p in ipairs(sc and sc.unmapped_reference or {}) do unmapped.reference[p] = "unmapped" end
  for _, p in ipairs(sc and sc.unmapped_target or {}) do unmapped.target[p] = "unmapped" end
  for _, p in ipairs(comp and comp.no_counterpart_reference or {}) do unmapped.reference[p] = "no counterpart" end
  for _, p in ipairs(comp and comp.unmapped_target or {}) do unmapped.target[tostring(p)] = "unmapped" end
  local ids = { reference = {}, target = {} }  -- (by position in the tree: paths may hold anything)
  for i, m in ipairs(ref) do ids.reference[m.path] = "r" .. i end
  for i, m in ipairs(tgt) do ids.target[m.path] = "t" .. i end
  local function id(side, p) return ids[side][p] end
  local function column(side, list, other)
    local rows = { ('<div class="tree"><b>%s</b>'):format(side) }
    for _, m in ipairs(list) do
      local depth = m.path == "(root)" and 0 or select(2, m.path:gsub("%.", "")) + 1
      local name = m.path == "(root)" and m.path or m.path:match("([^.]+)$")
      local peers, lost = peer[side][m.path], unmapped[side][m.path]
      local peer_ids = {}
      for _, q in ipairs(peers or {}) do peer_ids[#peer_ids + 1] = id(other, q) end
      rows[#rows + 1] = ('<div class="node%s%s" id="%s" style="padding-left:%dpx"%s title="%s">%s <small>%s%s</small>%s%s</div>'):format(
        peers and " mapped" or "", lost and " unmapped" or "", id(side, m.path), depth * 14,
        #peer_ids > 0 and (' data-peer="%s"'):format(table.concat(peer_ids, " ")) or "", esc(m.path), esc(name), esc(m.type),
        m.params and m.params > 0 and (" · %d params"):format(m.params) or "",
        peers and (' <span class="peer">↔ %s</span>'):format(esc(table.concat(peers, " + "))) or "",
        lost and ('<span class="badge">%s</span>'):format(esc(lost)) or "")
    end
    rows[#rows + 1] = "</div>"
    return table.concat(rows)
  end
  out[#out + 1] = ('<p class="note">mapping: %s. Click a mapped module to highlight its counterpart; red: a module with weights nothing maps.</p>')
    :format(esc(sc and sc.mapping or "?"))
  out[#out + 1] = '<div class="trees">' .. column("reference", ref, "target") .. column("target", tgt, "reference") .. "</div>"
  return table.concat(out)
end

--- The settings, versions, and the thresholds or recipe used.
local function settings_section(v)
  local out = { "<h2>Settings, versions, thresholds</h2>" }
  local rows = {}
  for _, k in ipairs({ "reference", "target", "dtype", "noise_dtype", "parity_version", "libtorch", "schema_version" }) do
    if is(v[k]) then rows[#rows + 1] = { k, tostring(v[k]) } end
  end
  local s = type(v.settings) == "table" and v.settings or {}
  local keys = {}
  for k in pairs(s) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do rows[#rows + 1] = { k, type(s[k]) == "table" and core.json.encode(s[k]) or tostring(s[k]) } end
  if type(v.stages) == "table" then rows[#rows + 1] = { "stages run", table.concat(v.stages, ", ") } end
  out[#out + 1] = table_html({ "setting", "value" }, rows)
  if type(v.recipe) == "table" then
    out[#out + 1] = ("<p>Thresholds from the calibration recipe <code>%s</code> (sha256 %s), made %s from %s runs.</p>"):format(
      esc(v.recipe.file), esc(tostring(v.recipe.sha256):sub(1, 12)), esc(v.recipe.made or "?"), esc(v.recipe.runs or "?"))
  end
  if type(v.thresholds) == "table" then
    local trs, names = {}, {}
    for k, x in pairs(v.thresholds) do if type(x) ~= "table" then names[#names + 1] = k end end
    table.sort(names)
    for _, k in ipairs(names) do
      local default = thresholds.DEFAULTS[k]
      trs[#trs + 1] = { k, num(v.thresholds[k]) or tostring(v.thresholds[k]), default ~= nil and (num(default) or tostring(default)) or "-" }
    end
    out[#out + 1] = table_html({ "threshold", "used", "default" }, trs)
    if type(v.thresholds.by_class) == "table" then
      out[#out + 1] = ("<p>Per component class: <code>%s</code></p>"):format(esc(core.json.encode(v.thresholds.by_class)))
    end
  end
  for _, l in ipairs(v.loosened or {}) do out[#out + 1] = ('<p class="warn-t">loosened: %s</p>'):format(esc(type(l) == "table" and core.json.encode(l) or l)) end
  for _, l in ipairs(v.switched_off or {}) do out[#out + 1] = ('<p class="warn-t">switched off: %s</p>'):format(esc(type(l) == "table" and core.json.encode(l) or l)) end
  return table.concat(out)
end

--- The page of the results in `out`, and what it could not show (one line each).
---@param out string a results directory
---@return string html
---@return string[] absent what is not in the directory
function M.render(out)
  local v = results.verdict(out)
  gaps = {}
  local files = {}
  for _, name in ipairs({ "scaffold", "smoke", "e2e", "e2e32", "components", "localize" }) do
    local got, why = results.read(out, name)
    files[name] = got
    if why == "unreadable" then gaps[#gaps + 1] = ("%s.json is not readable JSON: its part is not shown"):format(name) end
  end
  local th = type(v.thresholds) == "table" and thresholds.at(v.thresholds, v.noise_dtype or v.dtype) or nil
  local body = { summary_section(v), "" }
  local top = #body  -- (the list of what is not shown goes here, once every part has said)
  if v.verdict ~= "error" or files.components then
    body[#body + 1] = components_section(v, files.components, th)
    body[#body + 1] = positions_section(v, files.e2e, files.e2e32, files.smoke, th)
    body[#body + 1] = errors_section(v, files.localize, files.e2e)
    body[#body + 1] = trees_section(out, files.scaffold, files.components)
  end
  body[#body + 1] = settings_section(v)
  if v.verdict ~= "error" and not is(v.parity_version) then
    gaps[#gaps + 1] = "verdict.json names no parity version: a run of a parity from before versions were recorded"
  end
  if #gaps > 0 then
    local items = {}
    for i, a in ipairs(gaps) do items[i] = "<li>" .. esc(a) .. "</li>" end
    body[top] = ('<div class="missing"><b>Not shown</b> (not in this directory, or not recorded by the parity that wrote it):<ul>%s</ul></div>')
      :format(table.concat(items))
  end
  local html = table.concat({ "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
    ("<title>parity: %s — %s against %s</title>"):format(esc(v.verdict), esc(v.target or "?"), esc(v.reference or "?")),
    "<style>" .. CSS .. "</style><script>" .. SCRIPT_HEAD .. "</script></head><body>",
    table.concat(body, "\n"),
    ('<p class="note">parity %s · from %s/ · every part read from the results directory alone</p>'):format(esc(v.parity_version or "?"), esc(out)),
    "<script>" .. SCRIPT_END .. "</script></body></html>" }, "\n")
  return html, gaps
end

--- Writes OUT/report.html from the results in `out`.
---@param out string
---@return string path
---@return string[] absent what the page could not show
function M.write(out)
  local html, absent = M.render(out)
  local path = out .. "/report.html"
  core.write_text(path, html)
  return path, absent
end

return M
