--- The `parity` command line. bindings/main.cpp hands argv here; each command returns an
--- exit code: 0 ok, 1 a check failed, 2 usage, input or environment error, 3 inconclusive.
local parity = require("parity")

local M = {}

local USAGE = [[
parity — is the port equivalent to the reference, and if not, where does it break?

Usage: parity [--stdlib-dir DIR] COMMAND [ARGS...]

Commands:
  check REF TARGET           the default workflow: teacher-forced comparison (bf16 and fp32 legs), verdict
  report DIR                 the summary of a finished check, again, from its results directory
  calibrate RESULTS_DIR... --out RECIPE.lua   thresholds from checks of known-good ports, as a recipe
  downstream REF_RESULTS TARGET_RESULTS   lm-eval task scores of the port against the reference's
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

Exit codes: 0 ok, 1 a check failed, 2 usage, input or environment error, 3 inconclusive (a
check whose figures cannot decide it with the prompts given: never a pass).
MODEL, REF and TARGET are TorchScript .pt files or bundle directories (fp32.pt, bf16.pt,
fp16.pt, parity.json), as scripts/parity_export.py writes them. TARGET may also be the logits a
foreign engine saved for the sequences of parity inputs (see parity inputs --help).]]

local args = require("parity.cli.args")
local stderr, usage_error, tail, nearest, keys, parse = args.stderr, args.usage_error, args.tail, args.nearest, args.keys,
  args.parse
local clean = require("parity.errors").clean

---@type table<string, parity.cli.Command>
local commands = {}
for name, cmd in pairs(require("parity.cli.check")) do commands[name] = cmd end  -- check, report, inputs
commands.calibrate = require("parity.cli.calibrate").calibrate
commands.downstream = require("parity.cli.downstream").downstream

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
  --patch FILE     a patch file (repeatable): the target computes with it (docs/patches.md)
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
                ["reference-device"] = "string", patch = "list" },
      positional = { "REF", "TARGET" },
    })
    local result = parity.gate({ reference = o.REF, target = o.TARGET, dtype = o.dtype, batch = o.batch,
      seq = o.seq, seed = o.seed, inputs = o.inputs, atol = o.atol, rtol = o.rtol, vocab_size = o["vocab-size"],
      device = o.device, reference_device = o["reference-device"], patches = o.patch })
    print(require("parity.stages.gate").summary(result))
    if o.json then parity.json.write(o.json, result) end
    return result.pass and 0 or 1
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
  --patch FILE    a patch file (repeatable): the model dumped computes with it (docs/patches.md)
Exit 0 written, 2 bad input.]],
  run = function(argv)
    local o = parse(argv, { flags = { inputs = "string", out = "string", dtype = "string", patch = "list" },
                            positional = { "MODEL" } })
    if not o.inputs then usage_error("missing --inputs FILE") end
    if not o.out then usage_error("missing --out DIR") end
    local b = parity.bundle(o.MODEL)
    local dtype = o.dtype or (b:has("fp32") and "fp32" or b:dtypes()[1])
    local tokens = require("parity.lm").tokens_from_file(o.inputs, b:vocab_size())
    local sets = {}
    for i, file in ipairs(o.patch or {}) do sets[i] = require("parity.patches").load_file(file) end
    local w = require("parity.dump").write(b:fresh(dtype), tokens, o.out, sets)  -- write taps it
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
Each failing (model, prompt) leaves DIR/<model>__p<index>.diff (the diff's report) and .json;
DIR/junit.xml holds every pair, one JUnit test suite a (model, prompt), one case a tensor.

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
    print(("JUnit: %s"):format(r.junit))
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

--- Runs the command argv[1] names on the rest of argv (none: the usage on stderr, exit 2). An
--- error prints one line on stderr, "parity COMMAND: why" (a usage error with a pointer to its
--- --help; with PARITY_DEBUG=1 a traceback), and is exit 2.
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
