--- stage scaffold — stage 0 of the seeds: both models' module trees, in execution order, into the
--- results directory (scaffold/{reference,target}.{tree,compressed}.txt and .flat.tsv), and how
--- their components pair up: by identity when the trees are the same.
local core = require("parity.core")
local tree = require("parity.tree")

local M = { name = "scaffold" }

---@param ctx parity.Context
function M.run(ctx)
  local result = { files = {} }
  for _, side in ipairs({ "reference", "target" }) do
    local b = ctx[side]
    local modules = b:at(b:has("fp32") and "fp32" or ctx.dtype):modules()
    for kind, text in pairs({ tree = tree.pretty(modules), compressed = tree.compressed(modules), flat = tree.flat(modules) }) do
      local file = ("scaffold/%s.%s.%s"):format(side, kind, kind == "flat" and "tsv" or "txt")
      core.write_text(ctx.out .. "/" .. file, text .. "\n")
      result.files[#result.files + 1] = file  -- relative to the results directory
    end
    result[side] = { modules = #modules, params = modules[1].total_params, type = modules[1].type }
  end
  table.sort(result.files)
  local mapping, why = require("parity.stages.components").identity_mapping(
    ctx.reference:at(ctx.reference:has("fp32") and "fp32" or ctx.dtype):modules(),
    ctx.target:at(ctx.target:has("fp32") and "fp32" or ctx.dtype):modules())
  result.mapping = mapping and "identity" or "none"
  result.mapped = mapping and #mapping or 0
  result.unmapped_reason = why or core.json.null
  return result
end

function M.summary(s)
  return { reference = s.reference, target = s.target, mapping = s.mapping, mapped = s.mapped }
end

function M.lines(s)
  return { ("scaffold reference %s (%d modules), target %s (%d modules): %s"):format(s.reference.type,
    s.reference.modules, s.target.type, s.target.modules,
    s.mapping == "identity" and ("%d components mapped by identity"):format(s.mapped) or "trees differ, no mapping") }
end

return M
