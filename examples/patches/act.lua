-- bug_act: the port's MLP applies GELU where the reference's applies SiLU.
return {
  { target = "blocks.{i}.ffn.act", forward = function(self, x) return torch.silu(x) end },
}
