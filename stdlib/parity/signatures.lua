--- Cause signatures that re-run a fault on its own inputs (the reference's captured ones), on a
--- fresh copy of each model, with the fault's children tapped or a child's parameters changed:
---   glue         every child computes as the reference's does, yet one gets another input: the
---                fault's own forward code between its children differs (a residual dropped, a
---                scale missing on the embedding); fitted there as a scale or a residual
---   temperature  the reference with one child's parameters scaled by tau reproduces the target:
---                the attention scores scaled by tau (a 1/sqrt(head_dim) missing: tau = sqrt(head_dim))
--- Both judge in fp32 (the target's fp32 trace against the reference's), where a correct port
--- is at its float-reassociation level (1e-6..1e-5) and a difference above CUTOFFS.differs is the bug's.
local core = require("parity.core")
local replay = require("parity.replay")
local descends = require("parity.mapping").descends

local M = {}

-- where a child's input differs, when a fit explains a difference: parity.thresholds.CUTOFFS
local CUT = require("parity.thresholds").CUTOFFS

--- The mapped components inside `fault` on both sides, in execution order: {path (the
--- reference's), reference and target (relative to the fault)}.
---@param pairs_ parity.MappingPair[]
---@param fault parity.ComponentRow the fault's row ({reference, target})
---@return {path: string, reference: string, target: string}[]
function M.inner_pairs(pairs_, fault)
  local out = {}
  for _, pair in ipairs(pairs_) do
    local p = pair.reference[1]
    if #pair.reference == 1 and descends(p, fault.reference) and descends(pair.target, fault.target) then
      out[#out + 1] = { path = p, reference = p:sub(#fault.reference + 2), target = pair.target:sub(#fault.target + 2) }
    end
  end
  return out
end

--- Whether the re-running signatures can judge this fault: isolated evidence, both legs in fp32.
---@param ev parity.Evidence|nil
---@param inside parity.Inside|nil
---@return boolean
function M.can_rerun(ev, inside)
  return (ev and ev.isolated and ev.inputs and inside and inside.dtypes.target == "fp32"
    and inside.dtypes.reference == "fp32") and true or false
end
local fp32_legs = M.can_rerun

--- Glue: the first child (in execution order) whose input (its first floating one that differs)
--- in the target's fault differs from the reference's, both re-run on the fault's inputs, while
--- every child before it gave the reference's outputs; fitted as t = c r (a scale) or t = r + alpha x,
--- x the fault's input (a residual). Returns {child, what = "scale"|"residual", value, rel}, or nil
--- when no child's input differs or the first that does fits neither.
---@param ev parity.Evidence|nil
---@param fault parity.ComponentRow
---@param inside parity.Inside|nil
---@param fit_scale fun(t: parity.Tensor, r: parity.Tensor): number|nil, number|nil parity.fits.fit_scale
---@param fit_residual fun(t: parity.Tensor, r: parity.Tensor, x: parity.Tensor|nil): number|nil, number|nil
---@return {child: string, what: "scale"|"residual", value: number, rel: number}|nil
function M.fit_glue(ev, fault, inside, fit_scale, fit_residual)
  if not fp32_legs(ev, inside) then return nil end
  local inner = M.inner_pairs(inside.pairs, fault)
  if #inner == 0 then return nil end
  local rtaps, ttaps = {}, {}
  for i, c in ipairs(inner) do rtaps[i], ttaps[i] = c.reference, c.target end
  local rm = replay.fresh_module(inside.bundles.reference, "fp32", fault.reference)
  local tm = replay.fresh_module(inside.bundles.target, "fp32", fault.target)
  if not (rm and tm) then return nil end
  local _, rcalls = replay.run(rm, "fp32", ev.inputs, rtaps)
  local _, tcalls = replay.run(tm, "fp32", ev.target_inputs or ev.inputs, ttaps)
  if not (rcalls and tcalls) then return nil end
  local function differs(r, t)
    return r and t and replay.is_float(r) and r:is_same_size(t) and core.metrics.rel_l2(t, r) > CUT.differs
  end
  for _, c in ipairs(inner) do
    local rc, tc = rcalls[c.reference] and rcalls[c.reference][1], tcalls[c.target] and tcalls[c.target][1]
    local r, t  -- its first floating input that differs (a traced layer may take its mask first)
    for i = 1, rc and tc and math.min(#rc.inputs, #tc.inputs) or 0 do
      if not r and differs(rc.inputs[i], tc.inputs[i]) then r, t = rc.inputs[i], tc.inputs[i] end
    end
    if r then
      local rel = core.metrics.rel_l2(t, r)
      if rel > CUT.differs then
        local td, rd = t:double(), r:double()
        local s, sresid = fit_scale(td, rd)
        if s and sresid < CUT.fits then return { child = c.path, what = "scale", value = s, rel = rel } end
        local alpha, aresid = fit_residual(td, rd, replay.stream_input(ev.inputs, t))
        if alpha and aresid < CUT.fits then return { child = c.path, what = "residual", value = alpha, rel = rel } end
        return nil
      end
    end
    -- a child that computes otherwise here (not clean after all): what follows is not glue
    if differs(rc and rc.outputs[1], tc and tc.outputs[1]) then return nil end
  end
  return nil
end

--- ||out - t|| in float64 (t's double `td`), or huge when out is missing or of another shape.
local function distance(out, t, td)
  return out and out:is_same_size(t) and (out:double() - td):norm():item() or math.huge
end

--- Golden-section search of f's minimum over [a, b] (f unimodal there), `n` steps.
local function golden(f, a, b, n)
  local g = (math.sqrt(5) - 1) / 2
  local c, d = b - g * (b - a), a + g * (b - a)
  local fc, fd = f(c), f(d)
  for _ = 1, n do
    if fc < fd then b, d, fd = d, c, fc; c = b - g * (b - a); fc = f(c)
    else a, c, fc = c, d, fd; d = a + g * (b - a); fd = f(d) end
  end
  if fc < fd then return c, fc end
  return d, fd
end

--- The fault's own children that put the attention scores' scale in q or k: its first two with
--- 2-D weights (HF's q_proj and k_proj, in the order they are defined) and those with a 1-D
--- weight as wide as one of them (a q/k norm: Olmo 2's), when it owns three projections or more;
--- none with two (a fused q/k/v and an output projection: scaling it scales v too). Also how many
--- projections it owns: none (a layer, whose projections are its children's) is no attention.
---@param model parity.Module the fault's module
---@return string[] paths its children's paths (relative to it)
---@return integer projections its own children with 2-D weights
function M.query_key(model)
  local lin, norms = {}, {}
  for _, info in ipairs(model:modules()) do
    if info.path ~= "" and not info.path:find(".", 1, true) then
      local ok, p = pcall(function() return model:child(info.path):parameters() end)
      local w = ok and p.weight
      if w and w:dim() == 2 then lin[#lin + 1] = { info.path, w:size(0) } end
      if w and w:dim() == 1 then norms[#norms + 1] = { info.path, w:size(0) } end
    end
  end
  if #lin < 3 then return {}, #lin end
  local out = { lin[1][1], lin[2][1] }
  for _, n in ipairs(norms) do
    if n[2] == lin[1][2] or n[2] == lin[2][2] then out[#out + 1] = n[1] end
  end
  return out, #lin
end

--- Temperature: the reference's fault changed so that its attention scores scale by tau, fitted
--- over tau in [1/64, 64] (a grid, then a golden section) against the target's output t. Tried
--- in turn: the parameters of each of M.query_key's children scaled by tau (a query or key
--- projection, or its norm, scales the scores by tau), then, for a fault that owns projections,
--- its input scaled by c and its output by 1/c (q, k and v all scale by c: the scores by tau =
--- c^2, exactly so for a fused q/k/v projection without biases and no norm inside). Returns
--- {child, tau, how (the change in words), resid} for the first whose fit leaves under CUTOFFS.exact of
--- ||t - r||, or nil. Parameters are restored whatever happens.
---@param ev parity.Evidence|nil
---@param fault parity.ComponentRow
---@param inside parity.Inside|nil
---@param t parity.Tensor|nil the target's fp32 output
---@return {child: string, tau: number, how: string, resid: number}|nil
function M.fit_temperature(ev, fault, inside, t)
  if not fp32_legs(ev, inside) or not t then return nil end
  local model = replay.fresh_module(inside.bundles.reference, "fp32", fault.reference)
  local x = replay.stream_input(ev.inputs, t)
  if not model then return nil end
  local td = t:double()
  local candidates = {}  -- {what, how(tau), err(log_tau), restore()}
  local qk, projections = M.query_key(model)
  for _, path in ipairs(qk) do
    local ok, params = pcall(function() return model:child(path):parameters() end)
    if ok and next(params) then
      local c = { path = fault.reference .. "." .. path }
      local orig = {}
      for k, p in pairs(params) do orig[k] = p:clone() end
      candidates[#candidates + 1] = { what = c.path, how = function(tau)
        return ("%s's parameters scaled by %.4g"):format(c.path, tau)
      end, err = function(log_tau)
        for k, p in pairs(params) do p:copy_(orig[k] * math.exp(log_tau)) end
        return distance((replay.run(model, "fp32", ev.inputs)), t, td)
      end, restore = function() for k, p in pairs(params) do p:copy_(orig[k]) end end }
    end
  end
  if x and projections >= 2 then
    candidates[#candidates + 1] = { what = "its input", how = function(tau)
      return ("its input scaled by %.4g and its output divided by it (q, k and v scaled alike)"):format(math.sqrt(tau))
    end, err = function(log_tau)
      local c, inputs = math.exp(log_tau / 2), {}
      for i, v in ipairs(ev.inputs) do inputs[i] = v == x and v * c or v end
      local out = replay.run(model, "fp32", inputs)
      return distance(out and out / c, t, td)
    end, restore = function() end }
  end
  for _, cand in ipairs(candidates) do
    local ok, base, best, best_err = pcall(function()
      local base = cand.err(0)
      local best, best_err = 0, base
      for i = -6, 6 do  -- tau = 2^i
        local e = cand.err(i * math.log(2))
        if e < best_err then best, best_err = i * math.log(2), e end
      end
      local lt, e = golden(cand.err, best - math.log(2), best + math.log(2), 24)
      if e < best_err then best, best_err = lt, e end
      return base, best, best_err
    end)
    cand.restore()
    if ok and base > 0 and best_err < CUT.exact * base and math.abs(best) > 1e-2 then  -- (a failed one: the next)
      return { child = cand.what, tau = math.exp(best), how = cand.how(math.exp(best)), resid = best_err / base }
    end
  end
  return nil
end

--- Grouped-query heads: the reference re-run with its query heads re-ordered (the rows of its
--- first projection, its output projection's columns alike) so that query head j meets kv head
--- j mod G, as when a port repeats the kv heads as a tile (repeat) where the reference
--- interleaves them (repeat_interleave). The projections are the reference fault's modules with
--- 2-D weights in the order modules() lists them (HF's attention: q, k, v, o): the first (q), the
--- next with fewer rows (k), the last taking q's width (o); head sizes tried from 256 down to 8.
--- Returns {heads, kv_heads, head_dim} when the re-run computes the target's to within
--- CUTOFFS.exact of ||t - r||, or nil.
---@param ev parity.Evidence|nil
---@param fault parity.ComponentRow
---@param inside parity.Inside|nil
---@param t parity.Tensor|nil the target's fp32 output
---@return {heads: integer, kv_heads: integer, head_dim: integer}|nil
function M.fit_kv_layout(ev, fault, inside, t)
  if not fp32_legs(ev, inside) or not t then return nil end
  local model = replay.fresh_module(inside.bundles.reference, "fp32", fault.reference)
  if not model then return nil end
  local lin = {}  -- the reference's own, mapped or not (a port's fused q/k/v maps none of them alone)
  for _, info in ipairs(model:modules()) do
    local ok, p = pcall(function() return info.path ~= "" and model:child(info.path):parameters() or {} end)
    if ok and p.weight and p.weight:dim() == 2 then lin[#lin + 1] = p end
  end
  local q, o, k = lin[1], lin[#lin], nil
  for i = 2, #lin - 1 do
    if not k and lin[i].weight:size(0) < q.weight:size(0) then k = lin[i] end
  end
  if not (k and o.weight:size(1) == q.weight:size(0)) then return nil end
  local qr, kr = q.weight:size(0), k.weight:size(0)
  local td = t:double()
  local function rerun() return distance((replay.run(model, "fp32", ev.inputs)), t, td) end
  local base = rerun()
  local orig = { qw = q.weight:clone(), qb = q.bias and q.bias:clone(), ow = o.weight:clone() }
  for _, d in ipairs({ 256, 128, 96, 80, 64, 32, 16, 8 }) do
    local h, g = qr / d, kr / d
    if h % 1 == 0 and g % 1 == 0 and h > g and h % g == 0 then
      local rep, src, idx = h / g, {}, {}
      for j = 0, h - 1 do src[(j % g) * rep + math.floor(j / g)] = j end  -- slot -> the query head it holds
      for slot = 0, h - 1 do
        for e = 0, d - 1 do idx[#idx + 1] = src[slot] * d + e end
      end
      local perm = torch.tensor(idx, { dtype = "int64" }):to(q.weight:device())
      local ok, e = pcall(function()
        q.weight:copy_(orig.qw:index_select(0, perm))
        if orig.qb then q.bias:copy_(orig.qb:index_select(0, perm)) end
        o.weight:copy_(orig.ow:index_select(1, perm))
        return rerun()
      end)
      e = ok and e or math.huge
      q.weight:copy_(orig.qw)
      if orig.qb then q.bias:copy_(orig.qb) end
      o.weight:copy_(orig.ow)
      if base > 0 and e < CUT.exact * base then return { heads = h, kv_heads = g, head_dim = d } end
    end
  end
  return nil
end

--- In words, what a temperature tau says when tau^2 or 1/tau^2 is an integer n (a head size):
--- tau = sqrt(n), a 1/sqrt(n) missing; tau = 1/sqrt(n), scores divided by n instead of sqrt(n).
---@param tau number
---@return string|nil
function M.temperature_hint(tau)
  for _, v in ipairs({ { tau * tau, "the 1/sqrt(%d) scale of the scores missing" },
                       { 1 / (tau * tau), "the scores divided by %d instead of sqrt(%d)" } }) do
    local n = math.floor(v[1] + 0.5)
    if n >= 2 and n <= 4096 and math.abs(v[1] - n) < 0.02 then
      return v[2]:format(n, n)
    end
  end
  return nil
end

return M
