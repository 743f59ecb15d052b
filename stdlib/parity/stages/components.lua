--- stage components — stage 2 of the seeds: every mapped component on the same real inputs.
--- One tapped forward of the fp32 reference on the check's sequences captures each component's
--- inputs; then, per component and call, the reference's component at fp32 and at the low
--- precision and the target's at the low precision (and fp32 when it has it) run on those inputs:
---   R = ||t - r32|| / ||r_low - r32||, R32 = ||t32 - r32|| / ||r_low - r32||
--- measure what each component adds itself, whatever it would have inherited. Tapped forwards of
--- the reference at the low precision and of the target give the accumulated view: the same
--- ratios on the outputs of whole-model runs, which show whether an error persists (a step) or
--- the next operation absorbs it (a spike).
---
--- Mapping: identical trees map by identity (a component's path and type in both models).
--- Differently structured trees need a mapping, which does not exist yet: the stage is skipped,
--- and says so.
local core = require("parity.core")
local m = core.metrics

local M = { name = "components" }

local function is_float(t) return t:dtype():find("float") ~= nil end

local function cast(list, dtype)
  local out = {}
  for i, t in ipairs(list) do out[i] = is_float(t) and t:to(dtype) or t end
  return out
end

--- The tensors of a forward's output, tuples flattened, in order.
local function tensors(v, out)
  out = out or {}
  if torch.is_tensor(v) then
    out[#out + 1] = v
  elseif type(v) == "table" then
    for _, x in ipairs(v) do tensors(x, out) end
  end
  return out
end

--- Rebuilds a call's arguments from the flat captured tensors using the forward's schema:
--- "Tensor" takes one, "Tuple[Tensor, ...]" as many as it names. Nil when they do not fit.
local function arguments(schema, flat)
  local args, k = {}, 1
  for _, a in ipairs(schema.arguments) do
    local n = select(2, a.type:gsub("Tensor", ""))
    if a.type == "Tensor" then
      args[#args + 1], k = flat[k], k + 1
    elseif a.type:find("^Tuple%[") and n > 0 then
      local tup = {}
      for j = 1, n do tup[j] = flat[k + j - 1] end
      args[#args + 1], k = tup, k + n
    else
      return nil, ("argument %s is %s"):format(a.name, a.type)
    end
  end
  if k - 1 ~= #flat then return nil, ("%d captured inputs for %d in the schema"):format(#flat, k - 1) end
  return args
end

--- Components both models have, in the reference's execution order, or nil and why not.
function M.identity_mapping(ref_modules, target_modules)
  local target_type = {}
  for _, info in ipairs(target_modules) do target_type[info.path] = info.type end
  local pairs_, missing = {}, {}
  for _, info in ipairs(ref_modules) do
    if info.path ~= "" then
      if target_type[info.path] == info.type then
        pairs_[#pairs_ + 1] = { reference = info.path, target = info.path, type = info.type, depth = info.depth }
      else
        missing[#missing + 1] = info.path
      end
    end
  end
  if #missing > 0 then
    return nil, ("the module trees differ (%d reference modules, e.g. '%s', have no same-named target module of the"
      .. " same type): a mapping is needed, and automatic mapping of differently structured trees is not"
      .. " implemented yet"):format(#missing, missing[1])
  end
  return pairs_
end

--- The 3-tensor ratio of whole tensors; a component whose low precision is exact (an integer
--- lookup, a copy) has no noise to measure against: exact is 0, anything else infinite.
local function ratio(t, r32, rlow)
  if not (t and r32 and rlow) then return nil end
  local r, num, den = m.r_ratio(t:float(), r32:float(), rlow:float(), 0)
  if den == 0 then return num == 0 and 0 or math.huge end
  return r
end

--- Runs a freshly loaded, tapped model once on the sequences; returns path -> calls and the
--- seconds the forward took.
local function tapped_run(file, paths, sequences)
  local model = core.load(file)
  model:tap(paths)
  local t0 = core.clock()
  local _, calls = model:run_tapped({ sequences })
  return calls, core.clock() - t0
end

---@param ctx parity.Context
function M.run(ctx)
  local ref, target, dtype = ctx.reference, ctx.target, ctx.dtype
  local mapping, why = M.identity_mapping(ref:at("fp32"):modules(), target:at(dtype):modules())
  if not mapping then return { skipped = why } end
  local paths = {}
  for _, pair in ipairs(mapping) do paths[#paths + 1] = pair.reference end
  local seqs = ctx:reference_outputs().sequences
  local has32 = target:has("fp32")
  local t0 = core.clock()
  local r32_calls, forward_s = tapped_run(ref.files.fp32, paths, seqs)
  local cap = {
    r32 = r32_calls,
    rlow = tapped_run(ref.files[dtype], paths, seqs),
    tlow = tapped_run(target.files[dtype], paths, seqs),
    t32 = has32 and tapped_run(target.files.fp32, paths, seqs) or nil,
  }
  local rows = {}
  for _, pair in ipairs(mapping) do
    local calls = cap.r32[pair.reference]
    local row = { reference = pair.reference, target = pair.target, type = pair.type, depth = pair.depth,
                  calls = calls and #calls or 0 }
    rows[#rows + 1] = row
    if not calls then
      row.skipped = "never called"
    else
      local children = { r32 = ref:at("fp32"):child(pair.reference), rlow = ref:at(dtype):child(pair.reference),
                         tlow = target:at(dtype):child(pair.target),
                         t32 = has32 and target:at("fp32"):child(pair.target) or nil }
      local schema = children.r32:schema()
      for k, call in ipairs(calls) do
        local args, bad = arguments(schema, call.inputs)
        if not args then
          row.skipped = "cannot re-run on captured inputs: " .. bad
          break
        end
        local function run(which, d)
          if not children[which] then return nil end
          local flat = d == "fp32" and call.inputs or cast(call.inputs, d)
          return tensors(children[which](unpack((assert(arguments(schema, flat))))))[1]
        end
        local r32, rlow, tlow, t32 = run("r32", "fp32"), run("rlow", dtype), run("tlow", dtype), run("t32", "fp32")
        local r, r32_ratio = ratio(tlow, r32, rlow), ratio(t32, r32, rlow)
        -- the accumulated view: outputs of the whole-model runs at this call
        local function out(which) local c = cap[which] and cap[which][pair.reference] return c and c[k] and c[k].outputs[1] end
        local acc, acc32 = ratio(out("tlow"), out("r32"), out("rlow")), ratio(out("t32"), out("r32"), out("rlow"))
        if k == 1 or (r or 0) > (row.r or 0) then
          row.r, row.r32, row.acc_r, row.acc_r32, row.worst_call = r, r32_ratio, acc, acc32, k
          if t32 then
            row.rel_l2_32, row.cosine_32 = m.rel_l2(t32:float(), r32:float()), m.cosine(t32:float(), r32:float())
          end
          -- tensors for localize's signatures, kept out of the JSON
          ctx.memo.evidence = ctx.memo.evidence or {}
          ctx.memo.evidence[pair.reference] = { input = call.inputs[1], r32 = r32, t32 = t32, tlow = tlow,
            params = children.r32:parameters() }
        end
      end
    end
  end
  local total = core.clock() - t0  -- logged, not stored: the JSON stays byte-identical run to run
  ctx.log(("components: %d tested in %.2f s, %.1f x one forward of the reference (%.3f s)"):format(
    #rows, total, total / math.max(forward_s, 1e-9), forward_s))
  return { mapping = "identity", components = rows, has_fp32 = has32 }
end

return M
