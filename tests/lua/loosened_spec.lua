-- Loosened thresholds (stdlib/parity/thresholds.lua audit, check.lua): a thresholds file looser
-- than the defaults is listed in the summary and verdict.json, and one that switches every
-- criterion off says so. On the fixtures (arg[1]).
local spec = require("parity.spec")
local describe, it, eq, truthy = spec.describe, spec.it, spec.eq, spec.truthy
local thresholds = require("parity.thresholds")
local workflow = require("parity.workflow")
local fx = assert(arg[1], "usage: loosened_spec.lua FIXTURES_DIR")
local tmp = os.tmpname()
os.remove(tmp)

local function names(list)
  local out = {}
  for i, l in ipairs(list) do out[i] = l.name .. (l.off and " off" or "") end
  return out
end

local function audit(t) return thresholds.audit(thresholds.resolve(t)) end

local OFF = { r_p95 = 1e308, r32_p95 = 1e308, kl_floor = 1e308, cosine_floor = 2, top1 = 0, row_z = 1e308 }

describe("thresholds.audit", function()
  it("lists nothing for the defaults or tighter thresholds", function()
    local a = audit(nil)
    eq({ #a.loosened, #a.switched_off, a.criteria_can_fail, #a.warnings }, { 0, 0, true, 0 })
    eq(#audit({ r_p95 = 1.05, r32_p95 = 1e-5, top1 = 0.9, r_over = 0.95, cosine_floor = 0, smoke_match = 1 }).loosened, 0)
  end)

  it("judges each threshold in its own direction, past its stated factor", function()
    -- R bounds by their excess over the reference's own noise (1): 10x of 0.2 is 3
    eq(names(audit({ r_p95 = 2.9 }).loosened), {})
    eq(names(audit({ r_p95 = 3.5, r_p50_precision = 2.5 }).loosened), { "r_p50_precision", "r_p95" })
    -- ratios: 10x
    eq(names(audit({ kl_floor = 1e-3, r32_p95 = 4e-3, tie_factor = 30 }).loosened), { "r32_p95", "tie_factor" })
    -- rates pass above: below half the default
    eq(names(audit({ top1 = 0.3, smoke_match = 0.2 }).loosened), {})
    eq(names(audit({ top1 = 0.2, smoke_match = 0.1, r_over = 0.3 }).loosened), { "r_over", "smoke_match", "top1" })
    local a = audit({ top1 = 0.2 })
    eq(a.loosened[1], { name = "top1", default = 0.5, given = 0.2, off = false, factor = 2 })
    eq(a.criteria_can_fail, true)
    truthy(a.warnings[1]:find("loosened threshold top1 = 0.2 (default 0.5; more than 2x looser)", 1, true), a.warnings[1])
  end)

  it("says when the thresholds switch off every criterion they govern", function()
    local a = audit(OFF)
    eq(a.switched_off, { "r_p95", "kl", "cosine", "top1", "r32_p95", "components" })
    eq(a.criteria_can_fail, false)
    truthy(a.warnings[1]:find("THESE THRESHOLDS SWITCH OFF EVERY CRITERION", 1, true), a.warnings[1])
    eq(names(a.loosened), { "cosine_floor off", "kl_floor off", "r32_p95 off", "r_p95 off", "row_z off", "top1 off" })
    -- any one criterion left is enough
    local some = {}
    for k, v in pairs(OFF) do some[k] = v end
    some.top1 = nil
    local b = audit(some)
    eq({ b.criteria_can_fail, #b.switched_off }, { true, 5 })
    -- a component fails on R, R32 or its rows: R alone off leaves it judged
    eq(audit({ r_p95 = 1e308 }).switched_off, { "r_p95" })
    -- every flip a near-tie, or the KL bound 1e13 times the reference's own
    eq(audit({ tie_factor = 1e308, kl_ratio = 1e13 }).switched_off, { "kl", "top1" })
    eq(audit({ r32_p95 = 1000, kl_ratio = 1e7 }).switched_off, {})  -- a missing attention scale reaches R32 84
  end)
end)

describe("check with a loosening thresholds file", function()
  local common = { reference = fx .. "/reference", target = fx .. "/bug_rope", cache_dir = tmp .. "/cache",
                   prompts = 2, new_tokens = 8, log = function() end, quiet = true }
  local function check(out, extra)
    local opts = { out = tmp .. "/" .. out }
    for k, v in pairs(common) do opts[k] = v end
    for k, v in pairs(extra or {}) do opts[k] = v end
    return parity.check(opts), parity.json.read(opts.out .. "/verdict.json"), opts.out
  end

  it("has an empty loosened list with the defaults", function()
    local v, disk = check("defaults")
    eq(v.verdict, "divergent")
    eq({ #disk.loosened, disk.criteria_can_fail, #disk.switched_off }, { 0, true, 0 })
  end)

  it("lists each loosened threshold in the summary and verdict.json, and says none can fail", function()
    os.execute("mkdir -p " .. tmp)
    local f = assert(io.open(tmp .. "/off.lua", "w"))
    f:write("return { r_p95 = 1e308, r32_p95 = 1e308, kl_floor = 1e308, cosine_floor = 2, top1 = 0, row_z = 1e308 }\n")
    f:close()
    local v, disk, out = check("off", { thresholds_file = tmp .. "/off.lua" })
    eq(v.verdict, "equivalent")  -- what the file asked for, but said loudly
    eq(disk.criteria_can_fail, false)
    eq(names(disk.loosened), { "cosine_floor off", "kl_floor off", "r32_p95 off", "r_p95 off", "row_z off", "top1 off" })
    eq(disk.loosened[4], { name = "r_p95", default = 1.2, given = 1e308, off = true, factor = 10 })
    local text = require("parity.report.terminal").render(v, out)
    truthy(text:find("warning: THESE THRESHOLDS SWITCH OFF EVERY CRITERION THEY GOVERN", 1, true), text)
    truthy(text:find("warning: loosened threshold r_p95 = 1e+308 (default 1.2; so loose it is switched off)", 1, true), text)
    local mild = check("mild", { thresholds = { r_p95 = 5 } })
    eq({ names(mild.loosened), mild.criteria_can_fail }, { { "r_p95" }, true })
  end)
end)

local rc = spec.run()
os.execute("rm -rf " .. tmp)
return rc
