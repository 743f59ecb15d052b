--- parity.pairing — which components of the two models are compared: by identity when the
--- trees are the same, else the mapping given (--mapping), else one proposed from the weights
--- (parity.weights.auto). The scaffold stage pairs them once; the other stages read its pairs.
local mapping = require("parity.mapping")
local weights = require("parity.weights")

local M = {}

--- Components both models have (same path, same type), in the reference's execution order, as
--- mapping pairs, or nil and why not.
---@param ref_modules parity.ModuleInfo[] the reference's modules (Module:modules), in execution order
---@param target_modules parity.ModuleInfo[] the target's
---@return parity.MappingPair[]|nil pairs
---@return string|nil why the trees differ
function M.identity_mapping(ref_modules, target_modules)
  local target_type = {}
  for _, info in ipairs(target_modules) do target_type[info.path] = info.type end
  local pairs_, missing = {}, {}
  for _, info in ipairs(ref_modules) do
    if info.path ~= "" then
      if target_type[info.path] == info.type then
        pairs_[#pairs_ + 1] = { reference = { info.path }, target = info.path, transform = "identity",
                                type = info.type, depth = info.depth }
      else
        missing[#missing + 1] = info.path
      end
    end
  end
  if #missing > 0 then
    return nil, ("the module trees differ (%d reference modules, e.g. '%s', have no same-named target module of"
      .. " the same type)"):format(#missing, missing[1])
  end
  return pairs_
end

--- The pairs to test: by identity when the trees are the same, else from the given mapping
--- entries, else from the weights (weights.auto). Returns pairs, how they were made, the target
--- modules with weights that matched nothing, the entries declared without a counterpart, and
--- the reference modules with weights that nothing maps (or nil and why no pairs).
---@param ctx parity.Context
---@param ref32 parity.Module the reference at the anchor precision (fp32; the low precision with the 2-tensor baseline)
---@param tgt parity.Module the target in fp32 when the anchor is and it has it, else at the low precision
---@return parity.MappingPair[]|nil pairs
---@return string how "identity", "given" or "auto"; without pairs, why there are none
---@return string[]|nil unmapped target modules with weights that matched nothing (auto only)
---@return parity.NoCounterpart[]|nil absent entries declared without a counterpart (nil by identity)
---@return string[]|nil lacking reference modules with weights that nothing maps (nil by identity)
function M.pairs_for(ctx, ref32, tgt)
  local ref_mods, tgt_mods = ref32:modules(), tgt:modules()
  local pairs_, why = M.identity_mapping(ref_mods, tgt_mods)
  -- a mapping given is used even between identical trees (it may declare a layout, or a module
  -- without a counterpart): never ignored
  if pairs_ and not ctx.mapping then return weights.find_interleaved(pairs_, ref32, tgt), "identity", {} end
  why = why or "the trees are identical"
  local entries, kind, unmapped = ctx.mapping, "given", {}
  if not entries then entries, unmapped = weights.auto(ref32, tgt); kind = "auto" end
  local expanded, absent = mapping.expand(entries, ref_mods, tgt_mods, kind == "given" and ctx.mapping_origin or nil)
  if #expanded == 0 then return nil, why .. ", and no mapping pairs any components" end
  -- reference modules with weights of their own that nothing maps and no entry explains
  local covered, rp, lacking = {}, weights.own_params(ref32, ref_mods), {}
  for _, list in ipairs({ expanded, absent }) do
    for _, p in ipairs(list) do
      for _, r in ipairs(p.reference) do covered[r] = true end
    end
  end
  for _, info in ipairs(ref_mods) do
    if next(rp[info.path]) and not covered[info.path] then lacking[#lacking + 1] = info.path end
  end
  return expanded, kind, unmapped, absent, lacking
end

return M
