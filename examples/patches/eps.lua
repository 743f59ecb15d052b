-- bug_eps_small: the port's RMSNorms add eps 1e-5 to the variance where the reference's add 1e-6.
-- The norm computed again with the reference's eps (parity check ... --patch examples/patches/eps.lua).
local function rms_norm(self, x)
  local h = x:float()
  local var = h:pow(2):mean(-1, true)
  return self.scale * (h * torch.rsqrt(var + 1e-6)):to(x:dtype())
end
return {
  { target = "blocks.{i}.attn_norm", forward = rms_norm },
  { target = "blocks.{i}.ffn_norm", forward = rms_norm },
  { target = "final_norm", forward = rms_norm },
}
