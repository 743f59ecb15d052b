--- parity.cli.downstream — parity downstream: lm-eval task scores of a port against its reference's.
local args = require("parity.cli.args")
local validate = require("parity.validate")

---@type table<string, parity.cli.Command>
local commands = {}

commands.downstream = {
  help = [[
Usage: parity downstream REF_RESULTS TARGET_RESULTS [--tolerance 0.02] [--out DIR]

Stage 7: the port's lm-evaluation-harness scores against the reference's, task by task. Each
RESULTS is what lm-eval 0.4.x wrote for one model (its results_<date>.json, or the --output_path
directory holding it: the newest there, or one level down). Every task and metric both runs have
is judged: the regression (the drop in a metric where higher is better, the rise otherwise) and
its 95% interval, regression +- 1.96 x its standard error:
  paired    when both runs logged their samples (lm-eval --log_samples: samples_<task>_<date>.jsonl
            beside the results): the difference of each document both scored, the standard error
            from those differences (the same documents: their doc_hash, where logged, agrees)
  unpaired  otherwise: sqrt(stderr_ref^2 + stderr_target^2), each run's own *_stderr
A task fails when the whole interval lies past the tolerance (default 0.02, 2 points: the seeds'
rule), passes when it lies within, and is inconclusive when it holds the tolerance: the samples
given cannot tell (2 points with 200 samples near 50% accuracy: each run's standard error is 3.5
points, the unpaired difference's 5), and the line says about how many samples would. A group's
row (lm-eval's "groups") is listed, its tasks judged each. A task or metric only one run has is
listed, not compared. Writes OUT/downstream.json (default parity-results/; nothing else).
parity check takes the same as --downstream REF_RESULTS TARGET_RESULTS: the verdict includes it.

  --tolerance T      the regression a task may have (default 0.02; 0..1, in the metric's units)
  --out DIR          where downstream.json goes (default parity-results)
Exit 0 every task within the tolerance, 1 a regression past it, 2 bad input (no results there,
not lm-eval's, no task in common), 3 inconclusive (none past it, one undecided: never a pass).]],
  --- parity downstream: judges both runs' results, prints a line a task and metric, writes downstream.json.
  ---@param argv string[] the arguments after "downstream"
  ---@return integer exit code
  run = function(argv)
    local o = args.parse(argv, { flags = { tolerance = "number", out = "string" },
                                 positional = { "REF_RESULTS", "TARGET_RESULTS" } })
    local tolerance = o.tolerance or 0.02
    validate.number("--tolerance", tolerance, 0, 1)
    local d = require("parity.downstream").judge(o.REF_RESULTS, o.TARGET_RESULTS, { tolerance = tolerance })
    local core = require("parity.core")
    local out = o.out or "parity-results"
    core.json.write(out .. "/downstream.json", d)
    for _, line in ipairs(require("parity.downstream").lines(d)) do print(line) end
    print(("downstream: %s%s   (%s/downstream.json)"):format(d.verdict:upper(),
      d.regressions > 0 and (" — %d past the tolerance"):format(d.regressions)
        or d.undecided > 0 and (" — %d undecided; not a pass"):format(d.undecided) or "", out))
    return d.verdict == "equivalent" and 0 or d.verdict == "inconclusive" and 3 or 1
  end,
}

return commands
