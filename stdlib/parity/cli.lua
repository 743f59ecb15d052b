--- The `parity` command line. bindings/main.cpp hands argv here; each command returns an
--- exit code: 0 ok, 1 a check failed, 2 usage, input or environment error.
local parity = require("parity")

local M = {}

local USAGE = [[
parity — is the port equivalent to the reference, and if not, where does it break?

Usage: parity [--stdlib-dir DIR] COMMAND [ARGS...]

Commands:
  check REF TARGET           the default workflow: teacher-forced comparison (bf16 and fp32 legs), verdict
  report DIR                 the summary of a finished check, again, from its results directory
  gate REF TARGET            logit verifier: target vs reference logits, allclose at one dtype
  inputs REF --out FILE      the token sequences of a check, for a foreign engine to run
  dump MODEL --inputs F --out DIR   a model's per-layer tensors, for parity diff
  diff REF_DUMP TARGET_DUMP  two per-layer dumps compared: the first layer and sub-stage that diverges
  matrix FILE                a (model x prompt) matrix of engine runs diffed against reference dumps
  run SCRIPT.lua [ARGS...]   run a validation script (ARGS reach it as `arg` and `...`)
  tree MODEL                 print a model's module tree (--compressed, --flat, --json)
  version                    print versions of parity, LuaJIT and LibTorch
  help [COMMAND]             this text, or a command's help

Global options:
  --stdlib-dir DIR   load the Lua stdlib from DIR (e.g. ./stdlib) instead of the embedded copy;
                     PARITY_STDLIB_DIR does the same
Environment (validated: a value out of range is an error, exit 2):
  PARITY_THREADS     torch threads (default: every core)
  PARITY_GC_MB       tensor megabytes allocated between forced Lua collections (default 256)
  PARITY_PROGRESS_AFTER  seconds a check stage runs before its progress shows on stderr (2)
  PARITY_EXECUTOR    TorchScript's executor: off (default: graphs run as traced), legacy or
                     profiling (torch's default, slower for the few forwards a check runs)
  PARITY_SANDBOX_INSTRUCTIONS, PARITY_SANDBOX_MB, PARITY_SANDBOX_SECONDS
                     limits of sandboxed Lua files (1e8 instructions, 64 MB, 10 s)
  PARITY_DEBUG=1     show Lua tracebacks for command errors

Exit codes: 0 ok, 1 a check failed, 2 usage, input or environment error.
MODEL, REF and TARGET are TorchScript .pt files or bundle directories (fp32.pt, bf16.pt,
fp16.pt, parity.json), as scripts/parity_export.py writes them. TARGET may also be the logits a
foreign engine saved for the sequences of parity inputs (see parity inputs --help).]]

local function stderr(fmt, ...)
  io.stderr:write((fmt):format(...), "\n")
end

--- Errors raised for bad command lines carry this marker, so they print without a traceback.
local function usage_error(msg)
  error({ usage = msg }, 0)
end

local clean = require("parity.errors").clean

--- list[from..] as a new list (unpack overflows LuaJIT's stack on a few thousand arguments).
local function tail(list, from)
  local out = {}
  for i = from, #list do out[#out + 1] = list[i] end
  return out
end

--- The edit distance of two strings: insertions, deletions, substitutions and swaps of two
--- neighbours (promts -> prompts 1, atlo -> atol 1).
local function distance(a, b)
  local d = {}
  for i = 0, #a do d[i] = { [0] = i } end
  for j = 1, #b do d[0][j] = j end
  for i = 1, #a do
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      d[i][j] = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        d[i][j] = math.min(d[i][j], d[i - 2][j - 2] + 1)
      end
    end
  end
  return d[#a][#b]
end

--- The names nearest to `word`, when close enough to be a typo of them: at most 2 edits, and
--- at most a third of the name (one for names of up to 5 letters); "" when none is.
---@param names string[]
---@param prefix string written before each name ("--" for flags)
---@return string " (did you mean --a?)", or ""
local function nearest(word, names, prefix)
  local best, found = math.huge, {}
  for _, name in ipairs(names) do
    local d = distance(word, name)
    if d <= 2 and d <= math.max(1, math.floor(#name / 3)) then
      if d < best then best, found = d, {} end
      if d == best then found[#found + 1] = prefix .. name end
    end
  end
  if #found == 0 then return "" end
  table.sort(found)
  return (" (did you mean %s?)"):format(table.concat(found, " or "))
end

--- The keys of a table, as a list.
local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  return out
end

--- Parses `--flag`, `--key value`, `--key=value` and positionals against a spec.
---@param argv string[]
---@param spec table { flags = { name = "boolean"|"string"|"number" }, positional = { "NAME", ... } }
local function parse(argv, spec)
  local opts, pos = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local key, value = a:match("^%-%-([%w%-]+)=(.*)$")
    key = key or a:match("^%-%-([%w%-]+)$")
    if key then
      local kind = spec.flags[key]
      if not kind then usage_error(("unknown option --%s%s"):format(key, nearest(key, keys(spec.flags), "--"))) end
      if kind == "boolean" then
        if value then usage_error(("--%s takes no value"):format(key)) end
        opts[key] = true
      else
        if not value then
          i = i + 1
          value = argv[i]
          if not value then usage_error(("--%s needs a value"):format(key)) end
        end
        if value == "" then usage_error(("--%s needs a value, got an empty one (an unset shell variable?)"):format(key)) end
        if kind == "number" then
          local n = require("parity.validate").decimal(value)
          if not n then usage_error(("--%s needs a number, got '%s'"):format(key, value)) end
          value = n
        end
        opts[key] = value
      end
    else
      if a == "" then usage_error("an empty argument (an unset shell variable?)") end
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  if #pos < #spec.positional then
    usage_error(("missing %s"):format(spec.positional[#pos + 1]))
  end
  if #pos > #spec.positional then usage_error(("unexpected argument '%s'"):format(pos[#spec.positional + 1])) end
  for i2, name in ipairs(spec.positional) do opts[name] = pos[i2] end
  return opts
end

--- Module paths only Hugging Face transformers' models have (Llama, Mistral, Qwen, Gemma, ...,
--- GPT-NeoX, GPT-2): a reference has them, a port of one usually names its modules otherwise.
--- The --out of a command line that did not parse (the last one given), or nil.
local function out_given(argv)
  local out
  for i, a in ipairs(argv) do
    if a == "--out" then out = argv[i + 1] end
    out = a:match("^%-%-out=(.+)$") or out
  end
  return out
end

local HF_PATHS = { "%.self_attn%.[qkvo]_proj$", "%.mlp%.gate_proj$", "%.mlp%.up_proj$", "%.mlp%.down_proj$",
  "%.input_layernorm$", "%.post_attention_layernorm$", "embed_tokens$", "^gpt_neox%.layers%.%d+%.attention$",
  "^transformer%.h%.%d+%.attn%.c_attn$" }

--- The module path of a scaffold/<side>.flat.tsv that looks most like Hugging Face's (by the
--- order of HF_PATHS), or nil; false when the file cannot be read.
local function hf_path(file)
  local f = io.open(file, "r")
  if not f then return false end
  local paths = {}
  for line in f:lines() do paths[#paths + 1] = line:match("^([^\t]+)") end
  f:close()
  for _, pattern in ipairs(HF_PATHS) do
    for _, path in ipairs(paths) do
      if path:find(pattern) then return path end
    end
  end
  return nil
end

--- A divergent check whose target has Hugging Face's module names while its reference has none
--- (a port's) was likely given in the wrong order: a hint line saying so, else nil. Never on an
--- equivalent verdict, nor when both or neither look like Hugging Face's.
local function swap_hint(verdict, out)
  local scaffold = verdict.summaries and verdict.summaries.scaffold
  if verdict.verdict ~= "divergent" or type(scaffold) ~= "table" then return nil end  -- this run's trees only
  local target = hf_path(out .. "/scaffold/target.flat.tsv")
  if not target then return nil end
  if hf_path(out .. "/scaffold/reference.flat.tsv") ~= nil then return nil end  -- HF-named, or no tree
  return ("hint: is the order swapped? parity check REFERENCE TARGET: the reference is the first argument"
    .. " (the target has Hugging Face's module names, %s; the reference has none)"):format(target)
end

local commands = {}

commands.version = {
  help = "Usage: parity version\n\nPrints the versions of parity, LuaJIT and LibTorch and torch's thread count.",
  run = function(argv)
    parse(argv, { flags = {}, positional = {} })
    print(parity.version())
    return 0
  end,
}

commands.tree = {
  help = [[
Usage: parity tree MODEL [--compressed | --flat | --json]

Prints the module tree of a TorchScript model or bundle (its fp32 trace, else the first one),
in execution order: the order forward() first calls each submodule.

  (default)     box-drawn tree: name: Class  [parameters]
  --compressed  the same, with runs of identical numbered siblings folded: layers.{0..27}
  --flat        one module a line: path<TAB>class<TAB>parameters incl. children (root: "(root)")
  --json        nested JSON: {name, path, type, params, total_params, children}

Module paths are what component mappings and `Module:child(path)` use.]],
  run = function(argv)
    local o = parse(argv, { flags = { flat = "boolean", json = "boolean", compressed = "boolean" }, positional = { "MODEL" } })
    if (o.flat and 1 or 0) + (o.json and 1 or 0) + (o.compressed and 1 or 0) > 1 then
      usage_error("--compressed, --flat and --json exclude each other")
    end
    local b = parity.bundle(o.MODEL)
    local modules = b:at(b:dtypes()[1]):modules()
    local tree = require("parity.tree")
    if o.json then
      print(parity.json.encode(tree.nested(modules), { indent = 2 }))
    elseif o.flat then
      print(tree.flat(modules))
    elseif o.compressed then
      print(tree.compressed(modules))
    else
      print(tree.pretty(modules))
    end
    return 0
  end,
}

commands.gate = {
  help = [[
Usage: parity gate REF TARGET [options]

The logit verifier. Runs both models on the same token ids and checks the target's logits
against the reference's at one dtype with allclose (|t - r| <= atol + rtol |r|). Prints PASS or
FAIL, the smallest tolerances that would have passed, and the worst positions. NaN or Inf in
the target never passes. Exit 0 pass, 1 fail, 2 bad input.

  --dtype D        fp32, bf16 or fp16 (default: fp32 if the target has it, else its first dtype)
  --batch N        random token rows (default 2)
  --seq N          tokens a row (default 32)
  --seed N         seed of the random tokens (default 0)
  --inputs FILE    token ids from FILE.safetensors (input_ids, or its only tensor) instead
  --atol X         absolute tolerance (defaults: fp32 1e-4, bf16 2e-2, fp16 2e-3)
  --rtol X         relative tolerance (defaults: fp32 1e-4, bf16 2e-2, fp16 2e-3)
  --json FILE      also write the full result as JSON
  --vocab-size V   the vocabulary of the random tokens, overriding what the bundles say
  --device D       where the models run: cpu (default) or cuda[:N]; without that GPU here,
                   one line and exit 2. Inputs go to the models' devices and their outputs
                   and captures come back to the CPU, where the metrics run
  --reference-device D  the reference's device, when it differs (default: --device)
The vocabulary comes from parity.json, else the embedding weight, else the logits' width.
TARGET may be the logits a foreign engine saved (see parity inputs --help): the token ids are
then --inputs FILE, else the input_ids saved with them; --dtype picks the reference's logits
and the tolerances (default fp32; --dtype bf16 for an engine computing in bf16).
Limits: batch <= 1024, seq <= 131072 (and the models' max_position_embeddings), tolerances
finite and >= 0, logits and a forward that fit in the memory available.]],
  run = function(argv)
    local o = parse(argv, {
      flags = { dtype = "string", batch = "number", seq = "number", seed = "number", inputs = "string",
                atol = "number", rtol = "number", json = "string", ["vocab-size"] = "number", device = "string",
                ["reference-device"] = "string" },
      positional = { "REF", "TARGET" },
    })
    local result = parity.gate({ reference = o.REF, target = o.TARGET, dtype = o.dtype, batch = o.batch,
      seq = o.seq, seed = o.seed, inputs = o.inputs, atol = o.atol, rtol = o.rtol, vocab_size = o["vocab-size"],
      device = o.device, reference_device = o["reference-device"] })
    print(require("parity.stages.gate").summary(result))
    if o.json then parity.json.write(o.json, result) end
    return result.pass and 0 or 1
  end,
}

commands.check = {
  help = [[
Usage: parity check REF TARGET [options]

The default workflow's end-to-end stages. K random prompts; the fp32 reference continues each
greedily for N tokens; then every model sees those same sequences (teacher forcing):
  scaffold  both module trees (OUT/scaffold/) and how their components pair up
  smoke  the target's own greedy continuation vs the reference's, next to the reference's own
         at the low precision: match rate, first divergence (a warning, not a criterion)
  e2e    per generated position at the low precision: R = ||t - r32|| / ||r_low - r32||,
         cosine, KL(P_r32 || P_t) next to the reference's own, top-1 / top-k agreement, delta p
         of the reference's token; p5/p50/p95/max; near-ties (flips within the reference's own
         precision noise) reported apart
  e2e32  the fp32 leg, when the target has an fp32 trace: R32 = ||t32 - r32|| / ||r_low - r32||
         sees bugs smaller than the low-precision noise (skipped, and said, otherwise)
  components, localize  every mapped component on the reference's real inputs (R, R32 each),
         then the first divergent component and what kind of bug it looks like
TARGET may be the logits a foreign engine saved for the sequences of parity inputs (see its
--help; pass the same --inputs FILE here): scaffold, smoke, components and localize run the
target's modules, so they are skipped and say so; e2e32 runs when an fp32 run was saved too.
A reference without an fp32 trace (one too large to run in fp32) is judged with the 2-tensor
baseline: the target against the reference at the low precision, over the reference's own
change when its first layer's input is perturbed by machine epsilon; no fp32 leg.
An fp32-only port (making fp32 exact is a port's first milestone): --dtype fp32 runs every
stage with the target in fp32. Against the reference's own bf16 (or fp16) noise when it has that
trace: e2e32 is the comparison (R32 p95 < 3e-4) and e2e is skipped, saying why; else against the
reference's fp32 reassociation level (its first layer's input perturbed by fp32's machine
epsilon, the 2-tensor baseline at fp32): e2e is the comparison and e2e32 is skipped. Components
and localisation run in fp32; a divergence is a computation difference (cause formula or finer).
Criteria (thresholds: --thresholds FILE.lua returning e.g. { kl_ratio = 1.5 }):
  R p95 < 1.2; R32 p95 < 3e-4; KL p95 <= max(2 x the reference's own, 1e-4);
  1 - cosine p5 <= max(2 x the reference's own, 1e-6); top-1 agreement (near-ties excluded)
  > 0.5; no NaN/Inf anywhere in the target's logits (not only at the judged positions)
Verdict "equivalent" only if every criterion passes; "divergent" comes with a cause: formula
(differs in fp32 too), precision (exact in fp32, not at bf16), non_finite, or unknown (no fp32
trace). Exit 0 equivalent, 1 divergent, 2 bad input.

  --dtype D          the low precision under test: bf16 (default) or fp16; or fp32 for a port
                     that only runs in fp32 (below)
  --prompts K        number of prompts (default 4)
  --prompt-len P     tokens a prompt (default 16)
  --new-tokens N     greedy tokens generated and compared (default 16)
  --seed N           seed of the random prompts (default 0)
  --inputs FILE      prompts from FILE.safetensors (input_ids [K, P]) instead; a file parity
                     inputs wrote holds whole sequences: its prompts and new tokens are used
  --topk K           k of the top-k agreement (default 5)
  --vocab-size V     the vocabulary of the random prompts, overriding what the bundles say
  --thresholds FILE  criteria thresholds (Lua, run sandboxed: docs/sandbox.md)
  --baseline B       3-tensor (default when the reference has fp32) or 2-tensor (the default
                     otherwise; forces it on a reference that has fp32 too)
  --mapping FILE     which target components compute which reference components (Lua, run
                     sandboxed; default: identity for identical trees, else proposed from the
                     weights and written to OUT/scaffold/mapping.lua to save and edit)
  --out DIR          the results directory (default parity-results): verdict.json, scaffold/
                     (the trees, the mapping) and a JSON a stage:
                     STAGE_FILES
  --no-cache         recompute the reference's outputs
  --quiet            no progress on stderr and no log lines (the summary and the files only)
  --cache-dir DIR    reference cache (default $XDG_CACHE_HOME/parity or ~/.cache/parity)
  --device D         where the models run: cpu (default) or cuda[:N]; without that GPU here,
                     one line and exit 2. Inputs go to the models' devices and their outputs
                     and captures come back to the CPU, where the metrics run
  --reference-device D  the reference's device, when it differs (default: --device)
The reference's outputs are cached, keyed by its files, the inputs and the settings: a second
check against a changed target runs only the target.
Limits: prompts <= 1024, new tokens <= 4096, prompt + new tokens <= 131072 (and the models'
max_position_embeddings), top-k <= 1000, logits and a forward that fit in the memory available.
A bad command line (an unknown flag, a number out of range, a --dtype, --baseline or --device
it cannot take, a --thresholds or --mapping file that does not load) is refused before anything runs: in --out it only marks an earlier verdict.json
"error" (the other results stay as they were); any other run that ends in an error leaves a
verdict.json saying "error", never an earlier verdict. A divergent check whose
target has Hugging Face's module names and whose reference has none ends with a hint that the
two may be swapped.]],
  run = function(argv)
    -- the whole command line first: a bad one (a typo'd flag, a number out of range) only marks
    -- the last run's verdict in --out as an error (an automation loop must not read it as this
    -- run's), and leaves its other results as they were
    local ok, o = pcall(parse, argv, {
      flags = { dtype = "string", prompts = "number", ["prompt-len"] = "number", ["new-tokens"] = "number",
                seed = "number", inputs = "string", topk = "number", thresholds = "string", out = "string",
                ["no-cache"] = "boolean", ["cache-dir"] = "string", ["vocab-size"] = "number", mapping = "string",
                quiet = "boolean", baseline = "string", device = "string", ["reference-device"] = "string" },
      positional = { "REF", "TARGET" },
    })
    local out = ok and (o.out or "parity-results") or out_given(argv)
    local opts = ok and { reference = o.REF, target = o.TARGET, dtype = o.dtype, prompts = o.prompts,
      prompt_len = o["prompt-len"], new_tokens = o["new-tokens"], seed = o.seed, inputs = o.inputs,
      topk = o.topk, thresholds_file = o.thresholds, out = out, cache = not o["no-cache"],
      cache_dir = o["cache-dir"], vocab_size = o["vocab-size"], mapping_file = o.mapping, quiet = o.quiet,
      baseline = o.baseline, device = o.device, reference_device = o["reference-device"],
      log = o.quiet and function() end or nil }
    if ok then ok, o = pcall(require("parity.context").check_options, opts) end
    if not ok then
      if out and parity.path_kind(out .. "/verdict.json") == "file" then
        require("parity.verdict").mark_usage_error(out, clean(type(o) == "table" and o.usage or o))
      end
      error(o, 0)
    end
    os.remove(out .. "/verdict.json")  -- then an earlier verdict goes, before anything can fail
    local verdict = parity.check(opts)
    print(require("parity.report.terminal").render(verdict, out))
    local hint = swap_hint(verdict, out)
    if hint then print(hint) end
    return verdict.verdict == "equivalent" and 0 or 1
  end,
}

do  -- the check's stage files, from its stage list, wrapped under --out's text
  local text, line, stages = {}, "", require("parity.check").STAGES
  for i, name in ipairs(stages) do
    local item = name .. ".json" .. (i < #stages and "," or "")
    if #line + #item > 75 then text[#text + 1], line = line, "" end
    line = line == "" and item or line .. " " .. item
  end
  text[#text + 1] = line
  commands.check.help = commands.check.help:gsub("STAGE_FILES", table.concat(text, "\n" .. (" "):rep(21)))
end

commands.report = {
  help = [[
Usage: parity report DIR

Prints the summary of a finished check again, from its results directory alone (DIR/verdict.json
and the stage summaries in it): the same lines `parity check` printed. An error verdict prints
its message. Exit 0 equivalent, 1 divergent or error, 2 when DIR holds no verdict parity wrote.]],
  run = function(argv)
    local o = parse(argv, { flags = {}, positional = { "DIR" } })
    local text, v = require("parity.report.terminal").from_dir(o.DIR)
    print(text)
    return v.verdict == "equivalent" and 0 or 1
  end,
}

commands.inputs = {
  help = [[
Usage: parity inputs REF --out FILE.safetensors [options]

Writes the token sequences `parity check` compares on, for a foreign engine (a C++ runtime, a
compiled graph only its own runtime runs) to run: K random prompts and the reference's greedy
continuation of each, input_ids [K, P + N] (int64), with prompt_len and new_tokens in the file's
metadata. Run the engine on every row, save its logits [K, P + N, V] (safetensors, .npy, or raw
.bin with a .json sidecar {"dtype": "float32", "shape": [K, T, V]}), then
  parity check REF LOGITS --inputs FILE.safetensors     (and parity gate REF LOGITS --inputs FILE)
where LOGITS is that file, or a directory with logits.* (and optionally logits_fp32.*, an fp32
run: the fp32 leg, and input_ids.*, checked against FILE). The reference's side is computed
and cached here, so the check after runs nothing of it again.

  --out FILE         the .safetensors file to write (required)
  --dtype D          the precision the check will use: bf16 (default), fp16 or fp32
  --prompts K, --prompt-len P, --new-tokens N, --seed S, --vocab-size V, --baseline B,
  --inputs FILE, --no-cache, --cache-dir DIR, --quiet, --device D
                     as for parity check (the same settings give the same sequences)
Exit 0 written, 2 bad input.]],
  run = function(argv)
    local o = parse(argv, {
      flags = { dtype = "string", prompts = "number", ["prompt-len"] = "number", ["new-tokens"] = "number",
                seed = "number", inputs = "string", out = "string", ["no-cache"] = "boolean", ["cache-dir"] = "string",
                ["vocab-size"] = "number", quiet = "boolean", baseline = "string", device = "string" },
      positional = { "REF" },
    })
    if not o.out then usage_error("missing --out FILE.safetensors") end
    local w = require("parity.context").write_inputs({ reference = o.REF, file = o.out, dtype = o.dtype,
      prompts = o.prompts, prompt_len = o["prompt-len"], new_tokens = o["new-tokens"], seed = o.seed, inputs = o.inputs,
      cache = not o["no-cache"], cache_dir = o["cache-dir"], vocab_size = o["vocab-size"], quiet = o.quiet,
      baseline = o.baseline, device = o.device, log = o.quiet and function() end or nil })
    print(("parity inputs: wrote %s: input_ids [%s] (%d prompt + %d new tokens a sequence)"):format(
      w.file, table.concat(w.shape, ", "), w.prompt_len, w.new_tokens))
    return 0
  end,
}

commands.diff = {
  help = [[
Usage: parity diff REF_DUMP TARGET_DUMP [options]

Compares two dumps of per-layer tensors (a reference's, from parity dump or a script, and a
foreign engine's) tensor by tensor, in layer order, and says where they part. A dump is a
directory of tensor files named by where they were taken, or one .safetensors of named tensors:
  emb, h{l}_in, h{l}_postattn (after attention + residual), h{l}_preffn (the FFN's input),
  h{l}_ffnout (the FFN's output), h{l} (layer l's output), post_norm, logits
as .safetensors, .npy or raw .bin with a .json sidecar {"dtype": "float32", "shape": [...]}.
Tensors are [..., positions, width]; a dump of one position ([width]) is compared with the
other side's position --pos (default 0). Per tensor and position: relative L2 ||t-r||/||r||,
cosine, max |t-r|; the table shows the worst position, |t|/|r| (a sub-stage losing or gaining
magnitude) and steps (an error x3 above what earlier layers reached at that sub-stage). The
report: the first tensor and position past its thresholds, the localisation (the main step up
to it, the first within a step factor of the largest: which layer, which sub-stage), and the
residual-leak fit h_l ≈ ref h_l + α·ref h_{l-1}. Within the thresholds, the main step is still
said: a bug smaller than the thresholds (fp32 dumps: pass --expected-noise 1e-6 to lower the
step floor from one bf16 rounding).

  --pos N              compare position N of each sequence only (default: every position)
  --names FILE.lua     name mapping, run sandboxed, for dumps named otherwise:
                       return { ["blk.0.out"] = "h0", ["^blk%.(%d+)%.ffn$"] = "h%1_ffnout" }
  --thresholds FILE.lua  return { rel_l2 = 0.05, cosine = 0.99, max_abs = 1, step = 3,
                       expected_noise = 0.03, layers = { logits = { cosine = 0.9, rel_l2 = 1 },
                       ["^h%d+_ffnout$"] = { rel_l2 = 0.1 } } }   (defaults: rel_l2 0.05,
                       cosine 0.99, no max_abs, step 3, noise_factor 2: see --expected-noise)
  --expected-noise X   the per-layer relative error a correct engine has (Q4: about 0.03; fp32:
                       1e-6): layer l may reach max(rel_l2, noise_factor·X·sqrt(l+1))
                       (compounding), and a step must clear 3·X (default floor 2^-8, one bf16
                       rounding)
  --only NAMES         compare only these tensors: names or ^patterns, comma-separated
                       (e.g. emb,^h%d+$); each must be in the target too. Without it the
                       target must have every layer's output h{l} and the logits the reference
                       has, or the verdict is INCOMPLETE. What it leaves out is said
  --json FILE          also write the full report as JSON
A threshold more than 10x looser than its default (rel_l2 > 0.5, cosine < 0.9, ...) is a
warning; thresholds under which no tensor can fail on finite values say so.
Exit 0 every tensor within its thresholds, 1 a divergence, 2 bad input (a missing dump file or
a shape mismatch names the file) or an incomplete comparison (a layer output or the logits the
target does not dump).]],
  run = function(argv)
    local o = parse(argv, {
      flags = { pos = "number", names = "string", thresholds = "string", ["expected-noise"] = "number", json = "string",
                only = "string" },
      positional = { "REF_DUMP", "TARGET_DUMP" },
    })
    local diff = require("parity.diff")
    local origin = o.thresholds and ("thresholds file " .. o.thresholds) or "thresholds"
    local th = o.thresholds and require("parity.sandbox").run_file(o.thresholds, "thresholds file") or {}
    if type(th) ~= "table" then error(("%s: must return a table"):format(origin), 0) end
    if o["expected-noise"] then th.expected_noise = o["expected-noise"] end
    local report = diff.run(o.REF_DUMP, o.TARGET_DUMP, { pos = o.pos, thresholds = th, thresholds_origin = origin,
      names = o.names and require("parity.dump").load_names(o.names), only = o.only })
    print(diff.summary(report))
    if o.json then parity.json.write(o.json, report) end
    return report.pass and 0 or (report.verdict == "incomplete" and 2 or 1)
  end,
}

commands.dump = {
  help = [[
Usage: parity dump MODEL --inputs FILE --out DIR [--dtype D]

Dumps a model's per-layer tensors on the token ids of FILE (.safetensors: input_ids [K, T], as
parity inputs writes them), through the taps, in the layout parity diff reads: one float32 .npy a
name, each [K, T, width]: emb, h{l}_in, h{l}_postattn, h{l}_preffn, h{l}_ffnout, h{l}, post_norm,
logits. The layers are the container with the most numbered children (model.layers.N); the FFN
is a layer's child named like mlp/ffn/feed_forward/moe, its input the FFN's input and the norm
that feeds it gives h{l}_postattn; the final norm is the first module after the stack that takes
the last layer's output. What a model lacks is left out and said.

  --inputs FILE   token ids (required)
  --out DIR       the dump directory (required; new or empty)
  --dtype D       which trace of a bundle: fp32 (default, when it has one), bf16 or fp16
Exit 0 written, 2 bad input.]],
  run = function(argv)
    local o = parse(argv, { flags = { inputs = "string", out = "string", dtype = "string" }, positional = { "MODEL" } })
    if not o.inputs then usage_error("missing --inputs FILE") end
    if not o.out then usage_error("missing --out DIR") end
    local b = parity.bundle(o.MODEL)
    local dtype = o.dtype or (b:has("fp32") and "fp32" or b:dtypes()[1])
    local tokens = require("parity.lm").tokens_from_file(o.inputs, b:vocab_size())
    local w = require("parity.dump").write(b:fresh(dtype), tokens, o.out)  -- write taps it
    print(("parity dump: wrote %d tensors to %s/ (%s)"):format(#w.names, o.out, table.concat(w.names, ", ")))
    local missing = {}
    for _, sub in ipairs({ "postattn", "preffn", "ffnout" }) do
      if not w.paths["h0_" .. sub] then missing[#missing + 1] = "h{l}_" .. sub end
    end
    if not w.paths.post_norm then missing[#missing + 1] = "post_norm" end
    if #missing > 0 then print("  not found in this model: " .. table.concat(missing, ", ")) end
    return 0
  end,
}

commands.matrix = {
  help = [[
Usage: parity matrix FILE [--filter SUBSTR] [--reports DIR]

Runs a (model x prompt) matrix of engine-against-reference dump diffs: a dump of the reference
and the engine's own, for every model and prompt, each pair through parity diff.
FILE (Lua, run sandboxed, or .json) returns:
  { entries = { {
      model = "tiny",                                   -- a name; --filter matches it
      prompts = { "inputs/p0.safetensors" },            -- token ids (parity inputs writes them)
      reference = "dumps/{model}/p{index}",             -- a dump directory, or a command:
        -- reference = { command = "{parity} dump ref --inputs {inputs} --out {dump}" },
      engine = { command = "./engine {inputs}", env = { TQ_DUMP_HIDDEN = "{dump}", TQ_DUMP_POS = "{pos}" } },
      pos = 0,                                          -- optional: the position compared
      thresholds = { expected_noise = 0.03 }, names = { ... },   -- optional, as parity diff takes them
      only = "emb,^h%d+$",                              -- optional, as diff --only (or a list)
    } },
    thresholds = { ... }, names = { ... }, only = ... }  -- optional defaults for every entry
Placeholders: {model}, {index} (the prompt's, from 0), {inputs}, {dump} (a directory parity makes
for the command to fill), {pos}, {dir} (FILE's directory), {parity} (this binary); in commands
they are shell-quoted (write {dump}/x, not "{dump}/x"). Commands run
with sh in FILE's directory (relative paths are relative to it), their output in
DIR/work/<model>__p<index>/*.log. A matrix runs the commands it lists: run only matrices you trust.
Each failing (model, prompt) leaves DIR/<model>__p<index>.diff (the diff's report) and .json.

  --filter SUBSTR   only the entries whose model contains SUBSTR
  --reports DIR     reports and work directories (default parity-matrix)
Exit 0 every pair within its thresholds, 1 a divergence, 2 an environment or configuration error
(a command failing, a dump missing, a bad matrix) or an incomplete pair (an engine dump lacking
a layer output or the logits the reference has), after running the rest.]],
  run = function(argv)
    local o = parse(argv, { flags = { filter = "string", reports = "string" }, positional = { "FILE" } })
    local matrix = require("parity.matrix")
    local m = matrix.load(o.FILE)
    print(("parity matrix: %s"):format(o.FILE))
    local r = matrix.run(m, { filter = o.filter, reports = o.reports, log = function(line) print("  " .. line) end })
    local counts = { pass = 0, fail = 0, error = 0, incomplete = 0 }
    for _, row in ipairs(r.rows) do
      local k = (row.verdict == "error" or row.verdict == "incomplete") and row.verdict or (row.pass and "pass" or "fail")
      counts[k] = counts[k] + 1
    end
    print(("%d pairs: %d pass, %d fail, %d error%s"):format(#r.rows, counts.pass, counts.fail, counts.error,
      counts.incomplete > 0 and (", %d incomplete"):format(counts.incomplete) or ""))
    return r.exit
  end,
}

commands.run = {
  help = [[
Usage: parity run [--device D] SCRIPT.lua [ARGS...]

Runs a validation script (loaded as text: precompiled bytecode is refused). Inside it,
`parity` and `torch` are globals, `arg` holds ARGS (arg[0] is the script), `...` receives them
too, and the script's directory is on package.path.
The script's return value is the exit code: nothing or true -> 0, false -> 1, a whole number
0..125 as is; anything else (NaN, 1.5, 256, a string) is an error: exit 2 saying what came back.
An error prints its message and a Lua traceback and exits 2.
--device D (cpu or cuda[:N]; checked: without that GPU here, one line and exit 2) becomes
parity.device, where parity.load and parity.bundle put models unless told otherwise.]],
  run = function(argv)
    if argv[1] == "--device" then
      if not argv[2] then usage_error("--device needs a value") end
      parity.device = require("parity.core").usable_device(argv[2])
      argv = tail(argv, 3)
    end
    local script = argv[1]
    if not script then usage_error("missing SCRIPT") end
    if script == "--help" or script == "-h" then
      print(commands.run.help)
      return 0
    end
    local flag = script:match("^%-%-([%w%-]+)$")
    if flag and not parity.path_kind(script) then
      usage_error(("unknown option --%s%s"):format(flag, nearest(flag, { "device" }, "--")))
    end
    local chunk, err = require("parity.sandbox").load_text(script)
    if not chunk then
      stderr("parity run: %s", err)
      return 2
    end
    local args = { [0] = script }
    for i = 2, #argv do args[i - 1] = argv[i] end
    _G.arg, _G.parity = args, parity
    local dir = script:match("^(.*)/[^/]*$") or "."
    package.path = dir .. "/?.lua;" .. dir .. "/?/init.lua;" .. package.path
    local results = { xpcall(function() return chunk(unpack(args, 1, #args)) end, debug.traceback) }
    if not results[1] then
      stderr("parity run: %s", tostring(results[2]))
      return 2
    end
    local r = results[2]
    if r == nil or r == true then return 0 end
    if r == false then return 1 end
    if type(r) == "number" and r >= 0 and r <= 125 and r == math.floor(r) then return r end
    stderr("parity run: %s returned %s %s; a script returns nothing, true, false or a whole number 0..125",
      script, type(r), type(r) == "string" and ("%q"):format(r) or tostring(r))
    return 2
  end,
}

commands.help = {
  help = "Usage: parity help [COMMAND]",
  run = function(argv)
    local name = argv[1]
    if not name then
      print(USAGE)
      return 0
    end
    if not commands[name] then usage_error(("unknown command '%s'%s"):format(name, nearest(name, keys(commands), ""))) end
    print(commands[name].help)
    return 0
  end,
}

---@param argv string[]
---@return integer exit code
function M.main(argv)
  local name = argv[1]
  if name == nil then
    io.stderr:write(USAGE, "\n")
    return 2
  end
  if name == "--help" or name == "-h" then name = "help" end
  if name == "--version" then name = "version" end
  local cmd = commands[name]
  if not cmd then
    local near = nearest(name, keys(commands), ""):match("^ %((.*)%)$")
    stderr("parity: unknown command '%s' (%scommands: check, report, gate, inputs, dump, diff, matrix, run, tree, version, help;"
      .. " see parity --help)", name, near and (near .. " ") or "")
    return 2
  end
  local rest = tail(argv, 2)
  if name ~= "run" and (rest[1] == "--help" or rest[1] == "-h") then
    print(cmd.help)
    return 0
  end
  local ok, result = xpcall(function() return cmd.run(rest) end, function(e)
    if type(e) == "table" then return e end
    if os.getenv("PARITY_DEBUG") == "1" then return debug.traceback(tostring(e), 2) end
    return clean(e)
  end)
  if ok then return result end
  if type(result) == "table" and result.usage then
    stderr("parity %s: %s (see parity %s --help)", name, result.usage, name)
  else
    stderr("parity %s: %s", name, tostring(result))
  end
  return 2
end

return M
