-- The CUDA cases: on a machine with a GPU (and parity built against a CUDA LibTorch); elsewhere
-- the script says why and exits 77, which ctest counts as skipped (SKIP_RETURN_CODE).
local spec = require("parity.spec")
local it, eq, truthy = spec.it, spec.eq, spec.truthy
local core = require("parity.core")
local fx = assert(arg[1], "usage: cuda_spec.lua FIXTURES_DIR")
local file = fx .. "/reference/fp32.pt"

local ok, why = pcall(core.usable_device, "cuda")
if not ok then
  print("skipped: the CUDA cases: " .. tostring(why):gsub("^.-device 'cuda': ", ""))
  return 77
end

it("runs a model on the GPU on CPU inputs, its results and captures back on the CPU", function()
  local ids = torch.randint(0, 512, { 2, 7 }, { seed = 0 })
  local cpu, gpu = parity.load(file), parity.load(file, "cuda")
  eq(gpu:device():sub(1, 4), "cuda")
  local want, got = cpu(ids), gpu(ids)
  eq(got:device(), "cpu")
  truthy(parity.metrics.max_abs_diff(got, want) < 1e-3, "the GPU's logits are the CPU's, within fp32 rounding")
  local tapped = parity.load(file, "cuda")
  tapped:tap({ "model.layers.0" })
  local _, calls = tapped:run_tapped({ ids })
  eq(calls["model.layers.0"][1].outputs[1]:device(), "cpu")
end)
it("checks a port on the GPU against a reference on the CPU", function()
  local v = parity.check({ reference = fx .. "/reference", target = fx .. "/bug_eps", device = "cuda",
    reference_device = "cpu", out = os.tmpname() .. "_cuda", cache = false, prompts = 2, new_tokens = 6,
    log = function() end })
  eq(v.verdict, "divergent")
end)

return spec.run()
