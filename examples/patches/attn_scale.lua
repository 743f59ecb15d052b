-- bug_attn_scale: the port's attention never divides its scores by sqrt(head_dim). A wrapper, not
-- a rewrite: the rotary embedding runs on q (its first call in each attention) and then k, so
-- scaling what it gives q by 1/sqrt(head_dim) scales the scores.
return {
  { target = "blocks.{i}.attn.rotary", forward = function(self, x)
      local out = self.original(x)
      if self.call % 2 == 1 then out = out * (1 / math.sqrt(x:size(3))) end  -- q: [batch, heads, seq, head_dim]
      return out
    end },
}
