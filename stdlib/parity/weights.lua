--- parity.weights — what two models' weights say about how their components map: each module's
--- own parameters and the one that fingerprints it, how a target weight relates to the
--- reference's (equal, transposed, reordered, scaled, different), the interleaved-pairs RoPE
--- layout of a projection's rows, and a mapping proposed from all of that (auto) for trees that
--- differ. The mappings themselves (their entries, files, expansion): parity.mapping.
local core = require("parity.core")
local descends = require("parity.mapping").descends
local function list(x) return type(x) == "table" and x or { x } end
-- when two weights are equal, or one a scaled copy: parity.thresholds.CUTOFFS
local CUT = require("parity.thresholds").CUTOFFS

local M = {}

--- M.relation's answer: how a target weight relates to the reference's.
---@class parity.WeightRelation
---@field relation "equal"|"transposed"|"reordered"|"scaled"|"different"
---@field order integer[]|nil reordered: the reference indices the target's row blocks hold
---@field value number|nil scaled: c in t = c r
---@field rel_l2 number|nil different, same shape: ||t - r|| / ||r||
---@field detail string|nil different shapes, in words

--- The parameters each module owns directly: path -> {name -> Tensor}.
---@param module parity.Module
---@param modules parity.ModuleInfo[] its modules (module:modules())
---@return table<string, table<string, parity.Tensor>>
function M.own_params(module, modules)
  local all, owned = module:parameters(), {}
  for _, m in ipairs(modules) do owned[m.path] = {} end
  for name, t in pairs(all) do
    local path, leaf = name:match("^(.*)%.([^.]+)$")
    if not path then path, leaf = "", name end
    if owned[path] then owned[path][leaf] = t end
  end
  return owned
end

--- The parameter that fingerprints a module: its weight, else its only or first-named parameter.
---@param params table<string, parity.Tensor> the parameters it owns (M.own_params)
---@return parity.Tensor|nil
function M.fingerprint(params)
  if params.weight then return params.weight end
  local names = {}
  for name in pairs(params) do names[#names + 1] = name end
  table.sort(names)
  return names[1] and params[names[1]]
end

--- What M.relation, M.interleave and M.interleaved_head_dim raise when a reference weight is a
--- fingerprint (M.summary) and the answer needs the weight itself: the caller loads the reference.
M.NEEDS_WEIGHTS = "parity.weights: the reference's weights are needed here, not their fingerprints"

--- A reference weight without the weight (M.summary): its shape, its largest magnitude and its
--- rows' sketch (each row's dot product with a fixed +-1 vector, in float64; a 1-D weight's own
--- values). A target weight within the weight tolerance of it has a sketch within that tolerance
--- times the row length of it, so an equal weight is always found equal; one that differs passes
--- only if its differences cancel in every row's signed sum.
---@class parity.WeightFingerprint
---@field shape integer[]
---@field max number max|w| (NaN when it holds one)
---@field rows parity.Tensor float64 [rows]
local Fingerprint = {}
Fingerprint.__index = Fingerprint
function Fingerprint:dim() return #self.shape end
function Fingerprint:size(i)
  if i == nil then return { unpack(self.shape) } end
  return self.shape[(i < 0 and #self.shape + i or i) + 1]
end
local function is_fp(x) return getmetatable(x) == Fingerprint end
local function needs(x) if is_fp(x) then error(M.NEEDS_WEIGHTS, 0) end end

-- the sketch of rows [from, from + count) of a weight (metrics.row_sketch)
local function sketch_rows(t, from, count)
  return core.metrics.row_sketch(t:dim() == 0 and t or t:narrow(0, from, count))
end
-- ... and of all its rows, once per tensor
local sketches = setmetatable({}, { __mode = "k" })
local function sketch(t)
  if not sketches[t] then sketches[t] = sketch_rows(t, 0, t:dim() > 0 and t:size(0) or 1) end
  return sketches[t]
end

-- the largest magnitude of a reference weight, once per tensor (the same weight is compared with many)
local largest = setmetatable({}, { __mode = "k" })
local function max_abs(t)
  if is_fp(t) then return t.max end
  if largest[t] == nil then largest[t] = select(2, core.metrics.max_gap(t, t)) end
  return largest[t]
end

--- A weight's fingerprint (parity.WeightFingerprint).
---@param t parity.Tensor
---@return parity.WeightFingerprint
function M.fingerprint_of(t)
  return setmetatable({ shape = t:size(), max = max_abs(t), rows = sketch(t) }, Fingerprint)
end

--- Whether `a` equals `b` within the weight tolerance (relative to b's largest magnitude, at least
--- 1); `b` may be a list of blocks `a` stacks along dim 0 (compared block by block, no copies).
--- One pass over both, stopping at the first difference past the tolerance.
local function same(a, b)
  local blocks = (torch.is_tensor(b) or is_fp(b)) and { b } or b
  local ref, row = 0, 0
  for _, block in ipairs(blocks) do ref = math.max(ref, max_abs(block)) end
  if ref ~= ref then return false end  -- a NaN in the reference
  local limit = CUT.weight_equal * math.max(1, ref)
  if is_fp(blocks[1]) then  -- fingerprints: a's rows' sketch against theirs
    local function within(x, fp_rows, cols)
      local gap = (x - fp_rows):abs():max():item()
      return gap <= limit * cols  -- (false past it, or NaN)
    end
    for _, fp in ipairs(blocks) do
      local shape, rows = fp.shape, #fp.shape > 0 and fp.shape[1] or 1
      local want = { unpack(shape) }
      if #blocks > 1 then want[1] = a:dim() > 0 and a:size(0) or -1 end
      if #blocks > 1 and row + rows > (a:dim() > 0 and a:size(0) or 0) then return false end
      if table.concat(a:size(), "x") ~= table.concat(want, "x") then return false end
      local cols = 1
      for i = 2, #shape do cols = cols * shape[i] end
      -- its first row first (most weights compared differ there), then all of them
      if not within(sketch_rows(a, row, 1), fp.rows:narrow(0, 0, 1), cols)
        or not within(sketch(a):narrow(0, row, rows), fp.rows, cols) then
        return false
      end
      row = row + rows
    end
    return #blocks == 1 or row == a:size(0)
  end
  for _, block in ipairs(blocks) do
    local rows = block:dim() > 0 and block:size(0) or 1
    local part = #blocks == 1 and a or (a:dim() > 0 and row + rows <= a:size(0) and a:narrow(0, row, rows))
    if not part or not part:is_same_size(block) then return false end
    local d = core.metrics.max_gap(part, block, limit)
    if not (d <= limit) then return false end  -- past it, or NaN
    row = row + rows
  end
  return #blocks == 1 or row == a:size(0)
end

local function permutations(n)
  local out = {}
  local function go(prefix, rest)
    if #rest == 0 then out[#out + 1] = prefix return end
    for i = 1, #rest do
      local p, r = { unpack(prefix) }, { unpack(rest) }
      p[#p + 1] = table.remove(r, i)
      go(p, r)
    end
  end
  local all = {}
  for i = 1, n do all[i] = i end
  go({}, all)
  return out
end

--- A rotate-half RoPE projection's rows (or outputs, dim -1) re-ordered per head of `head_dim`
--- into interleaved pairs: a head's row 2j is row j, its row 2j + 1 is row j + head_dim / 2.
--- Only the first `rows` are re-ordered when given (a fused q/k/v weight: q and k, not v).
---@param t parity.Tensor
---@param head_dim integer
---@param dim integer|nil the dim re-ordered (default 0; negative counts from the end)
---@param rows integer|nil how many leading rows (default all)
---@return parity.Tensor
function M.interleave(t, head_dim, dim, rows)
  needs(t)
  dim = dim or 0
  if dim < 0 then dim = t:dim() + dim end
  local n, half, idx = t:size(dim), head_dim / 2, {}
  rows = rows or n
  if rows > n then error(("interleave.rows = %d, but the tensor has %d rows"):format(rows, n), 0) end
  if rows % head_dim ~= 0 then
    error(("interleave.head_dim = %d does not divide the %d rows interleaved"):format(head_dim, rows), 0)
  end
  for h = 0, rows / head_dim - 1 do
    for j = 0, half - 1 do
      idx[#idx + 1], idx[#idx + 2] = h * head_dim + j, h * head_dim + j + half
    end
  end
  for i = rows, n - 1 do idx[#idx + 1] = i end
  return t:index_select(dim, torch.tensor(idx, { dtype = "int64" }))
end

--- The head size for which `tw` holds `rw`'s rows interleaved (M.interleave), and how many
--- leading rows are (nil: all), or nil. The first row of each head stays; the second is row
--- head_dim / 2, which gives the head size; rows past the last differing one are as they were.
---@param tw parity.Tensor the target's weight
---@param rw parity.Tensor the reference's
---@return integer|nil head_dim
---@return integer|nil rows
function M.interleaved_head_dim(tw, rw)
  if is_fp(rw) then  -- what its fingerprint says: not interleaved, or the weight is needed
    local first = setmetatable({ shape = { 1, rw.shape[2] }, max = rw.max, rows = rw.rows:narrow(0, 0, 1) }, Fingerprint)
    if tw:dim() ~= 2 or table.concat(tw:size(), "x") ~= table.concat(rw.shape, "x")
      or tw:size(0) < 4 or not same(tw:narrow(0, 0, 1), first) then
      return nil
    end
    needs(rw)
  end
  if tw:dim() ~= 2 or not tw:is_same_size(rw)
    or tw:size(0) < 4 or not same(tw:narrow(0, 0, 1), rw:narrow(0, 0, 1)) then
    return nil
  end
  local dist = (rw:float() - tw:narrow(0, 1, 1):float()):abs():amax({ 1 })
  local j = dist:argmin():item()
  local d, n = 2 * j, tw:size(0)
  if j < 1 or n % d ~= 0 then return nil end
  local tol = CUT.weight_equal * math.max(1, rw:float():abs():max():item())
  local differs = (tw:float() - rw:float()):abs():amax({ 1 }):gt(tol):nonzero():reshape({ -1 }):tolist()
  local rows = math.ceil((differs[#differs] + 1) / d) * d
  if not same(tw, M.interleave(rw, d, 0, rows)) then return nil end
  return d, rows < n and rows or nil
end

--- The reference tensors of an entry's parts as the target holds them: interleaved where the
--- entry says so (along `dim`: 0 for weights, -1 for outputs).
---@param entry parity.MappingPair
---@param tensors parity.Tensor[] one per reference path
---@param dim integer
---@return parity.Tensor[]
function M.as_target(entry, tensors, dim)
  local il = entry.interleave
  if not il then return tensors end
  local out, parts = { unpack(tensors) }, il.parts or { 1 }
  for _, k in ipairs(parts) do
    if out[k] then
      local ok, t = pcall(M.interleave, out[k], il.head_dim, dim, il.rows)
      if not ok and t == M.NEEDS_WEIGHTS then error(t, 0) end
      if not ok then
        error(("the mapping entry pairing %s with %s: %s"):format(table.concat(entry.reference, "+"), entry.target, t), 0)
      end
      out[k] = t
    end
  end
  return out
end

--- How a target weight relates to the reference weights it should equal (concatenated along
--- dim 0 when several): {relation = "equal" | "transposed" | "reordered" (order: the reference
--- indices the target's row blocks hold) | "scaled" (value: c in t = c r) | "different" (rel_l2)}.
---@param tw parity.Tensor the target's weight
---@param rws parity.Tensor[] the reference weights
---@return parity.WeightRelation
function M.relation(tw, rws)
  if same(tw, rws) then return { relation = "equal" } end
  for _, r in ipairs(rws) do needs(r) end
  local r = #rws == 1 and rws[1] or torch.cat(rws, 0)
  if tw:dim() == 2 and r:dim() == 2 and tw:size(0) == r:size(1) and tw:size(1) == r:size(0) and same(tw, r:t()) then
    return { relation = "transposed" }
  end
  if #rws > 1 and #rws <= 4 then
    for _, order in ipairs(permutations(#rws)) do
      local parts = {}
      for i, k in ipairs(order) do parts[i] = rws[k] end
      if same(tw, parts) then return { relation = "reordered", order = order } end
    end
  end
  if tw:is_same_size(r) then
    local t, rd = tw:double(), r:double()
    local rr = (rd * rd):sum():item()
    if rr > 0 then
      local c = (t * rd):sum():item() / rr
      -- exact up to the rounding of the weights' own dtype (a bf16 weight scaled is rounded again)
      local tol = CUT.weight_scaled[tw:dtype()] or CUT.weight_scaled.low
      if (t - rd * c):norm():item() <= tol * t:norm():item() then return { relation = "scaled", value = c } end
    end
    return { relation = "different", rel_l2 = core.metrics.rel_l2(tw, r) }
  end
  return { relation = "different", detail = ("shape [%s] where the reference has [%s]"):format(
    table.concat(tw:size(), ", "), table.concat(r:size(), ", ")) }
end

--- The reference's side of the weight checks without its weights: its modules and every
--- parameter's fingerprint, as a module the checks here take in place of the reference's
--- (:modules(), :parameters()); what only the weights answer raises M.NEEDS_WEIGHTS.
---@class parity.WeightSummary
---@field infos parity.ModuleInfo[]
---@field params table<string, parity.WeightFingerprint>
local Summary = {}
Summary.__index = Summary
function Summary:modules() return self.infos end
function Summary:parameters() return self.params end

--- A model's weight summary (parity.WeightSummary).
---@param module parity.Module
---@return parity.WeightSummary
function M.summary(module)
  local params = {}
  for name, t in pairs(module:parameters()) do params[name] = M.fingerprint_of(t) end
  return setmetatable({ infos = module:modules(), params = params }, Summary)
end

--- A summary as named tensors (each parameter's sketch and largest magnitude) and an index (a
--- JSON value: its modules and its parameters' names and shapes): a cache entry's parts.
---@param s parity.WeightSummary
---@return table<string, parity.Tensor> tensors
---@return table index
function M.encode_summary(s)
  local names = {}
  for name in pairs(s.params) do names[#names + 1] = name end
  table.sort(names)
  local out, shapes = {}, {}
  for i, name in ipairs(names) do
    local fp = s.params[name]
    out["w" .. i .. ".rows"], out["w" .. i .. ".max"] = fp.rows, torch.tensor({ fp.max }, { dtype = "float64" })
    shapes[i] = core.json.array(fp.shape)
  end
  return out, { modules = s.infos, names = core.json.array(names), shapes = core.json.array(shapes) }
end

--- M.encode_summary's tensors and index back as a summary (nil when they are not one).
---@param t table<string, parity.Tensor>
---@param index any
---@return parity.WeightSummary|nil
function M.decode_summary(t, index)
  if type(index) ~= "table" or type(index.names) ~= "table" then return nil end
  local params = {}
  for i, name in ipairs(index.names) do
    local rows, max = t["w" .. i .. ".rows"], t["w" .. i .. ".max"]
    if not (rows and max) then return nil end
    params[name] = setmetatable({ shape = index.shapes[i], max = max:item(), rows = rows }, Fingerprint)
  end
  return setmetatable({ infos = index.modules, params = params }, Summary)
end

--- Proposes entries from weight fingerprints: a target module whose weight equals a reference
--- module's (identity), or the reference weights of several modules stacked along dim 0 in
--- some order (concat: fused q/k/v, gate/up), each as it is or with its rows interleaved per
--- head (interleave: an engine's RoPE layout), or, failing those, a module of the same type whose
--- weight is a reference one transposed or scaled (a conversion bug the static check reports).
--- Modules without weights follow their containers (by type, name, or as the only ones left).
--- Returns entries and the target modules with parameters that matched nothing.
---@param ref_module parity.Module the reference Module (fp32)
---@param target_module parity.Module the target Module (fp32 when it has it)
---@return parity.MappingEntry[] entries
---@return string[] unmapped target modules with parameters that matched nothing
function M.auto(ref_module, target_module)
  local ref_mods, tgt_mods = ref_module:modules(), target_module:modules()
  local rp, tp = M.own_params(ref_module, ref_mods), M.own_params(target_module, tgt_mods)
  local entries, unmapped, used = {}, {}, {}
  for _, tm in ipairs(tgt_mods) do
    local w = M.fingerprint(tp[tm.path])
    if w then
      -- the unused reference module whose weight `block_of(rw)` holds as it is (first) or
      -- interleaved per head (then), the head size and how many leading rows are
      local function holder(block_of)
        for pass = 1, 2 do
          for _, rm in ipairs(ref_mods) do
            local rw = M.fingerprint(rp[rm.path])
            local block = rw and not used[rm.path] and block_of(rw)
            if block then
              if pass == 1 and same(block, rw) then return rm end
              local d, rows = nil, nil
              if pass == 2 then d, rows = M.interleaved_head_dim(block, rw) end
              if d then return rm, d, rows end
            end
          end
        end
      end
      local function interleave(dims, rows)
        local parts, d = {}, nil
        for k, hd in pairs(dims) do parts[#parts + 1], d = k, hd end
        if not d then return nil end
        table.sort(parts)
        return { head_dim = d, parts = parts, rows = rows }
      end
      local found
      local rm, d, rows = holder(function() return w end)  -- one to one
      if rm then
        found = { reference = rm.path, target = tm.path, interleave = interleave({ d }, rows) }
        used[rm.path] = true
      end
      if not found and w:dim() == 2 then  -- stacked along dim 0: match each row block
        local parts, dims, row = {}, {}, 0
        while row < w:size(0) do
          local hit, hd = holder(function(rw)
            return rw:dim() == 2 and rw:size(1) == w:size(1) and row + rw:size(0) <= w:size(0)
              and w:narrow(0, row, rw:size(0))
          end)
          if not hit then parts = nil break end
          parts[#parts + 1], row = hit.path, row + M.fingerprint(rp[hit.path]):size(0)
          dims[#parts] = hd
        end
        if parts and #parts > 1 then
          found = { reference = parts, target = tm.path, transform = "concat", interleave = interleave(dims) }
          for _, p in ipairs(parts) do used[p] = true end
        end
      end
      if not found then  -- a weight converted wrongly: transposed (square) or scaled; the static check says which
        for _, rm in ipairs(ref_mods) do
          local rw = M.fingerprint(rp[rm.path])
          if rw and not used[rm.path] and rm.type == tm.type then
            local rel = M.relation(w, { rw }).relation
            if rel == "transposed" or rel == "scaled" then
              found = { reference = rm.path, target = tm.path }
              used[rm.path] = true
              break
            end
          end
        end
      end
      if found then entries[#entries + 1] = found else unmapped[#unmapped + 1] = tm.path end
    end
  end
  -- containers: a target module whose mapped descendants all map under one reference module,
  -- the closest common ancestor of theirs, maps to it (blocks.0 -> model.layers.0)
  local function ancestor(a, b)
    local pa, pb = {}, {}
    for part in a:gmatch("[^.]+") do pa[#pa + 1] = part end
    for part in b:gmatch("[^.]+") do pb[#pb + 1] = part end
    local out = {}
    for i = 1, math.min(#pa, #pb) do
      if pa[i] ~= pb[i] then break end
      out[i] = pa[i]
    end
    return table.concat(out, ".")
  end
  local containers = {}
  for _, tm in ipairs(tgt_mods) do
    if tm.path ~= "" and not next(tp[tm.path]) then
      local lca
      for _, e in ipairs(entries) do
        if descends(e.target, tm.path) then
          for _, r in ipairs(list(e.reference)) do lca = lca and ancestor(lca, r) or r end
        end
      end
      if lca and lca ~= "" and not used[lca] then
        containers[#containers + 1] = { reference = lca, target = tm.path }
        used[lca] = true
      end
    end
  end
  for _, c in ipairs(containers) do entries[#entries + 1] = c end
  -- weightless modules (an activation, a rotary embedding): the direct children of mapped
  -- containers (and of the roots) that nothing maps pair up by type, else by name, else as the
  -- only ones left on each side
  local mapped_target = {}
  for _, e in ipairs(entries) do mapped_target[e.target] = true end
  local function parent(p) return p:match("^(.*)%.[^.]+$") or "" end
  local function free_children(mods, params, taken, root)
    local out = {}
    for _, m in ipairs(mods) do
      if m.path ~= "" and parent(m.path) == root and not taken[m.path] and not next(params[m.path]) then
        local inner = false  -- a container of mapped modules is mapped above, or is not a leaf
        for _, other in ipairs(mods) do
          if descends(other.path, m.path) then inner = true break end
        end
        if not inner then out[#out + 1] = m end
      end
    end
    return out
  end
  local function pick(refs, tgts, key)
    local found = {}
    for _, r in ipairs(refs) do
      local hits = {}
      for _, t in ipairs(tgts) do
        if key(r) == key(t) then hits[#hits + 1] = t end
      end
      local same_key = 0
      for _, r2 in ipairs(refs) do
        if key(r2) == key(r) then same_key = same_key + 1 end
      end
      if #hits == 1 and same_key == 1 then found[#found + 1] = { r, hits[1] } end
    end
    return found
  end
  local parents = { { reference = "", target = "" } }
  for _, c in ipairs(containers) do parents[#parents + 1] = c end
  for _, c in ipairs(parents) do
    local refs, tgts = free_children(ref_mods, rp, used, c.reference), free_children(tgt_mods, tp, mapped_target, c.target)
    for _, key in ipairs({ function(m) return m.type end, function(m) return m.path:match("[^.]+$") end,
                           function() return true end }) do
      for _, hit in ipairs(pick(refs, tgts, key)) do
        entries[#entries + 1] = { reference = hit[1].path, target = hit[2].path }
        used[hit[1].path], mapped_target[hit[2].path] = true, true
      end
      refs, tgts = free_children(ref_mods, rp, used, c.reference), free_children(tgt_mods, tp, mapped_target, c.target)
    end
  end
  return entries, unmapped
end

--- Same-named pairs (identity mapping) whose weights differ only by the RoPE layout get their
--- `interleave`: a port with the reference's tree that rotates interleaved pairs.
---@param pairs_ parity.MappingPair[] changed in place
---@param ref_module parity.Module
---@param target_module parity.Module
---@return parity.MappingPair[] pairs_
function M.find_interleaved(pairs_, ref_module, target_module)
  local rp, tp = M.own_params(ref_module, ref_module:modules()), M.own_params(target_module, target_module:modules())
  for _, pair in ipairs(pairs_) do
    local rw, tw = M.fingerprint(rp[pair.reference[1]] or {}), M.fingerprint(tp[pair.target] or {})
    local d, rows = nil, nil
    if rw and tw and #pair.reference == 1 and not same(tw, rw) then d, rows = M.interleaved_head_dim(tw, rw) end
    if d then pair.interleave = { head_dim = d, parts = { 1 }, rows = rows } end
  end
  return pairs_
end

return M
