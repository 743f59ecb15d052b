-- bench/metrics.lua — cost of the native metrics and of the Lua boundary, as ratios to one
-- baseline measured in the same run (a 1024x1024 fp32 matmul), so figures compare across machines.
--   parity run bench/metrics.lua [REPEATS]
local repeats = tonumber(arg[1]) or 20
local m = parity.metrics

local function time(fn)
  fn()  -- warm up
  local t0 = os.clock()
  for _ = 1, repeats do fn() end
  return (os.clock() - t0) / repeats
end

local a, b = torch.randn({ 1024, 1024 }, { seed = 1 }), torch.randn({ 1024, 1024 }, { seed = 2 })
local logits_a = torch.randn({ 4, 128, 32000 }, { seed = 3 })
local logits_b = logits_a + torch.randn({ 4, 128, 32000 }, { seed = 4 }) * 0.01
local small = torch.ones(4)

local base = time(function() return a:matmul(b) end)
local rows = {
  { "rel_l2 1M", function() return m.rel_l2(a, b) end },
  { "allclose 1M", function() return m.allclose(a, b, { rtol = 1e-3, atol = 1e-3 }) end },
  { "r_ratio 1M", function() return m.r_ratio(a, b, a) end },
  { "kl 512x32000", function() return m.kl(logits_a, logits_b) end },
  { "top1 512x32000", function() return m.top1(logits_a, logits_b) end },
  { "dispatch x:add(1) (4 elems)", function() return small:add(1) end },
  { "metamethod x + 1 (4 elems)", function() return small + 1 end },
}
print(("baseline: 1024^2 fp32 matmul %.2f ms (CPU time, %d threads)"):format(base * 1e3, torch.get_num_threads()))
print(("%-30s %12s %10s"):format("case", "ms", "x matmul"))
for _, r in ipairs(rows) do
  local t = time(r[2])
  print(("%-30s %12.4f %10.3f"):format(r[1], t * 1e3, t / base))
end
