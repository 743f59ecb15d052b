--- parity.fits — the elementary fits behind a fault's cause (parity.causes): a scale, a norm's
--- epsilon, a residual, an error that grows with position, a mask (which positions see which), a
--- nonlinearity. Each says how well it fits (a residual) so that the caller can tell a fit from
--- a coincidence.
local M = {}

local function dot(a, b) return (a * b):sum():item() end

--- The largest of a list of numbers (unpack would overflow LuaJIT's stack on long sequences).
local function largest(list)
  local m = -math.huge
  for _, x in ipairs(list) do m = math.max(m, x) end
  return m
end

--- t = c x r: c and how much of the difference the fit leaves (0: all explained).
---@param t parity.Tensor the target's output (float64)
---@param r parity.Tensor the reference's, same shape
---@return number|nil c nil when r is zero or t equals r
---@return number|nil resid ||t - c r|| / ||t - r||
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
---@param x parity.Tensor the norm's input [.., H]
---@param r parity.Tensor the reference's output, x's shape
---@param t parity.Tensor the target's output
---@param weight parity.Tensor|nil the norm's weight [H]
---@param bias parity.Tensor|nil its bias [H]
---@param layer_norm boolean a LayerNorm (rows centred), else an RMSNorm
---@return number eps_target
---@return number eps_reference
---@return number resid
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
---@param t parity.Tensor the target's output (float64)
---@param r parity.Tensor the reference's, same shape
---@param x parity.Tensor|nil the component's input
---@return number|nil alpha nil without an input of t's shape, or when x or t - r is zero
---@return number|nil resid ||t - r - alpha x|| / ||t - r||
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
---@param t parity.Tensor the target's output [B, T, ...]
---@param r parity.Tensor the reference's, same shape
---@param tol number|nil position 0 is exact at or below tol x the largest error (default 1e-6)
---@return boolean|nil zero_at_0 nil when there are under 3 positions or no error
---@return number rising the share of steps where the error keeps growing
---@return number at_1 the error at position 1 / the largest
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
---@param run_reference nil|fun(inputs: parity.Tensor[]): parity.Tensor|nil re-runs the reference's component
---@param run_target nil|fun(inputs: parity.Tensor[]): parity.Tensor|nil re-runs the target's
---@param inputs parity.Tensor[]|nil the captured inputs
---@return {leaks: integer, hides: integer, pairs: integer, example: string|nil}|nil
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
---@type table<string, fun(x: parity.Tensor): parity.Tensor>
M.ACTIVATIONS = {}
--- Each one's expression in x, as Lua source (a fitted patch writes it: parity.confirm).
---@type table<string, string>
M.ACTIVATION_CODE = {
  silu = "x * x:sigmoid()", gelu = "x:gelu()", gelu_tanh = 'x:gelu({ approximate = "tanh" })', relu = "x:relu()",
  relu2 = "x:relu():pow(2)", quick_gelu = "x * (x * 1.702):sigmoid()", sigmoid = "x:sigmoid()", tanh = "x:tanh()",
}
for name, code in pairs(M.ACTIVATION_CODE) do M.ACTIVATIONS[name] = assert(loadstring("return function(x) return " .. code .. " end"))() end

--- Nonlinearities of one family (GELU and its approximations): at the low precision they may not be told apart.
M.FAMILY = { gelu = "gelu", gelu_tanh = "gelu", quick_gelu = "gelu" }

--- The nonlinearity between a component's children, from their calls in execution order
--- ({inputs, outputs} each): a child's input y = f(g) (fc1 -> act -> fc2) or f(g) * u (a gated
--- MLP: g and u two children's outputs, or the halves of one's). Returns the best name, its
--- relative residual, the best residual of another family and the best of another name in its
--- own family, and its form ({child index, half}: which child's output, or which half of it (1,
--- 2), goes through the nonlinearity); nil when no such pair of children exists.
---@param children parity.TapCall[] the children's calls ({inputs, outputs}), in execution order
---@return string|nil name a key of M.ACTIVATIONS
---@return number resid
---@return number other the best residual of another family
---@return number kin the best of another name in its own family
---@return integer[] form {child index[, half]}
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

return M
