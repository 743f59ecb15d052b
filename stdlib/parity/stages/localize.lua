--- stage localize — stage 3 of the seeds: from the components' figures, the primary fault and
--- what kind of bug it looks like.
--- A component fails when its own added error does (R >= r_p95 at the low precision, or
--- R32 >= r32_p95 in fp32). A parent contains its children, so the faults are the failing
--- components none of whose descendants fail; the earliest in execution order is the primary
--- fault, the others are suspects ranked by how far off they are. In the accumulated view (whole-
--- model runs), the error either persists after the fault (a step) or the next operation absorbs
--- it (a spike: reported as absorbed, not as a fault of the model's output).
--- The cause comes from signatures fitted on the fault's fp32 output against the reference's:
---   precision  fails only at the low precision (exact in fp32)
---   scale      t = c x r: reports c
---   epsilon    a norm whose output is the reference's with another eps: reports both eps
---   position   no error at position 0, growing with position (RoPE theta or layout)
---   residual   t = r + alpha x, x the component's input: a residual dropped (-1) or scaled
---   formula    anything else
local core = require("parity.core")

local M = { name = "localize" }

--- A component fails on its own figures when it ran on the reference's inputs; one whose inputs
--- differ (isolated = false) is judged on the accumulated view: its output in the whole-model
--- run, fp32 when the target has it.
local function fails(row, th)
  if row.skipped then return false end
  if row.isolated == false then
    if row.acc_r32 then return row.acc_r32 >= th.r32_p95 end
    return (row.acc_r or 0) >= th.r_p95
  end
  return (row.r or 0) >= th.r_p95 or (row.r32 or 0) >= th.r32_p95
end

--- Whether `path` lies inside the module at `ancestor` (a dotted-path prefix).
function M.descends(path, ancestor) return path:sub(1, #ancestor + 1) == ancestor .. "." end
local descends = M.descends

local function dot(a, b) return (a * b):sum():item() end

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
--- the median over rows for the reference's output and the target's. Also how well one scalar
--- per row explains the target's output from the reference's (0: exactly).
function M.fit_epsilon(x, r, t, weight, bias, layer_norm)
  local v = x:size(x:dim() - 1)
  local xs = x:double():reshape({ -1, v })
  if layer_norm then xs = xs - xs:mean({ -1 }, true) end
  local s = xs:pow(2):mean({ -1 })
  local xn = xs:pow(2):sum({ -1 })
  local w = weight and weight:double() or torch.ones({ v }, { dtype = "float64" })
  local keep = w:abs():gt(w:abs():max():item() * 1e-3)
  local function eps_of(y)
    local yd = y:double():reshape({ -1, v })
    if bias then yd = yd - bias:double() end
    local u = (yd / w):masked_fill(keep:logical_not(), 0)
    local xk = xs:masked_fill(keep:logical_not(), 0)
    local e = xk:pow(2):sum({ -1 }) / u:pow(2):sum({ -1 }) - s * (xk:pow(2):sum({ -1 }) / xn)
    return e:median():item()
  end
  local rd, td = r:double():reshape({ -1, v }), t:double():reshape({ -1, v })
  if bias then rd, td = rd - bias:double(), td - bias:double() end
  local k = (rd:norm(2, { -1 }) / td:norm(2, { -1 })):unsqueeze(-1)
  local resid = (td - rd / k):norm():item() / math.max((td - rd):norm():item(), 1e-300)
  return eps_of(t), eps_of(r), resid
end

--- t = r + alpha x, with x the component's input (same shape as its output): a residual dropped
--- (alpha = -1), doubled (1) or scaled. Returns alpha and how much of t - r the fit leaves.
function M.fit_residual(t, r, x)
  if not x or table.concat(x:size(), ",") ~= table.concat(t:size(), ",") then return nil end
  local d, xd = t - r, x:double()
  local xx = (xd * xd):sum():item()
  local dn = d:norm():item()
  if xx == 0 or dn == 0 then return nil end
  local alpha = (d * xd):sum():item() / xx
  return alpha, (d - xd * alpha):norm():item() / dn
end

--- Error by position (dim 1 of a [B, T, ...] output): whether position 0 is exact, the share of
--- positions where the error keeps growing, and the error at position 1 relative to the largest.
--- A RoPE bug (theta, layout) is exact at position 0 (angle 0) and builds up with the angle; an
--- attention whose scores are scaled wrongly is exact at position 0 too (one key: softmax hides
--- any scale) but is off at full size from position 1 on.
function M.fit_position(t, r)
  if t:dim() < 2 or t:size(1) < 3 then return nil end
  local err = (t - r):double():transpose(0, 1):reshape({ t:size(1), -1 }):norm(2, { -1 }):tolist()
  local max = math.max(unpack(err))
  if max == 0 then return nil end
  local rising = 0
  for p = 2, #err do
    if err[p] >= err[p - 1] * 0.9 then rising = rising + 1 end
  end
  return err[1] <= 1e-6 * max, rising / (#err - 1), err[2] / max
end

--- The cause of a fault from its evidence (captured tensors) and figures.
function M.cause(row, ev, th)
  if (row.r32 or 0) < th.r32_p95 and (row.r or 0) >= th.r_p95 then
    return { class = "precision", detail = ("exact in fp32 (R32 %.3g), R %.3g at the low precision: an operation"
      .. " computed at a lower precision or in another order"):format(row.r32 or 0, row.r) }
  end
  local t = ev and (ev.t32 or ev.tlow)
  if not t then return { class = "formula", detail = "no output to fit a signature on" } end
  t, r = t:double(), ev.r32:double()
  if row.type:lower():find("norm") and ev.input then
    local e_t, e_ref, resid = M.fit_epsilon(ev.input, r, t, ev.params.weight, ev.params.bias,
      row.type:find("LayerNorm") ~= nil)
    if resid < 0.05 and e_t >= 0 and math.abs(e_t - e_ref) > 0.1 * math.max(math.abs(e_ref), 1e-12) then
      return { class = "epsilon", detail = ("a norm whose output is the reference's with eps %.3g instead of %.3g")
        :format(e_t, e_ref), parameter = { name = "eps", value = e_t, reference = e_ref } }
    end
  end
  local c, resid = M.fit_scale(t, r)
  if c and resid < 0.05 then
    return { class = "scale", detail = ("the output is %.4g x the reference's"):format(c),
             parameter = { name = "scale", value = c } }
  end
  local alpha, aresid = M.fit_residual(t, r, ev.input)
  if alpha and aresid < 0.05 and math.abs(alpha) > 1e-3 then
    local what = math.abs(alpha + 1) < 0.05 and "dropped" or math.abs(alpha - 1) < 0.05 and "added twice" or "scaled"
    return { class = "residual", detail = ("the output is the reference's + %.4g x the input: a residual %s"):format(
      alpha, what), parameter = { name = "alpha", value = alpha } }
  end
  local zero_at_0, rising, at_1 = M.fit_position(t, r)
  if zero_at_0 and rising >= 0.6 and at_1 <= 0.4 then
    return { class = "position", detail = ("no error at position 0, growing with position (%.0f%% of steps):"
      .. " RoPE theta or layout"):format(100 * rising) }
  end
  if zero_at_0 then
    return { class = "formula", detail = ("exact at position 0, %.0f%% of the largest error already at position 1:"
      .. " in how positions are mixed (the attention scores' scale, the softmax), not in RoPE"):format(100 * at_1) }
  end
  return { class = "formula", detail = "no signature fits: a different computation" }
end

---@param ctx parity.Context
function M.run(ctx)
  local comp = ctx.results.components
  if not comp or comp.skipped then
    return { skipped = "no component figures" .. (comp and comp.skipped and (": " .. comp.skipped) or "") }
  end
  local th, rows = ctx.thresholds, comp.components
  local failing = {}
  for _, row in ipairs(rows) do
    if fails(row, th) then failing[#failing + 1] = row end
  end
  local faults = {}
  for _, row in ipairs(failing) do
    local inner = false
    for _, other in ipairs(failing) do
      if descends(other.reference, row.reference) then inner = true end
    end
    if not inner then faults[#faults + 1] = row end
  end
  if #faults == 0 then return { faults = 0, failing = #failing, first_divergence = core.json.null, suspects = {} } end
  local primary = faults[1]
  -- step or spike: the accumulated error at the next component outside the fault
  local after
  for i, row in ipairs(rows) do
    if row == primary then
      for j = i + 1, #rows do
        if rows[j].depth <= primary.depth and not rows[j].skipped then after = rows[j] break end
      end
    end
  end
  -- an error seen only at the low precision is followed at the low precision, others in fp32
  local low_only = (primary.r32 or 0) < th.r32_p95 and primary.isolated ~= false
  local carried = after and (low_only and after.acc_r or (after.acc_r32 or after.acc_r))
  local limit = after and ((low_only or not after.acc_r32) and th.r_p95 or th.r32_p95)
  local pattern = (carried and carried < limit) and "spike" or "step"
  local evidence = ctx.memo.evidence or {}
  local cause = M.cause(primary, evidence[primary.reference], th)
  -- a weight the static check found transposed, reordered or scaled explains the fault best
  local scaffold = ctx.results.scaffold
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
      evidence = { next_component = after and after.reference or core.json.null,
                   accumulated_after = carried or core.json.null, calls = primary.calls,
                   rel_l2_32 = primary.rel_l2_32 or core.json.null },
    },
    suspects = list,
  }
end

--- A fault that the next operation absorbs (a spike) is reported, not failed.
function M.criteria(l)
  local f = l.first_divergence
  local real = f ~= core.json.null and not f.absorbed
  return { { name = "components", value = l.faults, threshold = 0, pass = not real,
             rule = "no component adds an error of its own (R < r_p95, R32 < r32_p95)" } }
end

function M.summary(l)
  return { faults = l.faults, first_divergence = l.first_divergence, suspects = l.suspects }
end

function M.lines(l)
  local f = l.first_divergence
  if f == core.json.null then return { "components: every one adds no error of its own" } end
  return { ("first divergence: %s (%s), R %s, R32 %s, %s%s: %s: %s"):format(f.reference, f.type,
    f.r == core.json.null and "-" or ("%.3g"):format(f.r), f.r32 == core.json.null and "-" or ("%.3g"):format(f.r32),
    f.pattern, f.absorbed and " (absorbed by the next operation)" or "", f.cause.class, f.cause.detail) }
end

return M
