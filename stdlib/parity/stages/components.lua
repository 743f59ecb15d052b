--- stage components — stage 2 of the seeds: the mapped components on the same real inputs
--- (every one with sweep "full"; by default those a clean container does not vouch for: M.clean).
--- (With the 2-tensor baseline, "fp32" below is the reference at the low precision and "the
--- low precision" that reference with its inputs perturbed by machine epsilon; no fp32 leg.)
--- One tapped forward of the fp32 reference on the check's sequences captures each component's
--- inputs (and its fp32 outputs on them); then, per component and call, the reference's component
--- at the low precision and the target's at the low precision (and fp32 when it has it) run on
--- those inputs:
---   R = ||t - r32|| / ||r_low - r32||, R32 = ||t32 - r32|| / ||r_low - r32||
--- measure what each component adds itself, whatever it would have inherited. Tapped forwards of
--- the reference at the low precision and of the target give the accumulated view: the same
--- ratios on the outputs of whole-model runs (whether an error persists or is absorbed), and on
--- each component's input (what it inherits: its role, source, amplifier or carrier).
---
--- Mapping: identical trees map by identity; otherwise the mapping given (--mapping) or one
--- proposed from the weights (parity.weights.auto). A target component that takes the leading
--- inputs of its reference gets those; one whose inputs differ otherwise has only the
--- accumulated view (isolated = false).
local core = require("parity.core")
local mapping = require("parity.mapping")
local weights = require("parity.weights")
local lm = require("parity.lm")
local criteria = require("parity.criteria")
local m = core.metrics

local M = { name = "components", runs_target = "its components run one by one", needs = { "scaffold" } }
--- One row of the result's `components`: a mapped component's figures (its worst call's).
---@class parity.ComponentRow
---@field reference string the reference paths, joined by "+"
---@field target string
---@field type string the reference module's type
---@field depth integer
---@field transform string
---@field calls integer how often the reference's forward calls it
---@field interleave integer|nil the head size of an interleaved RoPE layout
---@field skipped string|nil why it has no figures ("never called", cannot re-run)
---@field never_called_by_target boolean|nil the target has it (with weights) but its forward never calls it
---@field isolated boolean|nil whether the target's component ran on the reference's inputs
---@field r number|nil its own R at the low precision (isolated)
---@field r32 number|nil its own R32 (isolated, fp32)
---@field acc_r number|nil R of its output in the whole-model runs
---@field acc_r32 number|nil R32 of the same
---@field inherited_r number|nil R of its first input in the whole-model runs
---@field inherited_r32 number|nil R32 of the same
---@field worst_call integer
---@field rel_l2_32 number|nil
---@field cosine_32 number|nil
---@field rows_r parity.RowRatios|nil the per-row view (parity.judge.row_ratios)
---@field role "source"|"amplifier"|"carrier"|nil parity.judge.role
---@field unpatched {r: number|nil, r32: number|nil}|nil a patched component's R and R32 as the port computes it
--- What localize's signatures fit a failing component on (kept in memory, never written): its
--- isolated outputs and inputs and a way to re-run it, or the whole-model outputs (isolated = false).
---@class parity.Evidence
---@field isolated boolean
---@field call integer the call the figures are of
---@field inputs parity.Tensor[]|nil the reference's captured inputs (isolated)
---@field input parity.Tensor|nil the first of them
---@field target_inputs parity.Tensor[]|nil those the target's component took
---@field r32 parity.Tensor|nil the reference's output (the anchor precision)
---@field t32 parity.Tensor|nil the target's in fp32 (or in an fp32 check's low precision, fp32)
---@field tlow parity.Tensor|nil the target's at the low precision
---@field params table<string, parity.Tensor> the reference component's parameters
---@field run_reference nil|fun(inputs: parity.Tensor[]): parity.Tensor|nil re-runs the reference's component
---@field run_target nil|fun(inputs: parity.Tensor[]): parity.Tensor|nil re-runs the target's component
---@field reference_low fun(): parity.Tensor|nil the reference's own low-precision output at that call (re-run; nil: none)
--- The whole-model captures inside the failing components, for signatures that look inside.
---@class parity.Inside
---@field reference table<string, parity.TapCall[]> path -> its calls in the reference's run
---@field target table<string, parity.TapCall[]> path -> its calls in the target's run
---@field pairs parity.MappingPair[]
---@field bundles {reference: parity.Bundle, target: parity.Bundle, reference_low: parity.Bundle}
---@field dtypes {reference: string, target: string, reference_low: string}

local judge = require("parity.judge")
local replay = require("parity.replay")
local thresholds = require("parity.thresholds")
local is_float, tensors = replay.is_float, replay.tensors

--- Shapes alike but for dim 0, which data may decide (the tokens routed to an expert).
local function alike(a, b)
  if a:dim() ~= b:dim() or is_float(a) ~= is_float(b) then return false end
  for d = 1, a:dim() - 1 do
    if a:size(d) ~= b:size(d) then return false end
  end
  return true
end

--- The reference's captured inputs a target component takes: all of them when it takes as many
--- of alike shapes; else the leading ones when it takes fewer and their shapes agree (a port
--- whose attention computes RoPE itself takes the hidden states without cos and sin). Nil when
--- they do not fit: the component has only the accumulated view.
local function inputs_for(target_inputs, ref_inputs)
  if #target_inputs == 0 or #target_inputs > #ref_inputs then return nil end
  for i, t in ipairs(target_inputs) do
    if not alike(t, ref_inputs[i]) then return nil end
  end
  local out = {}
  for i = 1, #target_inputs do out[i] = ref_inputs[i] end
  return out
end

--- ||a - b|| in float64 (NaN when either is not finite); nil when either is missing or their
--- shapes differ (an expert given other tokens).
local function distance(a, b)
  if not (a and b) or not a:is_same_size(b) then return nil end
  return m.l2_distance(a, b)
end

--- The 3-tensor ratio of whole tensors, ||t - r32|| / noise, where noise = ||r_low - r32|| (the
--- reference's own; nil: none to judge against). A component whose low precision is exact (an
--- integer lookup, a copy) has no noise to measure against: exact is 0, anything else infinite.
--- With the 2-tensor baseline (`eps`: the dtype's machine epsilon) the noise is at least one
--- rounding of the output, eps x ||r32||: an output the perturbation leaves unchanged (a rotary
--- embedding computes from positions, not from its input's values) is judged against that.
local function ratio(t, r32, noise, eps)
  local num = distance(t, r32)
  if not (num and noise) then return nil end
  if num ~= num then return num end  -- NaN: t or r32 is not finite
  local floor = eps and eps * r32:float():norm():item() or 0
  if noise < floor then return num / floor end
  if noise == 0 then return num == 0 and 0 or math.huge end
  return num / noise
end

--- ||a_i - b_i|| of every row i (the last dim is a row's: a position's hidden state, a head's
--- vector), in float64, as a 1-D tensor; nil when either is missing or their shapes differ.
local function row_distances(a, b)
  if not (a and b) or not a:is_same_size(b) or a:dim() == 0 then return nil end
  local d = a:double() - b:double()
  return d:reshape({ -1, d:size(d:dim() - 1) }):norm(2, { -1 })
end

--- The reference's own noise at every pair and call (R's denominators: ||r_low - r32|| of the
--- isolated run, of the whole runs and at the first input, and the isolated run's per row) as
--- cached tensors: one [calls, 3] per pair (-1: none), and the rows' "<pair>_<call>"; and back.
local NONE = -1
local function noise_tensors(noise)
  local out = {}
  for n, calls in pairs(noise) do
    local rows = {}
    for k, v in ipairs(calls) do
      rows[k] = { v[1] or NONE, v[2] or NONE, v[3] or NONE }
      if v[1] then out[("%d_%d"):format(n, k)] = v.rows or torch.zeros({ 0 }, { dtype = "float64" }) end  -- none: a 0-d output
    end
    out[tostring(n)] = torch.tensor(rows, { dtype = "float64" })
  end
  return out
end

local function noise_of(tensors, n, calls, with_rows)
  local t = tensors[tostring(n)]
  if not t or t:dim() ~= 2 or t:size(0) ~= calls or t:size(1) ~= 3 then return nil end
  local rows = t:tolist()
  for k, v in ipairs(rows) do
    for i = 1, 3 do
      if v[i] == NONE then v[i] = nil end
    end
    v.rows = tensors[("%d_%d"):format(n, k)]
    if with_rows and v[1] and not v.rows then return nil end  -- cached before the rows were
    if v.rows and v.rows:numel() == 0 then v.rows = nil end
  end
  return rows
end


--- A value as a function returning it, or nil and why there is none (an evidence's
--- reference_low: it holds that output only, not the captures it came from).
local function held(x, why) return function() return x, not x and why or nil end end

--- The larger of two figures, either missing.
local function worst(a, b)
  if a == nil or b == nil then return a or b end
  return math.max(a, b)
end

--- The reference modules' outputs as the pair's target computes them: interleaved per head where
--- the mapping says so, concatenated (transform "concat") or the one's.
local function combine(outs, pair)
  if #outs == 0 or not outs[1] then return nil end
  for _, o in ipairs(outs) do
    if not o then return nil end
  end
  outs = weights.as_target(pair, outs, -1)
  if pair.transform == "concat" then return torch.cat(outs, outs[1]:dim() - 1) end
  return outs[1]
end



--- Clean enough to vouch for the components inside it (the adaptive sweep does not test them):
--- run alone on the reference's inputs and not skipped, adding no error (R, R32, rows), its
--- output in the whole-model runs not off (no role: nothing reaches it), and not markedly more
--- precise than the reference (an upcast inside shows there only as R below 1).
---@param row parity.ComponentRow
---@param th parity.Thresholds the thresholds as they apply (parity.thresholds.at)
---@return boolean
function M.clean(row, th)
  return row.isolated == true and not row.skipped and row.role == nil and not judge.fails(row, th)
    and not judge.over_precise(row, th)
end

--- Returns the result and, kept for the localize stage (in memory only), the evidence of the
--- failing components (`evidence[reference path]`: their outputs and a way to re-run them),
--- the whole-model captures inside them (`inside`) and the first component whose input in the
--- whole fp32 runs is off (`first_inherited`).
---@param ctx parity.Context
---@param got table the scaffold stage's result and pairs (got.scaffold, got.kept.scaffold: parity.workflow)
---@return table result {mapping, components: parity.ComponentRow[], has_fp32, ...}, or {skipped}
---@return {evidence: table<string, parity.Evidence>, inside: parity.Inside, first_inherited: table|nil}|nil kept
function M.run(ctx, got)
  local ref, target, dtype = ctx.reference, ctx.target, ctx.dtype
  local scaffold, paired = got.scaffold, got.kept.scaffold  -- its pairs
  if not paired then return { skipped = scaffold.skipped or scaffold.unmapped_reason } end
  local pairs_, kind, unmapped, absent, lacking = paired.pairs, scaffold.mapping, paired.unmapped, paired.absent, paired.lacking
  local ref_paths, tgt_paths = mapping.paths(pairs_)
  local seqs = ctx:reference_outputs().sequences
  -- the 2-tensor baseline (a reference without fp32): "r32" is the reference at the low
  -- precision, "rlow" it with its inputs perturbed by machine epsilon, and no fp32 leg
  local two = ctx.baseline == "2-tensor"
  local eps = two and lm.EPSILON[dtype] or nil  -- the 2-tensor noise floor (ratio)
  local anchor, has32 = ctx.anchor, target:has("fp32") and not two
  local runs_low = ctx:target_runs_low()  -- not in an fp32 check against the low precision's noise: fp32 only
  -- an fp32 check against the reassociation level: the target's "low precision" is fp32, and
  -- what the fp32 leg's figures say elsewhere its figures say
  local in32 = dtype == "fp32"
  local t0 = core.clock()
  -- the models' tapped forwards: those whose logits came from them (Context:tapped_logits: the
  -- target's, and the reference's unless they came from the cache) are not run again
  local cap, forwards = {}, 0
  local function run_tapped(side, d, paths)
    local calls = ctx:take_calls(side, d)
    if calls then return calls end
    forwards = forwards + 1
    return select(2, ctx[side]:tapped_run(d, seqs, paths))
  end
  -- the reference's own noise (noise[pair][call]) depends on the reference, the sequences and
  -- the pairs' reference side only: cached beside the reference's outputs, it spares a check
  -- against a cached reference that reference's low-precision forward and component runs
  local sides = {}
  for n, pair in ipairs(pairs_) do sides[n] = { pair.reference, pair.transform, pair.interleave or false } end
  local noise_name = "components_" .. core.hash_string(core.json.encode(sides))
  -- (a pair the cache has no noise of, called as often as then, gets it computed: `fresh` counts
  -- them, and the cache entry is written again with theirs)
  local cached, noise, fresh = ctx:reference_extra(noise_name) or {}, {}, 0
  local function cannot_tap(err)  -- e.g. a scripted model whose layers share one graph
    return { skipped = "cannot tap the models: " .. require("parity.errors").clean(err) }
  end
  local r32_from
  local ok, err = pcall(function()
    cap.r32, r32_from = ctx:reference_captures(ref_paths)
    if r32_from == "forward" then forwards = forwards + 1 end
    for n, pair in ipairs(pairs_) do
      local calls = cap.r32[pair.reference[1]]
      noise[n] = calls and noise_of(cached, n, #calls, not two) or nil
    end
    cap.rlow = not two and ctx:take_calls("reference", dtype) or nil  -- captured with its logits (no cache)
    if runs_low then cap.tlow = run_tapped("target", dtype, tgt_paths) end
    if has32 then cap.t32 = run_tapped("target", "fp32", tgt_paths) end
  end)
  if not ok then return cannot_tap(err) end
  local forwards_s = core.clock() - t0  -- the tapped forwards run here
  -- the reference's low-precision whole run (what its own noise is measured in), once a pair
  -- without cached noise is tested
  local function rlow_run()
    if cap.rlow then return true end
    local t = core.clock()
    local run_ok, calls = pcall(function()
      if two then return select(2, lm.perturbed(ref, dtype, ctx.settings.seed)(seqs, ref_paths)) end
      return run_tapped("reference", dtype, ref_paths)
    end)
    forwards_s = forwards_s + core.clock() - t
    if not run_ok then return false, calls end
    cap.rlow, forwards = calls, forwards + (two and 1 or 0)
    return true
  end
  local function dtype_of(which) return which == "r32" and anchor or which == "t32" and "fp32" or dtype end
  -- which models can run a component alone (TorchScript; a .pt2 program runs whole)
  local alone = { r32 = ref:runs_alone(anchor), rlow = ref:runs_alone(dtype), tlow = runs_low and target:runs_alone(dtype),
                  t32 = has32 and target:runs_alone("fp32") }
  local whole, tcap_dtype = {}, has32 and "fp32" or dtype
  if not alone.r32 then whole[#whole + 1] = ("the reference is a .pt2 program (%s)"):format(ref:file(anchor)) end
  if not alone[has32 and "t32" or "tlow"] then
    whole[#whole + 1] = ("the target is a .pt2 program (%s)"):format(target:file(tcap_dtype))
  end
  -- a padded LM head's output, cut to the compared vocabulary (its extra columns are e2e's to judge)
  local function padded_head(t, r)
    if not (t and r) or t:dim() ~= r:dim() or r:size(r:dim() - 1) ~= ctx.vocab or t:size(t:dim() - 1) <= ctx.vocab then return t end
    local cut = t:narrow(-1, 0, ctx.vocab)
    return cut:is_same_size(r) and cut or t
  end
  local child_cache = {}
  local function child(which, path)
    local key = which .. "|" .. path
    if child_cache[key] == nil then
      local b = (which == "r32" or which == "rlow") and ref or target
      local d = dtype_of(which)
      child_cache[key] = (which ~= "t32" or has32) and b:at(d):child(path) or false
    end
    return child_cache[key] or nil
  end
  -- component runs and their time, calls read from the whole runs instead (logged), failures
  local reruns, reruns_s, reused, failed = 0, 0, 0, {}
  -- one component of one model (r32, rlow, tlow, t32) on given inputs: its first output, or nil
  -- and why not
  -- (`unpatched`: the target's component as the port computes it, its patches aside)
  local function rerun(which, path, inputs, unpatched)
    if not alone[which] then return nil end  -- a .pt2 program: the accumulated view only
    local c = child(which, path)
    if not c then return nil end
    reruns = reruns + 1
    local args, bad = replay.arguments(c:schema(), replay.cast(inputs, dtype_of(which)))
    local ok, out = false, bad
    if args then
      local t = core.clock()
      if unpatched then ok, out = pcall(c.call_unpatched, c, "forward", unpack(args))
      else ok, out = pcall(c, unpack(args)) end
      reruns_s = reruns_s + core.clock() - t
    end
    if not ok then return nil, "cannot re-run on captured inputs: " .. require("parity.errors").clean(out) end
    return tensors(out)[1]
  end
  -- a component re-run on exactly the inputs it had in its model's whole run gives that run's
  -- output again: those calls are read from the capture instead of re-run (components taking
  -- token ids; a target computing bit for bit what the reference does upstream)
  local function same_inputs(which, path, k, inputs)
    local c = cap[which] and cap[which][path] and cap[which][path][k]
    if not c or #c.inputs ~= #inputs or not c.outputs[1] then return nil end
    local cast = replay.cast(inputs, dtype_of(which))
    for i, x in ipairs(cast) do
      if x ~= c.inputs[i] then return nil end  -- Tensor ~= is not torch.equal
    end
    return c.outputs[1]
  end
  -- the patched components (a patched run): their figures unpatched too, what the patch changed
  local patched = {}
  for _, paths in pairs(target.patched or {}) do
    for _, p in ipairs(paths) do patched[p] = true end
  end
  local th = thresholds.at(ctx.thresholds, dtype)  -- R's bound as it applies at this yardstick
  local tcap = has32 and "t32" or "tlow"
  local rows = {}
  local evidence_of, first_inherited = {}, nil
  -- the adaptive sweep: a component tested clean (M.clean) vouches for those inside it, which
  -- are not tested (`untested`) unless patched, or asked for (--sweep full); one holding a
  -- norm does not: a norm inside it absorbs what comes before it (a sandwich norm normalises
  -- a scaled MLP away), and a norm's own loss of precision is diluted in its container's noise
  local clean_at, holds_norm, untested, full = {}, {}, 0, ctx.sweep == "full"
  local function parent(p) return p:match("^(.*)%.[^.]+$") end
  local function above(pair, f)  -- whether f holds for a reference path above one of the pair's
    for _, p in ipairs(pair.reference) do
      local up = parent(p)
      while up do
        if f(up) then return true end
        up = parent(up)
      end
    end
    return false
  end
  for _, pair in ipairs(pairs_) do
    if criteria.class({ type = pair.type, reference = pair.reference[1] }) == "norm" then
      above(pair, function(up) holds_norm[up] = true end)
    end
  end
  local function inside_clean(pair)
    return not full and not patched[pair.target] and above(pair, function(up) return clean_at[up] end)
  end
  for n, pair in ipairs(pairs_) do
    ctx:progress("components", n, #pairs_)
    if inside_clean(pair) then
      untested = untested + 1
      goto next_pair
    end
    local first = pair.reference[1]
    local calls = cap.r32[first]
    local row = { reference = table.concat(pair.reference, "+"), target = pair.target, type = pair.type,
                  depth = pair.depth, transform = pair.transform, calls = calls and #calls or 0,
                  interleave = pair.interleave and pair.interleave.head_dim or nil }
    rows[#rows + 1] = row
    local evidence
    local per_row = {}  -- the isolated runs' rows, every call (judge.row_ratios)
    if not calls then
      row.skipped = "never called"
    elseif not (cap[tcap][pair.target] or (cap.tlow or {})[pair.target]) and next(child("r32", first):parameters()) then
      row.never_called_by_target = true  -- a module with weights the target has but its forward skips
    end
    if calls then
      for k = 1, #calls do
        local function run(which, path, inputs)
          local known = same_inputs(which, path, k, inputs)
          if known then reused = reused + 1 return known end
          local out, why = rerun(which, path, inputs)
          if why then row.skipped, failed[which] = why, true end
          return out
        end
        -- the target component runs on the reference's inputs when it takes the same tensors
        local tcall = cap[tcap][pair.target] and cap[tcap][pair.target][k]
        -- the 2-tensor baseline perturbs floating inputs: a component taking token ids alone (the
        -- model, its embedding) has the accumulated view only, against the perturbed whole model
        local perturbable = not two
        for _, x in ipairs(calls[k].inputs) do perturbable = perturbable or is_float(x) end
        local tinputs = tcall and perturbable and alone[tcap] and alone.r32 and inputs_for(tcall.inputs, calls[k].inputs) or nil
        local isolated = tinputs ~= nil
        -- the accumulated view: outputs of the whole-model runs at this call
        local function outs(which, paths, as)
          local list = {}
          for i, p in ipairs(paths) do
            local c = cap[which] and cap[which][p] and cap[which][p][k]
            list[i] = c and c.outputs[1] or false
          end
          return combine(list, as)
        end
        -- what it inherits: its first input in the whole-model runs
        local function input(which, path)
          local c = cap[which] and cap[which][path] and cap[which][path][k]
          return c and c.inputs[1] and is_float(c.inputs[1]) and c.inputs[1] or nil
        end
        local r32_outs = {}
        for i, p in ipairs(pair.reference) do
          local c = cap.r32[p] and cap.r32[p][k]
          r32_outs[i] = c and c.outputs[1]  -- what a re-run on these inputs would give: they are its own
        end
        local r32, ar32, rin32 = combine(r32_outs, pair), outs("r32", pair.reference, pair), input("r32", first)
        -- the reference's own low-precision output on the inputs r32 had (`via` runs it; and why
        -- not, when it cannot); it keeps those inputs only, not the captures
        local ref_inputs = {}
        for i, p in ipairs(pair.reference) do
          local c = cap.r32[p] and cap.r32[p][k]
          ref_inputs[i] = c and c.inputs or false
        end
        local function reference_low(via)
          local rlow_outs, why = {}, nil
          for i, p in ipairs(pair.reference) do
            local x, w = nil, nil
            if ref_inputs[i] then
              x, w = via("rlow", p, two and lm.perturb(ref_inputs[i], lm.EPSILON[dtype], ctx.settings.seed) or ref_inputs[i])
            end
            rlow_outs[i], why = x or false, why or w
          end
          return combine(rlow_outs, pair), why
        end
        local rlow_here  -- computed here for the noise (not when it came from the cache)
        if not noise[n] then
          local run_ok, why = rlow_run()
          if not run_ok then return cannot_tap(why) end
          noise[n], fresh = {}, fresh + 1
        end
        if not noise[n][k] then  -- the reference's own noise: isolated, in the whole runs, at the input
          local rlow = reference_low(run)
          rlow_here = rlow
          noise[n][k] = { distance(rlow, r32), distance(outs("rlow", pair.reference, pair), ar32),
                          distance(input("rlow", first), rin32), rows = not two and row_distances(rlow, r32) or nil }
        end
        local own, own_acc, own_in = unpack(noise[n][k], 1, 3)
        local tlow = padded_head(isolated and run("tlow", pair.target, tinputs) or nil, r32)
        local t32 = padded_head(isolated and run("t32", pair.target, tinputs) or nil, r32)
        local own_rows, t_rows = noise[n][k].rows, row_distances(tlow, r32)
        if own_rows and t_rows and own_rows:is_same_size(t_rows) then
          per_row[#per_row + 1] = { error = t_rows, noise = own_rows }
        end
        local r, r32_ratio = ratio(tlow, r32, own, eps), ratio(t32, r32, own)
        if patched[pair.target] and isolated then  -- its worst call's, as the patched figures are
          local u = row.unpatched or {}
          u.r = worst(u.r, ratio(padded_head(rerun("tlow", pair.target, tinputs, true), r32), r32, own, eps))
          u.r32 = worst(u.r32, ratio(padded_head(rerun("t32", pair.target, tinputs, true), r32), r32, own))
          row.unpatched = u
        end
        local at32, atlow = padded_head(outs("t32", { pair.target }, {}), ar32), padded_head(outs("tlow", { pair.target }, {}), ar32)
        local acc, acc32 = ratio(atlow, ar32, own_acc, eps), ratio(at32, ar32, own_acc)
        local inh, inh32 = ratio(input("tlow", pair.target), rin32, own_in, eps), ratio(input("t32", pair.target), rin32, own_in)
        -- the first component whose input in the whole fp32 runs is off: what localize looks at
        -- when no component adds an error itself (the forward code between components)
        local cth = criteria.for_component(th, row)
        local off, bar, leg = inh32, cth.r32_p95, "t32"
        if in32 then off, bar, leg = inh, cth.r_p95, "tlow" end
        if off and off >= bar and not first_inherited then
          first_inherited = { reference = row.reference, target = row.target, type = row.type, call = k,
                                       t = input(leg, pair.target), r = rin32, ratio = off, figure = in32 and "R" or "R32" }
        end
        if k == 1 or (r or acc or r32_ratio or acc32 or 0) > (row.r or row.acc_r or row.r32 or row.acc_r32 or 0) then
          row.r, row.r32, row.acc_r, row.acc_r32, row.worst_call = r, r32_ratio, acc, acc32, k
          row.inherited_r, row.inherited_r32 = inh, inh32
          row.isolated = isolated and true or false
          if t32 then
            row.rel_l2_32, row.cosine_32 = m.rel_l2(t32, r32), m.cosine(t32, r32)  -- in float64, whatever the dtype
          end
          -- what localize's signatures fit, kept out of the JSON: the isolated outputs and a way to
          -- re-run both components on other inputs; without an isolated run, the whole-model
          -- outputs (whose inputs may carry inherited error)
          local single = #pair.reference == 1
          -- (the signatures that need fp32 outputs fit on those of an fp32 check)
          evidence = isolated and {
            isolated = true, inputs = calls[k].inputs, input = calls[k].inputs[1], r32 = r32,
            t32 = t32 or (in32 and tlow or nil), tlow = tlow,
            target_inputs = tinputs,
            params = child("r32", first):parameters(),
            run_reference = single and function(inputs) return rerun("r32", first, inputs) end or nil,
            run_target = function(inputs) return rerun(tcap, pair.target, inputs_for(tinputs, inputs) or inputs) end,
            -- (the report's error distributions: re-run when asked unless computed here)
            reference_low = function()
              if rlow_here then return rlow_here end
              if not alone.rlow then return nil, "the reference at the low precision is a .pt2 program: it runs whole" end
              return reference_low(rerun)
            end,
          } or { isolated = false, r32 = ar32, t32 = at32 or (in32 and atlow) or nil, tlow = atlow or nil,
                params = {}, reference_low = held(outs("rlow", pair.reference, pair), cap.rlow
                  and "the reference's low-precision whole run has no output here"
                  or "the reference's low-precision whole runs came from the cache (not kept)") }
          evidence.call = k
        end
      end
    end
    if row.isolated and not row.skipped then row.rows_r = judge.row_ratios(per_row) end
    -- evidence is kept for the failing components only (localize looks no further)
    if evidence and judge.fails(row, th) then evidence_of[row.reference] = evidence end
    row.role = judge.role(row, th)
    if M.clean(row, th) then
      for _, p in ipairs(pair.reference) do clean_at[p] = not holds_norm[p] end
    end
    ::next_pair::
  end
  -- and the whole-model captures inside failing components, for signatures that look inside
  -- (which nonlinearity lies between an MLP's projections)
  local descends = mapping.descends
  local function inside_failing(captured, side)
    local kept = {}
    for path, c in pairs(captured or {}) do
      for _, row in ipairs(rows) do
        local root = side == "reference" and row.reference or row.target
        if evidence_of[row.reference] and descends(path, root) then kept[path] = c end
      end
    end
    return kept
  end
  local inside = { reference = inside_failing(cap.r32, "reference"), target = inside_failing(cap[tcap], "target"),
                      pairs = pairs_, bundles = { reference = ref, target = target, reference_low = ref },
                      dtypes = { reference = anchor, target = has32 and "fp32" or dtype, reference_low = dtype } }
  if fresh > 0 and not failed.rlow and alone.rlow then ctx:cache_reference_extra(noise_name, noise_tensors(noise)) end
  local total = core.clock() - t0  -- logged, not stored: the JSON stays byte-identical run to run
  ctx.log(("components: %d tested in %.2f s: %d tapped forwards (%.2f s; the others came with the logits), %d"
    .. " component runs (%.2f s), %d read from the whole runs (the same inputs)%s")
    :format(#rows, total, forwards, forwards_s, reruns, reruns_s, reused,
      fresh == 0 and "; the reference's own noise from the cache" or "")
    .. (r32_from == "cache" and "; its captures from the cache" or "")
    .. (untested > 0 and ("; %d inside clean components not tested (--sweep full tests them)"):format(untested) or ""))
  local absent_list = core.json.array()
  for _, a in ipairs(absent or {}) do absent_list[#absent_list + 1] = a end
  -- a .pt2 program runs whole: no component runs alone, nothing is injected; what is skipped, and why
  local accumulated_only = #whole > 0 and (table.concat(whole, "; ") .. ": a .pt2 program runs whole (AOTInductor), so no"
    .. " component runs alone on the reference's inputs: every component has the accumulated view only (isolated:"
    .. " false; no per-row precision test, no re-runs for the signatures)") or nil
  if accumulated_only then ctx.log("components: " .. accumulated_only) end
  return { mapping = kind, components = rows, sweep = full and "full" or "adaptive", untested = untested, has_fp32 = has32, accumulated_only = accumulated_only, unmapped_target = core.json.array(unmapped or {}),
           no_counterpart = absent_list, no_counterpart_reference = core.json.array(lacking or {}) },
         { evidence = evidence_of, inside = inside, first_inherited = first_inherited }
end

return M
