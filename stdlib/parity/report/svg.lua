--- parity.report.svg — the inline SVG charts of the HTML report: scatter and line charts on
--- linear or log axes, with bounds and markers drawn, and a strip of coloured cells. Each chart
--- says in its title what it shows and, beside it, what good looks like; points carry their
--- values as tooltips (<title>). No script, no external resource.
local results = require("parity.report.results")

local M = {}
local esc, fmt = results.escape, results.fmt

M.WIDTH, M.HEIGHT = 660, 250
local PAD = { l = 70, r = 18, t = 26, b = 46 }

local function finite(v) return v and v == v and v > -math.huge and v < math.huge end

-- "nice" linear ticks over [lo, hi]
local function ticks(lo, hi, n)
  local span = hi - lo
  if span <= 0 then return { lo } end
  local step = 10 ^ math.floor(math.log10(span / n))
  for _, k in ipairs({ 1, 2, 5, 10 }) do
    if span / (step * k) <= n then step = step * k break end
  end
  local out = {}
  for v = math.ceil(lo / step) * step, hi + step * 1e-9, step do out[#out + 1] = math.abs(v) < step * 1e-9 and 0 or v end
  return out
end

--- An axis: the range of its values (log: of the positive ones, with a floor), a map to pixels
--- and its ticks.
local function axis(values, log, a, b, fixed)
  local lo, hi = math.huge, -math.huge
  for _, v in ipairs(values) do
    if finite(v) and (not log or v > 0) then lo, hi = math.min(lo, v), math.max(hi, v) end
  end
  if fixed then lo, hi = fixed[1] or lo, fixed[2] or hi end
  if lo > hi then lo, hi = log and 0.1 or 0, 1 end
  fixed = fixed or {}
  if log then
    lo, hi = 10 ^ math.floor(math.log10(lo)), 10 ^ math.ceil(math.log10(hi))
    if hi <= lo then hi = lo * 10 end
  elseif hi == lo then
    local d = lo == 0 and 1 or math.abs(lo) * 0.1
    lo, hi = lo - d, hi + d
  else  -- a little room, except past a given end (a histogram's counts start at 0)
    local d = (hi - lo) * 0.04
    lo, hi = fixed[1] or lo - d, fixed[2] or hi + d
  end
  local l0, l1 = log and math.log10(lo) or lo, log and math.log10(hi) or hi
  local function at(v)
    if v ~= v then return nil end
    if log then v = v > 0 and math.log10(v) or l0 end
    v = math.max(l0, math.min(l1, v))  -- off the chart: at its edge (the tooltip says the value)
    return a + (v - l0) / (l1 - l0) * (b - a)
  end
  local t = {}
  if log then
    local step = math.max(1, math.ceil((l1 - l0) / 6))
    for e = math.floor(l0), math.ceil(l1), step do t[#t + 1] = 10 ^ e end
  else
    t = ticks(lo, hi, 6)
  end
  return { at = at, lo = lo, hi = hi, ticks = t }
end

--- The markers' shapes: a circle (the default), a triangle, a square, a ring.
local function marker(shape, x, y, r, colour, tip)
  local body
  if shape == "triangle" then
    body = ('<path d="M%.1f %.1fL%.1f %.1fL%.1f %.1fZ" fill="%s"'):format(x, y - r * 1.2, x + r, y + r * 0.8, x - r, y + r * 0.8, colour)
  elseif shape == "square" then
    body = ('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"'):format(x - r * 0.85, y - r * 0.85, r * 1.7, r * 1.7, colour)
  elseif shape == "ring" then
    body = ('<circle cx="%.1f" cy="%.1f" r="%.1f" fill="none" stroke="%s" stroke-width="1.3"'):format(x, y, r, colour)
  else
    body = ('<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"'):format(x, y, r, colour)
  end
  return tip and (body .. ("><title>%s</title></%s>"):format(esc(tip), body:match("^<(%a+)"))) or (body .. "/>")
end

--- A chart. `o`: title (what it shows), good (what good looks like), xlabel, ylabel, ylog,
--- series = {{name, colour, kind = "dots"|"line"|"step", shape, points = {{x, y, tip, colour, shape}}, dash}},
--- hlines = {{y, label, colour, left = true (its label at the left)}}, vlines = {{x, label, colour}}, xticks = {{x, label}} (else
--- numbers), diagonal (draws y = x), yrange = {lo, hi} (either may be nil), notes = {text...}, height.
---@param o table
---@return string html a <figure> holding the <svg>
function M.chart(o)
  local w, h = M.WIDTH, o.height or M.HEIGHT
  local PAD = { l = PAD.l, r = PAD.r, t = PAD.t, b = o.xticks and 96 or PAD.b }  -- (room for slanted labels)
  local xs, ys = {}, {}
  for _, s in ipairs(o.series) do
    for _, p in ipairs(s.points) do xs[#xs + 1], ys[#ys + 1] = p[1], p[2] end
  end
  for _, l in ipairs(o.hlines or {}) do ys[#ys + 1] = l[1] end
  if o.diagonal then
    for i = 1, #xs do ys[#ys + 1] = xs[i] end
    for i = 1, #ys do xs[#xs + 1] = ys[i] end
  end
  local X = axis(xs, false, PAD.l, w - PAD.r)
  local Y = axis(ys, o.ylog, h - PAD.b, PAD.t, o.yrange)
  local out = { ('<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">'):format(
    w, h, w, h, esc(o.title)) }
  local function add(s) out[#out + 1] = s end
  add(('<rect x="%d" y="%d" width="%d" height="%d" class="plot"/>'):format(PAD.l, PAD.t, w - PAD.l - PAD.r, h - PAD.t - PAD.b))
  for _, v in ipairs(Y.ticks) do
    local y = Y.at(v)
    add(('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" class="grid"/><text x="%d" y="%.1f" class="tick" text-anchor="end">%s</text>')
      :format(PAD.l, w - PAD.r, y, y, PAD.l - 5, y + 4, fmt(v)))
  end
  if o.xticks then
    for _, t in ipairs(o.xticks) do
      local x = X.at(t[1])
      add(('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="grid"/><text class="tick" text-anchor="end" transform="translate(%.1f %d) rotate(-40)">%s</text>'):format(
        x, x, PAD.t, h - PAD.b, x + 3,
        h - PAD.b + 12, esc(t[2])))
    end
  else
    for _, v in ipairs(X.ticks) do
      local x = X.at(v)
      add(('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="grid"/><text x="%.1f" y="%d" class="tick" text-anchor="middle">%s</text>')
        :format(x, x, PAD.t, h - PAD.b, x, h - PAD.b + 14, fmt(v)))
    end
  end
  if o.xlabel then add(('<text x="%.1f" y="%d" class="label" text-anchor="middle">%s</text>'):format((PAD.l + w - PAD.r) / 2,
    h - 6, esc(o.xlabel))) end
  if o.ylabel then add(('<text class="label" text-anchor="middle" transform="translate(14 %.1f) rotate(-90)">%s</text>'):format(
    (PAD.t + h - PAD.b) / 2, esc(o.ylabel))) end
  if o.diagonal then
    local a, b = math.max(X.lo, Y.lo), math.min(X.hi, Y.hi)
    add(('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="diagonal"><title>y = x: the target errs as the reference does</title></line>')
      :format(X.at(a), Y.at(a), X.at(b), Y.at(b)))
  end
  for _, l in ipairs(o.hlines or {}) do
    local y = Y.at(l[1])
    local left = l.left  -- (a second bound's label at the left, clear of the first's)
    add(('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" class="bound" stroke="%s"/><text x="%d" y="%.1f" class="boundlabel" fill="%s" text-anchor="%s">%s</text>')
      :format(PAD.l, w - PAD.r, y, y, l[3] or "#c0392b", left and PAD.l + 3 or w - PAD.r - 3, y - 3, l[3] or "#c0392b",
        left and "start" or "end", esc(l[2])))
  end
  for _, l in ipairs(o.vlines or {}) do
    local x = X.at(l[1])
    add(('<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" class="marker" stroke="%s"/><text x="%.1f" y="%d" class="boundlabel" fill="%s">%s</text>')
      :format(x, x, PAD.t, h - PAD.b, l[3] or "#8e44ad", x + 3, PAD.t + 11, l[3] or "#8e44ad", esc(l[2])))
  end
  local legend = {}
  for _, s in ipairs(o.series) do
    if s.kind == "line" or s.kind == "step" then
      local d = {}
      for i, p in ipairs(s.points) do
        local x, y = X.at(p[1]), Y.at(p[2])
        if x and y then
          if s.kind == "step" and i > 1 then d[#d + 1] = ("H%.1f"):format(x) end
          d[#d + 1] = ("%s%.1f %.1f"):format(#d == 0 and "M" or "L", x, y)
        end
      end
      if #d > 0 then
        add(('<path d="%s" fill="none" stroke="%s" stroke-width="%s"%s><title>%s</title></path>'):format(table.concat(d),
          s.colour, s.width or 1.5, s.dash and ' stroke-dasharray="5 3"' or "", esc(s.name)))
      end
    end
    if s.kind == "dots" or s.marks then
      for _, p in ipairs(s.points) do
        local x, y = X.at(p[1]), Y.at(p[2])
        if x and y then add(marker(p[5] or s.shape, x, y, s.radius or 3.2, p[4] or s.colour, p[3])) end
      end
    end
    if s.name then legend[#legend + 1] = s end
  end
  local lx = PAD.l + 6
  for _, s in ipairs(legend) do
    add(('<text x="%d" y="%d" class="legend" fill="%s">%s %s</text>'):format(lx, PAD.t - 8, s.colour,
      (s.kind == "dots") and "●" or "―", esc(s.name)))
    lx = lx + 18 + 6.3 * #s.name
  end
  add("</svg>")
  local notes, zeros = {}, 0
  for _, s in ipairs(o.ylog and o.series or {}) do
    for _, p in ipairs((s.kind == "dots" or s.marks) and s.points or {}) do
      if p[2] and p[2] <= 0 then zeros = zeros + 1 end
    end
  end
  if zeros > 0 then notes[1] = ('<p class="note">%d markers at 0 (exact: no error at all) drawn on the bottom edge</p>'):format(zeros) end
  for _, n in ipairs(o.notes or {}) do notes[#notes + 1] = ("<p class=\"note\">%s</p>"):format(esc(n)) end
  return ('<figure><figcaption><b>%s</b>%s</figcaption>%s%s</figure>'):format(esc(o.title),
    o.good and ('<span class="good">good: %s</span>'):format(esc(o.good)) or "", table.concat(out), table.concat(notes))
end

--- A strip of cells: one row a sequence, one cell a position (or a bucket of them), coloured by
--- its state. `o`: title, good, rows = {{label, cells = {{state, tip}}}}, colours = {state = colour},
--- legend = {{state, text}}.
---@param o table
---@return string html
function M.strip(o)
  local n = 0
  for _, r in ipairs(o.rows) do n = math.max(n, #r.cells) end
  local cw = math.min(18, (M.WIDTH - PAD.l - PAD.r) / math.max(n, 1))
  local ch = #o.rows > 40 and 4 or 12
  local h = PAD.t + #o.rows * ch + 10
  local out = { ('<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">'):format(
    M.WIDTH, h, M.WIDTH, h, esc(o.title)) }
  local lx = PAD.l
  for _, l in ipairs(o.legend) do
    out[#out + 1] = ('<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d" class="legend">%s</text>')
      :format(lx, PAD.t - 18, o.colours[l[1]], lx + 14, PAD.t - 9, esc(l[2]))
    lx = lx + 30 + 6.3 * #l[2]
  end
  for i, r in ipairs(o.rows) do
    local y = PAD.t + (i - 1) * ch
    if ch >= 10 then
      out[#out + 1] = ('<text x="%d" y="%d" class="tick" text-anchor="end">%s</text>'):format(PAD.l - 5, y + ch - 2, esc(r.label))
    end
    for j, c in ipairs(r.cells) do
      out[#out + 1] = ('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>'):format(
        PAD.l + (j - 1) * cw, y, math.max(cw - 1, 1), ch - 1, o.colours[c[1]], esc(c[2]))
    end
  end
  out[#out + 1] = "</svg>"
  local notes = {}
  for _, t in ipairs(o.notes or {}) do notes[#notes + 1] = ("<p class=\"note\">%s</p>"):format(esc(t)) end
  return ('<figure><figcaption><b>%s</b>%s</figcaption>%s%s</figure>'):format(esc(o.title),
    o.good and ('<span class="good">good: %s</span>'):format(esc(o.good)) or "", table.concat(out), table.concat(notes))
end

return M
