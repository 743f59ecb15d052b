-- The public Lua API against a snapshot (tests/lua/api.txt): an accidental rename or removal
-- fails here. After an intended change: PARITY_API_UPDATE=1 parity run tests/lua/api_spec.lua
local spec = require("parity.spec")
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local snapshot_path = here .. "/api.txt"

local function keys(prefix, t, out)
  for k, v in pairs(t) do
    out[#out + 1] = ("%s%s: %s"):format(prefix, tostring(k), type(v))
  end
end

local function listing()
  local out = {}
  keys("torch.", torch, out)
  keys("torch.Tensor:", torch.Tensor, out)
  local parity = require("parity")
  for _, sub in ipairs({ "tensors", "metrics", "json" }) do keys("parity." .. sub .. ".", parity[sub], out) end
  for k, v in pairs(parity) do
    if type(v) ~= "table" then out[#out + 1] = ("parity.%s: %s"):format(k, type(v)) end
  end
  local m = parity.load(arg[1] .. "/reference/fp32.pt")
  keys("Module:", getmetatable(m).__index, out)
  local b = parity.bundle(arg[1] .. "/reference")
  keys("Bundle:", getmetatable(b), out)
  table.sort(out)
  return table.concat(out, "\n") .. "\n"
end

spec.it("matches the snapshot", function()
  torch.zeros(1):rsqrt()  -- ATen fallbacks are cached apart: they must not show up here
  spec.snapshot(snapshot_path, listing(), "public Lua API")
end)

return spec.run()
