--- stage smoke — liveness: greedy decoding of N tokens on K prompts by the target (at the low
--- precision) against the fp32 reference's own greedy continuation, next to the reference's own
--- greedy continuation at the low precision (what precision alone does to greedy decoding).
--- Per prompt: match rate and first divergence. The target's continuation comes from its
--- teacher-forced pass up to its first divergence and is decoded from there. Informative: a low match rate with a high cosine
--- is margin-sensitive drift (near-ties flipping), not necessarily a bug; the e2e stage decides.
local lm = require("parity.lm")
local core = require("parity.core")
local json = core.json

local M = { name = "smoke", runs_target = "its own greedy decoding, which only running it gives" }

--- Per prompt match rate and first divergence (0-based index of the first differing new token,
--- null when all match) of `tokens` against `want`, both [K, N].
local function matches(want, tokens)
  local k, n = want:size(0), want:size(1)
  local same = want:eq(tokens)
  local per, total = {}, 0
  for i = 0, k - 1 do
    local row = same:select(0, i)
    local count = row:sum():item()
    total = total + count
    per[#per + 1] = { match_rate = count / n, first_divergence = count < n and row:logical_not():int():argmax():item()
      or json.null }
  end
  return total / (k * n), per
end

--- The smoke figures from the new tokens of the reference (fp32), the target and the
--- reference at the low precision, each [K, N].
---@param ref_tokens parity.Tensor the reference's (fp32) greedy new tokens [K, N]
---@param target_tokens parity.Tensor the target's [K, N]
---@param own_tokens parity.Tensor the reference's own at the low precision [K, N]
---@return table result {prompts, new_tokens, match_rate, own_match_rate, per_prompt, the tokens as lists}
function M.compare(ref_tokens, target_tokens, own_tokens)
  local rate, per_prompt = matches(ref_tokens, target_tokens)
  local own_rate = matches(ref_tokens, own_tokens)
  return {
    prompts = ref_tokens:size(0), new_tokens = ref_tokens:size(1),
    match_rate = rate, own_match_rate = own_rate,
    per_prompt = per_prompt,
    reference_tokens = ref_tokens:tolist(), target_tokens = target_tokens:tolist(), own_tokens = own_tokens:tolist(),
  }
end

--- The target's greedy continuation against the reference's and the reference's own (M.compare).
---@param ctx parity.Context
---@return table result M.compare's
function M.run(ctx)
  local r = ctx:reference_outputs()
  -- the target's teacher-forced logits (which e2e reads too) give its greedy continuation up to
  -- its first divergence; only the rest is decoded (lm.greedy_from)
  local predicted = ctx:judged(ctx:target_logits(ctx.target_dtype)):argmax(-1)
  local t0 = core.clock()
  local whole, decoding = lm.decoding_forward(ctx.target, ctx.target_dtype)
  -- the compared vocabulary only: a padded LM head's extra columns are e2e's to judge
  local function forward(tokens) return (lm.fit_vocab(whole(tokens), ctx.vocab)) end
  local target, forwards = lm.greedy_from(forward, ctx.prompts, r.tokens, predicted,
    function(i, k) ctx:progress("smoke", i, k) end)
  ctx.log(("smoke: %d forward%s in %.2f s to decode past the first divergences (%d new tokens)%s"):format(forwards,
    forwards == 1 and "" or "s", core.clock() - t0, ctx.settings.new_tokens, lm.decoding_note(decoding)))
  return M.compare(r.tokens, target, r.own_tokens)
end

--- What the verdict keeps of the result.
---@param s table the smoke stage's result
---@return table
function M.summary(s)
  return { match_rate = s.match_rate, own_match_rate = s.own_match_rate }
end

return M
