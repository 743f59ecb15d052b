--- parity.report.junit — a finished check as JUnit XML (OUT/junit.xml), for CI systems' test
--- reporters (Jenkins, GitLab, GitHub's): one test suite a check, one test case a criterion and a
--- tested component (its failure: the value, the bound, the cause), a skipped stage a skipped case
--- with the reason. It reads the results directory only (verdict.json, components.json).
--- docs/reports.md says what each element holds; tests/data/junit.xsd is the schema it is
--- validated against.
local core = require("parity.core")
local criteria = require("parity.criteria")
local results = require("parity.report.results")
local thresholds = require("parity.thresholds")

local M = {}
local null = core.json.null

--- Text as XML character data or an attribute value (parity.report.results.escape).
M.escape = results.escape

local function attrs(t, order)
  local out = {}
  for _, k in ipairs(order) do
    if t[k] ~= nil then out[#out + 1] = ('%s="%s"'):format(k, M.escape(t[k])) end
  end
  return table.concat(out, " ")
end

local g = results.fmt

--- The test cases of a verdict and its components: {classname, name, failure = {type, message,
--- text}|nil, skipped = reason|nil, out = text|nil}...
local function cases(v, components)
  local list = {}
  local open = results.open(v)
  local cause = v.cause ~= null and v.cause and ("%s: %s"):format(v.cause.class, v.cause.detail) or nil
  for _, c in ipairs(v.criteria or {}) do
    -- (named by the criterion alone, the same from run to run: CI systems track a case by its name)
    local case = { classname = "parity." .. tostring(c.stage), name = c.name }
    local state = results.state(c, open)
    if state == "undecided" then
      case.failure = { type = "inconclusive", message = ("%s: %s; its interval holds the bound %s (not a pass)"):format(
        c.rule, g(c.value), g(c.threshold)) }
    elseif state == "FAIL" then
      case.failure = { type = "divergent", message = ("%s: %s (bound %s)"):format(c.rule, g(c.value), g(c.threshold)),
                       text = cause }
    elseif state == "warn" then
      case.out = ("warning: %s: %s (bound %s)%s"):format(c.rule, g(c.value), g(c.threshold), c.why and ("; " .. c.why) or "")
    end
    list[#list + 1] = case
  end
  local first = v.first_divergence
  local th = v.thresholds and thresholds.at(v.thresholds, v.noise_dtype or v.dtype)
  for _, row in ipairs(components or {}) do
    local case = { classname = "parity.components", name = ("%s (%s) ~ %s"):format(row.reference, tostring(row.type),
      tostring(row.target)) }
    if row.skipped then
      case.skipped = tostring(row.skipped)
    elseif th and criteria.component_fails(row, th) then
      local is_first = type(first) == "table" and first.reference == row.reference
      case.failure = { type = is_first and "first divergence" or "divergent",
        message = ("R %s, R32 %s%s"):format(g(row.r or row.acc_r), g(row.r32 or row.acc_r32),
          row.isolated == false and " (in the whole runs: its inputs differ)" or ""),
        text = is_first and first.cause and ("%s: %s"):format(first.cause.class, first.cause.detail) or nil }
    end
    list[#list + 1] = case
  end
  for _, s in ipairs(v.skipped or {}) do
    list[#list + 1] = { classname = "parity.stages", name = s.stage, skipped = s.reason }
  end
  return list
end

--- One <testsuite> of test cases (`cases`' shape), with its properties ({name, value} pairs;
--- nil values left out) and, for an error, one error case with its message.
local function suite(name, list, props, err)
  local failures, skipped = 0, 0
  for _, c in ipairs(list) do
    if c.failure then failures = failures + 1 end
    if c.skipped then skipped = skipped + 1 end
  end
  local errors = err and 1 or 0
  local counts = { name = name, tests = #list + errors, failures = failures, errors = errors, skipped = skipped, time = 0 }
  local lines = { ("  <testsuite %s>"):format(attrs(counts, { "name", "tests", "failures", "errors", "skipped", "time" })),
                  "    <properties>" }
  for _, p in ipairs(props) do
    if p[2] ~= nil and p[2] ~= null then
      lines[#lines + 1] = ("      <property %s/>"):format(attrs({ name = p[1], value = p[2] }, { "name", "value" }))
    end
  end
  lines[#lines + 1] = "    </properties>"
  if err then
    lines[#lines + 1] = ('    <testcase classname="parity" name="check" time="0"><error %s/></testcase>'):format(
      attrs({ message = err, type = "error" }, { "message", "type" }))
  end
  for _, c in ipairs(list) do
    local head = ("    <testcase %s"):format(attrs({ classname = c.classname, name = c.name, time = 0 },
      { "classname", "name", "time" }))
    local body = {}
    if c.skipped then body[#body + 1] = ("<skipped %s/>"):format(attrs({ message = c.skipped }, { "message" })) end
    if c.failure then
      body[#body + 1] = ("<failure %s>%s</failure>"):format(attrs(c.failure, { "message", "type" }),
        M.escape(c.failure.text or ""))
    end
    if c.out then body[#body + 1] = ("<system-out>%s</system-out>"):format(M.escape(c.out)) end
    lines[#lines + 1] = #body == 0 and head .. "/>" or head .. ">" .. table.concat(body) .. "</testcase>"
  end
  lines[#lines + 1] = "  </testsuite>"
  return table.concat(lines, "\n"), counts
end

--- The <testsuites> document around suites (suite's).
local function document(suites)
  local total = { name = "parity", tests = 0, failures = 0, errors = 0, skipped = 0 }
  local body = {}
  for _, s in ipairs(suites) do
    body[#body + 1] = s[1]
    for _, k in ipairs({ "tests", "failures", "errors", "skipped" }) do total[k] = total[k] + s[2][k] end
  end
  return table.concat({ '<?xml version="1.0" encoding="UTF-8"?>',
    ("<testsuites %s>"):format(attrs(total, { "name", "tests", "failures", "errors", "skipped" })),
    table.concat(body, "\n"), "</testsuites>" }, "\n") .. "\n"
end

--- The JUnit XML of the results in `out`.
---@param out string a results directory
---@return string xml
function M.render(out)
  local v = results.verdict(out)
  local comp = results.read(out, "components") or {}
  local s = type(v.settings) == "table" and v.settings or {}
  local props = { { "verdict", v.verdict }, { "cause", v.cause ~= null and type(v.cause) == "table" and v.cause.class
      or nil }, { "dtype", v.dtype }, { "noise_dtype", v.noise_dtype }, { "prompts", s.prompts },
      { "new_tokens", s.new_tokens }, { "parity_version", v.parity_version }, { "libtorch", v.libtorch },
      { "recipe", type(v.recipe) == "table" and v.recipe.sha256 or nil } }
  local err = v.verdict == "error" and (v.error or "the check did not finish") or nil
  return document({ { suite(("parity check %s against %s"):format(tostring(v.target), tostring(v.reference)),
    err and {} or cases(v, comp.components), props, err) } })
end

--- The JUnit XML of a matrix run (parity.matrix): one test suite a (model, prompt) pair, one
--- test case a compared tensor (its failure: rel L2, cosine and max |d| against their limits),
--- one a tensor the engine's dump lacks (failing), an error pair one error case.
---@param rows parity.MatrixRow[] M.run's rows, each with its diff's `tensors`
---@return string xml
function M.matrix(rows)
  local suites = {}
  for _, row in ipairs(rows) do
    local list = {}
    for _, t in ipairs(row.tensors or {}) do
      local case = { classname = ("parity.matrix.%s"):format(row.model), name = t.name }
      if not t.pass then
        local lim = t.limits or {}
        case.failure = { type = row.localized and row.localized.name == t.name and "first divergence" or "divergent",
          message = ("rel L2 %s (limit %s), cosine %s (limit %s), max |d| %s%s"):format(g(t.rel_l2), g(lim.rel_l2),
            g(t.cosine), g(lim.cosine), g(t.max_abs), lim.max_abs and (" (limit %s)"):format(g(lim.max_abs)) or "") }
      end
      list[#list + 1] = case
    end
    for _, name in ipairs(row.missing or {}) do
      list[#list + 1] = { classname = ("parity.matrix.%s"):format(row.model), name = name,
        failure = { type = "incomplete", message = "the engine's dump lacks it" } }
    end
    suites[#suites + 1] = { suite(("parity matrix %s prompt %d"):format(row.model, row.index), list,
      { { "model", row.model }, { "prompt", row.prompt }, { "verdict", row.verdict }, { "report", row.report } },
      row.verdict == "error" and row.error or nil) }
  end
  return document(suites)
end

--- Writes OUT/junit.xml from the results in `out`.
---@param out string
---@return string path
function M.write(out)
  local path = out .. "/junit.xml"
  core.write_text(path, M.render(out))
  return path
end

return M
