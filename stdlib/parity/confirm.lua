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
local criteria = require("parity.criteria")
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

--- The target path mapped to a reference path, from components.json rows.
local function by_reference(rows, path)
  for _, row in ipairs(rows) do
    if row.reference == path then return row.target end
  end
end

--- The target paths of `suffix` (".q_proj", or "" for the component itself) under every
--- mapped component of the fault's type.
local function every(rows, first, suffix)
  local out = {}
  for _, row in ipairs(same_type(rows, first)) do
    local t = suffix == "" and row.target or by_reference(rows, row.reference .. suffix)
    if t then out[#out + 1] = t end
  end
  return out
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
  local number = type(p.value) == "number" and p.value == p.value and p.value ~= 0 and math.abs(p.value) < math.huge
  if first.cause.class == "scale" and p.name == "scale" and p.at == nil and first.type == "Linear" and number then
    local names = target:child(first.target):parameters()
    if not names.weight then return nil end
    local source = ([[
-- written by parity check --confirm: %s's weight (and bias) divided by the fitted scale of its
-- output, %.6g (in fp32, rounded once: a low-precision weight scaled lost bits)
return {
  { target = %q, forward = function(self, x)
      return torch.linear(x:float(), self.weight:float() / %.17g, %s):to(x:dtype())
    end },
}
]]):format(first.target, p.value, first.target, p.value,
      names.bias and ("self.bias:float() / %.17g"):format(p.value) or "nil")
    return source, ("with %s's output divided by %.4g"):format(first.target, p.value)
  end
  -- the input of a component (the fault's, or a child's: the forward code between them) scaled,
  -- or a residual term added to the fault's output: undone around the component's own call
  local at = p.at and (p.at == first.reference and first.target or by_reference(rows, p.at))
  local fix, what
  if first.cause.class == "scale" and p.name == "scale" and at and number then
    fix = ("local y = self.original((x:float() / %.17g):to(x:dtype()), ...)"):format(p.value)
    what = ("with %s's input divided by %.4g"):format(at, p.value)
  elseif first.cause.class == "scale" and p.name == "scale" and not p.at and number then
    at, fix = first.target, ("local y = (self.original(x, ...):float() / %.17g):to(x:dtype())"):format(p.value)
    what = ("with %s's output divided by %.4g"):format(at, p.value)
  elseif first.cause.class == "scale" and p.name == "score_scale" and p.at == "its input" and number then
    -- the target computes the reference on its input times c, its output divided by c (c^2 =
    -- tau), in every attention of the fault's type (the attention's code is the bug)
    at = every(rows, first, "")
    fix = ("local c = %.17g\n  local y = self.original((x:float() / c):to(x:dtype()), ...)\n"
      .. "      y = (y:float() * c):to(y:dtype())"):format(math.sqrt(p.value))
    what = ("with the attention scores divided by %.4g in %s (%d components)"):format(p.value, at[1], #at)
  elseif first.cause.class == "scale" and p.name == "score_scale" and p.at and number
    and p.at:sub(1, #first.reference + 1) == first.reference .. "." then
    -- the scores tau x the reference's as if the parameters of its query or key projection (or
    -- its norm) were: that one's output divided by tau, in every attention of the fault's type
    at = every(rows, first, p.at:sub(#first.reference + 1))
    fix = #at > 0 and ("local y = (self.original(x, ...):float() / %.17g):to(x:dtype())"):format(p.value)
    what = #at > 0 and ("with the output of %s divided by %.4g, the scores' temperature (%d components)"):format(at[1],
      p.value, #at)
  elseif first.cause.class == "residual" and p.name == "alpha" and not p.at and number then
    at = first.target
    fix = ("local y = self.original(x, ...)\n  y = (y:float() - %.17g * x:float()):to(y:dtype())"):format(p.value)
    what = ("with %.4g x its input taken from %s's output"):format(p.value, at)
  end
  -- (SiLU by ATen's kernel, as nn.SiLU computes it: one rounding at the low precision)
  local code = first.cause.class == "activation" and p.name == "activation"
    and (p.reference == "silu" and "x:silu()" or require("parity.fits").ACTIVATION_CODE[p.reference])
  if code and not next(target:child(first.target):parameters()) then  -- the nonlinearity is a module of its own
    local targets = {}
    for _, row in ipairs(same_type(rows, first)) do targets[#targets + 1] = row.target end
    local lines = { ("-- written by parity check --confirm: the reference's %s where the port computes %s, in every %s of"):format(
      p.reference, p.value, target:child(first.target):type()), "-- the port mapped to a " .. first.type,
      "local function act(self, x) return " .. code .. " end", "return {" }
    for _, t in ipairs(targets) do lines[#lines + 1] = ("  { target = %q, forward = act },"):format(t) end
    lines[#lines + 1] = "}"
    return table.concat(lines, "\n") .. "\n", ("with the reference's %s in %s (%d component%s)"):format(p.reference,
      targets[1], #targets, #targets == 1 and "" or "s")
  end
  if not fix then return nil end
  local lines = { ("-- written by parity check --confirm: %s (%s)"):format(what, (first.cause.detail:gsub("\n", " "))),
    "local function fix(self, x, ...)", "  " .. fix, "  return y", "end", "return {" }
  for _, t in ipairs(type(at) == "table" and at or { at }) do
    lines[#lines + 1] = ("  { target = %q, forward = fix },"):format(t)
  end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n") .. "\n", what
end

--- The number of tensor arguments a module's forward takes (its schema's Tensor ones).
local function tensor_args(module)
  local n = 0
  for _, a in ipairs(module:schema().arguments) do
    if a.type:find("Tensor") then n = n + 1 end
  end
  return n
end

--- The inputs a reference component takes beyond the target's leading ones, where they depend
--- on the positions only (a rotary embedding's cos and sin, computed once and passed to every
--- layer): read from a tapped run of the reference on token ids of the shape the call has
--- ([batch, seq] of the first input's), once a shape. `refused(dtype, path, n)` says why a
--- component's are not such (they change with the tokens), or nil; `at(dtype, path, call, x, n)`
--- gives them for a call whose first input is x.
---@param reference parity.Bundle
function M.extra_inputs(reference)
  local runs = {}
  local function calls(dtype, path, batch, seq, fill)
    local key = ("%s|%s|%d|%d|%d"):format(dtype, path, batch, seq, fill)
    if not runs[key] then
      local ids = fill < 0 and torch.randint(3, 10, { batch, seq }, { seed = 1 })
        or torch.full({ batch, seq }, fill, { dtype = "int64" })
      runs[key] = select(2, reference:tapped_run(dtype, ids, { path }))[path] or {}
    end
    return runs[key]
  end
  local E = {}
  function E.refused(dtype, path, n)
    local a, b = calls(dtype, path, 1, 6, 0), calls(dtype, path, 1, 6, -1)
    if #a == 0 or #a ~= #b then return ("the reference's %s is not called on a 6-token input"):format(path) end
    for k = 1, #a do
      for i = n + 1, #a[k].inputs do
        if a[k].inputs[i] ~= b[k].inputs[i] then
          return ("the reference's %s takes inputs beyond the port's that depend on the tokens (input %d)"):format(path, i)
        end
      end
    end
  end
  function E.at(dtype, path, call, x, n)
    if x:dim() < 2 then error(("%s: its first input is [%s], not [batch, seq, ...]"):format(path,
      table.concat(x:size(), ", ")), 0) end
    local c = calls(dtype, path, x:size(0), x:size(1), 0)[call]
    if not c then error(("the reference's %s has no call %d on [%d, %d] tokens"):format(path, call, x:size(0), x:size(1)), 0) end
    return { unpack(c.inputs, n + 1) }
  end
  return E
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
  local extras = M.extra_inputs(reference)
  for _, row in ipairs(same_type(rows, first)) do
    local paths = {}
    for p in row.reference:gmatch("[^+]+") do paths[#paths + 1] = p end
    local want = tensor_args(target:child(row.target))
    local takes = tensor_args(ref_child(anchor, paths[1]))
    local why = takes < want and ("the reference's %s takes %d tensor%s, %s %d"):format(first.type, takes,
      takes == 1 and "" or "s", row.target, want)
      or takes > want and (#paths > 1 and "a fused component whose reference takes more inputs"
        or extras.refused(anchor, paths[1], want))
    if why then
      skipped = skipped or (why .. ": no substitution")
    else
      used[#used + 1] = row.target
      entries[#entries + 1] = { target = row.target, forward = function(self, ...)
        local inputs = { ... }
        local dtype
        for _, x in ipairs(inputs) do dtype = dtype or DTYPE[x:dtype()] end
        dtype = dtype or DTYPE[self.original(...):dtype()]  -- token ids in: the dtype of what comes out
        if takes > want then  -- the reference's own further inputs (its RoPE's cos and sin)
          for _, x in ipairs(extras.at(dtype, paths[1], self.call, inputs[1], want)) do inputs[#inputs + 1] = x end
        end
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

local figures = require("parity.verdict").figures

--- The deepest components that add an error of their own at the low precision while exact in
--- fp32 (a precision fault's), in the order the check tested them.
local function less_precise(rows, th)
  local judge, descends = require("parity.judge"), require("parity.mapping").descends
  local found = {}
  for _, row in ipairs(rows) do
    if row.isolated and not row.skipped and judge.fails(row, th)
      and (row.r32 or 0) < criteria.for_component(th, row).r32_p95 then
      found[#found + 1] = row.target
    end
  end
  local out = {}
  for _, t in ipairs(found) do
    local inner = false
    for _, other in ipairs(found) do inner = inner or (other ~= t and descends(other, t)) end
    if not inner then out[#out + 1] = t end
  end
  return out
end

--- A patch set (trusted) computing `paths` of the target from its own fp32 trace (`t32`, a module of
--- another copy): floating inputs upcast, outputs cast back to the low precision.
function M.fp32_fallback(paths, t32)
  local entries = {}
  for _, path in ipairs(paths) do
    local c = t32:child(path)
    entries[#entries + 1] = { target = path, forward = function(self, ...)
      local inputs, low = { ... }, nil
      for i, x in ipairs(inputs) do
        if x:is_floating_point() then low, inputs[i] = low or x:dtype(), x:float() end
      end
      low = low or self.original(...):dtype()
      local args = require("parity.replay").arguments(c:schema(), inputs)
      local outs = tensors_of(c(unpack(args)))
      for i, o in ipairs(outs) do
        if o:is_floating_point() then outs[i] = o:to(low) end
      end
      return unpack(outs, 1, math.min(#outs, self.outputs))
    end }
  end
  return patches.from_entries(entries, ("fp32 fallback of %d component%s"):format(#paths, #paths == 1 and "" or "s"))
end

--- A set's key: its paths sorted.
function M.key_of(paths)
  local sorted = { unpack(paths) }
  table.sort(sorted)
  return table.concat(sorted, "|")
end

--- The fewest of `candidates` with which `works(paths, key)` holds, by bisection: all of them
--- first (nil when they do not), then halves left out while it still holds, until no half of
--- what is kept can go. `works` is asked once a set; the empty set is taken not to work (the port
--- as it is).
---@param candidates string[]
---@param works fun(paths: string[], key: string): boolean
---@return string[]|nil kept in the candidates' order
function M.fewest(candidates, works)
  local memo = { [""] = false }
  local function ok(paths)
    local key = M.key_of(paths)
    if memo[key] == nil then memo[key] = works(paths, key) end
    return memo[key]
  end
  local function join(a, b)
    local out = { unpack(a) }
    for _, x in ipairs(b) do out[#out + 1] = x end
    return out
  end
  -- the fewest of `set` that, with `base`, keep it working (base + set does)
  local function minimize(set, base)
    if #set == 1 then return ok(base) and {} or set end
    local half = math.floor(#set / 2)
    local a, b = { unpack(set, 1, half) }, { unpack(set, half + 1) }
    if ok(join(base, a)) then return minimize(a, base) end
    if ok(join(base, b)) then return minimize(b, base) end
    local need_a = minimize(a, join(base, b))
    return join(need_a, minimize(b, join(base, need_a)))
  end
  if not ok(candidates) then return nil end
  local kept = minimize(candidates, {})
  ok(kept)  -- asked already, but for a union of halves
  return kept
end

--- Precision fallback: which of the components that lose precision, computed in fp32 (the
--- target's own fp32 trace of each), make the port equivalent at the low precision. All of them
--- first; then a bisection keeps the fewest it can (a subset that still makes it equivalent,
--- from which no half can be left out). Each try is the e2e stage only, in OUT/confirm/N.
---@param v table the check's verdict
---@param rows table[] its components.json rows
---@param t32 parity.Module the target's fp32 module (another copy than the check's)
---@param attempt fun(sets: table[], stages: string[]|nil): table, string a check with patches
---@return table confirmation {kind = "fallback", components, confirmed, before, after, tries, results}
function M.precision_fallback(v, rows, t32, attempt)
  local th = require("parity.thresholds").at(v.thresholds, v.noise_dtype)
  local candidates = less_precise(rows, th)
  local result = { kind = "fallback", what = "", confirmed = false, before = figures(v), after = {}, rounds = 1,
                   tries = 0, components = core.json.array() }
  if #candidates == 0 then
    result.error = "no component adds an error of its own at the low precision and none in fp32: nothing to fall back"
    return result
  end
  local tried = {}
  local kept = M.fewest(candidates, function(paths, key)
    result.tries = result.tries + 1
    local after, dir = attempt({ M.fp32_fallback(paths, t32) }, { "e2e" })
    tried[key] = { after = after, dir = dir }
    return after.verdict == "equivalent"
  end)
  local final = tried[M.key_of(kept or candidates)]
  for _, p in ipairs(kept or {}) do result.components[#result.components + 1] = p end
  result.confirmed, result.after, result.results = kept ~= nil, figures(final.after), final.dir
  result.error, result.verdict = final.after.error, final.after.verdict
  result.what = kept and ("with %s in fp32 (of %d that lose precision)"):format(
    #kept <= 3 and table.concat(kept, ", ") or ("%s and %d more"):format(kept[1], #kept - 1), #candidates)
    or ("with every one of the %d components that lose precision in fp32 (%s, ...)"):format(#candidates, candidates[1])
  return result
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
  local function attempt(sets, stages)
    n = n + 1
    local o = {}
    for k, x in pairs(opts) do o[k] = x end
    o.out, o.quiet, o.log, o.confirm, o.unpatched = ("%s/confirm/%d"):format(out, n), true, function() end, nil, false
    o.stages = stages
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
      before = figures(v), after = figures(after), results = dir, rounds = 1, error = after.error,
      verdict = after.verdict }
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
      break
    end
    sets[#sets + 1], whats[#whats + 1] = set, w
    repaired[#repaired + 1] = f.target
    local after, dir = attempt(sets)
    local done = after.verdict == "equivalent"
    if done or round == M.MAX_ROUNDS or not next_suspect(after, repaired) then
      results[#results + 1] = { patch = table.concat(whats, "; "), kind = "substitution", what = table.concat(whats, "; "),
        confirmed = done, before = figures(v), after = figures(after), results = dir, rounds = round, error = after.error,
        verdict = after.verdict }
      break
    end
    current = after
  end
  -- a precision fault: which components computed in fp32 make the port equivalent at the low precision
  if first.cause and first.cause.class == "precision" and target:has("fp32") then
    results[#results + 1] = M.precision_fallback(v, rows, target:at("fp32"), attempt)
  end
  return results
end

return M
