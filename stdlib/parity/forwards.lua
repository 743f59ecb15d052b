--- parity.forwards — what a check ran, by kind (a check's cost in forward-equivalents, the
--- units `make bench` reports beside the times): teacher-forced passes (whole-sequence forwards
--- of a model, tapped or not), decoding steps (greedy decoding: one forward a step over the
--- prompts still decoding), component runs (a submodule run alone, on captured inputs) and model
--- loads (and of those, reloads: a file this process had loaded before). Read from the host's counts (core.forward_counts) before and after; decoding steps
--- are what lm.greedy and lm.greedy_from count (M.decoding).
local core = require("parity.core")

local M = {}

-- decoding steps so far, and the whole forwards they ran (a perturbed model runs two a step);
-- the model files this process has loaded (in order, and as a set), and how many loads were of
-- one loaded before
local steps, steps_whole, order, seen, reloads = 0, 0, {}, {}, 0

--- Notes a model file loaded (parity.bundle does), counting it as a reload when this process
--- loaded it before.
---@param file string
function M.loaded(file)
  if seen[file] then reloads = reloads + 1 end
  seen[file], order[#order + 1] = true, file
end

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
  return { whole = c.whole, component = c.component, loads = c.loads, steps = steps, steps_whole = steps_whole,
           reloads = reloads, files = #order }
end

--- What ran since `before` (M.now's), by kind.
---@param before table
---@return {teacher_forced: integer, decoding_steps: integer, component_runs: integer, loads: integer, reloads: integer, files: string[]}
function M.since(before)
  local n = M.now()
  local files = {}  -- the model files loaded, in order
  for i = before.files + 1, n.files do files[#files + 1] = order[i] end
  return { teacher_forced = (n.whole - before.whole) - (n.steps_whole - before.steps_whole),
           decoding_steps = n.steps - before.steps, component_runs = n.component - before.component,
           loads = n.loads - before.loads, reloads = n.reloads - before.reloads, files = core.json.array(files) }
end

--- The counts as a log line.
---@param c table M.since's
---@return string
function M.line(c)
  return ("forwards: %d teacher-forced passes, %d decoding steps, %d component runs, %d model loads (%d reloads)")
    :format(c.teacher_forced, c.decoding_steps, c.component_runs, c.loads, c.reloads)
end

return M
