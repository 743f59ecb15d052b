--- parity diff — a reference's dump against an engine's, layer by layer (seed 004, "refparity").
--- Tensors are paired by name (parity.dump: emb, h{l}_in ... h{l}, post_norm, logits) and compared
--- per position: relative L2 (||t - r|| / ||r||), cosine and max |t - r|. Reported: each tensor's
--- worst position, the first tensor and position past its thresholds, the steps (a tensor whose
--- error jumps above what earlier tensors of its family reached: the seed's localisation point), the
--- target/reference norm ratio of each tensor (a sub-stage losing or gaining magnitude) and the
--- residual-leak fit of each layer's output (target h_l ≈ ref h_l + α·ref h_{l-1}). A comparison
--- must cover every layer output and the logits the reference dumped, or what `only` selects:
--- else it is "incomplete". Thresholds looser than the defaults are listed (`loosened`).
local core = require("parity.core")
local dump = require("parity.dump")
local thresholds = require("parity.thresholds")
local validate = require("parity.validate")

local M = {}
--- M.thresholds's result: M.DEFAULTS overlaid with what was given.
---@class parity.DiffThresholds
---@field rel_l2 number a tensor fails where a position's relative L2 is above this
---@field cosine number ... or its cosine below this
---@field max_abs number|nil ... or its max |t - r| above this
---@field step number a step: rel_l2 above step x what earlier tensors of its family reached
---@field noise_factor number
---@field expected_noise number|nil a quantised engine's per-layer relative error
---@field layers table<string, {rel_l2?: number, cosine?: number, max_abs?: number}> per-tensor overrides
--- One tensor of a report in brief: the first past its thresholds, the localisation, the main step.
---@class parity.DiffBrief
---@field name string
---@field layer integer|nil
---@field substage string|nil
---@field rel_l2 number its worst position's
---@field cosine number its smallest
---@field max_abs number
---@field position integer its first failing position, else its worst
---@field sequence integer that position's sequence (0-based)
---@field where string what its place in the layer says about where the bug is
---@field step {baseline: number, ratio: number}|nil
---@field leak {alpha: number, quality: number}|nil the residual-leak fit of a layer's output
---@field norm_ratio number|nil ||t|| / ||r||
--- M.run's report (what `parity diff --json` writes).
---@class parity.DiffReport
---@field reference string the reference dump's path
---@field target string the engine dump's
---@field position integer|lightuserdata the --pos compared, json.null: every position
---@field thresholds parity.DiffThresholds
---@field pass boolean
---@field verdict "equivalent"|"divergent"|"incomplete"
---@field first_past_threshold parity.DiffBrief|lightuserdata json.null when none is
---@field localized parity.DiffBrief|lightuserdata where the error starts, json.null when none is past
---@field main_step parity.DiffBrief|lightuserdata the largest step, json.null without steps
---@field tensors table[] a row per compared tensor, in dump order (name, limits, pass, its worst position...)
---@field not_compared {name: string, only: "reference"|"target"}[] tensors only one side dumps
---@field ignored string[] files that are not tensor files, on both sides
---@field required string[] what the comparison must cover
---@field missing string[] what of that the target lacks
---@field only string[]|lightuserdata the selection, json.null without one
---@field left_out string[] what the selection leaves out
---@field loosened parity.LoosenedThreshold[] thresholds looser than the defaults
---@field criteria_can_fail boolean false when every compared tensor's rel_l2 and cosine are switched off
---@field warnings string[]

--- Thresholds: a tensor fails when at any compared position rel_l2 > rel_l2, cosine < cosine or
--- max |t - r| > max_abs. With expected_noise X (a quantised engine's per-layer relative error),
--- layer l may reach max(rel_l2, noise_factor · X · sqrt(l + 1)) (errors compounding like a
--- random walk over the layers; the logits count as the layer after the last) and cosine
--- 1 - that² / 2. A step: a tensor whose rel_l2 exceeds step x max(what earlier tensors of its
--- family reached (the residual stream emb, h_in, h; each sub-stage its own; any earlier tensor
--- for the first of a family), the noise floor); the floor is X when given, else 2^-8 (about one
--- bf16 rounding).
M.DEFAULTS = { rel_l2 = 0.05, cosine = 0.99, step = 3, noise_factor = 2 }
M.FLOOR = 2 ^ -8

local RANGES = { rel_l2 = { 0, math.huge }, cosine = { -1, 1 }, max_abs = { 0, math.huge }, step = { 1, math.huge },
                 noise_factor = { 0, math.huge }, expected_noise = { 0, 1 } }
local PER_TENSOR = { rel_l2 = true, cosine = true, max_abs = true }

local function check_values(t, origin, allowed)
  for k, v in pairs(t) do
    if k ~= "layers" or allowed ~= RANGES then
      if not allowed[k] then
        error(("%s: unknown threshold '%s' (known: %s%s)"):format(origin, tostring(k),
          table.concat(validate.sorted_keys(allowed), ", "),
          allowed == RANGES and ", layers" or ""), 0)
      end
      validate.number(("%s: '%s'"):format(origin, k), v, RANGES[k][1], RANGES[k][2])
    end
  end
end

--- Validates a thresholds table: the keys of M.DEFAULTS, max_abs, expected_noise and `layers`
--- = { [name or ^pattern] = { rel_l2 =, cosine =, max_abs = } } for per-tensor overrides.
--- Returns them overlaid on M.DEFAULTS.
---@param t any
---@param origin string|nil names them in errors (default "thresholds")
---@return parity.DiffThresholds
function M.thresholds(t, origin)
  origin = origin or "thresholds"
  if type(t) ~= "table" then error(("%s: must be a table, got %s"):format(origin, type(t)), 0) end
  check_values(t, origin, RANGES)
  if t.layers ~= nil then
    if type(t.layers) ~= "table" then error(("%s: layers must be a table of name = {...}"):format(origin), 0) end
    local n = 0
    for _ in pairs(t.layers) do n = n + 1 end
    if n > dump.PATTERN_LIMITS.entries then
      error(("%s: layers has %d entries; at most %d"):format(origin, n, dump.PATTERN_LIMITS.entries), 0)
    end
    for name, v in pairs(t.layers) do
      if type(name) ~= "string" or type(v) ~= "table" then
        error(("%s: layers entries are name = { rel_l2 = ..., cosine = ..., max_abs = ... }"):format(origin), 0)
      end
      if name:sub(1, 1) == "^" then dump.check_pattern(name, nil, origin .. ": layers") end
      check_values(v, ("%s: layers[%q]"):format(origin, name), PER_TENSOR)
    end
  end
  local out = { layers = t.layers or {} }
  for k, v in pairs(M.DEFAULTS) do out[k] = v end
  for k, v in pairs(t) do
    if k ~= "layers" then out[k] = v end
  end
  return out
end

--- The thresholds of one tensor: the layer's own override (exact name, else the first ^pattern
--- in sorted order), else the defaults widened by the expected noise.
local function limits_for(th, name, layer, last_layer)
  local own = dump.lookup(th.layers, name)
  local lim = { rel_l2 = th.rel_l2, cosine = th.cosine, max_abs = th.max_abs }
  if th.expected_noise and th.expected_noise > 0 then
    local l = layer or 0
    if l == math.huge then l = last_layer + 1 end
    lim.rel_l2 = math.max(lim.rel_l2, th.noise_factor * th.expected_noise * math.sqrt(math.max(l, 0) + 1))
    lim.cosine = math.min(lim.cosine, 1 - lim.rel_l2 ^ 2 / 2)
  end
  for k, v in pairs(own or {}) do lim[k] = v end
  return lim
end

--- Where rel_l2 (a ratio) and cosine (a gap) switch their criterion off: a relative L2 of 10^6
--- (a target 10^6 times the reference's magnitude), a cosine of -1.
M.OFF = { ratio = 1e6, gap = -1 }

--- What loosens the gates (parity.thresholds' kinds and factors: rel_l2 a ratio, cosine a gap,
--- each per-tensor override too; expected_noise counts through the rel_l2 it allows at layer 0,
--- noise_factor · X) and whether any compared tensor can still fail on finite values. `rows`:
--- the compared tensors with their limits.
local function audit(th, rows)
  local loosened = {}
  local function judge(name, kind, default, given)
    local how = given ~= nil and thresholds.judge(kind, default, given, M.OFF[kind])
    if how then
      loosened[#loosened + 1] = { name = name, default = default, given = given, off = how == "off",
                                  factor = thresholds.KINDS[kind].loosened }
    end
  end
  judge("rel_l2", "ratio", M.DEFAULTS.rel_l2, th.rel_l2)
  judge("cosine", "gap", M.DEFAULTS.cosine, th.cosine)
  if (th.expected_noise or 0) > 0 then  -- the rel_l2 it allows at layer 0
    judge("noise_factor x expected_noise", "ratio", M.DEFAULTS.rel_l2, th.noise_factor * th.expected_noise)
  end
  local layers = {}
  for name in pairs(th.layers) do layers[#layers + 1] = name end
  table.sort(layers)
  for _, name in ipairs(layers) do
    local own = th.layers[name]
    judge(("layers[%q].rel_l2"):format(name), "ratio", M.DEFAULTS.rel_l2, own.rel_l2)
    judge(("layers[%q].cosine"):format(name), "gap", M.DEFAULTS.cosine, own.cosine)
  end
  local can_fail = false
  for _, row in ipairs(rows) do
    local lim = row.limits
    can_fail = can_fail or lim.max_abs ~= nil
      or thresholds.judge("ratio", M.DEFAULTS.rel_l2, lim.rel_l2, M.OFF.ratio) ~= "off"
      or thresholds.judge("gap", M.DEFAULTS.cosine, lim.cosine, M.OFF.gap) ~= "off"
  end
  local warnings = {}
  if not can_fail then
    warnings[1] = "THESE THRESHOLDS SWITCH OFF rel_l2 AND cosine FOR EVERY TENSOR COMPARED: only NaN/Inf can still fail,"
      .. " so this verdict says nothing about equivalence"
  end
  for _, line in ipairs(thresholds.loosened_lines(loosened)) do warnings[#warnings + 1] = line end
  return core.json.array(loosened), can_fail, core.json.array(warnings)
end

--- Whether `name` is one of `only` (exact names, or Lua patterns starting with ^).
local function selected(only, name)
  for _, o in ipairs(only) do
    if o == name or (o:sub(1, 1) == "^" and name:find(o)) then return true end  -- checked by check_only
  end
  return false
end

--- Validates `only`: a list of names or ^patterns (a string: comma-separated), each matching a
--- tensor of the reference dump (`names`; nil: the types only). Returns the list.
---@param only string|string[]|any
---@param origin string names it in errors
---@param names string[]|nil the reference dump's tensor names
---@return string[]
function M.check_only(only, origin, names)
  if type(only) == "string" then
    local list = {}
    for item in only:gmatch("[^,]+") do list[#list + 1] = item:match("^%s*(.-)%s*$") end
    only = list
  end
  if type(only) ~= "table" or #only == 0 then
    error(("%s: only must list tensor names or ^patterns (e.g. \"h0,h1,^h%%d+_ffnout$\")"):format(origin), 0)
  end
  if #only > dump.PATTERN_LIMITS.entries then
    error(("%s: only lists %d names; at most %d"):format(origin, #only, dump.PATTERN_LIMITS.entries), 0)
  end
  for _, o in ipairs(only) do
    if type(o) ~= "string" or o == "" then error(("%s: only entries are names or ^patterns, got %s"):format(origin, tostring(o)), 0) end
    if o:sub(1, 1) == "^" then dump.check_pattern(o, nil, origin .. ": only") end
    local hit = false
    for _, n in ipairs(names or {}) do hit = hit or selected({ o }, n) end
    if names and not hit then error(("%s: only: %s matches no tensor of the reference dump"):format(origin, o), 0) end
  end
  return only
end

--- Names as one short text: consecutive layers of a kind as a range ("h0..h10"), in dump order.
---@param names string[] in dump order
---@return string
function M.names_text(names)
  local groups, order = {}, {}
  for _, n in ipairs(names) do
    local p = dump.place(n)
    local key = (p.layer and p.layer >= 0 and p.layer ~= math.huge) and p.kind or n
    if not groups[key] then groups[key], order[#order + 1] = {}, key end
    table.insert(groups[key], { name = n, layer = p.layer })
  end
  local parts = {}
  for _, key in ipairs(order) do
    local g, i = groups[key], 1
    while i <= #g do
      local j = i
      while j < #g and g[j + 1].layer == g[j].layer + 1 do j = j + 1 end
      if j - i >= 2 then
        parts[#parts + 1] = g[i].name .. ".." .. g[j].name
      else
        for k = i, j do parts[#parts + 1] = g[k].name end
      end
      i = j + 1
    end
  end
  return table.concat(parts, ", ")
end

local function shape_text(t) return "[" .. table.concat(t:size(), ", ") .. "]" end

--- A tensor [..., positions, width] as rows [sequences x positions, width] in float64, and its
--- positions a sequence; `pos` keeps that position of every sequence only.
local function rows(t, pos, file)
  local size = t:size()
  local n = #size >= 2 and size[#size - 1] or 1
  if pos and #size >= 2 then
    if pos >= n then error(("%s: --pos %d is past its %d positions %s"):format(file, pos, n, shape_text(t)), 0) end
    t, n = t:narrow(#size - 2, pos, 1), 1
  end
  return t:reshape({ -1, size[#size] }):double(), n
end

--- The rows of each side to compare, and where row i (1-based) is: (sequence, position). Same
--- shapes: every position, or position `pos` of each sequence. One side a single position
--- ([width]: an engine dumping one): the other's position `pos` (default 0) of its first
--- sequence. Anything else is a shape mismatch naming both files.
local function align(name, r, t, rf, tf, pos)
  for _, side in ipairs({ { r, rf }, { t, tf } }) do
    if side[1]:dim() == 0 or side[1]:numel() == 0 then
      error(("%s: %s is empty or a scalar %s; dumps are [..., positions, width]"):format(name, side[2], shape_text(side[1])), 0)
    end
  end
  local rs, ts = r:size(), t:size()
  if rs[#rs] == ts[#ts] then
    if r:is_same_size(t) then
      local R, n = rows(r, pos, rf)
      local T = rows(t, pos, tf)
      return R, T, function(i) return math.floor((i - 1) / n), pos or (i - 1) % n end
    end
    if #rs == 1 or #ts == 1 then
      local p = pos or 0
      local function first(x, f) return x:dim() == 1 and x:reshape({ 1, -1 }):double() or rows(x, p, f):narrow(0, 0, 1) end
      return first(r, rf), first(t, tf), function() return 0, p end
    end
  end
  error(("%s: shapes differ: reference %s %s, target %s %s"):format(name, rf, shape_text(r), tf, shape_text(t)), 0)
end

local function is_nan(x) return x ~= x end

--- Per-row relative L2, cosine and max |t - r| of two [n, w] float64 tensors, as Lua lists.
local function row_metrics(R, T)
  local d = T - R
  local dn = (d * d):sum(-1):sqrt():tolist()
  local rn = (R * R):sum(-1):sqrt():tolist()
  local tn = (T * T):sum(-1):sqrt():tolist()
  local dot = (T * R):sum(-1):tolist()
  local mx = d:abs():amax(-1):tolist()
  local rel, cos = {}, {}
  for i = 1, #dn do
    rel[i] = rn[i] > 0 and dn[i] / rn[i] or (dn[i] == 0 and 0 or math.huge)
    if is_nan(dn[i]) then rel[i] = 0 / 0 end
    local denom = tn[i] * rn[i]
    cos[i] = denom > 0 and dot[i] / denom or ((tn[i] == 0 and rn[i] == 0) and 1 or 0)
  end
  return rel, cos, mx
end

local function worse(a, b)  -- NaN is worst
  if is_nan(a) then return true end
  if is_nan(b) then return false end
  return a > b
end

--- α and the fit quality of target h_l - ref h_l ≈ α · ref h_{l-1} (least squares; quality is
--- the share of the difference's energy the fit explains, 1 - ||d - α p||² / ||d||²).
local function leak_fit(R, T, P)
  local d = T - R
  local dd = (d * d):sum():item()
  local pp = (P * P):sum():item()
  if dd == 0 or pp == 0 or is_nan(dd) then return nil end
  local alpha = (d * P):sum():item() / pp
  local e = d - P * alpha
  return { alpha = alpha, quality = 1 - (e * e):sum():item() / dd }
end

--- What a tensor's position in the layer says about where the bug is; `subs`: the layer's
--- sub-stages were compared too.
local function where(place, subs)
  local l = place.layer
  if place.kind == "emb" then return "the embedding" end
  if place.kind == "post_norm" then return "the final norm" end
  if place.kind == "logits" then return "the LM head (or the final norm before it)" end
  if not l then return "the step that produces " .. place.kind end
  local s = place.substage
  if s == "in" then
    return l == 0 and "the embedding's hand-off to layer 0"
      or ("between layer %d and layer %d (the residual stream's hand-off)"):format(l - 1, l)
  end
  if s == "postattn" then return ("layer %d's attention block (its input norm, the self-attention or the residual add)"):format(l) end
  if s == "preffn" then return ("layer %d's norm before its FFN (the post-attention norm)"):format(l) end
  if s == "ffnout" then return ("layer %d's FFN (gate/up, activation, down projection)"):format(l) end
  if s == "" and subs then
    return ("layer %d's output, past the sub-stages dumped (in a parallel-residual layer: its attention)"):format(l)
  end
  if s == "" then return ("layer %d (dump its sub-stages h%d_in/_postattn/_preffn/_ffnout to narrow it down)"):format(l, l) end
  return ("layer %d, sub-stage %s"):format(l, s)
end

---@class parity.DiffOptions
---@field names table|nil        name mapping (parity.dump.rename), applied to both dumps
---@field pos integer|nil        compare at this position only (default: every position)
---@field thresholds table|nil   see M.DEFAULTS (validated by M.thresholds)
---@field thresholds_origin string|nil  where they came from, for messages
---@field only table|string|nil  compare only these tensors (names or ^patterns; a string:
---                             comma-separated), each of which the target must have; by default
---                             every tensor both have is compared, and the target must have every
---                             layer's output h{l} and the logits the reference has

--- Compares two dumps (paths or parity.dump.read results); returns the report.
---@param ref_path string|table
---@param target_path string|table
---@param opts parity.DiffOptions|nil
---@return parity.DiffReport
function M.run(ref_path, target_path, opts)
  opts = opts or {}
  local th = M.thresholds(opts.thresholds or {}, opts.thresholds_origin or "thresholds")
  if opts.pos ~= nil then validate.integer("pos", opts.pos, 0, 2 ^ 31) end
  local ref = dump.rename(type(ref_path) == "table" and ref_path or dump.read(ref_path), opts.names)
  local tgt = dump.rename(type(target_path) == "table" and target_path or dump.read(target_path), opts.names)
  local only = opts.only and M.check_only(opts.only, "diff", ref.names)

  -- narrowing: with `only`, what it does not select is left out on both sides
  local left_out, seen = {}, {}
  local function keep(names)
    if not only then return names end
    local kept = {}
    for _, n in ipairs(names) do
      if selected(only, n) then kept[#kept + 1] = n elseif not seen[n] then left_out[#left_out + 1], seen[n] = n, true end
    end
    return kept
  end
  local ref_names, tgt_names = keep(ref.names), keep(tgt.names)
  dump.sort(left_out)

  -- pairing: a kind (emb, h, h_ffnout, ...) both dumps have must cover the same layers; a kind
  -- only one side dumps is listed, not compared. What the comparison must cover: what `only`
  -- selects, else every layer's output and the logits the reference has (`missing` otherwise).
  local kinds = { reference = {}, target = {} }
  for side, list in pairs({ reference = ref_names, target = tgt_names }) do
    for _, n in ipairs(list) do kinds[side][dump.place(n).kind] = true end
  end
  local names, not_compared, required, missing, last_layer = {}, {}, {}, {}, -1
  for _, n in ipairs(ref_names) do
    local place = dump.place(n)
    if place.layer and place.layer ~= math.huge then last_layer = math.max(last_layer, place.layer) end
    -- by its name before and after --names, so that a renaming cannot move a layer out of the rule
    local before = dump.place(ref.renamed and ref.renamed[n] or n)
    local needed = only or place.kind == "h" or place.kind == "logits" or before.kind == "h" or before.kind == "logits"
    if needed then required[#required + 1] = n end
    if tgt.tensors[n] then
      names[#names + 1] = n
    elseif kinds.target[place.kind] then
      error(("%s: no dump of %s (the reference's is %s; the target dumps other %s tensors)"):format(
        tgt.path, n, ref.files[n], place.kind), 0)
    else
      not_compared[#not_compared + 1] = { name = n, only = "reference" }
      if needed then missing[#missing + 1] = n end
    end
  end
  for _, n in ipairs(tgt_names) do
    if not ref.tensors[n] then
      if kinds.reference[dump.place(n).kind] then
        error(("%s: no dump of %s (the target's is %s; the reference dumps other %s tensors)"):format(
          ref.path, n, tgt.files[n], dump.place(n).kind), 0)
      end
      not_compared[#not_compared + 1] = { name = n, only = "target" }
    end
  end
  if #names == 0 then
    error(("no tensor names in common between %s (%s) and %s (%s); pass a name mapping (--names FILE.lua)"):format(
      ref.path, table.concat(ref.names, ", "), tgt.path, table.concat(tgt.names, ", ")), 0)
  end

  local compared = {}
  for _, n in ipairs(names) do compared[n] = true end
  local stream, tensors, by_kind, earlier = {}, {}, {}, 0  -- stream: the last emb/h{l} rows, for the leak fit
  local first_fail
  for _, n in ipairs(names) do
    local place = dump.place(n)
    local R, T, at = align(n, ref.tensors[n], tgt.tensors[n], ref.files[n], tgt.files[n], opts.pos)
    local rel, cos, mx = row_metrics(R, T)
    local lim = limits_for(th, n, place.layer, last_layer)
    local worst, bad = 1, nil
    for i = 1, #rel do
      if worse(rel[i], rel[worst]) then worst = i end
      local fails = is_nan(rel[i]) or rel[i] > lim.rel_l2 or cos[i] < lim.cosine or (lim.max_abs and mx[i] > lim.max_abs)
      if fails and not bad then bad = i end
    end
    local function position(i)
      local seq, p = at(i)
      return p, seq
    end
    local err = rel[worst]
    local rn, tn = (R * R):sum():sqrt():item(), (T * T):sum():sqrt():item()
    local row = {
      name = n, layer = (place.layer and place.layer ~= math.huge) and place.layer or nil, substage = place.substage,
      reference_file = ref.files[n], target_file = tgt.files[n],
      reference_shape = ref.tensors[n]:size(), target_shape = tgt.tensors[n]:size(),
      rows = #rel, rel_l2 = err, cosine = math.huge, max_abs = 0, norm_ratio = rn > 0 and tn / rn or nil,
      limits = lim, pass = bad == nil,
    }
    row.worst_position, row.worst_sequence = position(worst)
    if bad then row.first_bad_position, row.first_bad_sequence = position(bad) end
    for i = 1, #rel do
      row.cosine = math.min(row.cosine, cos[i])
      row.max_abs = (is_nan(mx[i]) or mx[i] > row.max_abs) and mx[i] or row.max_abs
    end
    -- the step: above what earlier tensors of its family reached (any earlier tensor for the first of one)
    local family = place.family or place.kind
    local prior = by_kind[family] or earlier
    local base = math.max(prior, (th.expected_noise or 0) > 0 and th.expected_noise or M.FLOOR)
    if is_nan(err) or err > th.step * base then row.step = { baseline = prior, ratio = is_nan(err) and math.huge or err / base } end
    by_kind[family] = math.max(by_kind[family] or 0, is_nan(err) and math.huge or err)
    earlier = math.max(earlier, is_nan(err) and math.huge or err)
    -- the residual-leak fit of a layer's output on the reference's previous one
    if place.substage == "" and place.layer and place.layer >= 0 and place.layer ~= math.huge then
      local prev = stream[place.layer == 0 and "emb" or ("h" .. (place.layer - 1))]
      if prev and prev:is_same_size(R) then row.leak = leak_fit(R, T, prev) end
    end
    if place.family == "stream" and place.substage ~= "in" then stream = { [n] = R } end
    tensors[#tensors + 1] = row
    if not row.pass and not first_fail then first_fail = row end
  end

  -- the main step among rows[1..last]: the first whose ratio is within a step factor of the
  -- largest (an early step of float noise is far smaller than a bug's)
  local function main_step(last)
    local max = 0
    for i = 1, last do
      if tensors[i].step then max = math.max(max, tensors[i].step.ratio) end
    end
    for i = 1, last do
      if tensors[i].step and tensors[i].step.ratio * th.step >= max then return tensors[i] end
    end
  end
  -- the localisation: the main step up to the first tensor past its thresholds, else that tensor
  local localized, last_fail = nil, #tensors
  for i, row in ipairs(tensors) do
    if row == first_fail then last_fail = i end
  end
  if first_fail then localized = main_step(last_fail) or first_fail end
  local largest = main_step(#tensors)
  local function brief(row)
    if not row then return core.json.null end
    return { name = row.name, layer = row.layer, substage = row.substage, rel_l2 = row.rel_l2, cosine = row.cosine,
             max_abs = row.max_abs, position = row.first_bad_position or row.worst_position,
             sequence = row.first_bad_sequence or row.worst_sequence,
             where = where(dump.place(row.name), row.layer and compared["h" .. row.layer .. "_ffnout"]), step = row.step, leak = row.leak, norm_ratio = row.norm_ratio }
  end
  local ignored = {}
  for _, f in ipairs(ref.ignored) do ignored[#ignored + 1] = ref.path .. "/" .. f end
  for _, f in ipairs(tgt.ignored) do ignored[#ignored + 1] = tgt.path .. "/" .. f end
  local loosened, can_fail, warnings = audit(th, tensors)
  return {
    reference = ref.path, target = tgt.path, position = opts.pos or core.json.null,
    thresholds = th, pass = first_fail == nil and #missing == 0,
    verdict = first_fail and "divergent" or (#missing > 0 and "incomplete" or "equivalent"),
    first_past_threshold = brief(first_fail), localized = brief(localized), main_step = brief(largest),
    tensors = tensors, not_compared = core.json.array(not_compared), ignored = core.json.array(ignored),
    required = core.json.array(required), missing = core.json.array(missing),
    only = only and core.json.array(only) or core.json.null, left_out = core.json.array(left_out),
    loosened = loosened, criteria_can_fail = can_fail, warnings = warnings,
  }
end

--- "position p", or "position p of sequence s" past the first sequence.
---@param position integer
---@param sequence integer|nil 0-based
---@return string
function M.at(position, sequence)
  if sequence and sequence > 0 then return ("position %d of sequence %d"):format(position, sequence) end
  return ("position %d"):format(position)
end

local function num(x, fmt)
  if x == nil then return "-" end
  if is_nan(x) then return "NaN" end
  return (fmt or "%.3g"):format(x)
end

--- The terminal report: the per-tensor table, then the first failure and the localisation.
---@param d parity.DiffReport M.run's report
---@return string
function M.summary(d)
  local lines = { ("parity diff: reference %s, target %s%s"):format(d.reference, d.target,
    d.position ~= core.json.null and (" at position " .. d.position) or ", every position") }
  lines[#lines + 1] = ("  %-14s %10s %10s %10s %8s %6s %7s  %s"):format("tensor", "rel L2", "cosine", "max|d|",
    "|t|/|r|", "worst", "step", "")
  for _, t in ipairs(d.tensors) do
    local mark = t.pass and "" or ("FAIL at " .. M.at(t.first_bad_position, t.first_bad_sequence))
    if t.leak and t.leak.quality > 0.5 and not t.pass then
      mark = mark .. ("  leak: t ≈ r + %.3g·r_prev (fit %.2f)"):format(t.leak.alpha, t.leak.quality)
    end
    lines[#lines + 1] = ("  %-14s %10s %10s %10s %8s %6s %7s  %s"):format(t.name, num(t.rel_l2), num(t.cosine, "%.6f"),
      num(t.max_abs), num(t.norm_ratio, "%.3f"),
      (t.worst_sequence or 0) > 0 and (t.worst_sequence .. ":" .. t.worst_position) or t.worst_position, t.step and ("x" .. num(t.step.ratio, "%.1f")) or "", mark)
  end
  local lacks = 0
  for _, side in ipairs({ "reference", "target" }) do
    local list = {}
    for _, n in ipairs(d.not_compared) do
      if n.only == side then list[#list + 1] = n.name end
    end
    if #list > 0 then lines[#lines + 1] = ("  not compared (only the %s dumps them): %s"):format(side, M.names_text(list)) end
    if side == "reference" then lacks = #list end
  end
  for _, f in ipairs(d.ignored) do lines[#lines + 1] = ("  ignored: %s (not a tensor file)"):format(f) end
  if d.only ~= core.json.null then
    lines[#lines + 1] = ("  narrowed to %s: left out %d tensors%s"):format(table.concat(d.only, ","), #d.left_out,
      #d.left_out > 0 and (": " .. M.names_text(d.left_out)) or "")
  end
  for _, w in ipairs(d.warnings) do lines[#lines + 1] = "  warning: " .. w end
  if #d.missing > 0 then
    local narrowed = d.only ~= core.json.null
    lines[#lines + 1] = ("incomplete: the target dump lacks %d of the %d reference tensors %s; of what the comparison"
      .. " must cover (%s) it lacks %s%s"):format(lacks, lacks + #d.tensors, narrowed and "selected" or "dumped",
      narrowed and "every tensor selected" or "every layer's output h{l} and the logits", M.names_text(d.missing),
      narrowed and "" or " (diff --only NAMES, a matrix entry's only, compares less)")
  end
  local f, l = d.first_past_threshold, d.localized
  if f ~= core.json.null then
    lines[#lines + 1] = ("first past threshold: %s at %s (rel L2 %s, cosine %s)"):format(f.name,
      M.at(f.position, f.sequence), num(f.rel_l2), num(f.cosine, "%.6f"))
    lines[#lines + 1] = ("localized: %s: %s%s"):format(l.name, l.where,
      l.step and (" (rel L2 %s, x%s over the earlier layers)"):format(num(l.rel_l2), num(l.step.ratio, "%.1f")) or "")
    if l.leak and l.leak.quality > 0.5 then
      lines[#lines + 1] = ("  residual leak: target %s ≈ reference %s + %.3g x reference's previous layer (fit %.2f)"):format(
        l.name, l.name, l.leak.alpha, l.leak.quality)
    end
  end
  local big = d.main_step
  if f == core.json.null and big ~= core.json.null then
    lines[#lines + 1] = ("within the thresholds; the main step: %s: %s (rel L2 %s, x%s over the earlier layers)"):format(
      big.name, big.where, num(big.rel_l2), num(big.step.ratio, "%.1f"))
  end
  lines[#lines + 1] = ("verdict: %s"):format(d.verdict:upper())
  return table.concat(lines, "\n")
end

return M
