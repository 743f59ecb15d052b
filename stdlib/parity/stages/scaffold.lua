--- stage scaffold — stage 0 of the seeds: both models' module trees, in execution order, into the
--- results directory (scaffold/{reference,target}.{tree,compressed}.txt and .flat.tsv), and how
--- their components pair up: by identity when the trees are the same, else the mapping given, else
--- one proposed from the weights (written to scaffold/mapping.lua, to save and edit).
local core = require("parity.core")
local mapping = require("parity.mapping")
local weights = require("parity.weights")
local pairing = require("parity.pairing")
local tree = require("parity.tree")

local M = { name = "scaffold", runs_target = "its module tree" }
--- What the stage keeps for the stages that compare components (got.kept.scaffold).
---@class parity.ScaffoldKept
---@field pairs parity.MappingPair[]
---@field unmapped string[] target modules with weights that matched nothing
---@field absent parity.NoCounterpart[]|nil entries declared without a counterpart
---@field lacking string[]|nil reference modules with weights that nothing maps

--- The static weight check, before any forward: each mapped pair's weight against the reference
--- weight(s) it should equal after the transform, at one dtype (fp32 when the target has it);
--- `rm` the reference's model or its weight summary (parity.weights.summary), `tm` the target's.
--- A transposed, reordered (fused blocks in another order than the reference runs them) or
--- scaled weight is a conversion bug found before anything runs; other differences are listed.
local function static_check(pairs_, rm, tm)
  local ref_mods = rm:modules()
  local order = {}
  for i, m in ipairs(ref_mods) do order[m.path] = i end
  local rp, tp = weights.own_params(rm, ref_mods), weights.own_params(tm, tm:modules())
  local findings = {}
  for _, pair in ipairs(pairs_) do
    local tw, rws = weights.fingerprint(tp[pair.target] or {}), {}
    for i, p in ipairs(pair.reference) do rws[i] = weights.fingerprint(rp[p] or {}) end
    if tw and #rws == #pair.reference and #rws > 0 then
      local rel = weights.relation(tw, weights.as_target(pair, rws, 0))
      local refs = table.concat(pair.reference, ", ")
      local f = { reference = refs, target = pair.target, relation = rel.relation }
      if refs == pair.target then refs = "the reference" end
      if rel.relation == "equal" and #rws > 1 then  -- stacked in another order than the reference runs them
        for i = 2, #pair.reference do
          if order[pair.reference[i]] < order[pair.reference[i - 1]] then f.relation = "reordered" end
        end
        if f.relation == "reordered" then
          local sorted = { unpack(pair.reference) }
          table.sort(sorted, function(a, b) return order[a] < order[b] end)
          f.detail = ("%s's weight stacks %s, the reference runs them as %s"):format(pair.target, refs,
            table.concat(sorted, ", "))
        end
      elseif rel.relation == "reordered" then
        local held = {}
        for i, k in ipairs(rel.order) do held[i] = pair.reference[k] end
        f.detail = ("%s's weight stacks %s where the mapping says %s"):format(pair.target, table.concat(held, ", "), refs)
      elseif rel.relation == "transposed" then
        f.detail = ("%s's weight is %s's, transposed"):format(pair.target, refs)
      elseif rel.relation == "scaled" then
        f.detail, f.value = ("%s's weight is %.6g x %s's"):format(pair.target, rel.value, refs), rel.value
      elseif rel.relation == "different" then
        f.detail = rel.detail or ("%s's weight differs from %s's (rel L2 %.3g)"):format(pair.target, refs, rel.rel_l2)
      end
      f.class = ({ transposed = "layout", reordered = "layout", scaled = "scale" })[f.relation]
      if f.relation ~= "equal" then findings[#findings + 1] = f end
      -- a bias dropped, or one added, by the conversion
      local rb, tb = true, tp[pair.target].bias ~= nil
      for _, p in ipairs(pair.reference) do rb = rb and rp[p].bias ~= nil end
      if rb ~= tb then
        findings[#findings + 1] = { reference = table.concat(pair.reference, ", "), target = pair.target,
          relation = tb and "extra_bias" or "missing_bias", class = "missing",
          detail = tb and ("%s has a bias the reference's has not"):format(pair.target)
            or ("%s has no bias where the reference's has one"):format(pair.target) }
      end
    end
  end
  return findings
end

--- Writes both module trees, pairs the components (the logits' forwards then tap them) and
--- checks the mapped weights; keeps the pairs for the stages that compare them.
---@param ctx parity.Context
---@return table result {files, reference, target, mapping, mapped, unmapped_*, static}
---@return parity.ScaffoldKept|nil kept nil when no components pair up
function M.run(ctx)
  local result = { files = {} }
  -- the weights are compared at one dtype: fp32 when the target has it and the anchor is, else
  -- the low precision (the reference's too)
  local d = ctx.target:has("fp32") and ctx.anchor == "fp32" and "fp32" or ctx.dtype
  -- the reference's side, as its weight summary (cached, else made while it is loaded alone: a
  -- check's bundles hold one model at a time, parity.bundle) where the comparisons are at the
  -- anchor; what the summary cannot answer (weights that differ: how) loads the reference
  local rm = d == ctx.anchor and ctx:reference_weights(d)
  if d == ctx.anchor and not rm then
    rm = weights.summary(ctx.reference:at(d))
    ctx:cache_reference_weights(d, rm)
  end
  local tm = ctx.target:at(d)
  -- how the components pair up (identity, the given mapping, or one proposed from the weights:
  -- `r`, the reference at the anchor), and the static check (`rd`, the reference at d)
  local function compare(r, rd)
    local p, kind, unmapped, absent, lacking = pairing.pairs_for(ctx, r, tm)
    return p, kind, unmapped, absent, lacking, p and static_check(p, rd, tm) or {}
  end
  local found = rm and { pcall(compare, rm, rm) }
  if found and not found[1] and found[2] ~= weights.NEEDS_WEIGHTS then error(found[2], 0) end
  if not (found and found[1]) then  -- the reference's weights themselves: the second model held
    local ref = ctx.reference:at(ctx.anchor)  -- (loaded last: it runs next)
    found = { true, compare(ref, d == ctx.anchor and ref or ctx.reference:at(d)) }
    rm = rm or ref
  end
  local pairs_, kind, unmapped, absent, lacking, static = unpack(found, 2, 7)
  for _, side in ipairs({ "reference", "target" }) do
    local modules = (side == "reference" and rm or tm):modules()
    for kind, text in pairs({ tree = tree.pretty(modules), compressed = tree.compressed(modules), flat = tree.flat(modules) }) do
      local file = ("scaffold/%s.%s.%s"):format(side, kind, kind == "flat" and "tsv" or "txt")
      core.write_text(ctx.out .. "/" .. file, text .. "\n")
      result.files[#result.files + 1] = file  -- relative to the results directory
    end
    result[side] = { modules = #modules, params = modules[1].total_params, type = modules[1].type }
  end
  table.sort(result.files)
  -- the logits' forwards capture what the components stage compares
  if pairs_ then ctx:tap_components(pairs_, rm:modules()) end
  result.mapping = pairs_ and kind or "none"
  result.mapped = pairs_ and #pairs_ or 0
  result.unmapped_reason = pairs_ and core.json.null or kind
  result.unmapped_target = core.json.array(unmapped or {})
  result.unmapped_reference = core.json.array(lacking or {})
  result.static = core.json.array(static)
  if pairs_ and kind == "auto" then  -- the proposal, as a file to save, edit and pass back
    local entries = {}
    for _, p in ipairs(pairs_) do
      entries[#entries + 1] = { reference = #p.reference == 1 and p.reference[1] or p.reference, target = p.target,
                                transform = p.transform, interleave = p.interleave }
    end
    core.write_text(ctx.out .. "/scaffold/mapping.lua", mapping.to_lua(entries, unmapped))
    result.files[#result.files + 1] = "scaffold/mapping.lua"
  end
  -- the pairs, for the stages that compare them (kept: the JSON has their count and kind)
  return result, pairs_ and { pairs = pairs_, unmapped = unmapped, absent = absent, lacking = lacking } or nil
end

--- What the verdict keeps of the result.
---@param s table the scaffold stage's result
---@return table
function M.summary(s)
  return { reference = s.reference, target = s.target, mapping = s.mapping, mapped = s.mapped, static = s.static,
           unmapped_reference = s.unmapped_reference }
end

return M
