--- stage downstream — stage 7: the port's lm-eval task scores against the reference's
--- (parity.downstream), when the check is given both runs' results (check --downstream REF
--- TARGET). It runs no model: each task and metric's regression against the tolerance, paired
--- over the same documents when both runs logged their samples. A regression past the
--- tolerance fails; one the samples cannot resolve leaves the verdict inconclusive.
local downstream = require("parity.downstream")

local M = { name = "downstream", needs = {} }

--- Judges the runs the check was given (ctx.downstream: {reference, target, tolerance}).
---@param ctx parity.Context
---@return table result parity.downstream.judge's
function M.run(ctx)
  local d = ctx.downstream
  return downstream.judge(d.reference, d.target, { tolerance = d.tolerance })
end

--- The whole result: a row a task and metric is small.
function M.summary(d) return d end

--- Its criterion: no task regresses past the tolerance; undecided while a task's interval holds it.
---@type parity.Criterion[]
M.criteria = {
  { name = "downstream", stage = "downstream", reads = "regressions", rule = "zero",
    says = function(d)
      return ("no lm-eval task regresses past %g (%d task metrics%s)"):format(d.tolerance, #d.tasks,
        d.undecided > 0 and (", %d undecided"):format(d.undecided) or "")
    end,
    interval = function(d)
      -- (a regression past the tolerance is decided, whatever the other tasks are)
      if d.undecided == 0 or d.regressions > 0 then return nil end
      local names = {}
      for _, row in ipairs(d.tasks) do
        if row.verdict == "inconclusive" then names[#names + 1] = row.task .. " " .. row.metric end
      end
      return { conclusive = false, says = ("%s: the samples cannot tell a regression from one within %g (the"
        .. " downstream lines say how many would)"):format(table.concat(names, ", "), d.tolerance) }
    end },
}

return M
