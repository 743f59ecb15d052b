-- examples/compare_logits.lua — compare a port's logits with the reference's, fp32 and bf16.
--
--   parity run examples/compare_logits.lua REFERENCE TARGET [--batch N] [--seq N] [--seed N]
--
-- REFERENCE and TARGET are bundles (directories with fp32.pt and bf16.pt). Both models see the
-- same seeded random tokens. For each dtype it prints relative L2, cosine and top-1 agreement
-- of the target's logits against the reference at that dtype, then the 3-tensor R-ratio:
-- how much error the bf16 port adds compared with the reference's own fp32 -> bf16 drift
-- (R ≈ 1: no porting error; R >> 1: a bug). Exit code: 0 when R < 1.2 and fp32 agrees, else 1.
local ref_path, target_path = arg[1], arg[2]
if not ref_path or not target_path then
  io.stderr:write("usage: parity run examples/compare_logits.lua REFERENCE TARGET [--batch N] [--seq N] [--seed N]\n")
  return 2
end
local opts = { batch = 2, seq = 16, seed = 0 }
for i = 3, #arg, 2 do
  local key = arg[i]:match("^%-%-(%w+)$")
  if not key or opts[key] == nil or not tonumber(arg[i + 1]) then
    io.stderr:write(("compare_logits: bad option %s\n"):format(arg[i]))
    return 2
  end
  opts[key] = tonumber(arg[i + 1])
end

local m = parity.metrics
local ref, target = parity.bundle(ref_path), parity.bundle(target_path)
local vocab = ref:vocab_size()
if target:vocab_size() ~= vocab then
  io.stderr:write(("vocab sizes differ: reference %d, target %d\n"):format(vocab, target:vocab_size()))
  return 2
end
local tokens = torch.randint(0, vocab, { opts.batch, opts.seq }, { seed = opts.seed })

local logits = {}
for _, dtype in ipairs({ "fp32", "bf16" }) do
  logits["ref_" .. dtype] = ref:at(dtype)(tokens):float()
  logits["target_" .. dtype] = target:at(dtype)(tokens):float()
end

print(("reference %s\ntarget    %s\ntokens    %d x %d (seed %d), vocab %d\n"):format(
  ref_path, target_path, opts.batch, opts.seq, opts.seed, vocab))
print(("%-6s %12s %12s %10s"):format("dtype", "rel L2", "cosine", "top-1"))
for _, dtype in ipairs({ "fp32", "bf16" }) do
  local t, r = logits["target_" .. dtype], logits["ref_" .. dtype]
  local top1 = m.top1(t, r)
  print(("%-6s %12.3e %12.8f %9.1f%%"):format(dtype, m.rel_l2(t, r), m.cosine(t, r), 100 * top1))
end

local r = m.r_ratio(logits.target_bf16, logits.ref_fp32, logits.ref_bf16)
local fp32_ok = m.allclose(logits.target_fp32, logits.ref_fp32, { rtol = 1e-4, atol = 1e-4 }).pass
print(("\nR-ratio (target bf16 vs reference fp32, baseline reference bf16): %.3f"):format(r))
local ok = r < 1.2 and fp32_ok
print(ok and "looks equivalent" or ("DIVERGENT:%s%s"):format(
  fp32_ok and "" or " fp32 logits differ beyond 1e-4;", r < 1.2 and "" or " bf16 error exceeds the precision baseline (R >= 1.2)"))
return ok and 0 or 1
