--- parity.context — one parity.Context per check: both bundles opened once, the precisions, the
--- inputs, the thresholds, the results directory, and the models' outputs every stage reads
--- (the reference's side, computed once and cached by parity.refcache; the target's logits,
--- tapped where the scaffold stage paired components). Stages get it as their first argument.
local core = require("parity.core")
local captures = require("parity.captures")
local bundle = require("parity.bundle")
local lm = require("parity.lm")
local mapping = require("parity.mapping")
local patches = require("parity.patches")
local recipe = require("parity.recipe")
local refcache = require("parity.refcache")
local thresholds = require("parity.thresholds")
local validate = require("parity.validate")

local M = {}
--- Context:reference_outputs(): the reference's side of a check (see there).
---@class parity.ReferenceOutputs
---@field sequences parity.Tensor the prompts and the reference's greedy continuation, [K, P + N] int64
---@field ref32 parity.Tensor the reference's logits at the judged positions, at the anchor precision
---@field ref_low parity.Tensor the same at the low precision (perturbed: the 2-tensor baseline)
---@field own_tokens parity.Tensor the reference's own greedy tokens at the low precision, [K, N]
---@field tokens parity.Tensor the judged tokens: the continuation, [K, N]

---@class parity.Context
---@field reference parity.Bundle
---@field target parity.Bundle|parity.Saved|nil   a model, saved logits, or none (parity inputs)
---@field dtype string        the low precision whose noise is the yardstick ("bf16", "fp16"; "fp32": M.precisions)
---@field target_dtype string the target's precision under test ("bf16", "fp16" or "fp32")
---@field anchor string       what the target is compared with: "fp32" (3-tensor), else dtype
---@field baseline "3-tensor"|"2-tensor"
---@field settings {prompts: integer, prompt_len: integer, new_tokens: integer, seed: integer, topk: integer}
---@field prompts parity.Tensor token ids [K, P]
---@field vocab integer
---@field thresholds parity.Thresholds
---@field mapping parity.MappingEntry[]|nil  the mapping given (none: identity, or one proposed)
---@field mapping_origin string  for messages: "mapping file PATH" or "mapping"
---@field patch_sets parity.PatchSet[]|nil  the patches the target computes with
---@field inputs_file string|nil  the --inputs file
---@field given_sequences parity.Tensor|nil  whole sequences [K, P + N] from a file parity inputs wrote
---@field sweep "adaptive"|"full" which components the components stage tests (parity.stages.components)
---@field max_capture_mb integer the most captured tensors of a forward a check holds in memory (past it they spill to OUT/captures: Context:hold) and keeps in the reference cache, in MiB
---@field out string          results directory
---@field log fun(msg: string)
---@field quiet boolean|nil   no progress on stderr
---@field cache_enabled boolean
---@field cache_dir string|nil  the reference cache (nil: none)
---@field memo table          what is computed once: the reference's outputs, the target's logits, captures
---@field components_sweep table|nil the component sweep (parity.sweep), once the scaffold paired components
---@field opened table         parity.forwards.now() when it opened (run.json counts from there)
local Context = {}
Context.__index = Context

--- The default reference cache: $XDG_CACHE_HOME/parity, else .cache/parity in $HOME or, with
--- HOME unset, in the user's home from the password database; nil (no cache) when none is known:
--- never a place others share, like /tmp.
function M.default_cache_dir()
  local xdg = os.getenv("XDG_CACHE_HOME")
  if xdg and xdg:sub(1, 1) == "/" then return xdg .. "/parity" end
  local home = os.getenv("HOME")
  if not home or home:sub(1, 1) ~= "/" then home = core.home_dir() end
  return home and home .. "/.cache/parity" or nil
end

--- The default --max-capture-mb: an eighth of this machine's memory (MemTotal), else 1024.
---@return integer MiB
function M.default_capture_mb()
  local f = io.open("/proc/meminfo")
  local text = f and f:read("*a") or ""
  if f then f:close() end
  local kb = tonumber(text:match("MemTotal:%s*(%d+) kB"))
  return kb and math.floor(kb / 1024 / 8) or 1024
end

--- The options parity.check{} (and parity inputs) take, and the Lua types each may have
--- (parity.CheckOptions says what each is).
M.OPTIONS = {
  reference = "string|table", target = "string|table", dtype = "string", prompts = "number", prompt_len = "number",
  new_tokens = "number", seed = "number", inputs = "string", topk = "number", vocab_size = "number",
  thresholds = "table", thresholds_file = "string", recipe_file = "string", baseline = "string", mapping = "table",
  mapping_file = "string", out = "string", cache = "boolean", cache_dir = "string", log = "function", quiet = "boolean",
  device = "string", reference_device = "string", file = "string", patches = "table", confirm = "boolean",
  unpatched = "boolean", stages = "table", downstream = "table", sweep = "string", max_capture_mb = "number",
}

--- Raises, naming the option, on a table of options that is none, an option parity does not
--- know (a typo would otherwise be ignored) or one of another type.
local function check_types(opts)
  if type(opts) ~= "table" then error(("check: expects a table of options, got %s"):format(type(opts)), 0) end
  if opts.reference == nil then error("check: option 'reference' is missing (the reference bundle or its path)", 0) end
  for k, v in pairs(opts) do
    local allowed = M.OPTIONS[k]
    if not allowed then
      error(("check: unknown option '%s' (known: %s)"):format(tostring(k),
        table.concat(validate.sorted_keys(M.OPTIONS), ", ")), 0)
    end
    if not ("|" .. allowed .. "|"):find("|" .. type(v) .. "|", 1, true) then
      local want = allowed == "string|table" and "path (a string) or a bundle (parity.bundle)" or allowed
      error(("check: option '%s' must be a %s, got %s"):format(k, want,
        type(v) == "string" and ("the string %q"):format(v:sub(1, 40)) or type(v)), 0)
    end
  end
end

--- Checks the options that need no model (their names and types, numbers in range, the dtype,
--- the baseline, the devices, the thresholds and mapping files): the CLI runs it before anything
--- in the results directory is touched.
---@param opts parity.CheckOptions
---@return parity.CheckOptions opts
function M.check_options(opts)
  check_types(opts)
  local max = validate.MAX
  validate.settings(opts, { prompts = { "integer", 1, max.rows }, prompt_len = { "integer", 1, max.tokens },
    new_tokens = { "integer", 1, max.new_tokens }, seed = { "integer", 0, max.seed },
    max_capture_mb = { "integer", 0, 2 ^ 40 },
    topk = { "integer", 1, max.topk }, vocab_size = { "integer", 1, max.vocab } })
  if opts.dtype ~= nil and opts.dtype ~= "bf16" and opts.dtype ~= "fp16" and opts.dtype ~= "fp32" then
    error(("--dtype must be bf16 or fp16 (the low precision under test), or fp32 (an fp32-only port), got %s")
      :format(tostring(opts.dtype)), 0)
  end
  if opts.sweep ~= nil and opts.sweep ~= "adaptive" and opts.sweep ~= "full" then
    error(("--sweep must be full (the default: every mapped component tested) or adaptive (not those inside a"
      .. " clean one), got %s"):format(tostring(opts.sweep)), 0)
  end
  if opts.baseline ~= nil and opts.baseline ~= "3-tensor" and opts.baseline ~= "2-tensor" then
    error(("baseline must be 3-tensor or 2-tensor, got %s"):format(tostring(opts.baseline)), 0)
  end
  for _, device in ipairs({ opts.device or "cpu", opts.reference_device or "cpu" }) do core.usable_device(device) end
  -- the files that are part of the command line: a bad one is a usage error too (loaded again,
  -- sandboxed, by M.open)
  if opts.thresholds_file then thresholds.load_file(opts.thresholds_file) end
  if opts.recipe_file then recipe.load(opts.recipe_file) end
  if opts.downstream then  -- both results files read now: a missing or foreign one is a usage error
    local d = opts.downstream
    if type(d.reference) ~= "string" or type(d.target) ~= "string" then
      error("check: option 'downstream' is {reference = RESULTS, target = RESULTS, tolerance = T}", 0)
    end
    if d.tolerance ~= nil then validate.number("downstream tolerance", d.tolerance, 0, 1) end
    require("parity.downstream").read(d.reference, "reference")
    require("parity.downstream").read(d.target, "target")
  end
  if opts.mapping_file then mapping.load_file(opts.mapping_file) end
  for i, p in ipairs(opts.patches or {}) do  -- patch files, or sets (parity.patches) made in a script
    if type(p) == "string" then patches.load_file(p)
    elseif type(p) ~= "table" or type(p.entries) ~= "table" then
      error(("check: option 'patches' lists patch files or sets (parity.patches), got a %s at %d"):format(type(p), i), 0)
    end
  end
  return opts
end

--- Validates the options, opens both bundles and makes the prompts. See parity.CheckOptions.
---@param opts parity.CheckOptions
---@return parity.Context
function M.open(opts)
  local max = validate.MAX
  M.check_options(opts)
  local ctx = setmetatable({ out = opts.out or "parity-results", log = opts.log or print,
    quiet = opts.quiet,
    progress_after = validate.env("PARITY_PROGRESS_AFTER", 2, 0, 1e6),
    cache_enabled = opts.cache ~= false, cache_dir = opts.cache_dir or M.default_cache_dir(),
    inputs_file = opts.inputs, sweep = opts.sweep or "full", memo = {},
    max_capture_mb = opts.max_capture_mb or M.default_capture_mb(), opened = require("parity.forwards").now() }, Context)
  if opts.cache_dir == "" then error("cache_dir must not be an empty path", 0) end  -- out: check.run's
  ctx.reference = bundle.open(opts.reference, opts.reference_device or opts.device)
  ctx.target = opts.target and bundle.open_target(opts.target, opts.device)  -- none for parity inputs
  M.precisions(ctx, opts.dtype or "bf16", opts.baseline)
  -- a recipe's thresholds (made for checks at this precision and baseline), a file's or a table's over them
  local rec = opts.recipe_file and recipe.load(opts.recipe_file)
  if rec then recipe.fits(rec, ctx.target_dtype, ctx.dtype, ctx.baseline) end
  ctx.recipe = rec and recipe.summary(rec)
  ctx.downstream = opts.downstream
  ctx.thresholds = thresholds.resolve(opts.thresholds_file and thresholds.load_file(opts.thresholds_file)
    or opts.thresholds, rec and rec.thresholds)
  ctx.mapping = opts.mapping_file and mapping.load_file(opts.mapping_file)
    or (opts.mapping and mapping.validate(opts.mapping, "mapping"))
  ctx.mapping_origin = opts.mapping_file and ("mapping file " .. opts.mapping_file) or "mapping"
  local s = { prompts = opts.prompts or 4, prompt_len = opts.prompt_len or 16, new_tokens = opts.new_tokens or 16,
              seed = opts.seed or 0, topk = opts.topk or 5 }
  -- fail early on a missing trace; the reference's load when a stage needs it (a check against
  -- a cached reference never runs its low precision)
  for _, d in ipairs({ ctx.anchor, ctx.dtype }) do ctx.reference:file(d) end
  if ctx.target and not ctx.target:has(ctx.target_dtype) and ctx.target:has("fp32") and not ctx.target.saved then
    error(("%s has no %s trace, only fp32: check an fp32-only port with --dtype fp32"):format(ctx.target.path,
      ctx.target_dtype), 0)
  end
  if opts.patches and #opts.patches > 0 then
    if not ctx.target or ctx.target.saved then
      error(("%s: saved logits cannot be patched: patch the model that computes them"):format(
        ctx.target and ctx.target.saved or "parity inputs"), 0)
    end
    -- a Bundle given as an object gets no patches that outlive this check: a fresh one of its path
    if type(opts.target) == "table" then ctx.target = bundle.open_target(ctx.target.path, opts.device) end
    ctx.patch_sets = {}
    for i, p in ipairs(opts.patches) do ctx.patch_sets[i] = type(p) == "string" and patches.load_file(p) or p end
    ctx.target:patch(ctx.patch_sets)
  end
  -- (its trace there, loaded by the first stage that runs it: a check holds one model at a time)
  if ctx.target then
    if ctx.target.saved then ctx.target:at(ctx.target_dtype) else ctx.target:file(ctx.target_dtype) end
  end
  if ctx.target and ctx.target.saved and not opts.inputs then
    error(("%s: pass --inputs FILE, the file parity inputs wrote and its engine ran"):format(ctx.target.saved), 0)
  end
  ctx.vocab = lm.shared_vocab(ctx.reference, ctx.target or ctx.reference, opts.vocab_size)
  if opts.inputs then
    local ids, meta = lm.tokens_from_file(opts.inputs, ctx.vocab)
    local text, p = meta.prompt_len, nil
    if text ~= nil then
      p = type(text) == "string" and text:match("^%d+$") and tonumber(text)
      if not p then
        error(("%s: its metadata's prompt_len must be a whole number (written by parity inputs), got %q"):format(
          opts.inputs, tostring(text):sub(1, 40)), 0)
      end
    end
    if p then  -- whole sequences, as parity inputs writes them: prompts, then the reference's continuation
      validate.integer(opts.inputs .. ": prompt_len", p, 1, ids:size(1) - 1)
      if opts.new_tokens and opts.new_tokens ~= ids:size(1) - p then
        error(("%s holds %d new tokens a sequence (written by parity inputs); --new-tokens %d disagrees"):format(
          opts.inputs, ids:size(1) - p, opts.new_tokens), 0)
      end
      ctx.given_sequences, s.new_tokens = ids, ids:size(1) - p
      ids = ids:narrow(1, 0, p)
    end
    ctx.prompts = ids
  else
    ctx.prompts = lm.random_tokens(ctx.vocab, s.prompts, s.prompt_len, s.seed)
  end
  s.prompts, s.prompt_len = ctx.prompts:size(0), ctx.prompts:size(1)
  validate.integer("prompts", s.prompts, 1, max.rows)
  validate.integer("prompt_len + new_tokens", s.prompt_len + s.new_tokens, 2, max.tokens)
  validate.integer("topk", s.topk, 1, math.min(ctx.vocab, max.topk))
  lm.check_size({ ctx.reference, ctx.target or ctx.reference }, s.prompts, s.prompt_len + s.new_tokens, ctx.vocab, 6)
  ctx.settings = s
  return ctx
end

--- The precisions of a check, on `ctx`: `target_dtype`, the target's under test; `dtype`, the
--- reference's low precision whose noise is the yardstick; `anchor`, what the target is compared
--- with; `baseline`. A check at bf16 (or fp16) compares the target at that precision with the fp32
--- reference over the reference's own noise there (3-tensor); a reference without an fp32 trace
--- (one that cannot run in fp32) is judged against itself (2-tensor: its low precision, and a run
--- of it perturbed by machine epsilon). An fp32 check (an fp32-only port) runs the target in fp32
--- only: against the reference's own low-precision noise when the reference has a low-precision
--- trace (the fp32 leg, e2e32, is the comparison), else against its fp32 reassociation level
--- (2-tensor at fp32: the reference perturbed by fp32's machine epsilon; e2e is the comparison).
---@param ctx parity.Context its reference already open
---@param want string the target's precision: "bf16", "fp16" or "fp32"
---@param baseline "3-tensor"|"2-tensor"|nil the baseline asked for (nil: what the reference allows)
function M.precisions(ctx, want, baseline)
  local ref = ctx.reference
  ctx.target_dtype = want
  if want ~= "fp32" then
    ctx.dtype, ctx.baseline = want, baseline or (ref:has("fp32") and "3-tensor" or "2-tensor")
  else
    ref:file("fp32")  -- an fp32 check needs the reference in fp32
    local low = baseline ~= "2-tensor" and (ref:has("bf16") and "bf16" or ref:has("fp16") and "fp16") or nil
    if baseline == "3-tensor" and not low then
      error(("--dtype fp32 --baseline 3-tensor: %s has no low-precision trace whose noise would be the yardstick"
        .. " (it has: %s); leave --baseline out to judge against its fp32 reassociation level"):format(ref.path,
        table.concat(ref:dtypes(), ", ")), 0)
    end
    ctx.dtype, ctx.baseline = low or "fp32", low and "3-tensor" or "2-tensor"
  end
  ctx.anchor = ctx.baseline == "3-tensor" and "fp32" or ctx.dtype
end

--- Whether the target runs at the low precision whose noise is the yardstick (false in an fp32
--- check against a reference's low-precision noise: the target runs in fp32 only).
---@return boolean
function Context:target_runs_low() return self.target_dtype == self.dtype end

--- Progress on stderr for work past 2 s (PARITY_PROGRESS_AFTER seconds): "stage i/n, elapsed",
--- redrawn in place on a terminal, a plain line every 10 s otherwise; nothing with opts.quiet,
--- and never in the JSON.
---@param stage string what is running
---@param i integer steps done
---@param n integer steps in all
function Context:progress(stage, i, n)
  if self.quiet then return end
  local now = core.clock()
  self.stage_started = (self.progress_stage == stage) and self.stage_started or now
  self.progress_stage = stage
  local elapsed = now - self.stage_started
  if elapsed < self.progress_after then return end
  local line = ("%s %d/%d  %.1f s"):format(stage, i, n, elapsed)
  if core.stderr_is_tty() then
    io.stderr:write("\r\27[K", line, i == n and "\n" or "")
  elseif now - (self.last_plain or 0) >= 10 or i == n then
    self.last_plain = now
    io.stderr:write(line, "\n")
  end
end

--- Narrows [K, P + N, V] logits to the N judged positions: those predicting the new tokens.
---@param logits parity.Tensor [K, P + N, V]
---@return parity.Tensor judged [K, N, V], contiguous
function Context:judged(logits)
  return logits:narrow(1, self.prompts:size(1) - 1, self.settings.new_tokens):contiguous()
end

--- The reference's side, computed once and cached on disk: `sequences` (the fp32 greedy
--- continuation of the prompts, [K, P + N]), `ref32` and `ref_low` (teacher-forced logits at
--- the judged positions) and `own_tokens` (the reference's own greedy tokens at the low precision).
--- With the 2-tensor baseline the low precision takes fp32's place (sequences, `ref32`) and the
--- perturbed low precision the low precision's (`ref_low`, `own_tokens`): the same formulas then
--- compare the target with the reference and its noise with the reference's own.
---@return parity.ReferenceOutputs
function Context:reference_outputs()
  if self.memo.reference then return self.memo.reference end
  local t0 = core.clock()
  local cache = self:cache_on()
  local path = cache and self:cache_path()
  local r, why
  if cache then
    r, why = self:read_cache_entry()
    why = why or (r and self:cached_outputs_problem(r))
    if why then r = nil end
  end
  if r then
    self.log(("reference: from cache %s (%.2f s)"):format(path, core.clock() - t0))
  else
    local ref, n, p = self.reference, self.settings.new_tokens, self.prompts:size(1)
    local anchor = self.anchor
    local decode, decoding = lm.decoding_forward(ref, anchor)
    local seqs = lm.greedy(ref, anchor, self.prompts, n, function(i, k) self:progress("reference greedy (" .. anchor .. ")", i, k) end,
      decode)
    local own = self.baseline == "2-tensor" and lm.perturbed(ref, self.dtype, self.settings.seed) or nil
    local function logits(dtype, forward)  -- a reference that is not finite leaves nothing to compare against
      local l = forward and forward(seqs) or self:tapped_logits("reference", dtype, seqs) or lm.forward(ref, dtype, seqs)
      local bad = core.metrics.non_finite(l)
      if bad.nan + bad.inf > 0 then
        error(("the reference %s (%s) has %d NaN and %d Inf in its own logits: fix the reference first"):format(
          ref.path, dtype, bad.nan, bad.inf), 0)
      end
      return self:judged((lm.fit_vocab(l, self.vocab)))
    end
    r = { sequences = seqs, ref32 = logits(anchor), ref_low = logits(self.dtype, own) }
    -- the reference's own low-precision greedy tokens, decoded from its first divergence
    r.own_tokens = lm.greedy_from(own or lm.decoding_forward(ref, self.dtype), self.prompts,
      seqs:narrow(1, p, n), r.ref_low:argmax(-1), function(i, k)
        self:progress(("reference greedy (%s%s)"):format(self.dtype, own and ", perturbed" or ""), i, k) end)
    if cache then
      self.log(("reference: computed in %.2f s%s, cached as %s%s"):format(core.clock() - t0,
        why and (" (the cache entry was ignored: " .. why .. ")") or "", path, lm.decoding_note(decoding)))
      self:cache_write(path, function()
        core.remove_stale_temps(self.cache_dir)
        core.tensors.save(path, r, self:cache_metadata())
      end)
    else
      self.log(("reference: computed in %.2f s (cache off)%s"):format(core.clock() - t0, lm.decoding_note(decoding)))
    end
  end
  local given = self.given_sequences
  if given and given ~= r.sequences then
    error(("%s: its sequences are not the greedy continuation of %s with these settings (another reference,"
      .. " dtype or baseline made them?): run parity inputs again"):format(self.inputs_file, self.reference.path), 0)
  end
  r.tokens = r.sequences:narrow(1, self.prompts:size(1), self.settings.new_tokens)  -- the judged tokens
  self.memo.reference = r
  -- the component sweep's reference side while its last model is loaded (its own noise at the low precision)
  if self.components_sweep then self.components_sweep.reference_side() end
  return r
end

--- The target's teacher-forced logits over the reference's whole sequences at `dtype`
--- ([K, P + N, V], float32), computed once per dtype; their shape is checked against the reference's.
--- When the scaffold stage has paired components, the forward runs with their taps, and the
--- components stage takes its captures (Context:take_calls) instead of running it again.
---@param dtype string "fp32", "bf16" or "fp16"
---@return parity.Tensor logits [K, P + N, V], cut to the compared vocabulary
function Context:target_logits(dtype)
  local key = "target_" .. dtype
  if self.memo[key] then return self.memo[key] end
  local r = self:reference_outputs()
  local t = self:tapped_logits("target", dtype, r.sequences)
  -- the component sweep's pass of this model, while it is loaded (parity.sweep)
  if self.components_sweep then
    self.components_sweep.target_pass(dtype, self:take_calls("target", dtype), self.memo.tap_error)
  end
  t = t or lm.forward(self.target, dtype, r.sequences)
  -- a padded LM head: its extra columns are left out of every comparison, their wins kept (e2e's criterion)
  local padded
  t, padded = lm.fit_vocab(t, self.vocab, self.reference:vocab_size())
  self.memo["padded_" .. dtype] = padded
  lm.check_shape(t, { r.sequences:size(0), r.sequences:size(1), r.ref32:size(2) }, self.reference.path, self.target.path)
  self.memo[key] = t
  return t
end

--- A padded LM head's extra columns in the target's logits at `dtype` ({columns, wins,
--- positions}; nil when its vocabulary is the reference's), once Context:target_logits has run.
---@param dtype string
---@return {columns: integer, wins: integer, positions: integer}|nil
function Context:padded_columns(dtype) return self.memo["padded_" .. dtype] end

--- Writes the token sequences a check with these settings compares on (the prompts and the
--- reference's greedy continuation, [K, P + N]) to a safetensors file as input_ids, with
--- prompt_len and new_tokens in its metadata: what a foreign engine runs before its logits are
--- checked (parity.saved). Computes (and caches) the reference's side, as a check would.
---@param opts table parity.CheckOptions without target, plus file (the .safetensors to write)
---@return {file: string, shape: integer[], prompt_len: integer, new_tokens: integer}
function M.write_inputs(opts)
  if not tostring(opts.file):find("%.safetensors$") then
    error(("inputs go to a .safetensors file (input_ids and their prompt length), got %s"):format(tostring(opts.file)), 0)
  end
  local ctx = M.open(opts)
  local seqs = ctx:reference_outputs().sequences
  local s = ctx.settings
  core.tensors.save(opts.file, { input_ids = seqs }, { prompt_len = tostring(s.prompt_len),
    new_tokens = tostring(s.new_tokens), reference = ctx.reference.path, baseline = ctx.baseline, dtype = ctx.dtype })
  return { file = opts.file, shape = seqs:size(), prompt_len = s.prompt_len, new_tokens = s.new_tokens }
end

--- From now on, the models' logits come from forwards tapped on these pairs' components
--- (Context:tapped_logits), and each model's pass runs the component sweep's part of it
--- (parity.sweep, Context.components_sweep: the components stage's): the scaffold stage says so once it
--- has paired them.
---@param pairs_ parity.MappingPair[] mapping pairs
---@param ref_modules parity.ModuleInfo[] the reference's modules (Module:modules)
function Context:tap_components(pairs_, ref_modules)
  self.tapped_pairs = pairs_
  self.components_sweep = require("parity.sweep").new(self, pairs_, ref_modules)
end

--- A model's logits from a forward tapped on the components paired (Context:tap_components),
--- its captures kept for the components stage (Context:take_calls), which then runs it no more;
--- nil (run the plain forward) without pairs, for saved logits, or when the model cannot be tapped.
---@param side "reference"|"target"
---@param dtype string
---@param sequences parity.Tensor token ids [K, T]
---@return parity.Tensor|nil logits float32 [K, T, V'] (the model's whole width)
function Context:tapped_logits(side, dtype, sequences)
  local b = self[side]
  if not self.tapped_pairs or b.saved then return nil end
  local ref_paths, tgt_paths = mapping.paths(self.tapped_pairs)
  self.memo.tap_error = nil
  local ok, out, calls = pcall(b.tapped_run, b, dtype, sequences, side == "reference" and ref_paths or tgt_paths)
  if not ok then  -- the plain forward says what went wrong (or the components stage does)
    self.memo.tap_error = out
    return nil
  end
  calls = self:hold(calls, side == "reference" and ref_paths or tgt_paths, side .. "_" .. dtype)
  self.memo[("calls_%s_%s"):format(side, dtype)] = calls
  return lm.logits_of(out, ("%s (%s)"):format(b.path, dtype)):float()
end

--- A tapped forward's captured calls as the check holds them: in memory up to --max-capture-mb
--- (Context.max_capture_mb), past it written to OUT/captures/NAME.safetensors and read back a
--- path at a time (parity.captures: the sweep then holds a component's captures at a time, not
--- the model's): `calls` is emptied then. The files go when the check ends (Context:close).
---@param calls table<string, parity.TapCall[]>|nil
---@param paths string[] the paths captured
---@param name string which forward: "reference_fp32", "target_bf16", ...
---@return table<string, parity.TapCall[]>|nil
function Context:hold(calls, paths, name)
  if not calls or captures.on_file(calls) then return calls end
  local bytes = captures.bytes(calls, paths)
  if bytes <= self.max_capture_mb * 2 ^ 20 then return calls end
  local file = self:spill(name, bytes, captures.encode(calls, paths), ("the %s forward's captures"):format((name:gsub("_", " "))))
  for p in pairs(calls) do calls[p] = nil end  -- (emptied: the caller's table holds them no more,
  core.collect()                              -- and their memory goes now, not at a later collection)
  return captures.open(file, paths, bytes)
end

--- Named tensors (`kept`: name -> Tensor, or false for none) held as Context:hold holds captures:
--- past --max-capture-mb, written to OUT/captures/NAME.safetensors and read back a tensor at a
--- time when indexed (`kept` is emptied then). The sweep's re-run outputs of the reference.
---@param kept table<string, parity.Tensor|false>
---@param name string
---@return table<string, parity.Tensor|false>
function Context:hold_tensors(kept, name)
  local bytes, tensors, none = 0, {}, {}
  for k, t in pairs(kept) do
    if t then bytes, tensors[k] = bytes + t:nbytes(), t else none[k] = true end
  end
  if bytes <= self.max_capture_mb * 2 ^ 20 then return kept end
  local file = self:spill(name, bytes, tensors, ("the %s' re-run outputs"):format((name:gsub("_", " "))))
  local on_file = {}
  for k in pairs(tensors) do on_file[k] = true end
  for k in pairs(kept) do kept[k] = nil end
  tensors = nil
  core.collect()
  return setmetatable({}, { __index = function(_, k)
    if none[k] then return false end  -- (run, without an output)
    return on_file[k] and core.tensors.load(file, { names = { k } })[k] or nil
  end })
end

--- Writes what Context:hold or Context:hold_tensors spills, logs it and notes it for
--- Context:close; returns the file.
function Context:spill(name, bytes, tensors, what)
  local file = ("%s/captures/%s.safetensors"):format(self.out, name)
  core.tensors.save(file, tensors)
  self.memo.spilled = self.memo.spilled or {}
  self.memo.spilled[#self.memo.spilled + 1] = { file = file, forward = name, bytes = bytes }
  self.log(("captures: %s (%.0f MB) are past --max-capture-mb %d: spilled to %s, read back a"
    .. " component at a time"):format(what, bytes / 2 ^ 20, self.max_capture_mb, file))
  return file
end

--- What the check leaves behind it, once its results are written: the captures it spilled
--- (Context:hold) are removed. Returns what was spilled, for run.json.
---@return {file: string, forward: string, bytes: number}[]
function Context:close()
  local spilled = self.memo.spilled or {}
  for _, s in ipairs(spilled) do os.remove(s.file) end
  if #spilled > 0 then os.remove(self.out .. "/captures") end
  self.memo.spilled = nil
  return spilled
end

--- The captured calls of a tapped forward (Context:tapped_logits), handed over once (the memo
--- lets go of them); nil when there are none.
---@param side "reference"|"target"
---@param dtype string
---@return table<string, parity.TapCall[]>|nil calls path -> its calls (Module:run_tapped)
function Context:take_calls(side, dtype)
  local key = ("calls_%s_%s"):format(side, dtype)
  local calls = self.memo[key]
  self.memo[key] = nil
  return calls
end

refcache.install(Context)

return M
