--- parity.forwards — what a check ran, by kind (a check's cost in forward-equivalents, the
--- units `make bench` reports beside the times): teacher-forced passes (whole-sequence forwards
--- of a model, tapped or not), decoding steps (greedy decoding: one forward a step over the
--- prompts still decoding), component runs (a submodule run alone, on captured inputs) and model
--- loads. Read from the host's counts (core.forward_counts) before and after; decoding steps
--- are what lm.greedy and lm.greedy_from count (M.decoding).
local core = require("parity.core")

local M = {}

-- decoding steps so far, and the whole forwards they ran (a perturbed model runs two a step)
local steps, steps_whole = 0, 0

--- Runs one decoding step `f(tokens)`, counting it (lm's greedy decoders call this).
---@param f fun(tokens: parity.Tensor): parity.Tensor
---@param tokens parity.Tensor
---@return parity.Tensor logits
function M.decoding(f, tokens)
  local before = core.forward_counts().whole
  local out = f(tokens)
  steps, steps_whole = steps + 1, steps_whole + core.forward_counts().whole - before
  return out
end

--- The counts so far, to subtract from later (M.since).
---@return table
function M.now()
  local c = core.forward_counts()
  return { whole = c.whole, component = c.component, loads = c.loads, steps = steps, steps_whole = steps_whole }
end

--- What ran since `before` (M.now's), by kind.
---@param before table
---@return {teacher_forced: integer, decoding_steps: integer, component_runs: integer, loads: integer}
function M.since(before)
  local n = M.now()
  return { teacher_forced = (n.whole - before.whole) - (n.steps_whole - before.steps_whole),
           decoding_steps = n.steps - before.steps, component_runs = n.component - before.component,
           loads = n.loads - before.loads }
end

--- The counts as a log line.
---@param c table M.since's
---@return string
function M.line(c)
  return ("forwards: %d teacher-forced passes, %d decoding steps, %d component runs, %d model loads"):format(
    c.teacher_forced, c.decoding_steps, c.component_runs, c.loads)
end

return M
