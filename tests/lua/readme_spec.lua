-- The README's Lua blocks, run as written (every ```lua block is listed here: a new one fails
-- until it is): the tour's comparison, the module snippet (its paths are the fixtures', under
-- build/fixtures), and the mapping example, expanded against the port it describes.
local spec = require("parity.spec")
local mapping = require("parity.mapping")
local describe, it, eq, truthy = spec.describe, spec.it, spec.eq, spec.truthy
local fx = assert(arg[1], "usage: readme_spec.lua FIXTURES_DIR")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."

local function readme_blocks()
  local f = assert(io.open(here .. "/../../README.md"))
  local text = f:read("*a")
  f:close()
  local blocks = {}
  for body in text:gmatch("\n```lua\n(.-)\n```") do blocks[#blocks + 1] = body .. "\n" end
  return blocks
end

--- Runs a block as a chunk with `args` as its arg table; returns what it returns and what it printed.
local function run(block, args)
  local printed = {}
  local env = setmetatable({ arg = args, print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    printed[#printed + 1] = table.concat(parts, "\t")
  end }, { __index = _G })
  local chunk = assert(loadstring(block:gsub("build/fixtures", fx), "README block"))
  return setfenv(chunk, env)(), printed
end

describe("README", function()
  local blocks = readme_blocks()

  it("has the Lua blocks this spec runs, and no others", function()
    eq(#blocks, 3, "a Lua block added to the README: run it here")
  end)

  it("compares a port with its reference as the tour says", function()
    local code, printed = run(blocks[1], { fx .. "/reference", fx .. "/port_fused" })
    eq(code, 0, "looks equivalent: exit 0")
    local r = tonumber(printed[2]:match("^R =\t([%d.e+-]+)"))
    truthy(r and math.abs(r - 1) < 0.01, printed[2])
    eq(run(blocks[1], { fx .. "/reference", fx .. "/bug_norm_bf16" }), 1, "the bf16 norm bug: exit 1")
  end)

  it("runs the module snippet", function()
    local _, printed = run(blocks[2], {})
    eq(#printed, 2)
    truthy(printed[2]:find("512") and printed[2]:find("64"), printed[2])
  end)

  it("expands the mapping example against the port it describes", function()
    local file = os.tmpname() .. ".lua"
    local f = assert(io.open(file, "w"))
    f:write(blocks[3])
    f:close()
    local entries = mapping.load_file(file)
    os.remove(file)
    local ref, port = parity.load(fx .. "/reference/fp32.pt"), parity.load(fx .. "/port_interleaved/fp32.pt")
    local pairs_ = mapping.expand(entries, ref:modules(), port:modules(), "README")
    local qkv
    for _, p in ipairs(pairs_) do
      if p.target == "blocks.1.attn.qkv_proj" then qkv = p end
    end
    truthy(qkv and qkv.transform == "concat" and qkv.interleave.head_dim == 16, "layer 1's fused q/k/v")
  end)
end)

spec.run()
