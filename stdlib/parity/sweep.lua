--- parity.sweep — the components stage's runs, one model at a time. A check holds one model's
--- weights at a time (parity.bundle.one_at_a_time): each paired component runs on the
--- reference's captured inputs while its model is loaded for its teacher-forced pass, and the
--- figures are put together once every model has run (the components stage: M.new's finish).
---   reference_side  the reference's fp32 captures (its components' inputs and outputs), and
---                   its own noise in every pair at the low precision (its components re-run on
---                   those inputs while its low-precision trace is loaded: cached beside its outputs)
---   target_pass     the target at a precision (after its tapped forward): its components re-run
---                   on the reference's inputs, outside in (the adaptive sweep: M.clean)
---   finish          the rows, the evidence of the failing components, what the log says
--- (With the 2-tensor baseline, "r32" is the reference at the low precision and "rlow" it with
--- its inputs perturbed by machine epsilon; no fp32 leg.) Parity.Context drives the passes
--- (Context:tap_components starts a sweep); the figures are parity.stages.components's.
local core = require("parity.core")
local mapping = require("parity.mapping")
local weights = require("parity.weights")
local lm = require("parity.lm")
local criteria = require("parity.criteria")
local captures = require("parity.captures")
local m = core.metrics

local M = {}

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
  if not (a and b) or not a:is_same_size(b) or a:dim() == 0 or a:size(a:dim() - 1) == 0 then return nil end
  return m.l2_distance_rows(a, b):reshape({ -1 })
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

--- The sweep of a check's pairs (Context:tap_components calls it once the scaffold paired them):
--- an object whose functions the context calls as each model runs (reference_side, target_pass)
--- and the components stage at its turn (finish).
---@param ctx parity.Context
---@param pairs_ parity.MappingPair[]
---@param ref_modules parity.ModuleInfo[] the reference's modules (Module:modules)
---@return table sweep {reference_side = fun(), target_pass = fun(dtype, calls, err), finish = fun(): table, table|nil}
function M.new(ctx, pairs_, ref_modules)
  local ref, target, dtype = ctx.reference, ctx.target, ctx.dtype
  local ref_paths, tgt_paths = mapping.paths(pairs_)
  local two = ctx.baseline == "2-tensor"
  local eps = two and lm.EPSILON[dtype] or nil  -- the 2-tensor noise floor (ratio)
  local anchor, has32 = ctx.anchor, target:has("fp32") and not two
  local runs_low = ctx:target_runs_low()  -- not in an fp32 check against the low precision's noise: fp32 only
  -- an fp32 check against the reassociation level: the target's "low precision" is fp32, and
  -- what the fp32 leg's figures say elsewhere its figures say
  local in32 = dtype == "fp32"
  local tcap = has32 and "t32" or "tlow"
  -- the reference's modules with weights (whether a module the target never calls matters)
  local weighted = {}
  for _, info in ipairs(ref_modules) do weighted[info.path] = (info.total_params or 0) > 0 end
  local seqs  -- the check's sequences (the reference's side)
  -- the models' tapped calls: r32, rlow (the reference's), tlow, t32 (the target's)
  local cap, forwards, forwards_s, spent = {}, 0, 0, 0  -- (forwards: run by the sweep itself; spent: its time)
  local broken  -- why the models cannot be tapped (e.g. a scripted model whose layers share one graph)
  -- outputs of the component runs: store[which][path .. "#" .. call] (false: none); what a run
  -- failed with, per which and pair
  local store = { rlow = {}, tlow = {}, t32 = {}, tlow_u = {}, t32_u = {} }
  local passed = {}  -- the target legs run ("tlow", "t32"), in order
  local function dtype_of(which) return which == "r32" and anchor or which == "t32" and "fp32" or dtype end
  -- which models can run a component alone (TorchScript; a .pt2 program runs whole)
  local alone = { r32 = ref:runs_alone(anchor), rlow = ref:runs_alone(dtype), tlow = runs_low and target:runs_alone(dtype),
                  t32 = has32 and target:runs_alone("fp32") }
  -- a padded LM head's output, cut to the compared vocabulary (its extra columns are e2e's to judge)
  local function padded_head(t, r)
    if not (t and r) or t:dim() ~= r:dim() or r:size(r:dim() - 1) ~= ctx.vocab or t:size(t:dim() - 1) <= ctx.vocab then return t end
    local cut = t:narrow(-1, 0, ctx.vocab)
    return cut:is_same_size(r) and cut or t
  end
  -- the submodules run, per model: those of a pass let go after it (they would keep its model's
  -- weights alive); those the evidence re-runs kept (only theirs stay)
  local child_cache = {}
  local function child(which, path)
    local key = which .. "|" .. path
    if child_cache[key] == nil then
      local b = (which == "r32" or which == "rlow") and ref or target
      child_cache[key] = (which ~= "t32" or has32) and b:at(dtype_of(which)):child(path) or false
    end
    return child_cache[key] or nil
  end
  -- component runs and their time, calls read from the whole runs instead (logged), failures
  local reruns, reruns_s, reused, failed, read_back = 0, 0, 0, {}, {}
  -- one component of one model (r32, rlow, tlow, t32) on given inputs: its first output, or nil
  -- and why not (`unpatched`: the target's component as the port computes it, its patches aside)
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
  -- the whole-model runs at call k: outputs of `paths` (combined as the pair's target computes
  -- them), and the first input of `path` (what it inherits)
  local function outs(which, paths, as, k)
    local list = {}
    for i, p in ipairs(paths) do
      local c = cap[which] and cap[which][p] and cap[which][p][k]
      list[i] = c and c.outputs[1] or false
    end
    return combine(list, as)
  end
  local function input(which, path, k)
    local c = cap[which] and cap[which][path] and cap[which][path][k]
    return c and c.inputs[1] and is_float(c.inputs[1]) and c.inputs[1] or nil
  end
  -- the reference's inputs of a pair's modules at call k, and its own low-precision output on
  -- them (`via(which, path, inputs)` runs it; and why not, when it cannot)
  -- the reference's own output of a pair at call k: its captured outputs (what a re-run on these
  -- inputs would give: they are its own), combined as the pair's target computes them
  local function r32_of(pair, k)
    local list = {}
    for i, p in ipairs(pair.reference) do
      local c = cap.r32[p] and cap.r32[p][k]
      list[i] = c and c.outputs[1]
    end
    return combine(list, pair)
  end
  local function ref_inputs(pair, k)
    local list = {}
    for i, p in ipairs(pair.reference) do
      local c = cap.r32[p] and cap.r32[p][k]
      list[i] = c and c.inputs or false
    end
    return list
  end
  local function reference_low(pair, k, via)
    local rlow_outs, why, inputs = {}, nil, ref_inputs(pair, k)
    for i, p in ipairs(pair.reference) do
      local x, w = nil, nil
      if inputs[i] then
        x, w = via("rlow", p, two and lm.perturb(inputs[i], lm.EPSILON[dtype], ctx.settings.seed) or inputs[i], k)
      end
      rlow_outs[i], why = x or false, why or w
    end
    return combine(rlow_outs, pair), why
  end
  -- a run of `which` at call k, kept (store) for the figures: read from the whole run when its
  -- inputs are that run's, else re-run (now: the pass of its model; later, at the finish, only
  -- for a leg some pair missed: that model loads again)
  local function kept_run(which, path, inputs, k, unpatched)
    local slot = store[which .. (unpatched and "_u" or "")]
    local key = path .. "#" .. k
    local fkey = which .. (unpatched and "_u" or "") .. "|" .. key
    if slot[key] ~= nil then return slot[key] or nil, failed[fkey] end
    local out, why
    if not unpatched then out = same_inputs(which, path, k, inputs) end
    if out then
      if not read_back[fkey] then reused, read_back[fkey] = reused + 1, true end
      -- read back from a file, it is read again when asked (kept, every pair's would stay)
      if captures.on_file(cap[which]) then return out end
    else
      out, why = rerun(which, path, inputs, unpatched)
    end
    slot[key] = out or false
    if why then failed[fkey] = why end
    if why and not unpatched then failed[which] = true end
    return out, why
  end

  -- the reference's own noise (noise[pair][call]: R's denominators, ||r_low - r32|| of the
  -- isolated run, of the whole runs and at the first input, and the isolated run's per row)
  -- depends on the reference, the sequences and the pairs' reference side only: cached beside
  -- the reference's outputs, it spares a check against a cached reference that reference's
  -- low-precision forward and component runs
  local sides = {}
  for n, pair in ipairs(pairs_) do sides[n] = { pair.reference, pair.transform, pair.interleave or false } end
  local noise_name = "components_" .. core.hash_string(core.json.encode(sides))
  local noise, fresh, noise_why = {}, 0, {}

  local S = {}
  --- The reference's side (once its outputs exist; Context:reference_outputs calls it): its
  --- captures at the anchor precision and its own noise in every pair, from the cache, else
  --- computed (its low-precision model loaded: the one the logits just ran, when they did).
  local started
  function S.reference_side()
    if started then return end
    started = true  -- (the reference's outputs, computed now, call it again)
    seqs = ctx:reference_outputs().sequences
    local t0, tf = core.clock(), core.clock()
    local ok, err = pcall(function()
      local from
      cap.r32, from = ctx:reference_captures(ref_paths)
      S.r32_from = from
      if from == "forward" then forwards = forwards + 1 end
    end)
    forwards_s = forwards_s + core.clock() - tf
    if not ok then broken = err return end
    local cached = ctx:reference_extra(noise_name) or {}
    local missing = false
    for n, pair in ipairs(pairs_) do
      local calls = cap.r32[pair.reference[1]]
      noise[n] = calls and noise_of(cached, n, #calls, not two) or nil
      missing = missing or (calls ~= nil and noise[n] == nil)
    end
    -- the reference's low-precision whole run (captured with its logits when they ran here)
    local rlow_calls = not two and ctx:take_calls("reference", dtype) or nil
    if missing then
      tf = core.clock()
      ok, err = pcall(function()
        if two then
          rlow_calls = select(2, lm.perturbed(ref, dtype, ctx.settings.seed)(seqs, ref_paths))
          forwards = forwards + 1
        elseif not rlow_calls then
          rlow_calls = select(2, ref:tapped_run(dtype, seqs, ref_paths))
          forwards = forwards + 1
        end
      end)
      forwards_s = forwards_s + core.clock() - tf
      if not ok then broken = err return end
      cap.rlow = ctx:hold(rlow_calls, ref_paths, ("reference_%s%s"):format(dtype, two and "_perturbed" or ""))
      rlow_calls = nil
      for n, pair in ipairs(pairs_) do
        local calls = cap.r32[pair.reference[1]]
        if calls and not noise[n] then
          noise[n], fresh = {}, fresh + 1
          local first = pair.reference[1]
          for k = 1, #calls do
            local r32, ar32, rin32 = r32_of(pair, k), outs("r32", pair.reference, pair, k), input("r32", first, k)
            local rlow, why = reference_low(pair, k, kept_run)
            if why then noise_why[n] = noise_why[n] or {}; noise_why[n][k] = why end
            noise[n][k] = { distance(rlow, r32), distance(outs("rlow", pair.reference, pair, k), ar32),
                            distance(input("rlow", first, k), rin32), rows = not two and row_distances(rlow, r32) or nil }
          end
        end
      end
      child_cache = {}  -- (the reference's model goes when the next loads)
      -- its components' outputs (a failing one's evidence), past the budget on file
      store.rlow = ctx.hold_tensors and ctx:hold_tensors(store.rlow, ("reference_%s_components"):format(dtype)) or store.rlow
      -- of its whole run, once it measured the noise, the outputs only (an accumulated-only
      -- divergence's evidence: the reference's own error there), unless they are on file
      if not captures.on_file(cap.rlow) then
        local outputs = {}
        for path, list in pairs(cap.rlow or {}) do
          outputs[path] = {}
          for k, c in ipairs(list) do outputs[path][k] = { inputs = {}, outputs = { c.outputs[1] } } end
        end
        cap.rlow = outputs
      end
      if not failed.rlow and alone.rlow then ctx:cache_reference_extra(noise_name, noise_tensors(noise)) end
    end
    spent = spent + core.clock() - t0
  end

  -- the adaptive sweep: components are tested outside in, and one tested clean (M.clean)
  -- vouches for those inside it, which are not tested (`untested`) unless patched, or asked for
  -- (--sweep full); one holding a norm does not: a norm inside it absorbs what comes before it
  -- (a sandwich norm normalises a scaled MLP away), and a norm's own loss of precision is
  -- diluted in its container's noise. Each target leg's pass decides as it runs, on the figures
  -- there are by then: the first on its own, the second on both where the first tested the pair
  -- (a pair the first left untested, under one the second finds not clean, is tested all the
  -- way down, and runs its first leg at the finish: that model loads again)
  local full, holds_norm = ctx.sweep == "full", {}
  local tested, clean_by = { tlow = {}, t32 = {} }, { tlow = {}, t32 = {} }
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
  local legs = {}  -- the target's legs, low precision first
  if runs_low then legs[#legs + 1] = "tlow" end
  if has32 then legs[#legs + 1] = "t32" end

  local evidence_of, first_inherited = {}, nil
  -- a figure of pair n at call k, computed once from the tensor it is of (`x`; a pass computes
  -- what it can, the next and the finish reuse it): nil while x is missing
  local figs = {}
  local function once(n, k, name, x, f)
    if x == nil then return nil end
    local key = ("%d|%d|%s"):format(n, k, name)
    if figs[key] == nil then figs[key] = { f(x) } end
    return unpack(figs[key], 1, 2)
  end
  --- The figures of pair n, from the runs there are: at a pass, those of the legs run (no
  --- evidence); at the finish (`final`), every leg's (a run missing is made now) and the
  --- evidence of its worst call.
  local function figures(n, final)
    local pair = pairs_[n]
    local first = pair.reference[1]
    local calls = cap.r32[first]
    local row = { reference = table.concat(pair.reference, "+"), target = pair.target, type = pair.type,
                  depth = pair.depth, transform = pair.transform, calls = calls and #calls or 0,
                  interleave = pair.interleave and pair.interleave.head_dim or nil }
    local evidence
    local per_row = {}  -- the isolated runs' rows, every call (judge.row_ratios)
    local tcalls = cap[tcap] or cap.tlow or cap.t32  -- the target's whole run (either leg's: the same calls)
    if not calls then
      row.skipped = "never called"
    elseif not ((tcalls or {})[pair.target] or (cap.tlow or {})[pair.target]) and weighted[first] then
      row.never_called_by_target = true  -- a module with weights the target has but its forward skips
    end
    if calls then
      for k = 1, #calls do
        -- a leg's run of the target component: at a pass, only the legs run so far
        local function run(which, path, inputs)
          if not final and not tested[which][n] then return nil end
          local out, why = kept_run(which, path, inputs, k)
          if why then row.skipped = why end
          return out
        end
        local function unpatched_run(which, path, inputs)
          if not final and not tested[which][n] then return nil end
          return (kept_run(which, path, inputs, k, true))
        end
        -- the target component runs on the reference's inputs when it takes the same tensors
        local tcall = tcalls and tcalls[pair.target] and tcalls[pair.target][k]
        -- the 2-tensor baseline perturbs floating inputs: a component taking token ids alone (the
        -- model, its embedding) has the accumulated view only, against the perturbed whole model
        local perturbable = not two
        for _, x in ipairs(calls[k].inputs) do perturbable = perturbable or is_float(x) end
        local tinputs = tcall and perturbable and alone[tcap] and alone.r32 and inputs_for(tcall.inputs, calls[k].inputs) or nil
        local isolated = tinputs ~= nil
        -- (read from the captures each time: held, they would hold every pair's; on file, they are read back)
        local r32, ar32 = r32_of(pair, k), outs("r32", pair.reference, pair, k)
        local rin32 = input("r32", first, k)
        if noise_why[n] and noise_why[n][k] then row.skipped = noise_why[n][k] end
        local own, own_acc, own_in = unpack(noise[n][k], 1, 3)
        local tlow = padded_head(isolated and runs_low and run("tlow", pair.target, tinputs) or nil, r32)
        local t32 = padded_head(isolated and has32 and run("t32", pair.target, tinputs) or nil, r32)
        local own_rows, t_rows = noise[n][k].rows, once(n, k, "rows", tlow, function(t) return row_distances(t, r32) end)
        if own_rows and t_rows and own_rows:is_same_size(t_rows) then
          per_row[#per_row + 1] = { error = t_rows, noise = own_rows }
        end
        local r = once(n, k, "r", tlow, function(t) return ratio(t, r32, own, eps) end)
        local r32_ratio = once(n, k, "r32_ratio", t32, function(t) return ratio(t, r32, own) end)
        if patched[pair.target] and isolated then  -- its worst call's, as the patched figures are
          local u = row.unpatched or {}
          u.r = worst(u.r, ratio(padded_head(runs_low and unpatched_run("tlow", pair.target, tinputs) or nil, r32), r32, own, eps))
          u.r32 = worst(u.r32, ratio(padded_head(has32 and unpatched_run("t32", pair.target, tinputs) or nil, r32), r32, own))
          row.unpatched = u
        end
        local at32, atlow = padded_head(outs("t32", { pair.target }, {}, k), ar32), padded_head(outs("tlow", { pair.target }, {}, k), ar32)
        local acc = once(n, k, "acc", atlow, function(t) return ratio(t, ar32, own_acc, eps) end)
        local acc32 = once(n, k, "acc32", at32, function(t) return ratio(t, ar32, own_acc) end)
        local inh = once(n, k, "inh", input("tlow", pair.target, k), function(t) return ratio(t, rin32, own_in, eps) end)
        local inh32 = once(n, k, "inh32", input("t32", pair.target, k), function(t) return ratio(t, rin32, own_in) end)
        -- the first component whose input in the whole fp32 runs is off: what localize looks at
        -- when no component adds an error itself (the forward code between components)
        local cth = criteria.for_component(th, row)
        local off, bar, leg = inh32, cth.r32_p95, "t32"
        if in32 then off, bar, leg = inh, cth.r_p95, "tlow" end
        if final and off and off >= bar and not first_inherited then
          first_inherited = { reference = row.reference, target = row.target, type = row.type, call = k,
                              t = input(leg, pair.target, k), r = rin32, ratio = off, figure = in32 and "R" or "R32" }
        end
        if k == 1 or (r or acc or r32_ratio or acc32 or 0) > (row.r or row.acc_r or row.r32 or row.acc_r32 or 0) then
          row.r, row.r32, row.acc_r, row.acc_r32, row.worst_call = r, r32_ratio, acc, acc32, k
          row.inherited_r, row.inherited_r32 = inh, inh32
          row.isolated = isolated and true or false
          if t32 then
            row.rel_l2_32, row.cosine_32 = once(n, k, "rel_l2_32", t32, function(t)  -- in float64, whatever the dtype
              return m.rel_l2(t, r32), m.cosine(t, r32)
            end)
          end
          -- what localize's signatures fit, kept out of the JSON: the isolated outputs and a way to
          -- re-run both components on other inputs; without an isolated run, the whole-model
          -- outputs (whose inputs may carry inherited error)
          local single = #pair.reference == 1
          local rlow_here = final and reference_low(pair, k, function(which, p, _, kk)  -- its run for the noise, when made here
            return store[which][p .. "#" .. kk] or nil
          end)
          -- (the signatures that need fp32 outputs fit on those of an fp32 check)
          evidence = final and (isolated and {
            isolated = true, inputs = calls[k].inputs, input = calls[k].inputs[1], r32 = r32,
            t32 = t32 or (in32 and tlow or nil), tlow = tlow,
            target_inputs = tinputs,
            params = first,  -- (the reference component's parameters: read at the finish, M.new's)
            run_reference = single and function(inputs) return rerun("r32", first, inputs) end or nil,
            run_target = function(inputs) return rerun(tcap, pair.target, inputs_for(tinputs, inputs) or inputs) end,
            -- (the report's error distributions: re-run when asked unless computed here)
            reference_low = function()
              if rlow_here then return rlow_here end
              if not alone.rlow then return nil, "the reference at the low precision is a .pt2 program: it runs whole" end
              return reference_low(pair, k, function(which, p, inputs) return rerun(which, p, inputs) end)
            end,
          } or { isolated = false, r32 = ar32, t32 = at32 or (in32 and atlow) or nil, tlow = atlow or nil,
                params = {}, reference_low = held(outs("rlow", pair.reference, pair, k), cap.rlow
                  and "the reference's low-precision whole run has no output here"
                  or "the reference's low-precision whole runs came from the cache (not kept)") }) or nil
          if evidence then evidence.call = k end
        end
      end
    end
    if row.isolated and not row.skipped then row.rows_r = judge.row_ratios(per_row) end
    row.role = judge.role(row, th)
    return row, evidence
  end

  --- A pass of the target at `d` (Context:target_logits calls it after its tapped forward, the
  --- model loaded): `calls` its captures (nil and `err`: it could not be tapped). Its components
  --- run on the reference's inputs, outside in.
  ---@param d string
  ---@param calls table<string, parity.TapCall[]>|nil
  ---@param err string|nil
  function S.target_pass(d, calls, err)
    local which = (d == dtype and runs_low) and "tlow" or "t32"
    if cap[which] or broken or (which == "t32" and not has32) then return end
    if not calls then broken = err or "its forward could not be tapped" return end
    S.reference_side()
    if broken then return end
    local t0 = core.clock()
    cap[which], calls = ctx:hold(calls, tgt_paths, "target_" .. d), nil
    local prev = passed[1]
    passed[#passed + 1] = which
    -- captures read back from a file are let go pair by pair (a collection after each), so the
    -- pass holds a pair's at a time
    local streams = captures.on_file(cap.r32) or captures.on_file(cap[which])
    for n, pair in ipairs(pairs_) do
      ctx:progress("components", n, #pairs_)
      if streams and n > 1 then collectgarbage("collect") end  -- (its freed memory is the next pair's)
      local skip = not full and not patched[pair.target] and above(pair, function(up) return clean_by[which][up] end)
      if not skip then
        tested[which][n] = true
        local row = figures(n, false)
        if M.clean(row, th) and (not prev or tested[prev][n]) then
          for _, p in ipairs(pair.reference) do clean_by[which][p] = not holds_norm[p] end
        end
      end
    end
    child_cache = {}  -- (its model goes when the next loads)
    spent = spent + core.clock() - t0
  end

  --- The components stage's result (M.new's caller: parity.stages.components) and what it keeps
  --- for localize, once the target's legs have run (those no stage asked for run now).
  ---@return table result {components, sweep, untested, has_fp32, accumulated_only} or {skipped}
  ---@return table|nil kept {evidence, inside, first_inherited}
  function S.finish()
    local t0 = core.clock()
    S.reference_side()
    for _, which in ipairs(legs) do
      if not cap[which] and not broken then
        local d = dtype_of(which)
        local ok, err = pcall(function()
          ctx:target_logits(d)  -- its pass, when no stage asked for its logits
          if not cap[which] then  -- the logits came without taps (already asked for, or saved)
            forwards = forwards + 1
            S.target_pass(d, select(2, target:tapped_run(d, seqs, tgt_paths)))
          end
        end)
        if not ok then broken = err end
      end
    end
    if broken then return { skipped = "cannot tap the models: " .. require("parity.errors").clean(broken) } end
    local whole, tcap_dtype = {}, has32 and "fp32" or dtype
    if not alone.r32 then whole[#whole + 1] = ("the reference is a .pt2 program (%s)"):format(ref:file(anchor)) end
    if not alone[tcap] then
      whole[#whole + 1] = ("the target is a .pt2 program (%s)"):format(target:file(tcap_dtype))
    end
    local rows, untested, deferred = {}, 0, reruns
    for n = 1, #pairs_ do
      local any = false
      for _, which in ipairs(legs) do any = any or tested[which][n] end
      if any then
        local row, evidence = figures(n, true)
        rows[#rows + 1] = row
        -- evidence is kept for the failing components only (localize looks no further), with
        -- their own submodules (the rest of their models let go)
        if evidence and judge.fails(row, th) then
          if evidence.isolated then evidence.params = child("r32", evidence.params):parameters() end
          evidence_of[row.reference] = evidence
        end
      else
        untested = untested + 1
      end
    end
    deferred = reruns - deferred
    -- and the whole-model captures inside failing components, for signatures that look inside
    -- (which nonlinearity lies between an MLP's projections)
    local descends = mapping.descends
    local function inside_failing(captured, side)
      local kept = {}
      for _, path in ipairs(captures.paths(captured)) do
        for _, row in ipairs(rows) do
          local root = side == "reference" and row.reference or row.target
          if evidence_of[row.reference] and descends(path, root) then kept[path] = captured[path] end
        end
      end
      return kept
    end
    local inside = { reference = inside_failing(cap.r32, "reference"), target = inside_failing(cap[tcap], "target"),
                     pairs = pairs_, bundles = { reference = ref, target = target, reference_low = ref },
                     dtypes = { reference = anchor, target = has32 and "fp32" or dtype, reference_low = dtype } }
    local total = spent + core.clock() - t0  -- logged, not stored: the JSON stays byte-identical run to run
    ctx.log(("components: %d tested in %.2f s: %d tapped forwards (%.2f s; the others came with the logits), %d"
      .. " component runs (%.2f s), %d read from the whole runs (the same inputs)%s")
      :format(#rows, total, forwards, forwards_s, reruns, reruns_s, reused,
        fresh == 0 and "; the reference's own noise from the cache" or "")
      .. (S.r32_from == "cache" and "; its captures from the cache" or "")
      .. (deferred > 0 and ("; %d run at the finish (their model loaded again)"):format(deferred) or "")
      .. (untested > 0 and ("; %d inside clean components not tested (--sweep full tests them)"):format(untested) or ""))
    -- a .pt2 program runs whole: no component runs alone, nothing is injected; what is skipped, and why
    local accumulated_only = #whole > 0 and (table.concat(whole, "; ") .. ": a .pt2 program runs whole (AOTInductor), so no"
      .. " component runs alone on the reference's inputs: every component has the accumulated view only (isolated:"
      .. " false; no per-row precision test, no re-runs for the signatures)") or nil
    if accumulated_only then ctx.log("components: " .. accumulated_only) end
    -- what the figures were made of goes (the evidence keeps its own, and the reference's inputs)
    store, figs, cap.tlow, cap.t32, cap.rlow = nil, nil, nil, nil, nil
    return { components = rows, sweep = full and "full" or "adaptive", untested = untested, has_fp32 = has32,
             accumulated_only = accumulated_only },
           { evidence = evidence_of, inside = inside, first_inherited = first_inherited }
  end
  return S
end

return M
