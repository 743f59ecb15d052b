-- The README's and docs/'s blocks, run as written:
--   ```console  transcripts: each `$ parity ...` command runs (in a directory where build/fixtures
--               and examples/ are this build's), and the lines shown below it must appear in
--               its output, in order; `...` in a line stands for any text, a line of `...`
--               alone for any lines (what varies: timings, figures of another LibTorch)
--   ```lua      run here, each as listed below (a new one fails until it is)
--   ```sh       commands for your machine, not run here: each is listed below with the test
--               that runs what it does (a new one fails until it is)
local spec = require("parity.spec")
local mapping = require("parity.mapping")
local describe, it, eq, truthy = spec.describe, spec.it, spec.eq, spec.truthy
local fx = assert(arg[1], "usage: docs_spec.lua FIXTURES_DIR")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local root = here .. "/../.."

local read = spec.read

--- The documents: README.md, then docs/*.md in name order.
local function documents()
  local out = { "README.md" }
  local p = io.popen(("cd %q && ls docs/*.md"):format(root))
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  return out
end

--- kind -> { {doc, body}... } of every fenced block of these kinds, in document order.
local function blocks()
  local out = { lua = {}, console = {}, sh = {} }
  for _, doc in ipairs(documents()) do
    for kind, body in ("\n" .. read(root .. "/" .. doc)):gmatch("\n[ ]*```(%w+)\n(.-)\n[ ]*```") do
      if out[kind] then out[kind][#out[kind] + 1] = { doc = doc, body = body .. "\n" } end
    end
  end
  return out
end

local all = blocks()

--- Runs a Lua block as a chunk with `args` as its arg table; returns what it returns and what it printed.
local function run_lua(block, args)
  local printed = {}
  local env = setmetatable({ arg = args, print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    printed[#printed + 1] = table.concat(parts, "\t")
  end }, { __index = _G })
  local chunk = assert(loadstring(block:gsub("build/fixtures", fx), "doc block"))
  return setfenv(chunk, env)(), printed
end

--- A shown line as a Lua pattern: literal text, `...` for any text.
local function pattern(line)
  local parts = {}
  for piece in (line .. "..."):gmatch("(.-)%.%.%.") do parts[#parts + 1] = piece:gsub("%p", "%%%0") end
  return "^" .. table.concat(parts, ".-") .. "$"
end

--- Whether `shown` lines (`...` alone: any lines) appear in `actual` in order; nil and the first
--- shown line not found otherwise.
local function shows(shown, actual)
  local at = 1
  for _, line in ipairs(shown) do
    if line ~= "..." then
      local p, found = pattern(line), false
      while at <= #actual and not found do
        found = actual[at]:find(p) ~= nil
        at = at + 1
      end
      if not found then return nil, line end
    end
  end
  return true
end

describe("the docs' transcripts", function()
  -- a directory like the repository's root: build/fixtures and examples/ are this build's
  local absolute = spec.absolute
  local dir = os.tmpname()
  os.remove(dir)
  os.execute(("mkdir -p %q/build && ln -s %q %q/build/fixtures && ln -s %q/examples %q/examples"):format(
    dir, absolute(fx), dir, absolute(root), dir))
  local p = io.popen("readlink /proc/$PPID/exe")  -- this parity binary (the shell's parent)
  local parity_bin = p:read("*l")
  p:close()

  it("are there, and each shows a command", function()
    truthy(#all.console >= 3, "the README's tour has transcripts")
    for _, b in ipairs(all.console) do truthy(b.body:find("^%$ parity "), b.doc .. ": a transcript starts with $ parity") end
  end)

  for i, b in ipairs(all.console) do
    local command = b.body:match("^%$ parity ([^\n]*)")
    it(("%s, transcript %d: parity %s"):format(b.doc, i, command or "?"), function()
      local shown = {}
      for line in b.body:gmatch("([^\n]*)\n") do
        if not line:find("^%$ ") then shown[#shown + 1] = line end
      end
      local sh = io.popen(("cd %q && XDG_CACHE_HOME=%q/cache %q %s 2>&1"):format(dir, dir, parity_bin, command))
      local actual = {}
      for line in sh:lines() do actual[#actual + 1] = line end
      sh:close()
      local ok, missing = shows(shown, actual)
      truthy(ok, ("%s: not in the output: %q\n--- it printed:\n%s"):format(b.doc, tostring(missing),
        table.concat(actual, "\n")))
    end)
  end

  it("matches shown lines as it says: in order, ... for what varies", function()
    eq(shows({ "a ... c", "...", "e" }, { "a b c", "d", "e" }), true)
    eq(select(2, shows({ "e", "a b c" }, { "a b c", "d", "e" })), "a b c", "out of order")
    eq(select(2, shows({ "R 1.000" }, { "R 1.0001" })), "R 1.000", "a whole line")
  end)
end)

describe("the docs' Lua blocks", function()
  local function find(doc, k)
    local n = 0
    for _, b in ipairs(all.lua) do
      if b.doc == doc then
        n = n + 1
        if n == k then return b.body end
      end
    end
  end

  --- Block k of `doc` loaded from a file the way its loader reads one (`load` takes a path).
  local function load_block(doc, k, load)
    local file = os.tmpname() .. ".lua"
    local f = assert(io.open(file, "w"))
    f:write(find(doc, k))
    f:close()
    local ok, result = pcall(load, file)
    os.remove(file)
    if not ok then error(result, 0) end
    return result
  end

  it("are the ones this spec runs, and no others", function()
    local where = {}
    for _, b in ipairs(all.lua) do where[#where + 1] = b.doc end
    eq(where, { "README.md", "README.md", "docs/patches.md", "docs/workflow.md" }, "a Lua block added: run it here")
  end)

  it("compares a port with its reference as the tour says", function()
    local block = find("README.md", 1)
    local code, printed = run_lua(block, { fx .. "/reference", fx .. "/port_fused" })
    eq(code, 0, "looks equivalent: exit 0")
    local r = tonumber(printed[2]:match("^R =\t([%d.e+-]+)"))
    truthy(r and math.abs(r - 1) < 0.01, printed[2])
    eq(run_lua(block, { fx .. "/reference", fx .. "/bug_norm_bf16" }), 1, "the bf16 norm bug: exit 1")
  end)

  it("runs the module snippet", function()
    local _, printed = run_lua(find("README.md", 2), {})
    eq(#printed, 2)
    eq(printed[2], "512 x 64")
  end)

  it("runs the patch file example on the port it fixes: the eps bug's norms equal the reference's", function()
    local set = load_block("docs/patches.md", 1, require("parity.patches").load_file)
    local port = parity.bundle(fx .. "/bug_eps_small")
    port:patch({ set })
    local m = port:at("fp32")  -- a bundle's models load when first used: patched then
    eq(port.patched[set], { "blocks.0.attn_norm", "blocks.1.attn_norm", "final_norm" })
    local ref = parity.bundle(fx .. "/reference")
    local x = torch.randn({ 1, 4, 64 }, { seed = 2 })
    local want = ref:at("fp32"):child("model.layers.0.input_layernorm"):forward1(x)
    truthy(torch.equal(m:child("blocks.0.attn_norm"):forward1(x), want), "the reference's norm, bit for bit")
  end)

  it("expands the mapping example against the port it describes", function()
    local entries = load_block("docs/workflow.md", 1, mapping.load_file)
    local ref, port = parity.load(fx .. "/reference/fp32.pt"), parity.load(fx .. "/port_interleaved/fp32.pt")
    local pairs_ = mapping.expand(entries, ref:modules(), port:modules(), "docs/workflow.md")
    local qkv
    for _, p in ipairs(pairs_) do
      if p.target == "blocks.1.attn.qkv_proj" then qkv = p end
    end
    truthy(qkv and qkv.transform == "concat" and qkv.interleave.head_dim == 16, "layer 1's fused q/k/v")
  end)
end)

describe("the docs' shell blocks", function()
  -- the first command of each, and the test that runs what it does
  local COVERED = {
    ["make demo"] = "CI (.ci/run runs make test; make demo is its check of bug_eps_small)",
    ["python3 scripts/parity_export.py --hf-config config.json --random-init --seed 0 \\"] = "example.own_port",
    ["python3 scripts/parity_export.py --module port.py:make --out port --dtypes fp32,bf16"] = "example.own_port",
    ["make test BUILD=build-torch2 \\"] = "CI's modern leg (make test-modern: the same with build-modern)",
    ["/usr/bin/python3 scripts/parity_export.py --module my_model.py:make --out bundles/mine --dtypes fp32,bf16"]
      = "python.export",
    ["python3 scripts/parity_export.py --hf meta-llama/Llama-3.2-1B --out bundles/llama"]
      = "python.export_table (the --hf-config path; the Hub is not reachable from CI)",
    ["build-modern/venv/bin/python scripts/parity_export.py --hf-config config.json --random-init --format pt2 --out bundles/cfg_pt2"]
      = "python.export_pt2",
  }
  it("are each covered by a test that runs what they do", function()
    local unknown = {}
    for _, b in ipairs(all.sh) do
      local first = b.body:match("^%s*([^\n]-)%s*\n"):gsub("%s*#.*$", "")
      if not COVERED[first] then unknown[#unknown + 1] = b.doc .. ": " .. first end
    end
    eq(unknown, {}, "a shell block added: say here which test runs it")
  end)
end)

return spec.run()
