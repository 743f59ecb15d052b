-- A Hugging Face RMSNorm (Llama, Granite, Mistral, Qwen2, ...) with the reference's eps, 1e-6:
-- for a port whose config says 1e-3 (../shared/hf-devset/granite/bug_eps). Paths of the dev set's
-- traces, which wrap the model as `m`. A traced HF RMSNorm returns (out, input): the patch returns
-- out, and the input passes on as the component's own.
local function rms_norm(self, x)
  local h = x:float()
  local var = h:pow(2):mean(-1, true)
  return self.weight * (h * torch.rsqrt(var + 1e-6)):to(x:dtype())
end
return {
  { target = "m.model.layers.{i}.input_layernorm", forward = rms_norm },
  { target = "m.model.layers.{i}.post_attention_layernorm", forward = rms_norm },
  { target = "m.model.norm", forward = rms_norm },
}
