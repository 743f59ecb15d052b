--- Language-model plumbing shared by the stages: token inputs, logits, greedy decoding.
local core = require("parity.core")
local counted = require("parity.forwards")  -- (each decoding step counted)
local validate = require("parity.validate")

local M = {}

--- The logits of a forward output: the tensor itself, the first tensor of a tuple (HF models
--- traced with return_dict=False return (logits, ...)) or a dict's "logits" (Module:forward1
--- takes the same); a leading dimension of 1 ([1, batch, seq, vocab], as some engines return)
--- is dropped.
---@param out any a forward's output
---@param who string names the model in errors
---@return parity.Tensor logits [batch, seq, vocab]
function M.logits_of(out, who)
  while type(out) == "table" do out = out.logits or out[1] end
  if not torch.is_tensor(out) then
    error(("%s: forward returned no tensor"):format(who), 0)
  end
  while out:dim() > 3 and out:size(0) == 1 do out = out:squeeze(0) end
  if out:dim() ~= 3 then
    error(("%s: logits must be [batch, seq, vocab], got [%s]"):format(who, table.concat(out:size(), ", ")), 0)
  end
  return out
end

--- The last line of a (TorchScript) error worth showing: its error line, not the traceback.
local function last_line(msg)
  local last
  for line in tostring(msg):gmatch("[^\n]+") do
    if line:find("%S") then last = line end
  end
  return require("parity.errors").clean(last or msg)
end

--- Runs a bundle's trace at `dtype` on token ids and returns float32 logits. A failing forward
--- is one line: the model, the input shape and the error's last line.
---@param bundle parity.Bundle|parity.Saved
---@param dtype string
---@param tokens parity.Tensor token ids [batch, seq], int64
---@return parity.Tensor logits float32 [batch, seq, vocab]
function M.forward(bundle, dtype, tokens)
  local who = ("%s (%s)"):format(bundle.path, dtype)
  local module = bundle:at(dtype)
  local ok, out = pcall(module, tokens)
  if not ok then
    error(("%s: forward on token ids [%s] failed: %s"):format(who, table.concat(tokens:size(), ", "), last_line(out)), 0)
  end
  return M.logits_of(out, who):float()
end

--- Seeded random tokens [batch, seq] in [0, vocab).
---@param vocab integer
---@param batch integer
---@param seq integer
---@param seed number|nil a private generator's seed (TensorOptions.seed)
---@return parity.Tensor tokens int64 [batch, seq]
function M.random_tokens(vocab, batch, seq, seed)
  return torch.randint(0, vocab, { batch, seq }, { seed = seed })
end

--- This machine's memory available to a new allocation, in bytes (MemAvailable, else MemTotal), or nil.
local function memory_available()
  local f = io.open("/proc/meminfo")
  if not f then return nil end
  local text = f:read("*a")
  f:close()
  local kb = tonumber(text:match("MemAvailable:%s*(%d+) kB") or text:match("MemTotal:%s*(%d+) kB"))
  return kb and kb * 1024
end

--- What one fp32 forward of `bundle` over [rows, tokens] holds in this machine's memory at its
--- peak beyond the weights, in bytes, from its manifest's config (nil without one, or when it
--- runs on another device): a layer's activations (the residual stream, its norms, q/k/v/o and
--- the FFN's hidden states) and, unless it was exported with another attention than eager, one
--- layer's attention scores and their softmax ([rows, heads, tokens, tokens] each).
---@param bundle parity.Bundle|parity.Saved
---@param rows integer
---@param tokens integer
---@return number|nil bytes
function M.forward_bytes(bundle, rows, tokens)
  local cfg = bundle.manifest and bundle.manifest.config
  if type(cfg) ~= "table" or (bundle.device and bundle.device ~= "cpu") then return nil end
  local made = type(bundle.manifest.made_with) == "table" and bundle.manifest.made_with.attn_implementation
  local eager = made == nil or made == "eager"
  local function num(...)
    for _, k in ipairs({ ... }) do
      if type(cfg[k]) == "number" and cfg[k] >= 1 and cfg[k] < 2 ^ 40 then return cfg[k] end
    end
  end
  local heads, hidden = num("num_attention_heads", "n_head", "num_heads"), num("hidden_size", "n_embd", "d_model")
  if not heads and not hidden then return nil end
  local ffn = num("intermediate_size", "n_inner", "ffn_dim") or 4 * (hidden or 0)
  local scores = eager and 2 * rows * (heads or 1) * tokens * tokens * 4 or 0
  local activations = rows * tokens * (8 * (hidden or 0) + 3 * ffn) * 4
  return scores + activations
end

--- Refuses, before anything is allocated, sequences longer than either model's
--- max_position_embeddings and runs that would not fit in this machine's available memory:
--- `copies` float32 logits of rows x tokens x vocab, and the larger of the two forwards'
--- attention scores and activations (M.forward_bytes).
---@param bundles (parity.Bundle|parity.Saved)[]
---@param rows integer sequences a forward
---@param tokens integer tokens a sequence
---@param vocab integer
---@param copies integer the logits tensors the run holds at once
function M.check_size(bundles, rows, tokens, vocab, copies)
  local forward = 0
  for _, b in ipairs(bundles) do
    local max = b:max_positions()
    if max and tokens > max then
      error(("%d tokens a sequence exceed %s's max_position_embeddings (%d, parity.json)"):format(tokens, b.path, max), 0)
    end
    forward = math.max(forward, M.forward_bytes(b, rows, tokens) or 0)
  end
  local logits = rows * tokens * vocab * 4 * copies
  local avail = memory_available()
  if avail and logits + forward > avail then
    error(("%d x %d tokens need about %.1f GB (%.1f GB of logits over a %d vocabulary, %.1f GB of attention"
      .. " scores and activations a forward), more than the %.1f GB this machine has available: fewer prompts"
      .. " or shorter ones"):format(rows, tokens, (logits + forward) / 2 ^ 30, logits / 2 ^ 30, vocab,
      forward / 2 ^ 30, avail / 2 ^ 30), 0)
  end
end

--- Token ids from a safetensors file: the tensor named input_ids, or its only tensor, and the
--- file's metadata (`parity inputs` records prompt_len and new_tokens there).
---@param path string a tensor file (core.tensors.load)
---@param vocab integer the token ids must be below it
---@return parity.Tensor tokens int64 [batch, seq] (M.check_tokens)
---@return table<string, string> metadata empty when the file has none
function M.tokens_from_file(path, vocab)
  local tensors, meta = core.tensors.load(path)
  local t = tensors.input_ids
  if not t then
    local names = {}
    for name, x in pairs(tensors) do names[#names + 1] = name; t = x end
    if #names ~= 1 then
      error(("%s: expected a tensor named input_ids or a single tensor, found: %s"):format(path, table.concat(names, ", ")), 0)
    end
  end
  return M.check_tokens(t, vocab, path), meta or {}
end

--- Token ids as int64 [batch, seq] ([seq] is one row), checked: integers inside the vocabulary;
--- an error names `origin` otherwise.
---@param t parity.Tensor
---@param vocab integer
---@param origin string
---@return parity.Tensor tokens int64 [batch, seq]
function M.check_tokens(t, vocab, origin)
  if t:dim() == 1 then t = t:unsqueeze(0) end
  if t:dim() ~= 2 or not t:dtype():find("^u?int") or t:numel() == 0 then
    error(("%s: token ids must be a non-empty integer [batch, seq] tensor, got %s [%s]"):format(
      origin, t:dtype(), table.concat(t:size(), ", ")), 0)
  end
  local lo, hi = t:min():item(), t:max():item()
  if lo < 0 or hi >= vocab then
    error(("%s: token ids span %d..%d, outside the vocabulary 0..%d"):format(origin, lo, hi, vocab - 1), 0)
  end
  return t:long()
end

--- The vocabulary compared: the reference's, or `override` (--vocab-size). A target may have
--- more rows in its LM head (engines pad the vocabulary to a multiple of 64 or 128): its logits
--- are cut to this vocabulary (M.fit_vocab) and the padded columns checked apart; fewer is an
--- error naming both sizes. Their logits' widths are checked against it when they come.
---@param reference parity.Bundle|parity.Saved
---@param target parity.Bundle|parity.Saved
---@param override integer|nil --vocab-size (validated)
---@return integer vocab
function M.shared_vocab(reference, target, override)
  if override then return validate.integer("vocab_size", override, 1, validate.MAX.vocab) end
  local rv, tv = reference:vocab_size(), target:vocab_size()
  if tv < rv then
    error(("vocab sizes differ: reference %s has %d, target %s has %d"):format(reference.path, rv, target.path, tv), 0)
  end
  return rv
end

--- Logits cut to the compared vocabulary: [.., V'] -> [.., vocab], the columns past it left
--- out; then what the padding did, the columns from `pad_from` (default `vocab`; the reference's
--- own width when --vocab-size compares fewer: those are its vocabulary too): {columns, wins
--- (positions where one of them is above every compared logit, i.e. would win the argmax),
--- positions}, or nil without padding. Logits with fewer columns come back as they are
--- (M.check_shape says what differs).
---@param t parity.Tensor logits [..., V']
---@param vocab integer
---@param pad_from integer|nil
---@return parity.Tensor logits [..., vocab] (contiguous when cut)
---@return {columns: integer, wins: integer, positions: integer}|nil padded
function M.fit_vocab(t, vocab, pad_from)
  local v = t:size(t:dim() - 1)
  if v <= vocab then return t, nil end
  local real = t:narrow(-1, 0, vocab)
  pad_from = math.max(pad_from or vocab, vocab)
  if v <= pad_from then return real:contiguous(), nil end
  local wins = t:narrow(-1, pad_from, v - pad_from):amax(-1):gt(real:amax(-1))
  return real:contiguous(), { columns = v - pad_from, wins = wins:sum():item(), positions = wins:numel() }
end

--- The LM head of a tapped run's `calls` (Module:run_tapped) on tokens [b, t] giving logits of
--- `vocab`: of the modules called once that turn hidden states [b, t, ...] (one of their inputs:
--- a tied head may take its weight first) into [b, t, vocab], the last one called, or the
--- outermost around it (`modules` are in execution order, parents first). Returns its path and
--- which of its inputs holds the hidden states, or nil.
local function lm_head(calls, modules, b, t, vocab)
  local found, input
  for _, m in ipairs(modules) do
    local list = calls[m.path]
    local y = list and #list == 1 and list[1].outputs
    if y and #y == 1 and y[1]:dim() == 3 and y[1]:size(0) == b and y[1]:size(1) == t and y[1]:size(2) == vocab
        and not (found and m.path:sub(1, #found + 1) == found .. ".") then
      for i, x in ipairs(list[1].inputs) do
        if x:dim() == 3 and x:dtype():find("float") and x:size(0) == b and x:size(1) == t then
          found, input = m.path, i
          break
        end
      end
    end
  end
  return found, input
end

--- A forward for greedy decoding: tokens [b, t] -> float32 logits whose last position predicts
--- the next token, and a table whose `head` (the LM head's path; `input`: which of its inputs is
--- cut) or `why` says, after its first call, whether the head runs on the last position only.
--- That is what decoding needs of it, and at a large vocabulary the head is much of a forward. Its first call runs the model capturing
--- every tapped module (Bundle:at) to find the head (lm_head), then again with the head's input
--- cut to its last position, and keeps the cut only when that gives logits of one position that
--- agree with the whole forward's last (same next tokens, relative L2 under 1e-3); otherwise
--- every call is the whole forward.
---@param bundle parity.Bundle|parity.Saved
---@param dtype string
---@return fun(tokens: parity.Tensor): parity.Tensor forward tokens [b, t] -> float32 logits
---@return {head: string|nil, input: integer|nil, why: string|nil} info filled by the first call
function M.decoding_forward(bundle, dtype)
  local who = ("%s (%s)"):format(bundle.path, dtype)
  -- (the module is the bundle's at each call, not held between them: a model loaded after it
  -- lets go of it under the one-at-a-time policy, parity.bundle)
  local info, started = {}, false
  -- a run of the tapped module; `request` names a capture (the head: small), else it would capture every module
  local function run(tokens, request)
    local ok, out = pcall(function() return M.logits_of(bundle:at(dtype):run_tapped({ tokens }, request), who):float() end)
    if not ok then return nil, require("parity.errors").clean(out) end
    return out
  end
  local function first(tokens)
    local module = bundle:at(dtype)
    local ok, out, calls = pcall(module.run_tapped, module, { tokens })
    if not ok then return M.forward(bundle, dtype, tokens) end  -- which says what fails
    local whole = M.logits_of(out, who):float()
    local b, t = tokens:size(0), tokens:size(1)
    local head, input = lm_head(calls, module:modules(), b, t, whole:size(2))
    calls = nil
    local last, err, why = nil, nil, "no module turns hidden states into the logits"
    if head then
      last, err = run(tokens, { capture = { head }, last_position = { [head] = input } })
      why = err and ("with %s on the last position only, the forward fails: %s"):format(head, err)
    end
    if last then
      local want, got = whole:select(1, -1), last:select(1, -1)
      if last:size(1) ~= 1 or not got:is_same_size(want) then
        why = ("with %s on the last position only, the logits are [%s]"):format(head, table.concat(last:size(), ", "))
      elseif not got:argmax(-1):equal(want:argmax(-1))
          or (got - want):norm():item() > 1e-3 * want:norm():item() then
        why = ("with %s on the last position only, the last position's logits differ from the whole forward's"):format(head)
      else
        info.head, info.input = head, input
      end
    end
    info.why = not info.head and why or nil
    return whole
  end
  return function(tokens)
    if not started then
      started = true
      return first(tokens)
    end
    if not info.head then return M.forward(bundle, dtype, tokens) end
    local out, err = run(tokens, { capture = { info.head }, last_position = { [info.head] = info.input } })
    if not out then
      error(("%s: forward on token ids [%s] failed: %s"):format(who, table.concat(tokens:size(), ", "), err), 0)
    end
    return out
  end, info
end

--- What a decoding forward's info (M.decoding_forward) says, for a log line: "" before its first call.
---@param info {head: string|nil, input: integer|nil, why: string|nil}
---@return string
function M.decoding_note(info)
  if info.head then return ("; LM head %s on the last position only"):format(info.head) end
  return info.why and ("; the LM head ran on every position (%s)"):format(info.why) or ""
end

--- Greedy decoding of `n` new tokens from prompts [batch, p]; returns [batch, p + n].
--- Runs the full sequence each step (traces carry no KV cache), its LM head on the last position
--- only (M.decoding_forward). `forward` (tokens -> logits) replaces the bundle's own when given.
---@param bundle parity.Bundle|parity.Saved
---@param dtype string
---@param prompts parity.Tensor int64 [batch, p]
---@param n integer new tokens
---@param progress fun(i: integer, n: integer)|nil called before each step
---@param forward (fun(tokens: parity.Tensor): parity.Tensor)|nil
---@return parity.Tensor sequences int64 [batch, p + n]
function M.greedy(bundle, dtype, prompts, n, progress, forward)
  forward = forward or M.decoding_forward(bundle, dtype)
  local seq = prompts
  for i = 1, n do
    if progress then progress(i, n) end
    local logits = counted.decoding(forward, seq)
    seq = torch.cat({ seq, logits:select(1, -1):argmax(-1):unsqueeze(1) }, 1)
  end
  return seq
end

--- Greedy decoding that starts from a teacher-forced pass. `predicted` [K, N] are a model's
--- argmax tokens given the reference's tokens before each position (`reference` [K, N], the
--- reference's new tokens): its greedy continuation equals the reference's up to its first
--- differing prediction, which it then takes, so only what follows is decoded, one forward a
--- step over the prompts that diverged. Returns the new tokens [K, N] and the forwards run.
--- (With a perturbed forward, M.perturbed, each call draws its own noise: the steps are then
--- greedy decoding of the model perturbed anew each step, like the teacher-forced pass.)
---@param forward fun(tokens: parity.Tensor): parity.Tensor tokens -> logits
---@param prompts parity.Tensor int64 [K, P]
---@param reference parity.Tensor the reference's new tokens [K, N]
---@param predicted parity.Tensor the model's teacher-forced argmax tokens [K, N]
---@param progress fun(i: integer, n: integer)|nil called before each step decoded
---@return parity.Tensor tokens the new tokens, int64 [K, N]
---@return integer forwards the forwards run
function M.greedy_from(forward, prompts, reference, predicted, progress)
  local k, n = reference:size(0), reference:size(1)
  local ref, pred = reference:tolist(), predicted:tolist()
  local out, first, start = {}, {}, n
  for i = 1, k do
    out[i], first[i] = {}, n
    for j = 1, n do
      out[i][j] = pred[i][j]
      if pred[i][j] ~= ref[i][j] then first[i] = j; break end
    end
    start = math.min(start, first[i])
  end
  local forwards = 0
  for s = start + 1, n do  -- token s (1-based) of the prompts that diverged before it
    if progress then progress(s - start, n - start) end
    local active, rows = {}, {}
    for i = 1, k do
      if first[i] < s then
        active[#active + 1] = i
        rows[#rows + 1] = torch.cat({ prompts:select(0, i - 1), torch.tensor(out[i], { dtype = "int64" }) }, 0):unsqueeze(0)
      end
    end
    local next_tokens = counted.decoding(forward, torch.cat(rows, 0)):select(1, -1):argmax(-1):tolist()
    forwards = forwards + 1
    for a, i in ipairs(active) do out[i][s] = next_tokens[a] end
  end
  return torch.tensor(out, { dtype = "int64" }), forwards
end

--- Machine epsilon of the low precisions: the spacing of values just above 1.
M.EPSILON = { bf16 = 2 ^ -7, fp16 = 2 ^ -10, fp32 = 2 ^ -23 }

--- Floating tensors x (1 + eps x noise), noise ~ N(0, 1) from `seed`, in their own dtype: the
--- perturbation of the 2-tensor baseline (about one unit in the last place).
---@param list parity.Tensor[]
---@param eps number the dtype's machine epsilon (M.EPSILON)
---@param seed number tensor i draws its noise with seed + i
---@return parity.Tensor[]
function M.perturb(list, eps, seed)
  local out = {}
  for i, x in ipairs(list) do
    if x:dtype():find("float") then
      local noise = torch.randn(x:size(), { seed = seed + i, dtype = "float32" })
      out[i] = (x:float() * (noise * eps + 1)):to(x:dtype())
    else
      out[i] = x
    end
  end
  return out
end

--- The 2-tensor baseline's model, for a reference that cannot run in fp32: a forward (tokens
--- [, capture paths] -> float32 logits, calls) of the bundle at `dtype` whose first layer's input is perturbed by machine
--- epsilon (M.perturb). The first layer: the first module in execution order that takes hidden
--- states [B, T, H], the first of a numbered stack (`layers.0`) when there is one.
---@param bundle parity.Bundle
---@param dtype string a key of M.EPSILON: the precision it runs at
---@param seed number
---@return fun(tokens: parity.Tensor, capture: string[]|nil): parity.Tensor, table<string, parity.TapCall[]> forward
function M.perturbed(bundle, dtype, seed)
  local module = bundle:at(dtype)
  local modules = module:modules()
  local at
  return function(tokens, capture)  -- the logits, and the calls of the `capture` paths
    local b, t = tokens:size(0), tokens:size(1)
    -- the input to perturb: captured at every module on the first call (which finds where), at
    -- that one afterwards
    local _, calls = module:run_tapped({ tokens }, at and { capture = { at } } or nil)
    if not at then
      for _, m in ipairs(modules) do
        local x = calls[m.path] and calls[m.path][1] and calls[m.path][1].inputs[1]
        if x and x:dim() == 3 and x:dtype():find("float") and x:size(0) == b and x:size(1) == t then
          if m.path:find("%.0$") then at = m.path break end
          at = at or m.path
        end
      end
      if not at then error(("%s: no module takes hidden states [batch, seq, hidden] to perturb"):format(bundle.path), 0) end
    end
    local inject = {}
    for k, call in ipairs(calls[at]) do inject[k] = { M.perturb({ call.inputs[1] }, M.EPSILON[dtype], seed + k)[1] } end
    local out
    out, calls = module:run_tapped({ tokens }, { capture = capture or { at }, inject = { [at] = inject } })
    return M.logits_of(out, bundle.path):float(), calls
  end
end

--- Checks the target's logits against the shape the reference's have, naming both otherwise.
---@param t parity.Tensor the target's logits
---@param want integer[] the reference's logits shape
---@param ref_name string
---@param target_name string
function M.check_shape(t, want, ref_name, target_name)
  local got = t:size()
  if table.concat(got, ",") ~= table.concat(want, ",") then
    error(("logits shapes differ: reference %s [%s], target %s [%s]"):format(
      ref_name, table.concat(want, ", "), target_name, table.concat(got, ", ")), 0)
  end
end

return M
