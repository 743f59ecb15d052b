--- stage localize — stage 3 of the seeds: from the components' figures, the primary fault and
--- what kind of bug it looks like.
--- A component fails when its own added error does (R >= r_p95 at the low precision, or
--- R32 >= r32_p95 in fp32), or when it is consistently less precise than the reference (its rows,
--- judge.less_precise). A parent contains its children, so the faults are the failing components
--- none of whose descendants fail; the earliest in execution order is the primary fault, the
--- others are suspects ranked by how far off they are. In the accumulated view (whole-model
--- runs), the error either persists (a step) or an enclosing component that adds none itself is
--- back within the noise (a spike: reported as absorbed, not as a fault of the model's output;
--- never for a precision fault); a top-level fault is followed to the next component.
--- The cause comes from signatures, in this order, on the fault's outputs (fp32 when the target
--- has it) and re-runs of it (parity.signatures: those re-running both models in fp32):
---   precision   less precise at its rows, or fails only at the low precision (exact in fp32)
---   missing     a reference module with weights inside the fault has no counterpart, or the
---               target has it and never calls it (then reported at that module)
---   scale, residual  the fault's own code between clean children: at a child's input (glue)
---   mask        a position sees one the reference's cannot (or not one it can)
---   routing     experts get other tokens than the reference's, or other combination weights
---   epsilon     a norm whose output is the reference's with another eps: reports both eps
---   scale       t = c x r: reports c
---   residual    t = r + alpha x, x the component's input: a residual dropped (-1) or scaled
---   layout      a gated MLP's gate and up swapped (the activation fit's operand)
---   activation  another nonlinearity between its children (or of itself)
---   layout      kv heads repeated as a tile (the reference re-run with its q heads re-ordered)
---   scale       the attention scores' temperature (the reference re-run with q/k scaled)
---   position    no error at position 0, growing with position (RoPE theta or layout), or
---               full-sized from position 1 where no temperature fits (RoPE's layout)
---   formula     anything else
--- With no fault but a failing fp32 leg, a component whose input is off is the first divergence
--- (at its input). A static-check finding on the fault overrides them; components markedly more
--- precise than the reference are listed as over-precision (a warning).
local core = require("parity.core")

local M = { name = "localize", needs = { "scaffold", "e2e", "e2e32", "components" } }

local descends = require("parity.mapping").descends
local judge = require("parity.judge")
local replay = require("parity.replay")
local signatures = require("parity.signatures")
local thresholds = require("parity.thresholds")

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

local function dot(a, b) return (a * b):sum():item() end

--- The largest of a list of numbers (unpack would overflow LuaJIT's stack on long sequences).
local function largest(list)
  local m = -math.huge
  for _, x in ipairs(list) do m = math.max(m, x) end
  return m
end

--- t = c x r: c and how much of the difference the fit leaves (0: all explained).
function M.fit_scale(t, r)
  local rr = dot(r, r)
  if rr == 0 then return nil end
  local c = dot(t, r) / rr
  local diff = (t - r):norm():item()
  if diff == 0 then return nil end
  return c, (t - r * c):norm():item() / diff
end

--- A norm with another eps. Per row, y = w (x - c) / sqrt(s + eps) + b, with c the row's mean
--- (LayerNorm) or 0 (RMSNorm) and s the mean of (x - c)^2, so eps = ||x - c||^2 / ||(y - b) / w||^2 - s:
--- the median over rows for the reference's output and the target's. The scale is the weight w,
--- or 1 + w (Gemma's norms store the offset): whichever gives the reference one eps on every row.
--- Also how well one scalar per row explains the target's output from the reference's (0: exactly).
function M.fit_epsilon(x, r, t, weight, bias, layer_norm)
  local v = x:size(x:dim() - 1)
  local xs = x:double():reshape({ -1, v })
  if layer_norm then xs = xs - xs:mean({ -1 }, true) end
  local s = xs:pow(2):mean({ -1 })
  local xn = xs:pow(2):sum({ -1 })
  local function per_row(y, w)
    local keep = w:abs():gt(w:abs():max():item() * 1e-3)
    local yd = y:double():reshape({ -1, v })
    if bias then yd = yd - bias:double() end
    local u = (yd / w):masked_fill(keep:logical_not(), 0)
    local xk = xs:masked_fill(keep:logical_not(), 0)
    return xk:pow(2):sum({ -1 }) / u:pow(2):sum({ -1 }) - s * (xk:pow(2):sum({ -1 }) / xn)
  end
  local w = weight and weight:double() or torch.ones({ v }, { dtype = "float64" })
  if weight then
    local function spread(wv)
      local e = per_row(r, wv)
      local v = ((e - e:median()):abs():median():item()) / math.max(math.abs(e:median():item()), 1e-300)
      return v == v and v or math.huge  -- NaN: a weight of zeros (Gemma's initial offsets)
    end
    if spread(w + 1) < spread(w) then w = w + 1 end
  end
  local function eps_of(y) return per_row(y, w):median():item() end
  local rd, td = r:double():reshape({ -1, v }), t:double():reshape({ -1, v })
  if bias then rd, td = rd - bias:double(), td - bias:double() end
  local k = (rd:norm(2, { -1 }) / td:norm(2, { -1 })):unsqueeze(-1)
  local resid = (td - rd / k):norm():item() / math.max((td - rd):norm():item(), 1e-300)
  return eps_of(t), eps_of(r), resid
end

--- t = r + alpha x, with x the component's input (same shape as its output): a residual dropped
--- (alpha = -1), doubled (1) or scaled. Returns alpha and how much of t - r the fit leaves.
function M.fit_residual(t, r, x)
  if not x or not x:is_same_size(t) then return nil end
  local d, xd = t - r, x:double()
  local xx = (xd * xd):sum():item()
  local dn = d:norm():item()
  if xx == 0 or dn == 0 then return nil end
  local alpha = (d * xd):sum():item() / xx
  return alpha, (d - xd * alpha):norm():item() / dn
end

--- The size of a difference ([B, T, ...]) at each position (dim 1), as a list.
local function per_position(d)
  return d:double():transpose(0, 1):reshape({ d:size(1), -1 }):norm(2, { -1 }):tolist()
end

--- Error by position (dim 1 of a [B, T, ...] output): whether position 0 is exact, the share of
--- positions where the error keeps growing, and the error at position 1 relative to the largest.
--- A RoPE bug (theta, layout) is exact at position 0 (angle 0) and builds up with the angle; an
--- attention whose scores are scaled wrongly is exact at position 0 too (one key: softmax hides
--- any scale) but is off at full size from position 1 on.
function M.fit_position(t, r, tol)
  if t:dim() < 2 or t:size(1) < 3 then return nil end
  local err = per_position(t - r)
  local max = largest(err)
  if max == 0 then return nil end
  tol = tol or 1e-6
  local rising = 0
  for p = 2, #err do
    if err[p] >= err[p - 1] * 0.9 then rising = rising + 1 end
  end
  return err[1] <= tol * max, rising / (#err - 1), err[2] / max
end

--- x ([B, T, ...]) with position j changed: negated, or for token ids ([B, T] integers: a whole
--- model) another token (id - 1, or 1 for id 0).
local function change_position(x, j)
  local t, col = x:size(1), x:narrow(1, j, 1)
  local changed = x:dtype():find("int") and (col + col:eq(0):long() * 2 - 1) or -col
  return torch.cat({ x:narrow(1, 0, j), changed, x:narrow(1, j + 1, t - j - 1) }, 1)
end

--- How much each position of f(x)'s output moves when position j of x changes.
local function moved(f, inputs, base, j)
  local args = { change_position(inputs[1], j), unpack(inputs, 2) }
  local out = f(args)
  if not out or not out:is_same_size(base) then return nil end
  return per_position(out - base)
end

--- Which positions see which: position j of the first input (hidden states [B, T, H], or token
--- ids [B, T]) is changed (the first, middle and last) and every output position that moves sees it. Positions the reference's component
--- does not see (exactly unmoved) that the target's does are a leak (a future token, one outside
--- the window); the converse, a mask too tight. Nil when the component mixes no positions or
--- cannot re-run; else {leaks = n, hides = n, pairs = n tested, example = "position p sees j"}.
function M.fit_mask(run_reference, run_target, inputs)
  local x = inputs and inputs[1]
  local ids = x and x:dim() == 2 and x:dtype():find("int")
  if not (run_reference and run_target and x and (x:dim() == 3 or ids) and x:size(1) >= 3) then return nil end
  local r, t = run_reference(inputs), run_target(inputs)
  if not (r and t) or r:dim() < 2 or r:size(1) ~= x:size(1) then return nil end
  local n = x:size(1)
  local leaks, hides, tested, mixes, example = 0, 0, 0, false, nil
  for _, j in ipairs({ 0, math.floor(n / 2), n - 1 }) do
    local dr, dt = moved(run_reference, inputs, r, j), moved(run_target, inputs, t, j)
    if not (dr and dt) then return nil end
    local mr, mt = largest(dr), largest(dt)
    if mt == 0 then return nil end  -- a target that does not move at all is broken, not masked
    for p = 1, n do
      if p - 1 ~= j then
        -- seen: moved by more than 1% of the largest move; unseen: by less than 1e-5 (rounding
        -- where a kernel's blocking changes with the data, as an expert's does with its tokens)
        local sees_r, sees_t = dr[p] > 1e-2 * mr, dt[p] > 1e-2 * mt
        mixes, tested = mixes or sees_r, tested + 1
        if sees_t and dr[p] <= 1e-5 * mr then
          leaks = leaks + 1
          example = example or ("position %d sees position %d"):format(p - 1, j)
        elseif sees_r and dt[p] <= 1e-5 * mt then
          hides = hides + 1
          example = example or ("position %d does not see position %d"):format(p - 1, j)
        end
      end
    end
  end
  if not mixes then return nil end
  return { leaks = leaks, hides = hides, pairs = tested, example = example }
end

--- Nonlinearities an MLP may use, by the names transformers' configs give them.
M.ACTIVATIONS = {
  silu = function(x) return x * x:sigmoid() end,
  gelu = function(x) return x:gelu() end,
  gelu_tanh = function(x) return x:gelu({ approximate = "tanh" }) end,
  relu = function(x) return x:relu() end,
  relu2 = function(x) return x:relu():pow(2) end,
  quick_gelu = function(x) return x * (x * 1.702):sigmoid() end,
  sigmoid = function(x) return x:sigmoid() end,
  tanh = function(x) return x:tanh() end,
}

--- Nonlinearities of one family (GELU and its approximations): at the low precision they may not be told apart.
M.FAMILY = { gelu = "gelu", gelu_tanh = "gelu", quick_gelu = "gelu" }

--- The nonlinearity between a component's children, from their calls in execution order
--- ({inputs, outputs} each): a child's input y = f(g) (fc1 -> act -> fc2) or f(g) * u (a gated
--- MLP: g and u two children's outputs, or the halves of one's). Returns the best name, its
--- relative residual, the best residual of another family and the best of another name in its
--- own family, and its form ({child index, half}: which child's output, or which half of it (1,
--- 2), goes through the nonlinearity); nil when no such pair of children exists.
function M.fit_activation(children)
  for ci = #children, 2, -1 do
    local y = children[ci].inputs[1]
    local n = y and y:dim() >= 1 and y:size(y:dim() - 1)
    local forms, singles = {}, {}
    for pi = 1, ci - 1 do
      local o = children[pi].outputs[1]
      if n and o and o:dim() == y:dim() and o:numel() == y:numel() then singles[#singles + 1] = { o:double(), pi } end
      if n and o and o:dim() == y:dim() and o:numel() == 2 * y:numel() and o:size(o:dim() - 1) == 2 * n then
        local a, b = o:double():narrow(-1, 0, n), o:double():narrow(-1, n, n)
        forms[#forms + 1], forms[#forms + 2] = { a, b, id = { pi, 1 } }, { b, a, id = { pi, 2 } }
      end
    end
    for _, g in ipairs(singles) do
      forms[#forms + 1] = { g[1], id = { g[2] } }
      for _, u in ipairs(singles) do
        if u ~= g then forms[#forms + 1] = { g[1], u[1], id = { g[2] } } end
      end
    end
    local yd, resid, form_of = y and y:double(), {}, {}  -- name -> the best residual over the forms, and its form
    for _, form in ipairs(forms) do
      local g, u = form[1], form[2]
      if g:is_same_size(yd) then
        for name, f in pairs(M.ACTIVATIONS) do
          local fit = u and f(g) * u or f(g)
          local r = (fit - yd):norm():item() / math.max(yd:norm():item(), 1e-300)
          if r < (resid[name] or math.huge) then resid[name], form_of[name] = r, form.id end
        end
      end
    end
    local best
    for name, r in pairs(resid) do
      if not best or r < resid[best] or (r == resid[best] and name < best) then best = name end
    end
    if best then
      local other, kin = math.huge, math.huge
      for name, r in pairs(resid) do
        local same_family = (M.FAMILY[name] or name) == (M.FAMILY[best] or best)
        if same_family and name ~= best then kin = math.min(kin, r) end
        if not same_family then other = math.min(other, r) end
      end
      return best, resid[best], other, kin, form_of[best]
    end
  end
  return nil
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
--- low precision reroutes; nil when no child takes a subset.
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
    return M.fit_activation(calls)
  end
  local rn, rres, rsec, rkin, rform = fit("reference", ev.r32)
  local tn, tres, tsec, tkin, tform = fit("target", ev.t32 or ev.tlow)
  if not (rn and tn and rres < rtol and rres * 10 < rsec and tres < tol and tres * 10 < tsec) then return nil end
  -- the family's name where its members are not told apart (GELU's two forms in bf16)
  if rkin < 10 * rres or tkin < 10 * tres then rn, tn = M.FAMILY[rn] or rn, M.FAMILY[tn] or tn end
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
function M.cause(row, ev, th, extra)
  extra = extra or {}
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
  local glue = attempt(signatures.fit_glue, ev, row, extra.inside, M.fit_scale, M.fit_residual)
  if glue and glue.what == "scale" then
    return { class = "scale", detail = ("the input of %s is %.4g x the reference's: a factor the forward code between"
      .. " the components applies (or misses)"):format(glue.child, glue.value),
      parameter = { name = "scale", value = glue.value, at = glue.child } }
  elseif glue then
    return { class = "residual", detail = ("the input of %s is the reference's + %.4g x the input of %s: a residual %s"
      .. " there"):format(glue.child, glue.value, row.reference, residual_kind(glue.value)),
      parameter = { name = "alpha", value = glue.value, at = glue.child } }
  end
  local r
  t, r = t:double(), ev.r32:double()
  local mask = M.fit_mask(ev.run_reference, ev.run_target, ev.inputs)
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
    local e_t, e_ref, resid = M.fit_epsilon(ev.input, r, t, ev.params.weight, ev.params.bias,
      row.type:find("LayerNorm") ~= nil)
    if resid < 0.05 and e_t >= 0 and math.abs(e_t - e_ref) > 0.1 * math.max(math.abs(e_ref), 1e-12) then
      return { class = "epsilon", detail = ("a norm whose output is the reference's with eps %.3g instead of %.3g%s")
        :format(e_t, e_ref, ev.r32:dtype() == "float32" and "" or " (fitted at the low precision: rough)"),
        parameter = { name = "eps", value = e_t, reference = e_ref } }
    end
  end
  local c, resid = M.fit_scale(t, r)
  if c and resid < 0.05 then
    return { class = "scale", detail = ("the output is %.4g x the reference's"):format(c),
             parameter = { name = "scale", value = c } }
  end
  local alpha, aresid = M.fit_residual(t, r, replay.stream_input(ev.inputs, t) or ev.input)
  if alpha and aresid < 0.05 and math.abs(alpha) > 1e-3 then
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
  local zero_at_0, rising, at_1 = M.fit_position(t, r, ev.t32 and 1e-4 or 1e-6)
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

---@param ctx parity.Context
function M.run(ctx, got)
  local comp = got.components
  local kept = got.kept.components or {}  -- the failing components' evidence
  if not comp or comp.skipped then
    return { skipped = "no component figures" .. (comp and comp.skipped and (": " .. comp.skipped) or "") }
  end
  local th, rows = thresholds.at(ctx.thresholds, ctx.dtype), comp.components
  local failing = {}
  for _, row in ipairs(rows) do
    if judge.fails(row, th) then failing[#failing + 1] = row end
  end
  local faults = {}
  for _, row in ipairs(failing) do
    local inner = false
    for _, other in ipairs(failing) do
      if descends(other.reference, row.reference) then inner = true end
    end
    if not inner then faults[#faults + 1] = row end
  end
  -- over-precision: innermost components markedly closer to fp32 than the reference's own low
  -- precision (R < r_over, exact in fp32): an upcast the reference does not do; not a fault
  -- (not with the 2-tensor baseline: R < 1 there says closer than a perturbation, nothing about precision)
  local function precise(row) return row.r and row.r > 0 and row.r < th.r_over end
  local over = core.json.array()
  for _, row in ipairs(ctx.baseline == "2-tensor" and {} or rows) do
    local inner = false
    for _, other in ipairs(rows) do
      if precise(other) and descends(other.reference, row.reference) then inner = true end
    end
    if precise(row) and row.isolated and (row.r32 or 0) < th.r32_p95 and not inner then
      over[#over + 1] = { reference = row.reference, target = row.target, r = row.r,
        cause = { class = "over_precision", detail = ("R %.3g: more precise than the reference at the low precision"
          .. " (an extra upcast, or a fused kernel that rounds once)"):format(row.r) } }
    end
  end
  -- components that add no error themselves but enlarge what they inherit (components.role)
  local amplifiers = core.json.array()
  for _, row in ipairs(rows) do
    if row.role == "amplifier" then
      amplifiers[#amplifiers + 1] = { reference = row.reference, target = row.target,
        inherited = row.inherited_r32 or row.inherited_r, accumulated = row.acc_r32 or row.acc_r }
    end
  end
  -- modules with weights that the target has but never calls (components): no fault by themselves
  -- (a tied head computed from the embedding's weight), where a fault containing one parts
  local never_called = {}
  for _, row in ipairs(rows) do
    if row.never_called_by_target then never_called[#never_called + 1] = row end
  end
  -- the innermost components consistently less precise than the reference (e2e grants the
  -- precision-ordering exception only when there are none)
  local less = core.json.array()
  for _, row in ipairs(faults) do
    if judge.less_precise(row, th) then
      less[#less + 1] = { reference = row.reference, target = row.target, rows = row.rows_r.rows, p50 = row.rows_r.p50,
                          above = row.rows_r.above, z = row.rows_r.z }
    end
  end
  -- no component adds an error itself, yet one's input in the whole fp32 runs is off: the forward
  -- code between components (outside every mapped one) differs before it
  -- (only when the fp32 leg fails: a long model's reassociation may build up past r32_p95; in
  -- an fp32 check against the reassociation level, e2e is that leg)
  local e32, e = got.e2e32, got.e2e
  local fp32_fails = (e32 and not e32.skipped and e32.r32.p95 >= th.r32_p95)
    or (ctx.dtype == "fp32" and e and not e.skipped and e.r_ratio.p95 >= th.r_p95)
  local between = #faults == 0 and fp32_fails and kept.first_inherited
  local skipped_module = between and never_called[1]  -- a module the target has and never calls, before it
  if skipped_module then
    between = nil
    faults[1] = skipped_module
  end
  if between then
    local c, resid = nil, nil
    if between.t and between.r then c, resid = M.fit_scale(between.t:double(), between.r:double()) end
    local cause = (c and resid < signatures.FITS) and { class = "scale", detail = ("the input of %s is %.4g x the reference's, while"
        .. " no component before it adds an error of its own: a factor the forward code between components applies (or"
        .. " misses)"):format(between.reference, c), parameter = { name = "scale", value = c, at = between.reference } }
      or { class = "formula", detail = ("the input of %s differs from the reference's (%s %.3g), while no component"
        .. " before it adds an error of its own: the forward code between components"):format(between.reference,
          between.figure, between.ratio) }
    return { faults = 1, failing = #failing, suspects = {}, over_precision = over, amplifiers = amplifiers, less_precise = less,
      first_divergence = { reference = between.reference, target = between.target, type = between.type,
        r = core.json.null, r32 = core.json.null, pattern = "step", absorbed = false, at_input = true, cause = cause,
        evidence = { [between.figure == "R" and "inherited_r" or "inherited_r32"] = between.ratio, calls = between.call } } }
  end
  if #faults == 0 then
    return { faults = 0, failing = #failing, first_divergence = core.json.null, suspects = {}, over_precision = over,
             amplifiers = amplifiers, less_precise = less }
  end
  local primary = faults[1]
  -- step or spike, in the accumulated view: an error seen only at the low precision is followed
  -- at the low precision, others in fp32. Where the fault lies inside components, the innermost
  -- one whose output is back within the noise absorbed it (Gemma's post-feedforward norm inside
  -- the layer); an expert's sibling does not take its output, the MoE block does. A top-level
  -- fault is followed to the next component.
  local low_only = (primary.r32 == nil or primary.r32 < th.r32_p95) and primary.isolated ~= false
  local function carried(row)
    local v = low_only and row.acc_r or (row.acc_r32 or row.acc_r)
    return v, (low_only or not row.acc_r32) and th.r_p95 or th.r32_p95
  end
  local enclosing = {}
  for _, row in ipairs(rows) do
    if descends(primary.reference, row.reference) and not row.skipped and carried(row) then enclosing[#enclosing + 1] = row end
  end
  table.sort(enclosing, function(a, b) return a.depth > b.depth end)
  local after, absorbed
  if #enclosing > 0 then
    for _, row in ipairs(enclosing) do  -- one that adds an error, run on the reference's inputs, does not absorb it
      local v, limit = carried(row)
      if v < limit and row.isolated and not judge.fails(row, th) then after, absorbed = row, true break end
    end
    after = after or enclosing[#enclosing]  -- none absorbs it: carried to the outermost
  else
    for i, row in ipairs(rows) do
      if row == primary then
        for j = i + 1, #rows do
          if rows[j].depth <= primary.depth and not rows[j].skipped then after = rows[j] break end
        end
      end
    end
  end
  local value, limit = nil, nil
  if after then value, limit = carried(after) end
  if #enclosing == 0 then absorbed = value and value < limit end
  -- rounding error is noise, which no later operation undoes (a norm absorbs a scale, not noise):
  -- a component consistently less precise than the reference is a step wherever it is diluted
  if judge.less_precise(primary, th) then absorbed = false end
  local pattern = absorbed and "spike" or "step"
  local evidence = kept.evidence or {}
  -- a module the target lacks: one a given mapping declares so (target = false), or, mapped from
  -- the weights, one that nothing maps (a given mapping that leaves a module out says nothing)
  local lacks = comp.no_counterpart_reference
  if comp.mapping == "given" then
    lacks = {}
    for _, a in ipairs(comp.no_counterpart or {}) do
      for _, p in ipairs(a.reference) do lacks[#lacks + 1] = p end
    end
  end
  -- a module inside the fault that the target has and never calls is where it parts
  for _, row in ipairs(never_called) do
    if descends(row.reference, primary.reference) then primary = row break end
  end
  local cause = M.cause(primary, evidence[primary.reference], th,
    { inside = kept.inside, no_counterpart = lacks, unmapped_target = comp.unmapped_target, never_called = never_called })
  -- a weight the static check found transposed, reordered or scaled explains the fault best
  local scaffold = got.scaffold
  for _, f in ipairs(scaffold and scaffold.static or {}) do
    if f.class and (f.target == primary.target or descends(f.target, primary.target)) then
      cause = { class = f.class, detail = f.detail .. " (static weight check)",
                parameter = f.value and { name = "scale", value = f.value } or nil }
    end
  end
  local suspects = {}
  for _, row in ipairs(faults) do suspects[#suspects + 1] = row end
  table.sort(suspects, function(a, b)
    local ka, kb = a.r32 or a.r or 0, b.r32 or b.r or 0
    if ka ~= kb then return ka > kb end
    return a.reference < b.reference
  end)
  local list = {}
  for i, row in ipairs(suspects) do
    list[i] = { reference = row.reference, target = row.target, r = row.r or core.json.null, r32 = row.r32 or core.json.null }
  end
  return {
    faults = #faults, failing = #failing,
    first_divergence = {
      reference = primary.reference, target = primary.target, type = primary.type,
      r = primary.r or core.json.null, r32 = primary.r32 or core.json.null,
      pattern = pattern, absorbed = pattern == "spike",
      cause = cause,
      evidence = { followed_to = after and after.reference or core.json.null,
                   accumulated_after = value or core.json.null, calls = primary.calls,
                   rel_l2_32 = primary.rel_l2_32 or core.json.null },
    },
    suspects = list,
    over_precision = over,
    amplifiers = amplifiers,
    less_precise = less,
  }
end

--- A fault that the next operation absorbs (a spike) is reported, not failed.
function M.criteria(l)
  local f = l.first_divergence
  local real = f ~= core.json.null and not f.absorbed
  local over = l.over_precision or {}
  return { { name = "components", value = l.faults, threshold = 0, pass = not real,
             rule = "no component adds an error of its own (R < r_p95, R32 < r32_p95)" },
           { name = "over_precision", value = #over, threshold = 0, pass = #over == 0, warn = true,
             rule = "no component markedly more precise than the reference (R >= r_over)"
               .. (#over > 0 and (": " .. over[1].target .. ", R " .. ("%.3g"):format(over[1].r)) or "") } }
end

function M.summary(l)
  return { faults = l.faults, first_divergence = l.first_divergence, suspects = l.suspects, over_precision = l.over_precision }
end

return M
