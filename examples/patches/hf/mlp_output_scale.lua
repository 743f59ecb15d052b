-- Layer 1's MLP output projection converted with its weight x1.05 (../shared/hf-devset/*/bug_wscale):
-- the projection with the weight divided back. In fp32, rounded once at the end: a bf16 weight
-- scaled by 1.05 lost bits that dividing in bf16 cannot give back (a bias, where it has one, was
-- not scaled).
local function projection(self, x)
  local bias = self.bias and self.bias:float() or nil
  return torch.linear(x:float(), self.weight:float() / 1.05, bias):to(x:dtype())
end
return {
  { target = "m.model.layers.1.mlp.down_proj", forward = projection },  -- granite, cohere, stablelm
}
