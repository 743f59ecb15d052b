--- Language-model plumbing shared by the stages: token inputs, logits, greedy decoding.
local core = require("parity.core")

local M = {}

--- The logits of a forward output: the tensor itself, or the first tensor of a tuple (HF
--- models traced with return_dict=False return (logits, ...)).
---@return userdata Tensor [batch, seq, vocab]
function M.logits_of(out, who)
  while type(out) == "table" do out = out[1] end
  if not torch.is_tensor(out) then
    error(("%s: forward returned no tensor"):format(who), 0)
  end
  if out:dim() ~= 3 then
    error(("%s: logits must be [batch, seq, vocab], got [%s]"):format(who, table.concat(out:size(), ", ")), 0)
  end
  return out
end

--- Runs a bundle's trace at `dtype` on token ids and returns float32 logits.
function M.forward(bundle, dtype, tokens)
  local who = ("%s (%s)"):format(bundle.path, dtype)
  return M.logits_of(bundle:at(dtype)(tokens), who):float()
end

--- Checks that each named setting is a whole number >= 1: { name = value, ... }.
function M.positive_integers(settings)
  local names = {}
  for name in pairs(settings) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local v = settings[name]
    if type(v) ~= "number" or v < 1 or v ~= math.floor(v) then
      error(("%s must be a whole number >= 1, got %s"):format(name, tostring(v)), 0)
    end
  end
end

--- Seeded random tokens [batch, seq] in [0, vocab).
function M.random_tokens(vocab, batch, seq, seed)
  M.positive_integers({ batch = batch, seq = seq })
  return torch.randint(0, vocab, { batch, seq }, { seed = seed })
end

--- Token ids from a safetensors file: the tensor named input_ids, or its only tensor.
function M.tokens_from_file(path, vocab)
  local tensors = core.tensors.load(path)
  local t = tensors.input_ids
  if not t then
    local names = {}
    for name, x in pairs(tensors) do names[#names + 1] = name; t = x end
    if #names ~= 1 then
      error(("%s: expected a tensor named input_ids or a single tensor, found: %s"):format(path, table.concat(names, ", ")), 0)
    end
  end
  if t:dim() == 1 then t = t:unsqueeze(0) end
  if t:dim() ~= 2 or t:dtype():find("float") then
    error(("%s: token ids must be an integer [batch, seq] tensor, got %s [%s]"):format(
      path, t:dtype(), table.concat(t:size(), ", ")), 0)
  end
  local lo, hi = t:min():item(), t:max():item()
  if lo < 0 or hi >= vocab then
    error(("%s: token ids span %d..%d, outside the vocabulary 0..%d"):format(path, lo, hi, vocab - 1), 0)
  end
  return t:long()
end

--- The vocabulary both bundles share, or an error naming both sizes.
function M.shared_vocab(reference, target)
  local rv, tv = reference:vocab_size(), target:vocab_size()
  if rv ~= tv then
    error(("vocab sizes differ: reference %s has %d, target %s has %d"):format(reference.path, rv, target.path, tv), 0)
  end
  return rv
end

--- Greedy decoding of `n` new tokens from prompts [batch, p]; returns [batch, p + n].
--- Runs the full sequence each step (traces carry no KV cache).
function M.greedy(bundle, dtype, prompts, n)
  local seq = prompts
  for _ = 1, n do
    local logits = M.forward(bundle, dtype, seq)
    seq = torch.cat({ seq, logits:select(1, -1):argmax(-1):unsqueeze(1) }, 1)
  end
  return seq
end

--- Checks the target's logits against the shape the reference's have, naming both otherwise.
---@param t userdata the target's logits
---@param want integer[] the reference's logits shape
function M.check_shape(t, want, ref_name, target_name)
  local got = t:size()
  if table.concat(got, ",") ~= table.concat(want, ",") then
    error(("logits shapes differ: reference %s [%s], target %s [%s]"):format(
      ref_name, table.concat(want, ", "), target_name, table.concat(got, ", ")), 0)
  end
end

return M
