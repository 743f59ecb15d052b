--- Mappings: which target component computes what which reference component(s) compute.
--- An entry pairs reference paths with a target path; `{i}` in both stands for every layer index
--- the reference has:
---   { reference = "model.norm", target = "final_norm" }
---   { reference = { "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj",
---                   "model.layers.{i}.self_attn.v_proj" }, target = "blocks.{i}.attn.qkv_proj",
---     transform = "concat" }       -- the target's output is theirs concatenated on the last dim
---   { reference = "model.rotary_emb", target = false, reason = "the port computes RoPE per layer" }
--- Identical trees map by identity; otherwise `auto` proposes a mapping from weight fingerprints.
--- A mapping file is Lua returning a list of entries, run in parity.sandbox.
local core = require("parity.core")
local sandbox = require("parity.sandbox")

local M = {}

M.TRANSFORMS = { identity = true, concat = true }

local function list(x) return type(x) == "table" and x or { x } end

--- Checks entries (from a file or a script) and names the first bad one.
---@param entries table
---@param origin string for messages
function M.validate(entries, origin)
  if type(entries) ~= "table" then error(("%s: a mapping is a list of entries, got %s"):format(origin, type(entries)), 0) end
  for n, e in ipairs(entries) do
    local where = ("%s: entry %d"):format(origin, n)
    if type(e) ~= "table" then error(where .. ": not a table", 0) end
    for _, p in ipairs(list(e.reference)) do
      if type(p) ~= "string" then error(where .. ": reference paths must be strings", 0) end
    end
    if e.target == false then
      if type(e.reason) ~= "string" then error(where .. ": an entry without a counterpart needs a reason", 0) end
    elseif type(e.target) ~= "string" then
      error(where .. ": target must be a path or false", 0)
    end
    local t = e.transform or "identity"
    if not M.TRANSFORMS[t] then error(("%s: unknown transform '%s' (identity, concat)"):format(where, tostring(t)), 0) end
    if t == "identity" and #list(e.reference) ~= 1 then error(where .. ": several reference paths need transform = \"concat\"", 0) end
  end
  return entries
end

--- Loads a mapping file in the sandbox.
function M.load_file(path)
  return M.validate((sandbox.run_file(path, "mapping file")), "mapping file " .. path)
end

--- Expands `{i}` over the layer indices the reference has and keeps entries whose paths all
--- exist; returns pairs {reference = {paths}, target, transform} in the reference's execution
--- order, and the entries without a counterpart.
function M.expand(entries, ref_modules, target_modules)
  local ref_at, tgt_at, order = {}, {}, {}
  for i, m in ipairs(ref_modules) do ref_at[m.path], order[m.path] = m, i end
  for _, m in ipairs(target_modules) do tgt_at[m.path] = m end
  local pairs_, absent = {}, {}
  for _, e in ipairs(entries) do
    if e.target == false then
      absent[#absent + 1] = { reference = list(e.reference), reason = e.reason }
    else
      local has_i = e.target:find("{i}", 1, true) ~= nil
      for i = 0, has_i and 4095 or 0 do
        local function sub(p) return (p:gsub("{i}", tostring(i))) end
        local refs, ok = {}, tgt_at[sub(e.target)] ~= nil
        for k, p in ipairs(list(e.reference)) do
          refs[k] = sub(p)
          ok = ok and ref_at[refs[k]] ~= nil
        end
        if ok then
          local first = ref_at[refs[1]]
          pairs_[#pairs_ + 1] = { reference = refs, target = sub(e.target), transform = e.transform or "identity",
                                  type = first.type, depth = first.depth, order = order[refs[1]] }
        elseif has_i and not ref_at[sub(list(e.reference)[1])] then
          break
        end
      end
    end
  end
  table.sort(pairs_, function(a, b) return a.order < b.order end)
  return pairs_, absent
end

--- The parameters each module owns directly: path -> {name -> Tensor}.
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
function M.fingerprint(params)
  if params.weight then return params.weight end
  local names = {}
  for name in pairs(params) do names[#names + 1] = name end
  table.sort(names)
  return names[1] and params[names[1]]
end

local function same(a, b) return a:dim() == b:dim() and table.concat(a:size(), ",") == table.concat(b:size(), ",")
  and (a:float() - b:float()):abs():max():item() <= 1e-6 * math.max(1, b:float():abs():max():item()) end

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

--- How a target weight relates to the reference weights it should equal (concatenated along
--- dim 0 when several): {relation = "equal" | "transposed" | "reordered" (order: the reference
--- indices the target's row blocks hold) | "scaled" (value: c in t = c r) | "different" (rel_l2)}.
function M.relation(tw, rws)
  local r = #rws == 1 and rws[1] or torch.cat(rws, 0)
  if same(tw, r) then return { relation = "equal" } end
  if tw:dim() == 2 and r:dim() == 2 and tw:size(0) == r:size(1) and tw:size(1) == r:size(0) and same(tw, r:t()) then
    return { relation = "transposed" }
  end
  if #rws > 1 and #rws <= 4 then
    for _, order in ipairs(permutations(#rws)) do
      local parts = {}
      for i, k in ipairs(order) do parts[i] = rws[k] end
      if same(tw, torch.cat(parts, 0)) then return { relation = "reordered", order = order } end
    end
  end
  if table.concat(tw:size(), ",") == table.concat(r:size(), ",") then
    local t, rd = tw:double(), r:double()
    local rr = (rd * rd):sum():item()
    if rr > 0 then
      local c = (t * rd):sum():item() / rr
      if (t - rd * c):norm():item() <= 1e-5 * t:norm():item() then return { relation = "scaled", value = c } end
    end
    return { relation = "different", rel_l2 = core.metrics.rel_l2(tw, r) }
  end
  return { relation = "different", detail = ("shape [%s] where the reference has [%s]"):format(
    table.concat(tw:size(), ", "), table.concat(r:size(), ", ")) }
end

--- Proposes entries from weight fingerprints: a target module whose weight equals a reference
--- module's (identity), or the reference weights of several modules stacked along dim 0 in
--- some order (concat: fused q/k/v, gate/up), or, failing those, a module of the same type whose
--- weight is a reference one transposed or scaled (a conversion bug the static check reports). Returns entries and the target modules with
--- parameters that matched nothing.
---@param ref_module userdata the reference Module (fp32)
---@param target_module userdata the target Module (fp32 when it has it)
function M.auto(ref_module, target_module)
  local ref_mods, tgt_mods = ref_module:modules(), target_module:modules()
  local rp, tp = M.own_params(ref_module, ref_mods), M.own_params(target_module, tgt_mods)
  local entries, unmapped, used = {}, {}, {}
  for _, tm in ipairs(tgt_mods) do
    local w = M.fingerprint(tp[tm.path])
    if w then
      local found
      for _, rm in ipairs(ref_mods) do  -- one to one
        local rw = M.fingerprint(rp[rm.path])
        if rw and not used[rm.path] and same(w, rw) then
          found = { reference = rm.path, target = tm.path }
          used[rm.path] = true
          break
        end
      end
      if not found and w:dim() == 2 then  -- stacked along dim 0: match each row block
        local parts, row = {}, 0
        while row < w:size(0) do
          local hit
          for _, rm in ipairs(ref_mods) do
            local rw = rp[rm.path].weight
            if rw and not used[rm.path] and rw:dim() == 2 and rw:size(1) == w:size(1) and row + rw:size(0) <= w:size(0)
              and same(w:narrow(0, row, rw:size(0)), rw) then
              hit = rm
              break
            end
          end
          if not hit then parts = nil break end
          parts[#parts + 1], row = hit.path, row + rp[hit.path].weight:size(0)
        end
        if parts and #parts > 1 then
          found = { reference = parts, target = tm.path, transform = "concat" }
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
        if e.target:sub(1, #tm.path + 1) == tm.path .. "." then
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
  return entries, unmapped
end

--- A mapping as a Lua file a user can save, edit and pass back with --mapping.
function M.to_lua(entries, unmapped)
  local lines = { "-- parity mapping: reference component(s) -> target component (proposed from weight fingerprints)",
                  "return {" }
  for _, e in ipairs(entries) do
    local refs = list(e.reference)
    local r = #refs == 1 and ("%q"):format(refs[1]) or ("{ %s }"):format(table.concat((function()
      local q = {}
      for i, p in ipairs(refs) do q[i] = ("%q"):format(p) end
      return q
    end)(), ", "))
    lines[#lines + 1] = ("  { reference = %s, target = %q%s },"):format(r, e.target,
      e.transform and e.transform ~= "identity" and (", transform = %q"):format(e.transform) or "")
  end
  lines[#lines + 1] = "}"
  for _, p in ipairs(unmapped or {}) do lines[#lines + 1] = ("-- unmapped target module with parameters: %s"):format(p) end
  return table.concat(lines, "\n") .. "\n"
end

return M
