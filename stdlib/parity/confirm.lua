--- parity.confirm — confirmation by repair (check --confirm). A diagnosis is a hypothesis; a
--- repair that makes the port equivalent proves it. For the first divergence of a divergent check:
---   fitted        a patch undoing the fitted cause, written to OUT/patches/suggested.lua: the
---                 reference's eps in every norm of the fault's type, the fitted scale divided out
---                 of the faulty projection;
---   substitution  the reference's own components (at the target's dtype, the mapping's concat
---                 undone) computing in place of the target's, for every pair of the fault's type.
--- Each is tried by checking again with it (OUT/confirm/N/, the reference's side cached). One
--- that is not equivalent, but moves the first divergence, is kept and the next suspect is
--- tried with it too (up to MAX_ROUNDS): a port that needs two repairs has two bugs.
local core = require("parity.core")
local patches = require("parity.patches")
local validate = require("parity.validate")

local M = { MAX_ROUNDS = 3 }

local DTYPE = { float32 = "fp32", bfloat16 = "bf16", float16 = "fp16" }

--- The mapped pairs of the fault's reference type that the target calls, from a run's
--- components.json rows.
local function same_type(rows, first)
  local out = {}
  for _, row in ipairs(rows) do
    if row.type == first.type and (row.transform == "identity" or row.transform == "concat") and not row.interleave
      and not row.never_called_by_target and (row.calls or 0) > 0 then
      out[#out + 1] = row
    end
  end
  return out
end

--- The tensors of a module's output, depth first (a tuple's, a table's).
local function tensors_of(v, out)
  out = out or {}
  if torch.is_tensor(v) then out[#out + 1] = v
  elseif type(v) == "table" then
    for _, x in ipairs(v) do tensors_of(x, out) end
  end
  return out
end

--- A fitted value as a config would write it: 1e-6 for a fit of 9.987e-7 (a power of ten, or 2
--- or 5 of one, within 2%), else three digits.
local function round_fit(x)
  local k = math.floor(math.log10(x) + 0.5)
  for _, m in ipairs({ 1, 2, 5 }) do
    for _, e in ipairs({ k - 1, k }) do
      local v = m * 10 ^ e
      if math.abs(x / v - 1) < 0.02 then return ("%g"):format(v) end
    end
  end
  return ("%.3g"):format(x)
end

local function norm_kind(type_name)
  if type_name:find("RMSNorm") or type_name:find("RmsNorm") then return "rms" end
  if type_name:find("LayerNorm") then return "layer" end
end

--- The fitted patch's Lua source for the first divergence, and what it says, or nil.
---@param first table verdict.first_divergence
---@param rows table[] components.json rows
---@param target parity.Module the target's module (any dtype), for its parameter names
---@return string|nil source, string|nil what
function M.fitted_source(first, rows, target)
  local p = first.cause and first.cause.parameter
  if type(p) ~= "table" then return nil end
  if first.cause.class == "epsilon" and p.name == "eps" and norm_kind(first.type) then
    local weight, bias
    for _, name in ipairs(validate.sorted_keys(target:child(first.target):parameters())) do
      if name:find("bias") then bias = name elseif not weight then weight = name end
    end
    if not weight then return nil end
    local targets = {}
    for _, row in ipairs(same_type(rows, first)) do targets[#targets + 1] = row.target end
    local eps = round_fit(p.reference)
    local body
    if norm_kind(first.type) == "rms" then
      body = ([[
  local h = x:float()
  return self[%q] * (h * torch.rsqrt(h:pow(2):mean(-1, true) + %s)):to(x:dtype())]]):format(weight, eps)
    else
      body = ([[
  return torch.layer_norm(x:float(), { x:size(-1) }, self[%q]:float(), %s, %s):to(x:dtype())]]):format(weight,
        bias and ("self[%q]:float()"):format(bias) or "nil", eps)
    end
    local lines = { ("-- written by parity check --confirm: the reference's eps, %s, where the port's fits %.3g,"):format(eps,
      p.value), ("-- in every %s of the port mapped to a %s"):format(target:child(first.target):type(), first.type),
      "local function norm(self, x)", body, "end", "return {" }
    for _, t in ipairs(targets) do lines[#lines + 1] = ("  { target = %q, forward = norm },"):format(t) end
    lines[#lines + 1] = "}"
    return table.concat(lines, "\n") .. "\n", ("with eps %s in %s (%d component%s)"):format(eps, targets[1], #targets,
      #targets == 1 and "" or "s")
  end
  if first.cause.class == "scale" and p.name == "scale" and (p.at == nil or p.at == first.reference)
    and first.type == "Linear" and type(p.value) == "number" and p.value ~= 0 then
    local names = target:child(first.target):parameters()
    if not names.weight then return nil end
    local source = ([[
-- written by parity check --confirm: %s's weight divided by the fitted scale, %.6g (in fp32,
-- rounded once: a low-precision weight scaled lost bits)
return {
  { target = %q, forward = function(self, x)
      return torch.linear(x:float(), self.weight:float() / %.17g, %s):to(x:dtype())
    end },
}
]]):format(first.target, p.value, first.target, p.value, names.bias and "self.bias:float()" or "nil")
    return source, ("with %s's output divided by %.4g"):format(first.target, p.value)
  end
end

--- The number of tensor arguments a module's forward takes (its schema's Tensor ones).
local function tensor_args(module)
  local n = 0
  for _, a in ipairs(module:schema().arguments) do
    if a.type:find("Tensor") then n = n + 1 end
  end
  return n
end

--- The substitution patch: the reference's components of the fault's type computing in place of
--- the target's (a trusted patch set: it runs the reference's modules) where they take the same
--- tensors, and what it says; nil and why not when none does.
---@param first table verdict.first_divergence
---@param rows table[] components.json rows
---@param reference parity.Bundle
---@param target parity.Module the target's module (any dtype)
---@return parity.PatchSet|nil set, string what
function M.substitution(first, rows, reference, target)
  local entries, children, used, skipped = {}, {}, {}, nil
  local function ref_child(dtype, path)
    local key = dtype .. "|" .. path
    if not children[key] then children[key] = reference:at(dtype):child(path) end
    return children[key]
  end
  local anchor = reference:dtypes()[1]
  for _, row in ipairs(same_type(rows, first)) do
    local paths = {}
    for p in row.reference:gmatch("[^+]+") do paths[#paths + 1] = p end
    local want = tensor_args(target:child(row.target))
    local takes = tensor_args(ref_child(anchor, paths[1]))
    if takes ~= want then
      skipped = skipped or ("the reference's %s takes %d tensor%s, %s %d: no substitution"):format(first.type, takes,
        takes == 1 and "" or "s", row.target, want)
    else
      used[#used + 1] = row.target
      entries[#entries + 1] = { target = row.target, forward = function(self, ...)
        local inputs = { ... }
        local dtype
        for _, x in ipairs(inputs) do dtype = dtype or DTYPE[x:dtype()] end
        dtype = dtype or DTYPE[self.original(...):dtype()]  -- token ids in: the dtype of what comes out
        local outs = {}
        for i, p in ipairs(paths) do outs[i] = tensors_of(ref_child(dtype, p)(unpack(inputs))) end
        if #outs > 1 then  -- a fused projection: the reference's outputs side by side
          local firsts = {}
          for i, o in ipairs(outs) do firsts[i] = o[1] end
          return torch.cat(firsts, -1)
        end
        return unpack(outs[1], 1, math.min(#outs[1], self.outputs))
      end }
    end
  end
  if #entries == 0 then return nil, skipped or ("no mapped %s the target calls"):format(first.type) end
  local what = ("with the reference's %s in place of %s (%d component%s)"):format(first.type, used[1], #used,
    #used == 1 and "" or "s")
  return patches.from_entries(entries, "substitution " .. what), what
end

--- The e2e figures a confirmation compares, from a verdict.
local function figures(v)
  local out = {}
  for _, c in ipairs(v.criteria or {}) do
    if c.stage == "e2e" or c.stage == "e2e32" then out[c.name] = c.value end
  end
  return out
end

--- Whether the first divergence of `b` (after repairing `a`'s) is a next suspect: another
--- component, not one containing a repaired one (substituting a whole model confirms nothing).
local function next_suspect(b, repaired)
  local fb = b.first_divergence
  if not fb or fb == core.json.null then return false end
  local descends = require("parity.mapping").descends
  for _, t in ipairs(repaired) do
    if fb.target == t or descends(t, fb.target) then return false end
  end
  return true
end

--- Tries the repairs of a divergent check's first divergence (check.run's opts, its verdict) and
--- returns the confirmations: {patch, kind, what, confirmed, components, before, after, rounds}.
---@param opts table parity.CheckOptions of the run
---@param v table its verdict
---@param run fun(opts: table): table a check (check.run)
---@return table[]
function M.run(opts, v, run)
  local out = opts.out or "parity-results"
  local first = v.first_divergence
  if v.verdict ~= "divergent" or not first or first == core.json.null then return {} end
  local rows = core.json.read(out .. "/components.json").components or {}
  local reference = require("parity.bundle").open(opts.reference, opts.reference_device or opts.device)
  local target = require("parity.bundle").open(opts.target, opts.device)
  local target_module = target:at(target:dtypes()[1])
  local n = 0
  local function attempt(sets)
    n = n + 1
    local o = {}
    for k, x in pairs(opts) do o[k] = x end
    o.out, o.quiet, o.log, o.confirm = ("%s/confirm/%d"):format(out, n), true, function() end, nil
    o.patches = {}
    for _, s in ipairs(opts.patches or {}) do o.patches[#o.patches + 1] = s end
    for _, s in ipairs(sets) do o.patches[#o.patches + 1] = s end
    local ok, after = pcall(run, o)
    if not ok then return { verdict = "error", error = require("parity.errors").clean(after) }, o.out end
    return after, o.out
  end
  local results = {}
  -- the fitted repair first, where the cause has one
  local source, what = M.fitted_source(first, rows, target_module)
  if source then
    core.write_text(out .. "/patches/suggested.lua", source)
    local file = out .. "/patches/suggested.lua"
    local after, dir = attempt({ patches.load_file(file) })
    results[#results + 1] = { patch = file, kind = "fitted", what = what, confirmed = after.verdict == "equivalent",
      before = figures(v), after = figures(after), results = dir, rounds = 1, error = after.error }
    if after.verdict == "equivalent" then return results end
  end
  -- substitution, and the next suspect with it while the first divergence moves on
  local sets, whats, repaired, current = {}, {}, {}, v
  for round = 1, M.MAX_ROUNDS do
    local f = current.first_divergence
    local set, w = M.substitution(f, rows, reference, target_module)
    if not set then
      results[#results + 1] = { kind = "substitution", what = w, confirmed = false, before = figures(v),
        after = figures(current), rounds = round - 1, error = w, patch = table.concat(whats, "; ") }
      return results
    end
    sets[#sets + 1], whats[#whats + 1] = set, w
    repaired[#repaired + 1] = f.target
    local after, dir = attempt(sets)
    local done = after.verdict == "equivalent"
    if done or round == M.MAX_ROUNDS or not next_suspect(after, repaired) then
      results[#results + 1] = { patch = table.concat(whats, "; "), kind = "substitution", what = table.concat(whats, "; "),
        confirmed = done, before = figures(v), after = figures(after), results = dir, rounds = round, error = after.error }
      return results
    end
    current = after
  end
  return results
end

return M
