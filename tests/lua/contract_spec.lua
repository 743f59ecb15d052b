-- The stage contract (parity.workflow): stages never require one another, the stdlib's requires
-- have no cycle, a stage reads only the results its `needs` declare, and a new stage is one file
-- and one line in the stage list.
local spec = require("parity.spec")
local describe, it, eq, truthy, raises = spec.describe, spec.it, spec.eq, spec.truthy, spec.raises
local fx = assert(arg[1], "usage: contract_spec.lua FIXTURES_DIR")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local stdlib = here .. "/../../stdlib"
local tmp = os.tmpname()
os.remove(tmp)

--- module name -> { required module names }, from every require in stdlib/ (lazy ones inside
--- functions too: they are dependencies all the same).
local function require_graph()
  local graph = {}
  local p = io.popen(("cd %q && find parity -name '*.lua' | sort"):format(stdlib))
  for file in p:lines() do
    local name = file:gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
    local f = assert(io.open(stdlib .. "/" .. file))
    local text = f:read("*a")
    f:close()
    local deps = {}
    for dep in text:gmatch("require%s*%(?%s*[\"']([%w_.]+)[\"']") do deps[#deps + 1] = dep end
    graph[name] = deps
  end
  p:close()
  return graph
end

--- The first cycle found, as "a -> b -> a", or nil.
local function cycle(graph)
  local state, stack = {}, {}
  local function visit(n)
    if state[n] == "done" or not graph[n] then return nil end
    if state[n] == "open" then
      local from
      for i, s in ipairs(stack) do if s == n then from = i end end
      local path = { unpack(stack, from) }
      path[#path + 1] = n
      return table.concat(path, " -> ")
    end
    state[n] = "open"
    stack[#stack + 1] = n
    for _, d in ipairs(graph[n]) do
      local c = visit(d)
      if c then return c end
    end
    stack[#stack] = nil
    state[n] = "done"
  end
  local names = {}
  for n in pairs(graph) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local c = visit(n)
    if c then return c end
  end
end

describe("the require graph", function()
  local graph = require_graph()
  it("has every stdlib module, and finds a cycle where there is one", function()
    truthy(graph["parity.stages.localize"] and graph["parity.workflow"] and graph["parity.verdict"], "read stdlib/")
    eq(cycle({ a = { "b" }, b = { "c" }, c = { "a" } }), "a -> b -> c -> a")
    eq(cycle({ a = { "b" }, b = {} }), nil)
  end)
  it("has no cycle", function()
    eq(cycle(graph), nil)
  end)
  it("has no stage requiring another stage", function()
    local bad = {}
    for name, deps in pairs(graph) do
      for _, d in ipairs(deps) do
        if name:find("^parity%.stages%.") and d:find("^parity%.stages%.") then bad[#bad + 1] = name .. " -> " .. d end
      end
    end
    table.sort(bad)
    eq(bad, {})
  end)
end)

describe("the runner", function()
  local workflow = require("parity.workflow")
  local function ctx()
    return { out = tmp, thresholds = require("parity.thresholds").resolve(), dtype = "bf16", target_dtype = "bf16",
             settings = { prompts = 1, new_tokens = 1 }, reference = { path = "ref" }, target = { path = "target" },
             log = function() end }
  end
  it("gives a stage the results and kept data of the stages it needs, and nothing else", function()
    os.execute("mkdir -p " .. tmp)
    local seen
    local v = workflow.run(ctx(), {
      { name = "a", run = function() return { x = 1 }, { big = "in memory" } end },
      { name = "b", run = function() return { y = 2 } end },
      { name = "c", needs = { "a" }, run = function(_, got)
          seen = { got.a.x, got.kept.a.big }
          local ok, err = pcall(function() return got.b end)
          return { read_b = ok, why = err }
        end },
    })
    eq(seen, { 1, "in memory" })
    local c = parity.json.read(tmp .. "/c.json")
    eq(c.read_b, false)
    truthy(c.why:find("stage c reads b's result, which its needs do not declare", 1, true), c.why)
    eq(v.stages, { "a", "b", "c" })
    eq(parity.json.read(tmp .. "/a.json").big, nil, "what a stage keeps is not written")
  end)
  it("refuses a stage that needs a later one, or none", function()
    raises(function() workflow.run(ctx(), { { name = "a", needs = { "b" }, run = function() return {} end },
                                            { name = "b", run = function() return {} end } }) end,
      "stage a needs b, which does not run before it")
    raises(function() workflow.check_stages({ { name = "a" } }) end, "a stage is a table with a name and a run function")
  end)
end)

describe("a new stage", function()
  it("is one file and one line in the stage list", function()
    -- the file: stages/<name>.lua on the package path (here a temporary directory)
    os.execute("mkdir -p " .. tmp .. "/lib/parity/stages")
    local f = assert(io.open(tmp .. "/lib/parity/stages/logit_range.lua", "w"))
    f:write([[
local M = { name = "logit_range", needs = { "e2e" } }
function M.run(ctx, got)
  return { positions = got.e2e.positions, spread = got.e2e.r_ratio.max - got.e2e.r_ratio.p5 }
end
M.criteria = { { name = "spread", reads = "spread", rule = "below", threshold = 100, says = "R's spread < %g" } }
function M.summary(r) return { spread = r.spread } end
return M
]])
    f:close()
    package.path = tmp .. "/lib/?.lua;" .. package.path
    -- the line
    local check = require("parity.check")
    table.insert(check.STAGES, "logit_range")
    local ok, v = pcall(parity.check, { reference = fx .. "/reference", target = fx .. "/port_fused", out = tmp .. "/new",
      log = function() end, cache = false, prompts = 2, new_tokens = 6 })
    table.remove(check.STAGES)
    truthy(ok, tostring(v))
    eq(v.stages[#v.stages], "logit_range")
    eq(parity.json.read(tmp .. "/new/logit_range.json").positions, 12)
    local last = v.criteria[#v.criteria]
    eq({ last.name, last.stage, last.pass }, { "spread", "logit_range", true })
    truthy(require("parity.report.terminal").render(v, tmp .. "/new"):find("pass  R's spread < 100", 1, true), "in the summary")
  end)
end)

describe("parity.check{}", function()
  it("says which argument is wrong: not a table, a missing reference, an unknown option, another type", function()
    local function says(opts, text)
      local ok, e = pcall(parity.check, opts)
      eq(ok, false)
      truthy(tostring(e):find(text, 1, true), tostring(e))
    end
    says("ref", "check: expects a table of options, got string")
    says({ out = tmp .. "/bad" }, "check: option 'reference' is missing")
    says({ reference = 3, out = tmp .. "/bad" }, "check: option 'reference' must be a path (a string) or a bundle")
    says({ reference = "r", target = "t", new_token = 8, out = tmp .. "/bad" }, "check: unknown option 'new_token' (known:")
    says({ reference = "r", target = "t", prompts = "four", out = tmp .. "/bad" },
      "check: option 'prompts' must be a number, got the string \"four\"")
    says({ reference = "r", target = "t", log = 5, out = tmp .. "/bad" }, "check: option 'log' must be a function, got number")
    eq(parity.json.read(tmp .. "/bad/verdict.json").verdict, "error", "and the verdict says error")
  end)
end)

local rc = spec.run()
os.execute("rm -rf " .. tmp)
return rc
