-- A LayerNorm with the reference's eps, 1e-5 (StableLM; ../shared/hf-devset/stablelm/bug_eps,
-- whose config says 0.01): every LayerNorm of the model computed again.
local function layer_norm(self, x)
  return torch.layer_norm(x, { x:size(-1) }, self.weight, self.bias, 1e-5)
end
return {
  { target = "m.model.layers.{i}.input_layernorm", forward = layer_norm },
  { target = "m.model.layers.{i}.post_attention_layernorm", forward = layer_norm },
  { target = "m.model.norm", forward = layer_norm },
}
