-- The reports of a results directory. parity.report.junit: OUT/junit.xml, validated with xmllint
-- against tests/data/junit.xsd (the JUnit format CI reporters read), its counts against its
-- cases, for a divergent, an equivalent and an error check; text that XML would misread escaped.
-- parity.report.terminal: the summary coloured on a terminal only, unless NO_COLOR.
-- parity.report.html: OUT/report.html of a divergent and an equivalent check opened in a real
-- browser (Debian's chromium, headless): no script error, every chart drawn, a screenshot that is
-- not blank (tests/tools/png_stats.py); its parts by content; the per-position series bounded;
-- a results directory of an older parity (tests/data/results_2026-11-23, written by parity at
-- f4bc375) and one with stages missing rendered, saying what is not there.
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

local html = require("parity.report.html")

--- The browser: Debian's chromium (make deps installs it).
local function browser()
  for _, name in ipairs({ "chromium", "chromium-browser", "google-chrome" }) do
    local p = io.popen("command -v " .. name .. " 2>/dev/null")
    local path = p:read("*l")
    p:close()
    if path and path ~= "" then return path end
  end
  error("no chromium on PATH: `make deps` installs Debian's chromium (the report's browser test needs it)", 0)
end

--- A page as the browser leaves it: its DOM after the scripts ran, what the browser's console
--- said (errors and messages), and a screenshot's `width height inked distinct`.
local function browse(page)
  local dir = tmpdir(true)
  local flags = ("--headless --no-sandbox --disable-gpu --hide-scrollbars --enable-logging=stderr --v=0"
    .. " --user-data-dir=%q"):format(dir .. "/profile")
  local url = "file://" .. page
  local p = io.popen(("%q %s --dump-dom %q 2>%q"):format(browser(), flags, url, dir .. "/dom.log"))
  local dom = p:read("*a")
  p:close()
  os.execute(("%q %s --window-size=1400,3600 --screenshot=%q %q >/dev/null 2>%q"):format(browser(), flags,
    dir .. "/shot.png", url, dir .. "/shot.log"))
  local console = {}
  for _, log in ipairs({ "/dom.log", "/shot.log" }) do
    for line in (read(dir .. log) .. "\n"):gmatch("([^\n]*)\n") do
      if line:find(":CONSOLE", 1, true) then console[#console + 1] = line end
    end
  end
  p = io.popen(("/usr/bin/python3 %q %q 2>&1"):format(here .. "/../tools/png_stats.py", dir .. "/shot.png"))
  local stats = p:read("*a")
  p:close()
  local w, h, inked, distinct = stats:match("^(%d+) (%d+) ([%d.]+) (%d+)")
  return dom, console, { width = tonumber(w), height = tonumber(h), inked = tonumber(inked), distinct = tonumber(distinct),
                         said = stats }
end

local absolute = spec.absolute

local function count(text, pattern) return select(2, text:gsub(pattern, "")) end

it("the report of a divergent and an equivalent check opens in a real browser: no error, every chart drawn, not blank", function()
  for _, case in ipairs({ { "bug_eps_small", "divergent", 12 }, { "port_fused", "equivalent", 9 } }) do
    local out = absolute(tmpdir())
    eq(check(case[1], out).verdict, case[2])
    local page = read(out .. "/report.html")
    -- self-contained: no resource from elsewhere, nothing fetched
    truthy(not page:find("https?://") and not page:find("<link", 1, true) and not page:find(" src=", 1, true),
      "no network resource")
    local svgs = count(page, "<svg ")
    truthy(svgs >= case[3], ("%s: %d charts"):format(case[1], svgs))
    local dom, console, shot = browse(out .. "/report.html")
    truthy(dom:find('data-ready="1"', 1, true), case[1] .. ": the page's script ran to its end")
    truthy(dom:find("<html[^>]*>") and not dom:match("<html[^>]*>"):find("data-errors", 1, true), case[1] .. ": no script error")
    eq(#console, 0, table.concat(console, "\n"))
    eq(tonumber(dom:match('data%-svgs="(%d+)"')), svgs)  -- every chart the file holds, parsed as SVG
    truthy(shot.width == 1400 and shot.height == 3600, "a screenshot: " .. shot.said)
    truthy(shot.inked > 0.02 and shot.distinct > 40, ("%s: the screenshot shows something: %s"):format(case[1], shot.said))
  end
end)

it("the report's parts: verdict, criteria, components with the first divergence, positions, QQ plots, trees, settings", function()
  local out = tmpdir()
  check("bug_eps_small", out)
  local page = read(out .. "/report.html")
  truthy(page:find('<span class="verdict v-divergent">DIVERGENT</span>', 1, true))
  truthy(page:find("<b>Cause:</b> epsilon: a norm whose output is the reference", 1, true))
  truthy(page:find('<tr class="fail"><td class="fail-t">FAIL</td><td>e2e32</td><td>R32 p95 &lt; 0.0003 (fp32 leg)</td>', 1, true),
    "a failing criterion")
  eq(count(page, ">first divergence</text>"), 2)  -- marked in the R and the R32 charts
  truthy(page:find("QQ plot, at the first divergence", 1, true) and page:find("QQ plot, of the logits", 1, true))
  truthy(page:find("<p>The first divergence, <code>model.layers.0.input_layernorm</code>, at its call 1.</p>", 1, true))
  -- the mapping, both ways: a node's data-peer is its counterpart's id
  local function node(path)
    local id, peer = page:match('<div class="node[^"]*" id="(%w+)" style="[^"]*" data%-peer="([%w ]+)" title="' .. path:gsub("%.", "%%.") .. '"')
    return id, peer
  end
  local rid, rpeer = node("model.layers.0.input_layernorm")
  local tid, tpeer = node("blocks.0.attn_norm")
  truthy(rid and tid, "both nodes mapped")
  eq({ rpeer, tpeer }, { tid, rid })
  truthy(page:find("<td>r32_p95</td><td class=\"num\">0.0003</td>", 1, true), "the thresholds used")
  truthy(not page:find("Not shown", 1, true), "a whole directory lacks nothing")
  -- the localize stage recorded the sketch the QQ plot draws: the bf16 error the reference's own
  -- (the eps bug is inside bf16's noise), the fp32 error of its own
  local d = parity.json.read(out .. "/localize.json").error_distribution
  eq(d.component, "model.layers.0.input_layernorm")
  eq(#d.quantiles.reference, #d.percentiles)
  truthy(math.abs(d.quantiles.target[101] - d.quantiles.reference[101]) < 0.1 * math.abs(d.quantiles.reference[101]))
  truthy(math.abs(d.quantiles.target_fp32[101]) > 0, "an fp32 error of its own")
  eq(#d.histograms.reference.counts, 40)
end)

it("a NaN port: the reports are written, the NaN said, the JUnit valid; a report that fails does not undo the check", function()
  local out = tmpdir()
  local patch = tmpdir(true) .. "/nan.lua"
  spec.write(patch, [[return { { target = "blocks.1.ffn.act", forward = function(self, x) return self.original(x) * (0 / 0) end } }]])
  local v = parity.check({ reference = fx .. "/reference", target = fx .. "/port_fused", out = out, prompts = 2, new_tokens = 8,
    cache_dir = out .. "-cache", patches = { patch }, log = function() end })
  eq(v.verdict, "divergent")
  truthy(valid(out .. "/junit.xml"))
  local page = read(out .. "/report.html")
  truthy(page:find("of the logits: the target output holds %d+ NaN and 0 infinite values: left out of the plots"))
  truthy(page:find("positions NaN, drawn at the top edge", 1, true))
  -- a renderer that fails leaves its report out and says so; the verdict stands
  local was = html.write
  html.write = function() error("boom", 0) end
  local failed = require("parity.check").reports(out)
  html.write = was
  eq(failed, { "report.html: boom" })
end)

it("an error sketch past its element bound is a seeded sample: the same every time, its quantiles the whole's", function()
  local dist = require("parity.distribution")
  local n = dist.MAX_ELEMENTS + 100000
  local r = torch.randn({ n }, { seed = 1 })
  local own, t = r + torch.randn({ n }, { seed = 2 }) * 0.01, r + torch.randn({ n }, { seed = 3 }) * 0.03
  local d = dist.sketch(r, { reference = own, target = t }, { "reference", "target" }, { reference = true, target = true })
  eq({ d.elements, d.sampled }, { n, dist.MAX_ELEMENTS })
  local whole = parity.metrics.percentiles((t:double() - r:double()), dist.PERCENTILES)
  for _, i in ipairs({ 1, 12, #whole - 10, #whole }) do spec.near(d.quantiles.target[i], whole[i], 0.05 * math.abs(whole[i])) end
  spec.near(d.quantiles.target[#whole] / d.quantiles.reference[#whole], 3, 0.3)  -- the target errs 3x as much
  local again = dist.sketch(r, { reference = own, target = t }, { "reference", "target" }, { reference = true, target = true })
  eq(again.quantiles, d.quantiles)
  local total = 0
  for _, c in ipairs(d.histograms.target.counts) do total = total + c end
  eq(total, dist.MAX_ELEMENTS)
end)

it("a per-position series is bounded: downsampled to the worst of each bucket, and the chart says so", function()
  local nested = { {}, {} }
  for i = 1, 3000 do nested[1][i], nested[2][i] = 1, 1 end
  nested[2][1321] = 1000  -- a spike, position 4320 of the 6000
  local pts, note = html.series(nested)
  eq(#pts, html.MAX_POINTS)
  eq(note, "downsampled: 6000 positions, each point the worst of 4")
  local peak = 0
  for _, p in ipairs(pts) do peak = math.max(peak, p[2]) end
  eq(peak, 1000)
  local short = html.series({ { 1, 2, 3 } })
  eq({ #short, select(2, html.series({ { 1, 2, 3 } })) }, { 3, nil })
end)

it("parity report on a run of an older parity and on a directory with stages missing: what is there, and what is not", function()
  local old = tmpdir(true)
  os.execute(("cp -r %q/. %q"):format(here .. "/../data/results_2026-11-23", old))
  local path, absent = html.write(old)
  local page = read(path)
  eq(count(page, "<svg "), 7)  -- the components' two and the positions' five (no QQ plots: not recorded then)
  truthy(page:find("<b>First divergence:</b> <code>model.layers.0.input_layernorm</code>", 1, true))
  truthy(page:find("<b>Not shown</b>", 1, true))
  eq(#absent, 3, table.concat(absent, "\n"))
  truthy(absent[1]:find("records no error distribution for the first divergence", 1, true))
  -- a verdict with fewer fields still: the summary and the page both render
  local bare = parity.json.read(old .. "/verdict.json")
  bare.settings, bare.stages, bare.failed, bare.warnings, bare.summaries = nil, nil, nil, nil, nil
  spec.write(old .. "/verdict.json", parity.json.encode(bare))
  truthy(require("parity.report.terminal").from_dir(old):find("verdict: DIVERGENT", 1, true))
  truthy(html.write(old))
  local out = tmpdir()
  check("bug_eps_small", out)
  os.remove(out .. "/components.json")
  os.remove(out .. "/localize.json")
  path, absent = html.write(out)
  page = read(path)
  eq(absent, { "components.json is not in this directory: no per-component figures (the components stage did not run or did not finish)",
               "localize.json is not in this directory: no error distributions for the first divergence" })
  truthy(page:find("R at each position", 1, true) and page:find("QQ plot, of the logits", 1, true), "the rest is drawn")
  truthy(not pcall(html.write, tmpdir(true)), "no verdict: an error")
end)

return spec.run()
