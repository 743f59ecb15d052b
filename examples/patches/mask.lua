-- bug_mask: the port's causal mask lets each position see the next one. Its attention written
-- again: the fused q/k/v projection split, the rotary embedding (the port's own child), grouped
-- kv heads repeated, scores scaled and masked causally, an fp32 softmax, the output projection.
local HEADS, KV_HEADS = 4, 2
return {
  { target = "blocks.{i}.attn", forward = function(self, x)  -- x: [batch, seq, hidden]
      local b, t = x:size(0), x:size(1)
      local d = x:size(2) / HEADS
      local qkv = torch.linear(x, self["qkv_proj.weight"])
      local function heads(from, n)
        return qkv:narrow(-1, from * d, n * d):view({ b, t, n, d }):transpose(1, 2)
      end
      local rotary = self.children.rotary
      local q, k = rotary:forward1(heads(0, HEADS)), rotary:forward1(heads(HEADS, KV_HEADS))
      local v = heads(HEADS + KV_HEADS, KV_HEADS)
      k, v = k:repeat_interleave(HEADS / KV_HEADS, 1), v:repeat_interleave(HEADS / KV_HEADS, 1)
      local scores = torch.matmul(q, k:transpose(-1, -2)) / math.sqrt(d)
      local future = torch.ones({ t, t }, { dtype = "bool" }):triu(1)
      local probs = torch.softmax(scores:masked_fill(future, -math.huge), -1, "float32"):to(x:dtype())
      local o = torch.matmul(probs, v):transpose(1, 2):reshape({ b, t, -1 })
      return torch.linear(o, self["out_proj.weight"])
    end },
}
