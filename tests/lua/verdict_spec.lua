-- verdict.json, a documented interface: its keys against a snapshot (tests/lua/verdict_keys.txt),
-- from a divergent check, an equivalent one and an error. A key added, renamed or removed fails
-- here: say so in docs/workflow.md ("verdict.json") and bump parity.verdict.SCHEMA when one changes
-- meaning. After an intended change: PARITY_API_UPDATE=1 parity run tests/lua/verdict_spec.lua FIXTURES
local spec = require("parity.spec")
local it, eq, truthy = spec.it, spec.eq, spec.truthy
local fx = assert(arg[1], "usage: verdict_spec.lua FIXTURES_DIR")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local snapshot_path = here .. "/verdict_keys.txt"
local tmp = os.tmpname()
os.remove(tmp)

--- "kind path: type" of every key, arrays as path[] (their entries' keys merged).
local function paths(v, prefix, out)
  if type(v) ~= "table" then return end
  if #v > 0 then
    for _, x in ipairs(v) do paths(x, prefix .. "[]", out) end
    return
  end
  for k, x in pairs(v) do
    local p = prefix == "" and tostring(k) or (prefix .. "." .. tostring(k))
    -- the summaries and the thresholds are the stages' and the table's: their keys are theirs
    if p ~= "summaries" and p ~= "thresholds" and not p:find("%.parameter$") then
      out[p .. ": " .. (x == parity.json.null and "null" or type(x))] = true
      paths(x, p, out)
    end
  end
end

local function check(target, opts)
  local o = { reference = fx .. "/reference", target = fx .. "/" .. target, out = tmp .. "/" .. target,
              log = function() end, cache = false, prompts = 2, new_tokens = 6 }
  for k, v in pairs(opts or {}) do o[k] = v end
  local ok = pcall(parity.check, o)
  return parity.json.read(o.out .. "/verdict.json"), ok
end

it("has the keys of its snapshot, for a divergent, an equivalent and an error verdict", function()
  local listing = {}
  for _, case in ipairs({ { "divergent", check("bug_eps") }, { "equivalent", check("port_fused") },
                          { "error", check("other_vocab") } }) do
    local set = {}
    paths(case[2], "", set)
    for p in pairs(set) do listing[#listing + 1] = case[1] .. " " .. p end
  end
  table.sort(listing)
  spec.snapshot(snapshot_path, table.concat(listing, "\n") .. "\n", "verdict.json's keys")
end)

it("leaves first_divergence out when nothing diverges, and says its schema and versions", function()
  local v = check("port_fused")
  eq({ v.verdict, v.first_divergence, v.schema_version }, { "equivalent", nil, require("parity.verdict").SCHEMA })
  truthy(v.parity_version:match("^%d+%.%d+%.%d+$") and v.libtorch:match("^%d+%.%d+"), v.parity_version .. " " .. v.libtorch)
  eq(type(check("bug_eps").first_divergence), "table")
end)

local rc = spec.run()
os.execute("rm -rf " .. tmp)
return rc
