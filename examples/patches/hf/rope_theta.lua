-- A Llama-style rotary embedding (computed once, passed to every layer) with the reference's
-- RoPE base, 10000, for a port whose config doubled it (../shared/hf-devset/granite/bug_theta).
-- It takes position_ids and returns (cos, sin) [batch, seq, head_dim], in the dtype the port's own
-- gives (its original, asked once for that).
local THETA = 10000
return {
  { target = "m.model.rotary_emb", forward = function(self, position_ids)
      local cos0 = self.original(position_ids)
      local d = 2 * self.inv_freq:size(0)
      local inv_freq = 1 / torch.pow(THETA, torch.arange(0, d, 2):float() / d)
      local freqs = position_ids:float():unsqueeze(-1) * inv_freq  -- [batch, seq, d / 2]
      local emb = torch.cat({ freqs, freqs }, -1)
      return emb:cos():to(cos0:dtype()), emb:sin():to(cos0:dtype())
    end },
}
