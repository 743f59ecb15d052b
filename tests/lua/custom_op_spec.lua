-- parity.load_library: custom operators from a shared library become callable through torch.ops.
local spec = require("parity.spec")
local lib = assert(os.getenv("PARITY_TEST_OPS"), "PARITY_TEST_OPS: path of the test op library")

spec.it("an op is unknown before its library is loaded, callable after", function()
  spec.raises(function() return torch.ops.parity_test.scale end, "no operator named parity_test::scale")
  parity.load_library(lib)
  spec.eq(torch.ops.parity_test.scale(torch.tensor({ 1, 2 }), 3):tolist(), { 3, 6 })
  spec.eq(torch.schemas("parity_test::scale"), { "parity_test::scale(Tensor x, float s) -> Tensor" })
  spec.raises(function() torch.ops.parity_test.scale(torch.ones(1), "x") end, "argument 's': expected float, got string")
end)

spec.it("a library that cannot be loaded says why", function()
  spec.raises(function() parity.load_library("/nonexistent/libops.so") end,
    "cannot load library /nonexistent/libops.so: /nonexistent/libops.so: cannot open shared object file")
end)

return spec.run()
