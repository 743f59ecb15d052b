-- bench/confirm.lua — parity check --confirm over a set of divergent ports, one line each: the
-- first divergence, its cause, and what every repair tried says (fitted, substitution, the fp32
-- fallback of a precision fault), then the shares confirmed by kind. How docs/patches.md's
-- figures were made.
--   parity run bench/confirm.lua [--prompts K] [--new-tokens N] REF=TARGET...
--   parity run bench/confirm.lua --devset DIR         every divergent case of a dev set's truth.json
-- A case that is not divergent is listed and left out of the shares.
local parity = require("parity")
local cases, settings = {}, { prompts = 3, new_tokens = 8 }
local i = 1
while i <= #arg do
  local a = arg[i]
  if a == "--devset" then
    local dir = arg[i + 1]
    local truth = parity.json.read(dir .. "/truth.json")
    local names = {}
    for name, t in pairs(truth) do
      if t.expected == "divergent" then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do cases[#cases + 1] = { dir .. "/" .. name:match("^[^/]+") .. "/ref", dir .. "/" .. name } end
    i = i + 2
  elseif a == "--prompts" or a == "--new-tokens" then
    settings[a == "--prompts" and "prompts" or "new_tokens"] = tonumber(arg[i + 1])
    i = i + 2
  else
    local ref, target = a:match("^([^=]+)=([^=]+)$")
    if not ref then error("a case is REF=TARGET, got " .. a, 0) end
    cases[#cases + 1] = { ref, target }
    i = i + 1
  end
end

local out = os.tmpname()
local shares = {}  -- kind -> {tried, confirmed}
local any, cases_confirmed, divergent = 0, 0, 0
print(("%-30s %-40s %-10s %s"):format("target", "first divergence", "cause", "repairs (kind: confirmed?)"))
for _, c in ipairs(cases) do
  local ok, v = pcall(parity.check, { reference = c[1], target = c[2], out = out .. ".d", log = function() end,
    quiet = true, confirm = true, prompts = settings.prompts, new_tokens = settings.new_tokens })
  local first = ok and v.first_divergence ~= parity.json.null and v.first_divergence or nil
  local repairs, confirmed = {}, false
  for _, r in ipairs(ok and v.confirmation or {}) do
    shares[r.kind] = shares[r.kind] or { tried = 0, confirmed = 0 }
    shares[r.kind].tried = shares[r.kind].tried + 1
    if r.confirmed then shares[r.kind].confirmed, confirmed = shares[r.kind].confirmed + 1, true end
    repairs[#repairs + 1] = ("%s: %s%s"):format(r.kind, r.confirmed and "yes" or "no",
      r.rounds and r.rounds > 1 and (" (%d rounds)"):format(r.rounds) or "")
      .. (not r.confirmed and r.error and (" [" .. tostring(r.error):sub(1, 70) .. "]") or "")
  end
  if ok and v.verdict == "divergent" then
    divergent = divergent + 1
    if confirmed then cases_confirmed = cases_confirmed + 1 end
  end
  any = any + 1
  print(("%-30s %-40s %-10s %s"):format(c[2]:sub(-30), first and first.target:sub(-40) or (ok and v.verdict or "error"),
    ok and (v.cause ~= parity.json.null and v.cause.class or "-") or tostring(v):sub(1, 60),
    #repairs > 0 and table.concat(repairs, "; ") or "-"))
end
print(("\n%d of %d divergent ports confirmed by a repair"):format(cases_confirmed, divergent))
local kinds = {}
for k in pairs(shares) do kinds[#kinds + 1] = k end
table.sort(kinds)
for _, k in ipairs(kinds) do print(("  %-13s %d of %d tried confirmed"):format(k, shares[k].confirmed, shares[k].tried)) end
os.execute("rm -rf " .. out .. ".d")
os.remove(out)
return 0
