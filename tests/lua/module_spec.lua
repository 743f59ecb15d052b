-- Modules and bundles on the fixture models (arg[1]: the fixtures directory).
local spec = require("parity.spec")
local describe, it, eq, near, truthy, raises = spec.describe, spec.it, spec.eq, spec.near, spec.truthy, spec.raises
local fx = assert(arg[1], "usage: module_spec.lua FIXTURES_DIR")

describe("Module", function()
  local m = parity.load(fx .. "/reference/fp32.pt")

  it("lists submodules in execution order, parents first", function()
    local paths = {}
    for i, info in ipairs(m:modules()) do paths[info.path] = i end
    eq(m:modules()[1].path, "")
    eq(m:modules()[1].type, "LlamaForCausalLM")
    truthy(paths["model.rotary_emb"] < paths["model.layers.0"], "rotary_emb is called before the layers")
    truthy(paths["model.layers.0.self_attn.q_proj"] < paths["model.layers.0.mlp.gate_proj"], "attention before mlp")
    truthy(paths["model.norm"] < paths["lm_head"], "norm before lm_head")
    truthy(paths["model"] < paths["model.embed_tokens"], "parent before child")
  end)

  it("gets children by dotted path and reports their class", function()
    local q = m:child("model.layers.0.self_attn.q_proj")
    eq(q:type(), "Linear")
    eq(q:parameters().weight:size(), { 64, 64 })
    raises(function() m:child("model.layers.9") end, "no submodule 'model.layers.9'")
  end)

  it("exposes parameters, buffers, methods and the schema", function()
    eq(m:parameters()["model.embed_tokens.weight"]:size(), { 512, 64 })
    truthy(m:buffers()["model.rotary_emb.inv_freq"] ~= nil, "buffer")
    eq(m:methods(), { "forward" })
    local s = m:schema()
    eq(s.name, "forward")
    eq(#s.arguments, 1)
    eq(s.arguments[1].type, "Tensor")
  end)

  it("runs forward and submodules", function()
    local ids = torch.randint(0, 512, { 2, 5 }, { seed = 0 })
    local logits = m(ids)
    eq(logits:size(), { 2, 5, 512 })
    local h = m:child("model.embed_tokens")(ids)
    eq(h:size(), { 2, 5, 64 })
    local norm = m:child("model.norm")(h)
    eq(norm:size(), { 2, 5, 64 })
    raises(function() m("not a tensor") end, "argument 'input_ids': expected Tensor, got string")
    raises(function() m:call("nope") end, "has no method 'nope'")
  end)

  it("says which file is missing or corrupt", function()
    raises(function() parity.load(fx .. "/missing.pt") end, "missing.pt: no such file")
    raises(function() parity.load(fx .. "/corrupt.pt") end, "corrupt.pt: not a loadable TorchScript file")
  end)
end)

describe("bundle", function()
  it("opens per-dtype traces and the manifest", function()
    local b = parity.bundle(fx .. "/reference")
    eq(b:dtypes(), { "fp32", "bf16" })
    eq(b.manifest.vocab_size, 512)
    eq(b:vocab_size(), 512)
    local w = b:at("bf16"):parameters()["lm_head.weight"]
    eq(w:dtype(), "bfloat16")
    truthy(b:at("bfloat16") == b:at("bf16"), "PyTorch names work, modules load once")
    raises(function() b:at("fp16") end, "has no fp16 trace (it has: fp32, bf16)")
    truthy(parity.bundle(b) == b, "an open bundle is passed through")
  end)

  it("treats a single .pt as a bundle of one", function()
    local b = parity.bundle(fx .. "/reference_fp32.pt")
    eq(b:dtypes(), { "fp32" })
    eq(b:vocab_size(), 512)  -- from the embedding weight
    raises(function() parity.bundle(fx .. "/nothing") end, "no such file or directory")
    raises(function() parity.bundle(fx) end, "not a bundle")
  end)

  it("runs a port with another structure to the same logits", function()
    local ids = torch.randint(0, 512, { 1, 8 }, { seed = 4 })
    local r = parity.bundle(fx .. "/reference"):at("fp32")(ids)
    local t = parity.bundle(fx .. "/port_fused"):at("fp32")(ids)
    truthy(parity.metrics.allclose(t, r, { rtol = 1e-5, atol = 1e-5 }).pass, "port agrees in fp32")
    local bug = parity.bundle(fx .. "/bug_rope"):at("fp32")(ids)
    truthy(not parity.metrics.allclose(bug, r, { rtol = 1e-3, atol = 1e-3 }).pass, "a planted bug does not")
  end)
end)


describe("devices", function()
  local core = require("parity.core")
  local file = fx .. "/reference/fp32.pt"

  it("loads onto a device, moves and says where a module is", function()
    local m = parity.load(file, "cpu")
    eq(m:device(), "cpu")
    eq(m:to({ device = "cpu", dtype = "bf16" }):device(), "cpu")
    eq(m:parameters()["model.embed_tokens.weight"]:dtype(), "bfloat16")
    local b = parity.bundle(fx .. "/reference", "cpu")
    eq({ b.device, b:at("fp32"):device(), b:fresh("bf16"):device() }, { "cpu", "cpu", "cpu" })
    eq(core.usable_device("cpu"), "cpu")
    raises(function() core.usable_device("tpu") end, "unknown device 'tpu'")
    local ok, err = pcall(core.usable_device, "cuda:99")  -- no GPU here, or not a hundred
    truthy(not ok and tostring(err):find("device 'cuda:99': .*CUDA device") ~= nil, tostring(err))
  end)
end)

return spec.run()
