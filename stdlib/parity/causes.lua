--- parity.causes — what kind of bug a fault is, from its evidence (its captured outputs, its
--- inputs, a way to re-run it, the captures inside it): the signatures in the order localize's
--- header lists them, each fit by parity.fits or parity.signatures.
local criteria = require("parity.criteria")
local descends = require("parity.mapping").descends
local fits = require("parity.fits")
local judge = require("parity.judge")
local replay = require("parity.replay")
local signatures = require("parity.signatures")
local CUT = require("parity.thresholds").CUTOFFS

local M = {}
--- What kind of bug a divergence is: verdict.json's `cause` (docs/workflow.md lists the classes).
---@class parity.Cause
---@field class string "precision", "missing", "scale", "residual", "mask", "routing", "epsilon", ...
---@field detail string the cause in words
---@field parameter table|nil the fitted figure: {name, value[, reference][, at]...}
--- What some of M.cause's signatures need beyond the fault's own tensors (the localize stage's).
---@class parity.CauseExtra
---@field inside parity.Inside|nil the whole-model captures inside the failing components
---@field no_counterpart string[]|nil reference modules with weights that have no counterpart
---@field unmapped_target string[]|nil target modules with weights that nothing maps
---@field never_called parity.ComponentRow[]|nil components the target has and never calls

--- A signature that re-runs models: its answer, or nil when it fails (a model that cannot re-run
--- so, a device without room): the next signature decides, the check goes on.
local function attempt(f, ...)
  local ok, v = pcall(f, ...)
  return ok and v or nil
end

--- What a residual's fitted alpha says.
local function residual_kind(alpha)
  return math.abs(alpha + 1) < 0.05 and "dropped" or math.abs(alpha - 1) < 0.05 and "added twice" or "scaled"
end

--- Rows of `rows` ([n, h]) as indices of the equal rows of `flat` ([N, h]).
local function row_indices(rows, flat)
  local d = (rows:double():pow(2):sum({ -1 }, true) + flat:double():pow(2):sum({ -1 }):unsqueeze(0)
    - rows:double():matmul(flat:double():t()) * 2)
  return d:argmin(-1):tolist()
end

--- Routing: the fault's children (experts) that the reference and the target call on a subset of
--- the fault's tokens, re-run on the same inputs with the children tapped. Returns the fraction
--- of tokens whose set of experts differs, how many tokens, and the fraction the reference's own
--- low precision reroutes, and (the same experts everywhere, in fp32) how the combination weights
--- differ: {max_diff, sum_reference, sum_target}; nil when no child takes a subset.
---@param ev parity.Evidence
---@param fault parity.ComponentRow
---@param inside parity.Inside
---@return number|nil rerouted the fraction of tokens whose set of experts differs
---@return integer tokens
---@return number own the fraction the reference's own low precision reroutes
---@return {max_diff: number, sum_reference: number, sum_target: number}|nil combination
function M.fit_routing(ev, fault, inside)
  local x = ev.inputs and ev.inputs[1]
  if not (x and ev.isolated and x:dim() >= 2) then return nil end
  local h = x:size(x:dim() - 1)
  local flat = x:reshape({ -1, h })
  local tokens = flat:size(0)
  local ref_children, tgt_of = {}, {}
  for i, c in ipairs(signatures.inner_pairs(inside.pairs, fault)) do
    ref_children[i], tgt_of[c.reference] = c.reference, c.target
  end
  if #ref_children == 0 then return nil end
  local function assignment(b, dtype, path, children, translate)
    local model = replay.fresh_module(b, dtype, path)
    local taps = {}
    for i, c in ipairs(children) do taps[i] = translate and translate[c] or c end
    local out, calls = nil, nil
    if model then out, calls = replay.run(model, dtype, ev.inputs, taps) end
    if not calls then return nil end
    local sets = {}  -- child -> token -> true, for children given a subset of the tokens
    -- token -> the outputs [h] of the routed children that computed it, and of those on every token
    local rows, routed, shared = {}, {}, {}
    local function inner(c)  -- inside another called child (an expert's projections): not a term of the sum
      for _, other in ipairs(children) do
        if descends(c, other) and calls[translate and translate[other] or other] then return true end
      end
      return false
    end
    for _, c in ipairs(children) do
      for _, call in ipairs(calls[translate and translate[c] or c] or {}) do
        local y, o = call.inputs[1], call.outputs[1]
        if y and y:dim() == 2 and y:size(1) == h and y:size(0) < tokens then
          sets[c] = sets[c] or {}
          if y:size(0) > 0 then
            for j, i in ipairs(row_indices(y, flat)) do
              sets[c][i] = true
              if o and o:dim() == 2 and o:size(1) == h and not inner(c) then
                rows[i] = rows[i] or {}
                rows[i][#rows[i] + 1], routed[i] = o:select(0, j - 1), (routed[i] or 0) + 1
              end
            end
          end
        elseif o and o:numel() == tokens * h and o:size(o:dim() - 1) == h and not inner(c) then  -- every token's (a shared expert)
          local of = o:reshape({ tokens, h })
          for i = 0, tokens - 1 do
            shared[i] = shared[i] or {}
            shared[i][#shared[i] + 1] = of:select(0, i)
          end
        end
      end
    end
    for i = 0, tokens - 1 do  -- the routed first: their weights are the leading ones
      for _, o in ipairs(shared[i] or {}) do
        rows[i] = rows[i] or {}
        rows[i][#rows[i] + 1] = o
      end
    end
    return sets, { rows = rows, routed = routed }, out and out:numel() == tokens * h and out:reshape({ tokens, h }) or nil
  end
  -- each token's combination of what its experts computed: the least-squares weights of the
  -- block's output on their outputs (the routed experts' first, in the children's order)
  local function weights(r, y)
    local w = {}
    for i = 0, tokens - 1 do
      local list = r.rows[i]
      if not (list and y and #list > 0) then return nil end
      local a = torch.stack(list, 1):double()  -- [h, k]
      local ok, sol = pcall(function()
        return a:t():matmul(a):inverse():matmul(a:t()):matmul(y:select(0, i):double():unsqueeze(1)):squeeze(1)
      end)
      if not ok then return nil end
      w[i] = { sol = sol, routed = r.routed[i] or 0 }
    end
    return w
  end
  local rs, rrows, ry = assignment(inside.bundles.reference, inside.dtypes.reference, fault.reference, ref_children)
  local ts, trows, ty = assignment(inside.bundles.target, inside.dtypes.target, fault.target, ref_children, tgt_of)
  if not (rs and ts and next(rs)) then return nil end
  local function rerouted(other)
    local differ = 0
    for i = 0, tokens - 1 do
      for _, c in ipairs(ref_children) do
        if (rs[c] and rs[c][i] or false) ~= (other[c] and other[c][i] or false) then differ = differ + 1 break end
      end
    end
    return differ / tokens
  end
  -- what precision alone reroutes: the reference at the low precision on the same inputs
  local own = assignment(inside.bundles.reference_low, inside.dtypes.reference_low, fault.reference, ref_children)
  local moved = rerouted(ts)
  -- the same experts everywhere (in fp32): how far the combination weights differ, and what the
  -- routed experts' weights of a token sum to on each side (renormalised: 1)
  local combination
  if moved == 0 and inside.dtypes.target == "fp32" and inside.dtypes.reference == "fp32" then
    local okr, wr = pcall(weights, rrows, ry)
    local okt, wt = pcall(weights, trows, ty)
    if not (okr and okt) then wr, wt = nil, nil end
    if wr and wt then
      local diff, sr, st, n = 0, 0, 0, 0
      for i = 0, tokens - 1 do
        local a, b, k = wr[i].sol, wt[i].sol, wr[i].routed
        if a:is_same_size(b) and k == wt[i].routed and k > 0 then
          diff = math.max(diff, (a - b):abs():max():item())
          sr, st, n = sr + a:narrow(0, 0, k):sum():item(), st + b:narrow(0, 0, k):sum():item(), n + 1
        end
      end
      if n > 0 then combination = { max_diff = diff, sum_reference = sr / n, sum_target = st / n } end
    end
  end
  return moved, tokens, own and rerouted(own) or 0, combination
end

--- The calls (call k) of the captured components inside `root`, in execution order.
--- Also, per call, the reference modules it computes (a target's fused projection: several).
local function children(inside, side, root, k)
  local out, refs = {}, {}
  for _, pair in ipairs(inside.pairs) do
    for _, p in ipairs(side == "reference" and pair.reference or { pair.target }) do
      local c = descends(p, root) and inside[side][p]
      if c and c[k] then out[#out + 1], refs[#out + 1] = c[k], side == "reference" and { p } or pair.reference end
    end
  end
  return out, refs
end

--- The nonlinearity each model computes inside the fault (between its children, or the fault's
--- own input -> output when it has none: an activation module), when both fit one well and
--- they differ.
local function activation(fault, ev, inside)
  local function tolerance(dtype) return dtype == "fp32" and 1e-4 or 3e-2 end  -- a fit at the rounding of its dtype
  local tol, rtol = tolerance(inside.dtypes.target), tolerance(inside.dtypes.reference)
  local refs = {}
  local function fit(side, output)
    local calls
    calls, refs[side] = children(inside, side, side == "reference" and fault.reference or fault.target, ev.call)
    if #calls == 0 and ev.isolated and ev.input and output then calls = { { outputs = { ev.input } }, { inputs = { output } } } end
    return fits.fit_activation(calls)
  end
  local rn, rres, rsec, rkin, rform = fit("reference", ev.r32)
  local tn, tres, tsec, tkin, tform = fit("target", ev.t32 or ev.tlow)
  if not (rn and tn and rres < rtol and rres * 10 < rsec and tres < tol and tres * 10 < tsec) then return nil end
  -- the family's name where its members are not told apart (GELU's two forms in bf16)
  if rkin < 10 * rres or tkin < 10 * tres then rn, tn = fits.FAMILY[rn] or rn, fits.FAMILY[tn] or tn end
  if rn ~= tn then return tn, rn, tres end
  -- the same nonlinearity on another operand: the reference module whose output each gates (a
  -- target's fused gate/up projection computes the reference's two: the half says which)
  local function gated(side, form)
    local r = refs[side] and refs[side][form[1]]
    if not r then return nil end
    if #r > 1 then return form[2] and r[form[2]] or nil end  -- a fused target projection: the half is a module
    return r[1] .. (form[2] and ({ " (its first half)", " (its second half)" })[form[2]] or "")
  end
  local tg, rg = gated("target", tform), gated("reference", rform)
  if tg and rg and tg ~= rg then return nil, nil, tres, { target = tg, reference = rg, name = tn } end
end

--- The cause of a fault from its evidence (captured tensors) and figures. `extra` carries what
--- some signatures need beyond the fault's own tensors: the captures inside failing components
--- (`inside`) and the reference modules with weights that have no counterpart (`no_counterpart`).
---@param row parity.ComponentRow the fault's row
---@param ev parity.Evidence|nil its evidence (the components stage's, kept)
---@param th parity.Thresholds the thresholds as they apply
---@param extra parity.CauseExtra|nil
---@return parity.Cause
function M.cause(row, ev, th, extra)
  extra, th = extra or {}, criteria.for_component(th, row)
  -- (without an fp32 leg, rows above the noise may be another computation too: the other signatures say)
  local fp32_exact = row.r32 and row.r32 < th.r32_p95
  if fp32_exact and judge.less_precise(row, th) then
    local q = row.rows_r
    return { class = "precision", detail = ("exact in fp32 (R32 %.3g) but consistently less precise than the reference:"
      .. " R > 1 at %.0f%% of the %d rows it does not compute as the reference does (p50 %.3g, sign test z %.1f): an"
      .. " operation computed at a lower precision (e.g. a variance in the input dtype, without an fp32 upcast)"):format(
        row.r32, 100 * q.above, math.floor(q.rows * (1 - q.ties) + 0.5), q.p50, q.z),
      parameter = { name = "row_r_p50", value = q.p50 } }
  end
  if fp32_exact and (row.r or 0) >= th.r_p95 then  -- without an fp32 leg: unknown
    return { class = "precision", detail = ("exact in fp32 (R32 %.3g), R %.3g at the low precision: an operation"
      .. " computed at a lower precision or in another order"):format(row.r32 or 0, row.r) }
  end
  -- (not when a target module with weights under the fault is unmapped too: then a weight was
  -- converted into something else, which is no missing component)
  local unmatched_target = false
  for _, p in ipairs(extra.unmapped_target or {}) do
    unmatched_target = unmatched_target or p == row.target or descends(p, row.target)
  end
  for _, p in ipairs(unmatched_target and {} or extra.no_counterpart or {}) do
    if p == row.reference or descends(p, row.reference) then
      return { class = "missing", detail = ("%s has no counterpart in the target: a component the port lacks"):format(p) }
    end
  end
  for _, p in ipairs(extra.never_called or {}) do
    if p.reference == row.reference or descends(p.reference, row.reference) then
      return { class = "missing", detail = ("the target has %s (with its weights) but its forward never calls it: a"
        .. " component the port skips"):format(p.target) }
    end
  end
  local t = ev and (ev.t32 or ev.tlow)
  if not t then return { class = "formula", detail = "no output to fit a signature on" } end
  -- the fault's own code between children that compute as the reference's do
  local glue = attempt(signatures.fit_glue, ev, row, extra.inside, fits.fit_scale, fits.fit_residual)
  if glue and glue.what == "scale" then
    return { class = "scale", detail = ("the input of %s is %.4g x the reference's: a factor the forward code between"
      .. " the components applies (or misses)"):format(glue.child, glue.value),
      parameter = { name = "scale", value = glue.value, at = glue.child } }
  elseif glue then
    return { class = "residual", detail = ("the input of %s is the reference's + %.4g x the input of %s: a residual %s"
      .. " there"):format(glue.child, glue.value, row.reference, residual_kind(glue.value)),
      parameter = { name = "alpha", value = glue.value, at = glue.child } }
  end
  if not ev.r32 then return nil end  -- a concat pair one of whose reference paths lacks this call
  local r
  t, r = t:double(), ev.r32:double()
  local mask = fits.fit_mask(ev.run_reference, ev.run_target, ev.inputs)
  if mask and mask.leaks + mask.hides > 0 then
    return { class = "mask", detail = ("%s where the reference's does not (%d of %d position pairs tested see"
      .. " differently): %s"):format(mask.example, mask.leaks + mask.hides, mask.pairs,
        mask.leaks > 0 and "future or out-of-window positions leak in" or "the mask hides positions the reference sees"),
      parameter = { name = "position_pairs", value = mask.leaks + mask.hides } }
  end
  local inside = extra.inside
  local routed, tokens, own, combination = nil, nil, nil, nil
  if inside then routed, tokens, own, combination = M.fit_routing(ev, row, inside) end
  -- the same experts, combined with other weights (fp32: 1e-3 is far above its reassociation)
  if combination and combination.max_diff > 1e-3 then
    return { class = "routing", detail = ("every token goes to the reference's experts, combined with other weights (up"
      .. " to %.3g apart; a token's routed weights sum to %.3g where the reference's sum to %.3g: top-k weights"
      .. " renormalised, or not, against the reference)"):format(combination.max_diff, combination.sum_target,
        combination.sum_reference), parameter = { name = "weights_sum", value = combination.sum_target,
        reference = combination.sum_reference } }
  end
  -- more than precision alone reroutes (near-tie router scores flip at the low precision)
  if routed and routed > 2 * own and routed * tokens >= 1 then
    return { class = "routing", detail = ("%.0f%% of %d tokens go to another set of experts than the reference's"
      .. " (its own low precision: %.0f%%)"):format(100 * routed, tokens, 100 * own),
      parameter = { name = "tokens_rerouted", value = routed } }
  end
  if row.type:lower():find("norm") and ev.input then
    local e_t, e_ref, resid = fits.fit_epsilon(ev.input, r, t, ev.params.weight, ev.params.bias,
      row.type:find("LayerNorm") ~= nil)
    if resid < CUT.fits and e_t >= 0 and math.abs(e_t - e_ref) > 0.1 * math.max(math.abs(e_ref), 1e-12) then
      return { class = "epsilon", detail = ("a norm whose output is the reference's with eps %.3g instead of %.3g%s")
        :format(e_t, e_ref, ev.r32:dtype() == "float32" and "" or " (fitted at the low precision: rough)"),
        parameter = { name = "eps", value = e_t, reference = e_ref } }
    end
  end
  local c, resid = fits.fit_scale(t, r)
  if c and resid < CUT.fits then
    return { class = "scale", detail = ("the output is %.4g x the reference's"):format(c),
             parameter = { name = "scale", value = c } }
  end
  local alpha, aresid = fits.fit_residual(t, r, replay.stream_input(ev.inputs, t) or ev.input)
  if alpha and aresid < CUT.fits and math.abs(alpha) > 1e-3 then
    return { class = "residual", detail = ("the output is the reference's + %.4g x the input: a residual %s"):format(
      alpha, residual_kind(alpha)), parameter = { name = "alpha", value = alpha } }
  end
  local act, ref_act, fit, swapped = nil, nil, nil, nil
  if inside then act, ref_act, fit, swapped = activation(row, ev, inside) end
  if swapped then
    return { class = "layout", detail = ("%s is applied to what the reference's %s computes, where the reference"
      .. " applies it to %s's (fits to %.1e): a gated MLP's gate and up swapped"):format(swapped.name, swapped.target,
        swapped.reference, fit),
      parameter = { name = "gated", value = swapped.target, reference = swapped.reference } }
  end
  if act then
    return { class = "activation", detail = ("the nonlinearity is %s where the reference's is %s (fits to %.1e)"):format(
      act, ref_act, fit), parameter = { name = "activation", value = act, reference = ref_act } }
  end
  local kv = attempt(signatures.fit_kv_layout, ev, row, inside, ev.t32)
  if kv then
    return { class = "layout", detail = ("query head j meets kv head j mod %d where the reference's meets j // %d (%d"
      .. " heads, %d kv heads of %d): the kv heads repeated as a tile, not interleaved"):format(kv.kv_heads,
        kv.heads / kv.kv_heads, kv.heads, kv.kv_heads, kv.head_dim),
      parameter = { name = "kv_heads", value = kv.kv_heads, heads = kv.heads, head_dim = kv.head_dim } }
  end
  local temp = attempt(signatures.fit_temperature, ev, row, inside, ev.t32)
  if temp then
    local hint = signatures.temperature_hint(temp.tau)
    return { class = "scale", detail = ("the attention scores are %.4g x the reference's (a temperature: the reference"
      .. " with %s computes the target's%s)"):format(temp.tau, temp.how, hint and (": " .. hint) or ""),
      parameter = { name = "score_scale", value = temp.tau, at = temp.child } }
  end
  -- "no error" at position 0: in fp32, within a port's float reassociation (a fused q/k/v gives
  -- 2e-5 of the largest error there); at the low precision, exactly
  local zero_at_0, rising, at_1 = fits.fit_position(t, r, ev.t32 and 1e-4 or 1e-6)
  if zero_at_0 and rising >= 0.6 and at_1 <= 0.4 then
    return { class = "position", detail = ("no error at position 0, growing with position (%.0f%% of steps):"
      .. " RoPE theta or layout"):format(100 * rising) }
  end
  if zero_at_0 and not signatures.can_rerun(ev, inside) then  -- no temperature could be tried
    return { class = "formula", detail = ("exact at position 0, %.0f%% of the largest error already at position 1:"
      .. " in how positions are mixed (RoPE's layout, the scores' scale or the softmax)"):format(100 * at_1) }
  end
  if zero_at_0 then  -- what depends on the position, off at once (no temperature of the scores fits)
    return { class = "position", detail = ("exact at position 0, %.0f%% of the largest error already at position 1,"
      .. " and no scale of the attention scores explains it: which dimensions RoPE rotates together (its"
      .. " layout: interleaved pairs for halves) or its frequencies"):format(100 * at_1) }
  end
  return { class = "formula", detail = "no signature fits: a different computation" }
end

return M
