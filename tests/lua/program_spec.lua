-- parity.program: what a .pt2 package's metadata must be before parity trusts its tree and taps
-- (a package from someone else), on every build; the packages themselves run in python.export_pt2.
local spec = require("parity.spec")
local program = require("parity.program")
local json = require("parity.core").json
local describe, it, eq, truthy = spec.describe, spec.it, spec.eq, spec.truthy

local TREE = { { path = "", type = "Root", params = 0, total_params = 8, depth = 0 },
               { path = "m", type = "Linear", params = 8, total_params = 8, depth = 1 } }

local function meta(modules, outputs, params)
  return { ["parity.modules"] = json.encode(modules), ["parity.outputs"] = json.encode(outputs),
           ["parity.parameters"] = json.encode(params or { "m.weight" }) }
end

local function refused(m)
  local ok, err = pcall(program.layout, m, "x.pt2")
  truthy(not ok, "accepted")
  return err
end

describe("program layout", function()
  it("reads a tree, its taps and its parameter names", function()
    local modules, outputs, is_param = program.layout(meta(TREE, { { path = "m", call = 0, kind = "input" },
                                                                  { path = "m", call = 0, kind = "output" } }), "x.pt2")
    eq({ #modules, modules[2].path, #outputs, outputs[2].kind, is_param["m.weight"] }, { 2, "m", 2, "output", true })
  end)

  it("refuses metadata that is not what the exporter writes, in one line naming the file", function()
    truthy(refused({}):find("^x%.pt2: no parity%.modules in the package's metadata: export it with"), "missing")
    truthy(refused(meta({ TREE[2], TREE[1] }, {})):find("not a tree, root first"), "root not first")
    local orphan = { TREE[1], { path = "a.b", type = "T", params = 0, total_params = 0, depth = 2 } }
    truthy(refused(meta(orphan, {})):find("parents before children %(at 'a%.b'%)"), "parent missing")
    truthy(refused(meta({ TREE[1], TREE[2], TREE[2] }, {})):find("not a tree"), "a path twice")
    truthy(refused(meta({ TREE[1], { path = "m", type = "T" } }, {})):find("entry 2 is not {path, type"), "fields")
    for _, o in ipairs({ { path = "nowhere", call = 0 }, { path = "m", call = -1 }, { path = "m", call = 0.5 },
                         { path = "m", call = 5 }, { path = "m", call = 0, kind = "weights" } }) do
      truthy(refused(meta(TREE, { o })):find("parity%.outputs entry 1 is not"), json.encode(o))
    end
    truthy(refused({ ["parity.modules"] = "[", ["parity.outputs"] = "[]", ["parity.parameters"] = "[]" })
      :find("^x%.pt2 %(parity%.modules%)"), "bad JSON names the file and key")
  end)
end)

spec.run()
