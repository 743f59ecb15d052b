--- stage scaffold — stage 0 of the seeds: both models' module trees, in execution order, into the
--- results directory (scaffold/{reference,target}.{tree,compressed}.txt and .flat.tsv), and how
--- their components pair up: by identity when the trees are the same, else the mapping given, else
--- one proposed from the weights (written to scaffold/mapping.lua, to save and edit).
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
  -- how the components pair up: identity, the given mapping, or one proposed from the weights
  local pairs_, kind, unmapped, absent = require("parity.stages.components").pairs_for(ctx)
  ctx.memo.pairs = pairs_ and { pairs_, kind, unmapped, absent } or nil
  result.mapping = pairs_ and kind or "none"
  result.mapped = pairs_ and #pairs_ or 0
  result.unmapped_reason = pairs_ and core.json.null or kind
  result.unmapped_target = core.json.array(unmapped or {})
  if pairs_ and kind == "auto" then  -- the proposal, as a file to save, edit and pass back
    local entries = {}
    for _, p in ipairs(pairs_) do
      entries[#entries + 1] = { reference = #p.reference == 1 and p.reference[1] or p.reference, target = p.target,
                                transform = p.transform }
    end
    core.write_text(ctx.out .. "/scaffold/mapping.lua", require("parity.mapping").to_lua(entries, unmapped))
    result.files[#result.files + 1] = "scaffold/mapping.lua"
  end
  return result
end

function M.summary(s)
  return { reference = s.reference, target = s.target, mapping = s.mapping, mapped = s.mapped }
end

function M.lines(s)
  return { ("scaffold reference %s (%d modules), target %s (%d modules): %s"):format(s.reference.type,
    s.reference.modules, s.target.type, s.target.modules,
    s.mapping == "none" and "trees differ, no mapping" or ("%d components mapped (%s%s)"):format(s.mapped, s.mapping,
      s.mapping == "auto" and ": from the weights, see scaffold/mapping.lua" or "")) }
end

return M
