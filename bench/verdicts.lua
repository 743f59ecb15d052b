-- bench/verdicts.lua — parity check over a set of (reference, target, expected verdict) cases,
-- one line each: the figures behind the criteria and the verdict with its cause. This is how the
-- default thresholds were derived (docs/thresholds.md).
--   parity run bench/verdicts.lua CASES...      a case: REF=TARGET=expected (equivalent|divergent)
--   parity run bench/verdicts.lua --devset DIR  every case of a dev set with a truth.json
-- Exit 1 when a verdict differs from the expected one.
local parity = require("parity")
local cases = {}
local i = 1
while i <= #arg do
  if arg[i] == "--devset" then
    local dir = arg[i + 1]
    local truth = parity.json.read(dir .. "/truth.json")
    local names = {}
    for name in pairs(truth) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      cases[#cases + 1] = { dir .. "/" .. name:match("^[^/]+") .. "/ref", dir .. "/" .. name, truth[name].expected }
    end
    i = i + 2
  else
    local ref, target, expected = arg[i]:match("^([^=]+)=([^=]+)=(%a+)$")
    if not ref then error("a case is REF=TARGET=expected, got " .. arg[i], 0) end
    cases[#cases + 1] = { ref, target, expected }
    i = i + 1
  end
end

local out = os.tmpname()
local wrong = 0
print(("%-34s %-34s %7s %9s %9s %9s %9s  %-10s %s"):format("reference", "target", "R p95", "R32 p95", "KL p95",
  "own KL", "1-cos p5", "verdict", "cause"))
for _, c in ipairs(cases) do
  local ok, v = pcall(parity.check, { reference = c[1], target = c[2], out = out .. ".d", log = function() end })
  local s = ok and v.summaries or {}
  local e, e32 = s.e2e or {}, s.e2e32
  local verdict = ok and v.verdict or "error"
  if verdict ~= c[3] then wrong = wrong + 1 end
  local function g(x, f) return x and (f or "%9.3g"):format(x) or ("%9s"):format("-") end
  print(("%-34s %-34s %7.3f %s %s %s %s  %-10s %s%s"):format(c[1]:sub(-34), c[2]:sub(-34),
    e.r_ratio and e.r_ratio.p95 or 0 / 0, g(e32 and e32 ~= parity.json.null and e32.r32.p95),
    g(e.kl and e.kl.p95), g(e.own_kl and e.own_kl.p95), g(e.cosine and 1 - e.cosine.p5), verdict,
    ok and (v.cause ~= parity.json.null and v.cause.class or "") or tostring(v),
    verdict ~= c[3] and ("   <-- expected " .. c[3]) or ""))
end
os.execute("rm -rf " .. out .. ".d")
os.remove(out)
return wrong == 0 and 0 or 1
