-- Tensor files (safetensors, npy) and JSON from Lua.
local spec = require("parity.spec")
local describe, it, eq, truthy, raises = spec.describe, spec.it, spec.eq, spec.truthy, spec.raises
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. dir)

describe("parity.tensors", function()
  it("round-trips safetensors with metadata", function()
    local a, b = torch.randn({ 2, 3 }, { seed = 1 }):to("bf16"), torch.arange(5)
    parity.tensors.save(dir .. "/x.safetensors", { a = a, b = b }, { note = "hi" })
    local t, meta = parity.tensors.load(dir .. "/x.safetensors")
    truthy(t.a == a and t.b == b, "tensors equal")
    eq(meta.note, "hi")
  end)

  it("reads just the tensors named, byte for byte as the whole file's", function()
    local whole = {}
    for i = 1, 5 do whole["t" .. i] = torch.randn({ i, 3 }, { seed = i }):to(i % 2 == 0 and "bf16" or "float32") end
    parity.tensors.save(dir .. "/some.safetensors", whole, { note = "kept" })
    local t, meta = parity.tensors.load(dir .. "/some.safetensors", { names = { "t4", "t2", "none" } })
    local names = {}
    for name in pairs(t) do names[#names + 1] = name end
    table.sort(names)
    eq(names, { "t2", "t4" }, "those named that it has")
    truthy(t.t2 == whole.t2 and t.t4 == whole.t4, "their values")
    eq(meta.note, "kept")
    eq(next((parity.tensors.load(dir .. "/some.safetensors", { names = {} }))), nil, "none named: none read")
    raises(function() parity.tensors.load(dir .. "/some.safetensors", { name = { "t1" } }) end, "unknown option 'name'")
    raises(function() parity.tensors.load(dir .. "/x.npy", { names = { "x" } }) end, "names choose tensors of a .safetensors")
  end)

  it("a file read again is read as it is now: rewritten in place of one read before, its new tensors", function()
    -- (the host keeps the layouts of the files read last: a file rewritten must not read as the old one)
    local f = dir .. "/again.safetensors"
    for round = 1, 3 do
      local x = torch.randn({ 2, 2 }, { seed = round })  -- (files of one size)
      parity.tensors.save(f, { ["x" .. round] = x, same = torch.full({ 3 }, round) })
      local t = parity.tensors.load(f, { names = { "x" .. round, "same", "x" .. (round - 1) } })
      truthy(t["x" .. round] == x and t["x" .. (round - 1)] == nil, "round " .. round .. ": its tensors")
      eq(t.same:tolist(), { round, round, round }, "round " .. round .. ": a tensor of one name and shape, its new values")
    end
  end)

  it("round-trips .npy", function()
    local x = torch.randn({ 4 }, { seed = 2 })
    parity.tensors.save(dir .. "/x.npy", x)
    truthy(parity.tensors.load(dir .. "/x.npy").x == x, "npy keyed by file stem")
  end)

  it("reads raw .bin arrays through their JSON sidecar", function()
    local x = torch.randn({ 3, 5 }, { seed = 3 })
    parity.tensors.save(dir .. "/raw.npy", x)
    local f = io.open(dir .. "/raw.npy", "rb")
    local npy = f:read("*a")
    f:close()
    local header_end = npy:find("\n")  -- the .npy header is one line
    local function write(name, text)
      local g = io.open(dir .. "/" .. name, "wb")
      g:write(text)
      g:close()
    end
    write("raw.bin", npy:sub(header_end + 1))
    raises(function() parity.tensors.load(dir .. "/raw.bin") end, "raw.bin: a raw array needs its sidecar")
    write("raw.json", '{"dtype": "float32", "shape": [3, 5]}')
    truthy(parity.tensors.load(dir .. "/raw.bin").raw == x, ".bin keyed by file stem, bytes as written")
    write("raw.json", '{"dtype": "float32", "shape": [3, 6]}')
    raises(function() parity.tensors.load(dir .. "/raw.bin") end, "raw.bin: 60 bytes, but " .. dir
      .. "/raw.json says float32 [3, 6] = 72 bytes")
    write("raw.json", '{"dtype": "float33", "shape": [3, 5]}')
    raises(function() parity.tensors.load(dir .. "/raw.bin") end, "raw.json: unknown dtype")
    write("raw.json", '{"shape": [3, 5]}')
    raises(function() parity.tensors.load(dir .. "/raw.bin") end, 'raw.json: expected {"dtype"')
  end)

  it("rejects bad input with the file name", function()
    raises(function() parity.tensors.load(dir .. "/none.safetensors") end, "none.safetensors: No such file")
    raises(function() parity.tensors.load(dir .. "/x.pt") end, "unknown tensor file type")
    raises(function() parity.tensors.save(dir .. "/y.safetensors", { a = 1 }) end, "'a' is a number, not a Tensor")
    raises(function() parity.tensors.save(dir .. "/y.npy", torch.zeros(1, { dtype = "bf16" })) end, ".npy has no bfloat16")
    local f = io.open(dir .. "/bad.safetensors", "wb")
    f:write("\16\0\0\0\0\0\0\0{not json at all")
    f:close()
    raises(function() parity.tensors.load(dir .. "/bad.safetensors") end, "bad.safetensors: header is not valid JSON")
  end)
end)

describe("parity.json", function()
  it("round-trips tables with sorted keys, null and empty arrays", function()
    local json = parity.json
    local text = json.encode({ b = 1, a = { 1, 2.5, "x", true }, n = json.null, e = json.array() })
    eq(text, '{"a":[1,2.5,"x",true],"b":1,"e":[],"n":null}')
    local back = json.decode(text)
    eq(back.a[2], 2.5)
    eq(back.n, json.null)
    eq(json.encode(back), text)
    eq(json.encode({ x = 0 / 0, y = 1 / 0 }), '{"x":"NaN","y":"Infinity"}')
  end)

  it("writes atomically and reads back", function()
    parity.json.write(dir .. "/sub/out.json", { ok = true })
    eq(parity.json.read(dir .. "/sub/out.json"), { ok = true })
    local leftovers = io.popen("ls " .. dir .. "/sub"):read("*a")
    eq(leftovers, "out.json\n", "no temp file left")
  end)

  it("refuses what JSON cannot hold", function()
    raises(function() parity.json.encode({ t = torch.zeros(1) }) end, "value.t is a Tensor")
    raises(function() parity.json.encode({ f = print }) end, "value.f is a function")
    local cyclic = {}
    cyclic.self = cyclic
    raises(function() parity.json.encode(cyclic) end, "nests too deeply")
    raises(function() parity.json.decode("{") end, "invalid JSON")
  end)
end)

describe("parity.metrics from Lua", function()
  it("returns tables and tensors", function()
    local m = parity.metrics
    local t, r = torch.tensor({ { 1, 2 }, { 3, 4 } }), torch.tensor({ { 1, 2 }, { 3, 5 } })
    local ac = m.allclose(t, r, { rtol = 0, atol = 0.5 })
    eq(ac.pass, false)
    eq(ac.worst_index, { 1, 1 })
    eq(ac.min_atol, 1)
    local rate, per = m.top1(t, r)
    eq(rate, 1)
    eq(per:size(), { 2 })
    eq(m.percentiles(torch.tensor({ 1, 2, 3 }), { 50 }), { 2 })
    local R, num, den = m.r_ratio(torch.tensor({ 6, 8 }), torch.zeros(2), torch.tensor({ 3, 4 }))
    truthy(math.abs(R - 2) < 1e-9 and num == 10 and den == 5, "r_ratio")
    eq(m.non_finite(torch.tensor({ 0 }) / 0), { nan = 1, inf = 0 })
    raises(function() m.rel_l2(torch.zeros(2), torch.zeros(3)) end, "shapes differ")
  end)
end)

local rc = spec.run()
os.execute("rm -rf " .. dir)
return rc
