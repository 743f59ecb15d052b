-- Taps (host/taps.cpp): capture and inject on traced models, as they are.
local spec = require("parity.spec")
local describe, it, eq, truthy, raises = spec.describe, spec.it, spec.eq, spec.truthy, spec.raises
local fx = assert(arg[1], "usage: taps_spec.lua FIXTURES_DIR")

local function shapes(list)
  local out = {}
  for i, t in ipairs(list) do out[i] = table.concat(t:size(), "x") end
  return out
end

describe("taps", function()
  local ids = torch.randint(0, 512, { 2, 7 }, { seed = 1 })

  it("capture every call's tensors without changing the output", function()
    local m = parity.load(fx .. "/reference/fp32.pt")
    local sites = m:tap({ "model.layers.0", "model.layers.0.input_layernorm", "model.rotary_emb", "lm_head" })
    eq(sites[1], { path = "model.layers.0", inputs = 3, outputs = 1, untapped = {} })
    local out, calls = m:run_tapped({ ids })
    truthy(torch.equal(out, parity.load(fx .. "/reference/fp32.pt")(ids)), "same logits as an untapped run")
    -- the rotary embedding runs once, and every layer takes its (cos, sin) positionally
    eq(#calls["model.rotary_emb"], 1)
    eq(shapes(calls["model.layers.0"][1].inputs), { "2x7x64", "2x7x16", "2x7x16" })
    truthy(torch.equal(calls["model.layers.0"][1].inputs[2], calls["model.rotary_emb"][1].outputs[1]), "cos passed on")
    -- captured once (host/taps.cpp, NOTE [ Captures shared ]): the same tensor in Lua
    truthy(rawequal(calls["model.layers.0"][1].inputs[2], calls["model.rotary_emb"][1].outputs[1]), "one copy of cos")
    eq(shapes(calls["lm_head"][1].outputs), { "2x7x512" })
    truthy(torch.equal(calls["lm_head"][1].outputs[1], out), "the last call's output is the logits")
  end)

  it("record each call of a module called several times", function()
    local m = parity.load(fx .. "/twice.pt")
    m:tap({ "lin", "other" })
    local x = torch.randn({ 2, 4 }, { seed = 2 })
    local _, calls = m:run_tapped({ x })
    eq(#calls.lin, 2)
    truthy(torch.equal(calls.lin[2].inputs[1], calls.lin[1].outputs[1]), "the second call takes the first's output")
    truthy(rawequal(calls.lin[2].inputs[1], calls.lin[1].outputs[1]), "one copy of it")
    -- an output written in place before the next module takes it: two captures, each as it was
    local ip = parity.load(fx .. "/inplace.pt")
    ip:tap({ "lin", "other" })
    local _, c2 = ip:run_tapped({ x })
    local before, after = c2.lin[1].outputs[1], c2.other[1].inputs[1]
    truthy(not rawequal(before, after) and torch.equal(after, before * 2), "the in-place write seen by the next only")
    truthy(torch.equal(before, ip:child("lin")(x)), "the output as lin returned it")
    eq(#calls.other, 1)
    spec.raises(function() m:run_tapped({ x }, { captur = { "lin" } }) end,
      "run_tapped: unknown option 'captur' (known: capture, inject, last_position)")
    spec.raises(function() m:tap({ "lin" }, true) end, "tap: options must be a table {skip_shared}, got a boolean")
  end)

  it("inject a call's inputs, and capture only what is asked", function()
    local m = parity.load(fx .. "/twice.pt")
    m:tap({ "lin", "other" })
    local x = torch.randn({ 2, 4 }, { seed = 2 })
    local out, calls = m:run_tapped({ x }, { capture = { "other" }, inject = { lin = { [2] = { [1] = torch.zeros({ 2, 4 }) } } } })
    eq(calls.lin, nil)
    local plain = parity.load(fx .. "/twice.pt")
    local lin_bias = plain:parameters()["lin.bias"]
    -- other(lin(0)) = other(bias of lin)
    local want = plain:child("other")(lin_bias:unsqueeze(0):expand({ 2, 4 }):contiguous())
    truthy((out - want):abs():max():item() < 1e-6, "the second call of lin saw zeros")
    raises(function() m:run_tapped({ x }, { inject = { lin = { [1] = { [1] = torch.zeros({ 3 }) } } } }) end,
      "inject lin call 0 input 0: shape [3] where the model has [2, 4]")
  end)

  it("cut a module's input to its last position", function()
    local m = parity.load(fx .. "/reference/bf16.pt")
    m:tap({ "lm_head" })
    local whole = parity.load(fx .. "/reference/bf16.pt")(ids)
    local out, calls = m:run_tapped({ ids }, { last_position = { lm_head = 1 } })
    eq({ out:size(), calls.lm_head[1].inputs[1]:size() }, { { 2, 1, 512 }, { 2, 1, 64 } }, "captured as cut")
    truthy(torch.equal(out:select(1, 0), whole:select(1, -1)), "the whole forward's last position")
    local t = parity.load(fx .. "/twice.pt")
    t:tap({ "lin" })
    raises(function() t:run_tapped({ torch.zeros({ 4 }) }, { last_position = { lin = 1 } }) end,
      "last position of lin: its input 0 is [4], not [batch, seq, ...]")
  end)

  it("keep two tapped models apart", function()
    local a, b = parity.load(fx .. "/reference/fp32.pt"), parity.load(fx .. "/reference/bf16.pt")
    a:tap({ "lm_head" })
    b:tap({ "lm_head" })
    local _, ca = a:run_tapped({ ids })
    local _, cb = b:run_tapped({ ids })
    eq({ ca.lm_head[1].outputs[1]:dtype(), cb.lm_head[1].outputs[1]:dtype(), #ca.lm_head, #cb.lm_head },
       { "float32", "bfloat16", 1, 1 })
  end)

  it("refuse a module whose type (and graph) other instances share, and a missing path", function()
    local m = parity.load(fx .. "/twice_scripted.pt")
    raises(function() m:tap({ "lin" }) end, "'lin' shares its module type (and so its graph) with 'other'")
    raises(function() parity.load(fx .. "/twice.pt"):tap({ "nope" }) end, "tap: no submodule 'nope'")
    raises(function() parity.load(fx .. "/twice.pt"):run_tapped({ torch.zeros({ 1, 4 }) }) end, "the model has no taps")
  end)

  it("leave shared types untapped when asked, saying why; a bundle's module is tapped where it can be", function()
    local sites = parity.load(fx .. "/twice_scripted.pt"):tap({ "lin", "other" }, { skip_shared = true })
    eq({ sites[1].inputs, sites[2].inputs }, { 0, 0 })
    truthy(sites[1].refused:find("'lin' shares its module type (and so its graph) with 'other'", 1, true))
    local b = parity.bundle(fx .. "/scripted_lm")
    local lm_ids = torch.randint(0, 64, { 2, 5 }, { seed = 3 })
    local out, calls = b:tapped_run("fp32", lm_ids, { "emb", "head" })
    truthy(torch.equal(out, parity.load(fx .. "/scripted_lm/fp32.pt")(lm_ids)), "the plain forward's output")
    eq({ #calls.emb, #calls.head, calls.l1 }, { 1, 1, nil })
    raises(function() b:tapped_run("fp32", lm_ids, { "head", "l1" }) end, "'l1' shares its module type")
  end)
end)

return spec.run()
