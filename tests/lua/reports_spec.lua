-- The reports of a results directory. parity.report.junit: OUT/junit.xml, validated with xmllint
-- against tests/data/junit.xsd (the JUnit format CI reporters read), its counts against its
-- cases, for a divergent, an equivalent and an error check; text that XML would misread escaped.
-- parity.report.terminal: the summary coloured on a terminal only, unless NO_COLOR.
local spec = require("parity.spec")
local it, eq, truthy = spec.it, spec.eq, spec.truthy
local parity = require("parity")
local junit = require("parity.report.junit")
local fx = assert(arg[1], "usage: reports_spec.lua FIXTURES_DIR")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local xsd = here .. "/../data/junit.xsd"

local tmpdir = spec.tmpdir

local read = spec.read

--- xmllint's verdict on a file against the schema: true, or false and what it said.
local function valid(path)
  local p = io.popen(("xmllint --noout --schema %q %q 2>&1"):format(xsd, path))
  local said = p:read("*a")
  local ok = p:close()
  return ok == true or ok == 0, said
end

--- The counts a file declares and the ones its elements make.
local function counts(xml)
  local declared = { tests = tonumber(xml:match('<testsuite [^>]-tests="(%d+)"')),
                     failures = tonumber(xml:match('<testsuite [^>]-failures="(%d+)"')),
                     errors = tonumber(xml:match('<testsuite [^>]-errors="(%d+)"')),
                     skipped = tonumber(xml:match('<testsuite [^>]-skipped="(%d+)"')) }
  local found = { tests = select(2, xml:gsub("<testcase ", "")), failures = select(2, xml:gsub("<failure ", "")),
                  errors = select(2, xml:gsub("<error ", "")), skipped = select(2, xml:gsub("<skipped ", "")) }
  return declared, found
end

local function check(target, out)
  return parity.check({ reference = fx .. "/reference", target = fx .. "/" .. target, out = out, prompts = 2,
    new_tokens = 8, cache_dir = out .. "-cache", log = function() end })
end

it("a divergent check: a case a criterion and a component, the first divergence's with its cause; valid", function()
  local out = tmpdir()
  local v = check("bug_eps_small", out)
  eq(v.verdict, "divergent")
  local path = out .. "/junit.xml"
  local ok, said = valid(path)
  truthy(ok, said)
  local xml = read(path)
  local declared, found = counts(xml)
  eq(declared, found)
  truthy(found.tests >= #v.criteria + 20, "the criteria and the components: " .. found.tests)
  truthy(xml:find('<testcase classname="parity.e2e32" name="r32_p95" time="0"><failure message="R32 p95 &lt; 0.0003 (fp32'
    .. ' leg): ', 1, true), "the failing R32 case")
  truthy(xml:find('name="model%.layers%.0%.input_layernorm %(LlamaRMSNorm%) ~ blocks%.0%.attn_norm" time="0"><failure'
    .. ' message="R [^"]+" type="first divergence">epsilon: a norm whose output'), "the first divergence, its cause")
  truthy(xml:find('<property name="verdict" value="divergent"/>', 1, true))
end)

it("an equivalent check has no failure; an error verdict is one error case", function()
  local out = tmpdir()
  eq(check("port_fused", out).verdict, "equivalent")
  local ok, said = valid(out .. "/junit.xml")
  truthy(ok, said)
  local declared, found = counts(read(out .. "/junit.xml"))
  eq({ declared, found.failures }, { found, 0 })
  local bad = tmpdir()
  truthy(not pcall(check, "corrupt.pt", bad), "a corrupt target is an error")
  ok, said = valid(bad .. "/junit.xml")
  truthy(ok, said)
  local xml = read(bad .. "/junit.xml")
  declared, found = counts(xml)
  eq({ declared.errors, found.errors, found.tests }, { 1, 1, 1 })
end)

it("escapes what XML would misread, in names, messages and text", function()
  eq(junit.escape([[a<b>&"c"'d']]), "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;")
  eq(junit.escape("x\1y\27z"), "x\\x01y\\x1bz")
  -- a results directory whose paths and messages are full of them still validates
  local out = tmpdir(true)
  spec.write(out .. "/verdict.json", parity.json.encode({ verdict = "divergent", reference = "ref<&>", target = "t\"'\2", dtype = "bf16",
    noise_dtype = "bf16", settings = { prompts = 1, new_tokens = 1 }, inconclusive = {}, skipped = {},
    cause = { class = "scale", detail = "x < y & \"z\"" },
    criteria = { { name = "r_p95", stage = "e2e", rule = "R p95 < 1.2 <&>", value = 3, threshold = 1.2, pass = false } } }))
  junit.write(out)
  local ok, said = valid(out .. "/junit.xml")
  truthy(ok, said)
end)

it("the summary is coloured on a terminal, unless NO_COLOR; the text stays the same", function()
  local terminal = require("parity.report.terminal")
  eq({ terminal.wants_colour(true, nil), terminal.wants_colour(true, ""), terminal.wants_colour(true, "1"),
       terminal.wants_colour(false, nil) }, { true, true, false, false })
  local out = tmpdir()
  local v = check("bug_eps_small", out)
  local text = terminal.render(v, out)
  local coloured = terminal.colour(text)
  truthy(coloured:find("\27%[31m  FAIL  R32 p95"), "a failing criterion in red")
  truthy(coloured:find("\27%[1;31mverdict: DIVERGENT"), "the verdict in bold red")
  truthy(coloured:find("\27%[32m  pass  no NaN"), "a passing one in green")
  eq((coloured:gsub("\27%[[%d;]*m", "")), text)
end)

return spec.run()
