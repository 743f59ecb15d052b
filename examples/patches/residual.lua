-- bug_attn_residual: each block drops its attention residual (x = attn(norm(x))). The block again,
-- from its own children, with the residual.
return {
  { target = "blocks.{i}", forward = function(self, x)
      local c = self.children
      x = x + c.attn:forward1(c.attn_norm:forward1(x))
      return x + c.ffn:forward1(c.ffn_norm:forward1(x))
    end },
}
