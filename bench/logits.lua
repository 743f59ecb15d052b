-- bench/logits.lua — the e2e stage's logits metrics: one fused pass (metrics.logits_rows) against
-- the same figures metric by metric (how e2e computed them before), against the same metrics in
-- plain PyTorch (bench/logits_torch.py, Debian's python3-torch) and against the floor of reading
-- the three tensors once (a sum over each), all timed in the same run (wall clock, median of
-- REPEATS; torch's threads: PARITY_THREADS).
--   parity run bench/logits.lua [ROWS [VOCAB [REPEATS]]]   (default 512 x 151936, 3)
local rows, vocab, repeats = tonumber(arg[1]) or 512, tonumber(arg[2]) or 151936, tonumber(arg[3]) or 3
local m = parity.metrics

local timing = require("timing")  -- bench/timing.lua
local function median_time(fn) return timing(repeats, fn) end

local shape = { 1, rows, vocab }
local a = torch.randn(shape, { seed = 1 }) * 3
local t = a + torch.randn(shape, { seed = 2 }) * 0.05
local b = a + torch.randn(shape, { seed = 3 }) * 0.03
local tokens = torch.randint(0, vocab, { 1, rows }, { seed = 4 })
local bytes = 3 * rows * vocab * 4

-- the same metrics in plain PyTorch (Debian's python3-torch), on the same tensors
local file = os.tmpname() .. ".safetensors"
parity.tensors.save(file, { t = t, a = a, b = b, tokens = tokens })
local p = io.popen(("/usr/bin/python3 %s/logits_torch.py %s %d %d 2>&1"):format(
  debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench", file, torch.get_num_threads(), repeats))
local torch_out = p:read("*a")
p:close()
os.remove(file)
local pytorch = tonumber(torch_out:match("^%s*([%d.e-]+)%s*$"))
if not pytorch then print("plain PyTorch: not measured: " .. torch_out:gsub("\n", " ")) end

local read = median_time(function() return t:sum():item() + a:sum():item() + b:sum():item() end)
local fused = median_time(function() return m.logits_rows(t, a, b, tokens, 5) end)
local fused_sse2 = median_time(function() return m.logits_rows(t, a, b, tokens, 5, { simd = "sse2" }) end)
local separate = median_time(function()
  m.r_ratio_rows(t, a, b); m.cosine_rows(t, a); m.cosine_rows(b, a); m.kl(t, a); m.kl(b, a)
  m.delta_p(t, a, tokens); m.top1(t, a); m.topk(t, a, 5); m.max_abs_diff_rows(b, a); m.top2_gap(a)
end)
print(("logits %d x %d, 3 tensors, %.2f GB, %d threads, median of %d"):format(rows, vocab, bytes / 2 ^ 30,
  torch.get_num_threads(), repeats))
print(("%-38s %9s %12s %10s"):format("", "s", "GB/s", "x read"))
for _, r in ipairs({ { "read once (3 sums): the floor", read }, { "logits_rows (one fused pass)", fused },
                     { "logits_rows, SSE2 kernel forced", fused_sse2 },
                     { "metric by metric (before)", separate }, pytorch and { "plain PyTorch (Python, same threads)", pytorch } }) do
  print(("%-38s %9.3f %12.2f %10.2f"):format(r[1], r[2], bytes / r[2] / 2 ^ 30, r[2] / read))
end
print(("fused pass: %.1f x faster than metric by metric%s; %.2f ns an element of the logits"):format(
  separate / fused, pytorch and (", %.1f x faster than plain PyTorch"):format(pytorch / fused) or "",
  fused / (rows * vocab) * 1e9))
