-- bench/patches.lua — what a patch costs: the forward of a bundle's model (tapped everywhere, as
-- check runs it) plain, with every norm patched by a wrapper that calls its original (the taps'
-- round trip into Lua and back, and the component computed twice), and with every norm patched
-- by a rewrite in Lua (the tensor API computing it), all timed in the same run (wall clock, median
-- of REPEATS), as ratios to the plain forward.
--   parity run bench/patches.lua BUNDLE [DTYPE [TOKENS [REPEATS]]]   (default fp32, 4 x 128, 15)
local path = assert(arg[1], "usage: parity run bench/patches.lua BUNDLE [DTYPE [TOKENS [REPEATS]]]")
local dtype, tokens_n, repeats = arg[2] or "fp32", tonumber(arg[3]) or 128, tonumber(arg[4]) or 15
local patches = require("parity.patches")

local timing = require("timing")  -- bench/timing.lua
local function median_time(fn) return timing(repeats, fn) end

local b = parity.bundle(path)
local m = b:at(dtype)
local ids = torch.randint(0, b:vocab_size(), { 4, tokens_n }, { seed = 1 })
local norms = {}
for _, info in ipairs(m:modules()) do
  if info.type:find("Norm") and next(m:child(info.path):parameters()) ~= nil then
    norms[#norms + 1] = info.path
  end
end
assert(#norms > 0, path .. ": no norm modules to patch")

local function weight(self)
  for _, w in pairs(self.params) do return w end
end
local sets = {
  wrapper = patches.from_entries((function()
    local e = {}
    for i, p in ipairs(norms) do e[i] = { target = p, forward = function(self, x) return self.original(x) end } end
    return e
  end)(), "wrapper"),
  rewrite = patches.from_entries((function()
    local e = {}
    for i, p in ipairs(norms) do
      e[i] = { target = p, forward = function(self, x)
        local h = x:float()
        return weight(self) * (h * torch.rsqrt(h:pow(2):mean(-1, true) + 1e-6)):to(x:dtype())
      end }
    end
    return e
  end)(), "rewrite"),
}

-- the first calls of a TorchScript module profile and optimise its graph: untimed
local function warm() for _ = 1, 3 do m(ids) end end
warm()
local base = median_time(function() m(ids) end)
print(("%s at %s, %d x %d tokens, %d norms patched (median of %d)"):format(path, dtype, 4, tokens_n, #norms, repeats))
print(("  plain forward          %8.2f ms"):format(base * 1e3))
for _, name in ipairs({ "wrapper", "rewrite" }) do
  patches.apply(m, sets[name])
  warm()
  local t = median_time(function() m(ids) end)
  for _, p in ipairs(norms) do m:unpatch(p) end
  print(("  %-22s %8.2f ms   %.2fx"):format(name .. " patch", t * 1e3, t / base))
end
