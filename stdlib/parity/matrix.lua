--- parity matrix — the (model × prompt) matrix of seed 004 ("refparity"): for each entry and each
--- of its prompts, get the reference's dump (a directory, or a command that writes one), run
--- the engine with its dump directory and position in its environment, and diff the two
--- (parity.diff). A failing pair leaves a report (<model>__p<index>.diff and .json).
---
--- A matrix file (Lua, run sandboxed, or JSON) returns:
---   { entries = { {
---       model = "qwen3-0.6b",                       -- a name (--filter matches it)
---       prompts = { "inputs/hello.safetensors" },   -- token ids for both (parity inputs writes them)
---       reference = "dumps/{model}/p{index}"        -- a dump directory, or a command writing {dump}:
---                 or { command = "python3 ref.py {inputs} {dump}", env = { ... } },
---       engine = { command = "./engine {inputs}", env = { TQ_DUMP_HIDDEN = "{dump}", TQ_DUMP_POS = "{pos}" } },
---       pos = 0,                                    -- optional: the position compared (and {pos})
---       names = { ... }, thresholds = { ... },      -- optional: as parity diff takes them
---       only = { "emb", "^h%d+$" },                 -- optional: as diff --only (or "emb,^h%d+$")
---     }, ... },
---     thresholds = { ... }, names = { ... }, only = ... }  -- optional defaults for every entry
--- A pair whose engine dump lacks a layer's output or the logits the reference dumped (and no
--- `only` leaves them out) is incomplete: a report, and exit 2 like a missing dump.
--- Placeholders in commands, environment values and directories: {model}, {index} (the prompt's,
--- from 0), {inputs}, {dump} (the directory parity gives the command), {pos}, {dir} (the matrix
--- file's directory) and {parity} (this parity binary); in a command each value is shell-quoted
--- (write {dump}/x, not "{dump}/x"). Commands run with sh in the matrix
--- file's directory, which relative paths are relative to. A matrix runs the commands it lists:
--- run only matrices you trust.
local core = require("parity.core")
local diff = require("parity.diff")

local M = {}
--- A matrix file loaded and checked (M.load).
---@class parity.Matrix
---@field entries table[] as the file gives them, each checked: prompts a list, thresholds merged
---                       with the file's and validated, names and only defaulted from the file's
---@field path string the matrix file
---@field dir string its directory, where commands run and relative paths start
---@field thresholds table|nil the file's defaults for every entry
---@field names table<string, string>|nil
---@field only string|string[]|nil
--- One (entry, prompt) pair run (M.run).
---@class parity.MatrixRow
---@field model string
---@field index integer the prompt's, from 0
---@field prompt string its token-id file
---@field verdict "equivalent"|"divergent"|"incomplete"|"error"
---@field pass boolean|nil the diff's (nil for an error)
---@field error string|nil what failed (verdict "error")
---@field missing string[]|nil what the engine's dump lacks of what the comparison must cover
---@field left_out string[]|nil
---@field loosened parity.LoosenedThreshold[]|nil
---@field criteria_can_fail boolean|nil
---@field first parity.DiffBrief|nil the first tensor past its thresholds (a failing pair)
---@field localized parity.DiffBrief|nil where the error starts (a failing pair)
---@field report string|nil the .diff report of a failing pair
---@field tensors table[]|nil the diff's rows of the compared tensors (not for an error)

local function fail(where, msg) error(("%s: %s"):format(where, msg), 0) end

local function merged(defaults, own)
  local t = {}
  for k, v in pairs(defaults or {}) do t[k] = v end
  for k, v in pairs(own or {}) do t[k] = v end
  return t
end

local function check_run(v, where)
  if type(v) == "string" then return end
  if type(v) ~= "table" or type(v.command) ~= "string" then
    fail(where, "a dump directory (string) or { command = \"...\", env = { NAME = \"value\" } }")
  end
  for k, x in pairs(v.env or {}) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") or type(x) ~= "string" then
      fail(where, ("env entries are NAME = \"value\" strings, got %s = %s"):format(tostring(k), tostring(x)))
    end
  end
end

--- Loads and checks a matrix file (.lua run sandboxed, or .json).
---@param path string
---@return parity.Matrix
function M.load(path)
  local m
  if path:find("%.json$") then
    m = core.json.read(path)
  else
    m = require("parity.sandbox").run_file(path, "matrix file")
  end
  local where = "matrix " .. path
  if type(m) ~= "table" or type(m.entries) ~= "table" or #m.entries == 0 then
    fail(where, "must give entries = { {model = ..., prompts = {...}, reference = ..., engine = ...}, ... }")
  end
  for i, e in ipairs(m.entries) do
    local at = ("%s: entry %d"):format(where, i)
    if type(e) ~= "table" then fail(at, "not a table") end
    if type(e.model) ~= "string" or e.model == "" or e.model:find("[/%s]") then
      fail(at, "model must be a name (no spaces or slashes)")
    end
    if type(e.prompts) == "string" then e.prompts = { e.prompts } end
    if type(e.prompts) ~= "table" or #e.prompts == 0 then fail(at, "prompts must list token-id files") end
    for _, p in ipairs(e.prompts) do
      if type(p) ~= "string" then fail(at, "prompts must be file names") end
    end
    check_run(e.reference, at .. ": reference")
    check_run(e.engine, at .. ": engine")
    if e.pos ~= nil then require("parity.validate").integer(at .. ": pos", e.pos, 0, 2 ^ 31) end
    e.thresholds = merged(m.thresholds, e.thresholds)
    diff.thresholds(e.thresholds, at .. ": thresholds")  -- checked before anything runs
    e.names = e.names or m.names
    if e.names then require("parity.dump").check_names(e.names, at .. ": names") end
    if e.only == nil then e.only = m.only end
    if e.only ~= nil then e.only = diff.check_only(e.only, at) end
  end
  m.path, m.dir = path, path:match("^(.*)/[^/]*$") or "."
  return m
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Fills the placeholders of `s`; `quote` shell-quotes each value (in a command line).
local function expand(s, vars, quote)
  return (s:gsub("{(%w+)}", function(k)
    local v = vars[k]
    if v and quote then return shell_quote(v) end
    return v
  end))
end

local function absolute(dir, p)
  if p:sub(1, 1) == "/" then return p end
  return dir .. "/" .. p
end

--- The first line a shell command prints (run from this process: $PPID is parity).
local function shell_line(cmd)
  local f = io.popen(cmd)
  local line = f and f:read("*l")
  if f then f:close() end
  return line
end

--- What os.execute's status says, for messages: "exit N" or "signal N".
local function status_text(status)
  if type(status) ~= "number" then return tostring(status) end
  if status > 255 then return "exit " .. math.floor(status / 256) end
  return status > 0 and ("signal " .. status) or "exit 0"
end

--- A dump for one (entry, prompt): a directory as it stands, or a command run into `dump`.
local function obtain(run, vars, dump, log, what, cwd)
  if type(run) == "string" then return absolute(cwd, expand(run, vars)) end
  os.execute("rm -rf " .. shell_quote(dump) .. " && mkdir -p " .. shell_quote(dump))
  local env = {}
  for k, v in pairs(run.env or {}) do env[#env + 1] = k .. "=" .. shell_quote(expand(v, vars)) end
  table.sort(env)
  local command = expand(run.command, vars, true)
  local cmd = ("cd %s && env %s sh -c %s >%s 2>&1"):format(shell_quote(cwd), table.concat(env, " "),
    shell_quote(command), shell_quote(log))
  local status = os.execute(cmd)
  if status ~= 0 and status ~= true then
    local f = io.open(log)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    local tail = {}
    for line in text:gmatch("[^\n]+") do tail[#tail + 1] = line end
    error(("the %s command failed (%s): %s: %s (log: %s)"):format(what, status_text(status), command,
      #tail > 0 and tail[#tail] or "no output", log), 0)
  end
  return dump
end

--- Runs the matrix; returns { rows = { {model, index, prompt, verdict, first, localized, report, error} }, exit }.
---@param m parity.Matrix M.load's
---@param opts {filter?: string, reports?: string, log?: fun(line: string)} filter: a substring of
---            the model names; reports: the directory (default parity-matrix); log: gets M.line's
---@return {rows: parity.MatrixRow[], exit: integer, junit: string} exit: 2 on an error or an incomplete pair,
---         else 1 on a failing one, else 0; junit: the JUnit file written (one suite a pair)
function M.run(m, opts)
  local here = shell_line("pwd") or error("cannot tell the working directory", 0)
  local reports = absolute(here, opts.reports or "parity-matrix")  -- commands run elsewhere: absolute paths
  local work = reports .. "/work"
  os.execute("mkdir -p " .. shell_quote(work))
  local exe = shell_line("readlink -f /proc/$PPID/exe 2>/dev/null") or "parity"
  local rows, any_error, any_fail = {}, false, false  -- an incomplete pair counts as an error (a dump missing)
  local cwd = absolute(here, m.dir)
  for _, e in ipairs(m.entries) do
    if not opts.filter or e.model:find(opts.filter, 1, true) then
      for index, prompt in ipairs(e.prompts) do
        local id = ("%s__p%d"):format(e.model, index - 1)
        local vars = { model = e.model, index = tostring(index - 1), inputs = absolute(cwd, prompt),
                       pos = e.pos and tostring(e.pos) or "", dir = cwd, parity = exe }
        local row = { model = e.model, index = index - 1, prompt = prompt }
        local ok, err = pcall(function()
          if core.path_kind(vars.inputs) ~= "file" then error(("%s: no such prompt file"):format(vars.inputs), 0) end
          vars.dump = ("%s/%s/reference"):format(work, id)
          local ref = obtain(e.reference, vars, vars.dump, ("%s/%s/reference.log"):format(work, id), "reference", cwd)
          vars.dump = ("%s/%s/engine"):format(work, id)
          local tgt = obtain(e.engine, vars, vars.dump, ("%s/%s/engine.log"):format(work, id), "engine", cwd)
          local report = diff.run(ref, tgt, { pos = e.pos, thresholds = e.thresholds, names = e.names, only = e.only })
          row.verdict, row.pass, row.missing, row.left_out = report.verdict, report.pass, report.missing, report.left_out
          row.loosened, row.criteria_can_fail = report.loosened, report.criteria_can_fail
          row.tensors = report.tensors  -- (for junit.xml; M.line does not print them)
          if not report.pass then
            row.first, row.localized = report.first_past_threshold, report.localized
            row.report = ("%s/%s.diff"):format(reports, id)
            core.write_text(row.report, diff.summary(report) .. "\n")
            core.json.write(("%s/%s.json"):format(reports, id), report)
          end
        end)
        if not ok then
          row.verdict, row.error = "error", require("parity.errors").clean(err)
          any_error = true
        elseif row.verdict == "incomplete" then
          any_error = true
        elseif not row.pass then
          any_fail = true
        end
        rows[#rows + 1] = row
        if opts.log then opts.log(M.line(row)) end
      end
    end
  end
  if #rows == 0 then error(("no entry's model matches --filter %s"):format(tostring(opts.filter)), 0) end
  local junit = reports .. "/junit.xml"
  core.write_text(junit, require("parity.report.junit").matrix(rows))
  return { rows = rows, exit = any_error and 2 or (any_fail and 1 or 0), junit = junit }
end

--- One line of the matrix's table.
---@param row parity.MatrixRow
---@return string
function M.line(row)
  local what
  if row.verdict == "error" then
    what = "ERROR  " .. row.error
  elseif row.verdict == "incomplete" then
    what = ("INCOMPLETE  the engine's dump lacks %s  report %s"):format(diff.names_text(row.missing), row.report)
  elseif row.pass then
    what = "PASS"
  else
    what = ("FAIL   first past threshold %s at %s; localized: %s (%s)  report %s"):format(row.first.name,
      diff.at(row.first.position, row.first.sequence), row.localized.name, row.localized.where, row.report)
    if #row.missing > 0 then what = what .. "; the engine's dump lacks " .. diff.names_text(row.missing) end
  end
  if row.left_out and #row.left_out > 0 then what = ("%s  (narrowed: %d tensors left out)"):format(what, #row.left_out) end
  if row.loosened and #row.loosened > 0 then
    local names = {}
    for i, l in ipairs(row.loosened) do names[i] = l.name end
    what = ("%s  (loosened thresholds: %s%s)"):format(what, table.concat(names, ", "),
      row.criteria_can_fail and "" or "; NO CRITERION CAN FAIL")
  end
  return ("%-24s p%-3d %s"):format(row.model, row.index, what)
end

return M
