--- stage smoke — liveness: greedy decoding of N tokens on K prompts by the target (at the low
--- precision) against the fp32 reference's own greedy continuation. Per prompt: match rate and
--- first divergence index. Informative: a low match rate with a high cosine is margin-sensitive
--- drift (near-ties flipping), not necessarily a bug; the e2e stage decides.
local core = require("parity.core")
local lm = require("parity.lm")

local M = {}

---@param ctx table  {target, dtype, prompts [K, P], sequences [K, P + N] (reference fp32 greedy), thresholds}
---@return table
function M.run(ctx)
  local k, p = ctx.prompts:size(0), ctx.prompts:size(1)
  local n = ctx.sequences:size(1) - p
  local ref_new = ctx.sequences:narrow(1, p, n)
  local target_new = lm.greedy(ctx.target, ctx.dtype, ctx.prompts, n):narrow(1, p, n)
  local same = ref_new:eq(target_new)
  local prompts, matched = {}, 0
  for i = 0, k - 1 do
    local row = same:select(0, i)
    local count = row:sum():item()
    matched = matched + count
    local first = count < n and row:logical_not():int():argmax():item() or core.json.null
    prompts[#prompts + 1] = { match_rate = count / n, first_divergence = first }
  end
  local rate = matched / (k * n)
  return {
    stage = "smoke",
    prompts = k, new_tokens = n,
    match_rate = rate,
    live = rate >= ctx.thresholds.smoke_match,
    per_prompt = prompts,
    reference_tokens = ref_new:tolist(),
    target_tokens = target_new:tolist(),
  }
end

return M
