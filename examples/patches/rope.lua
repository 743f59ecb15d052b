-- bug_rope: the port's rotary embedding rotates interleaved pairs (x0, x1), (x2, x3), ... where the
-- reference (Llama) rotates the two halves of each head. Rotate-half, with the port's own inv_freq.
return {
  { target = "blocks.{i}.attn.rotary", forward = function(self, x)  -- x: [batch, heads, seq, head_dim]
      local t, d = x:size(2), x:size(3)
      local freqs = torch.arange(t):float():unsqueeze(1) * self.inv_freq:unsqueeze(0)  -- [seq, head_dim / 2]
      local emb = torch.cat({ freqs, freqs }, -1)
      local x1, x2 = x:narrow(-1, 0, d / 2), x:narrow(-1, d / 2, d / 2)
      local rotated = torch.cat({ -x2, x1 }, -1)
      return x * emb:cos():to(x:dtype()) + rotated * emb:sin():to(x:dtype())
    end },
}
