--- parity.cli.check — the commands of the check workflow: check (the stages, the verdict, a hint
--- when reference and target look swapped), report (a finished run's summary again) and inputs
--- (a check's token sequences, for a foreign engine).
local parity = require("parity")
local args = require("parity.cli.args")
local clean = require("parity.errors").clean
local parse, usage_error, out_given = args.parse, args.usage_error, args.out_given

---@type table<string, parity.cli.Command>
local commands = {}
--- A command of the command line: its --help text, and a run on the arguments after its name.
---@class parity.cli.Command
---@field help string
---@field run fun(argv: string[]): integer the exit code

--- Module paths only Hugging Face transformers' models have (Llama, Mistral, Qwen, Gemma, ...,
--- GPT-NeoX, GPT-2): a reference has them, a port of one usually names its modules otherwise.
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
  components, localize  every mapped component on the reference's real inputs (R, R32 each;
         --sweep adaptive: outside in, fewer), then the first divergent component and what
         kind of bug it looks like
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
trace). Each e2e criterion's figure comes with a 95% interval, resampled over the prompts (a
prompt's positions are correlated): one whose interval holds its bound is inconclusive, and so is
the verdict when that decides it (never a pass; the summary says about how many prompts would
decide it). Exit 0 equivalent, 1 divergent, 2 bad input, 3 inconclusive.

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
  --recipe FILE      a calibration recipe (parity calibrate): its thresholds, under those of
                     --thresholds; refused when edited, of a newer schema, or made for another
                     --dtype or baseline (docs/calibration.md)
  --baseline B       3-tensor (default when the reference has fp32) or 2-tensor (the default
                     otherwise; forces it on a reference that has fp32 too)
  --mapping FILE     which target components compute which reference components (Lua, run
                     sandboxed; default: identity for identical trees, else proposed from the
                     weights and written to OUT/scaffold/mapping.lua to save and edit)
  --patch FILE       a patch file (repeatable): Lua computing target components in place of
                     the port's own, inside its forward; every stage sees the patched port, its
                     files untouched (run sandboxed with the tensor API: docs/patches.md)
  --downstream REF_RESULTS TARGET_RESULTS  lm-eval results of the reference and of the port:
                     each task judged as parity downstream does (stage 7, downstream.json), a
                     regression past --downstream-tolerance (default 0.02) divergent, an
                     undecided one inconclusive (see parity downstream --help)
  --confirm          a divergent check tries to repair its first divergence: the patch undoing
                     a fitted cause (OUT/patches/suggested.lua), else the reference's own
                     components in place of the port's; each a check of its own in OUT/confirm/N;
                     verdict.json's confirmation says what fixing it does (the verdict and the
                     exit code stay the port's)
  --sweep MODE       full (default): every mapped component is tested. adaptive: a component
                     tested clean (its own error, its rows, its output in the whole runs) and
                     holding no norm vouches for those inside it, which are not tested: about
                     half the runs on an equivalent port, but a precision loss diluted in a
                     clean container passes unseen (a hand-written bf16 SiLU inside an MLP
                     does on LibTorch 2.x), so it is for iterating, not for the last word
  --out DIR          the results directory (default parity-results): verdict.json,
                     report.html (the plots, for a browser), junit.xml (for CI), scaffold/
                     (the trees, the mapping) and a JSON a stage:
                     STAGE_FILES
  --no-cache         recompute the reference's outputs
  --max-capture-mb N  what a tapped forward captures (its components' inputs and outputs) is
                     held in memory up to N MiB (default: an eighth of this machine's memory);
                     past it, it is written to OUT/captures/ and read back a component at a
                     time (removed when the check ends). The reference's are cached when they
                     fit; past it a check against the cached reference runs its fp32 pass again
  --quiet            no progress on stderr and no log lines (the summary and the files only)
  --cache-dir DIR    reference cache (default $XDG_CACHE_HOME/parity or ~/.cache/parity)
  --device D         where the models run: cpu (default) or cuda[:N]; without that GPU here,
                     one line and exit 2. Inputs go to the models' devices and their outputs
                     and captures come back to the CPU, where the metrics run
  --reference-device D  the reference's device, when it differs (default: --device)
The reference's outputs are cached, keyed by its files, the inputs and the settings: a second
check against a changed target runs only the target (and the reference's fp32 pass when its
captures were past --max-capture-mb).
Limits: prompts <= 1024, new tokens <= 4096, prompt + new tokens <= 131072 (and the models'
max_position_embeddings), top-k <= 1000, logits and a forward that fit in the memory available.
A bad command line (an unknown flag, a number out of range, a --dtype, --baseline or --device
it cannot take, a --thresholds, --recipe or --mapping file that does not load) is refused before
anything runs: in --out it only marks an earlier verdict.json
"error" (the other results stay as they were); any other run that ends in an error leaves a
verdict.json saying "error", never an earlier verdict. A divergent check whose
target has Hugging Face's module names and whose reference has none ends with a hint that the
two may be swapped.]],
  --- parity check: the command line checked first (a bad one only marks --out's verdict.json
  --- "error"), then the check, its summary and the swap hint. 0 equivalent, 1 divergent.
  ---@param argv string[] the arguments after "check"
  ---@return integer exit code
  run = function(argv)
    -- the whole command line first: a bad one (a typo'd flag, a number out of range) only marks
    -- the last run's verdict in --out as an error (an automation loop must not read it as this
    -- run's), and leaves its other results as they were
    local ok, o = pcall(parse, argv, {
      flags = { dtype = "string", prompts = "number", ["prompt-len"] = "number", ["new-tokens"] = "number",
                seed = "number", inputs = "string", topk = "number", thresholds = "string", out = "string",
                ["no-cache"] = "boolean", ["cache-dir"] = "string", ["vocab-size"] = "number", mapping = "string",
                quiet = "boolean", baseline = "string", device = "string", ["reference-device"] = "string",
                patch = "list", confirm = "boolean", recipe = "string", downstream = "many",
                ["downstream-tolerance"] = "number", sweep = "string", ["max-capture-mb"] = "number" },
      positional = { "REF", "TARGET" },
    })
    local out = ok and (o.out or "parity-results") or out_given(argv)
    local opts = ok and { reference = o.REF, target = o.TARGET, dtype = o.dtype, prompts = o.prompts,
      prompt_len = o["prompt-len"], new_tokens = o["new-tokens"], seed = o.seed, inputs = o.inputs,
      topk = o.topk, thresholds_file = o.thresholds, recipe_file = o.recipe, out = out, cache = not o["no-cache"],
      cache_dir = o["cache-dir"], vocab_size = o["vocab-size"], mapping_file = o.mapping, quiet = o.quiet,
      baseline = o.baseline, device = o.device, reference_device = o["reference-device"], patches = o.patch,
      confirm = o.confirm, sweep = o.sweep, max_capture_mb = o["max-capture-mb"],
      log = o.quiet and function() end or nil }
    if ok and o.downstream then
      if #o.downstream ~= 2 then
        ok, o = false, { usage = ("--downstream takes REF_RESULTS TARGET_RESULTS (lm-eval's results of each), got %d"
          .. " path%s"):format(#o.downstream, #o.downstream == 1 and "" or "s") }
      else
        opts.downstream = { reference = o.downstream[1], target = o.downstream[2],
                            tolerance = o["downstream-tolerance"] }
      end
    elseif ok and o["downstream-tolerance"] then
      ok, o = false, { usage = "--downstream-tolerance goes with --downstream REF_RESULTS TARGET_RESULTS" }
    end
    if ok then ok, o = pcall(require("parity.context").check_options, opts) end
    if not ok then
      if out and parity.path_kind(out .. "/verdict.json") == "file" then
        require("parity.verdict").mark_usage_error(out, clean(type(o) == "table" and o.usage or o))
        require("parity.check").reports(out)  -- an earlier run's pages go: these say what went wrong
      end
      error(o, 0)
    end
    os.remove(out .. "/verdict.json")  -- then an earlier verdict goes, before anything can fail
    local verdict = parity.check(opts)
    local terminal = require("parity.report.terminal")
    print(terminal.for_stdout(terminal.render(verdict, out)))
    local hint = swap_hint(verdict, out)
    if hint then print(hint) end
    return require("parity.verdict").exit_code(verdict)
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

Renders a finished check again from its results directory alone (DIR/verdict.json and the stage
files beside it): prints the summary `parity check` printed, and writes DIR/report.html (the page
with the plots, one file that opens in any browser) and DIR/junit.xml (for CI test reporters)
anew. A directory from an older parity, or one with a stage's file missing, renders what is there;
the page and the summary say what is not. An error verdict prints its message. Exit 0 equivalent,
1 divergent or error, 2 when DIR holds no verdict parity wrote (or cannot be written), 3
inconclusive.]],
  --- parity report: prints a finished check's summary and writes its reports, from its results directory.
  ---@param argv string[] the arguments after "report"
  ---@return integer exit code 0 equivalent, 1 divergent or error
  run = function(argv)
    local o = parse(argv, { flags = {}, positional = { "DIR" } })
    local terminal = require("parity.report.terminal")
    local v = require("parity.report.results").verdict(o.DIR)  -- (raises, in one line, when DIR holds no verdict)
    require("parity.report.junit").write(o.DIR)
    local _, absent = require("parity.report.html").write(o.DIR)
    print(terminal.for_stdout(terminal.text(v, o.DIR, absent)))
    return require("parity.verdict").exit_code(v)
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
  --- parity inputs: writes a check's token sequences (parity.context.write_inputs).
  ---@param argv string[] the arguments after "inputs"
  ---@return integer exit code
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

return commands
