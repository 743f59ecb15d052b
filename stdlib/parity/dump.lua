--- Dump directories: the per-layer tensors a foreign engine or a reference script writes (seed 004,
--- "refparity"), one tensor a file, named by where it was taken:
---   emb                      the embeddings
---   h{l}_in                  the residual stream entering layer l
---   h{l}_postattn            after the self-attention and its residual add
---   h{l}_preffn              after the post-attention norm (the FFN's input)
---   h{l}_ffnout              the FFN's output, before its residual add
---   h{l}                     layer l's output
---   post_norm, logits        after the final norm; the logits
--- Files are .safetensors (one tensor: named by the file; several: by their names), .npy, or
--- raw .bin with a .json sidecar {"dtype": "float32", "shape": [...]}. Other names are compared
--- too, after these, in name order.
local core = require("parity.core")
local descends = require("parity.mapping").descends
local saved = require("parity.saved")

local M = {}
--- A dump read (M.read) or renamed (M.rename).
---@class parity.Dump
---@field path string
---@field names string[] its tensors' names, in dump order (M.sort)
---@field tensors table<string, parity.Tensor> name -> tensor
---@field files table<string, string> name -> the file it was read from
---@field ignored string[] directory entries that are not tensor files or sidecars
---@field renamed table<string, string>|nil M.rename's: new name -> the name in the files
--- Where a dump name sits (M.place).
---@class parity.DumpPlace
---@field layer number|nil the layer: -1 for emb, math.huge after the stack (post_norm, logits), nil for others
---@field substage string|nil "in", "postattn", "preffn", "ffnout" or "" (the layer's output)
---@field kind string emb, h, h_in, h_ffnout, ..., post_norm, logits; another name is its own kind
---@field family string|nil kinds of one scale: "stream" for emb, h_in and h, else the kind
---@field key table the sort key: {layer, place within it, name}

--- Sub-stages of a layer, in the order they are computed; "" is the layer's output.
M.SUBSTAGES = { "in", "postattn", "preffn", "ffnout", "" }
local SUB_INDEX = {}
for i, s in ipairs(M.SUBSTAGES) do SUB_INDEX[s] = i end

--- Where a name sits: { layer = l (-1 for emb, math.huge after the stack), substage, kind (emb,
--- h, h_in, h_ffnout, ...: what a dump has for every layer or not at all), family (kinds of one
--- scale: the residual stream is emb, h_in and h), key (the sort key) }.
---@param name string
---@return parity.DumpPlace
function M.place(name)
  if name == "emb" then return { layer = -1, substage = "", kind = "emb", family = "stream", key = { -1, 0, name } } end
  local l, sub = name:match("^h(%d+)_?(%w*)$")
  if l then
    local i = SUB_INDEX[sub] or (#M.SUBSTAGES - 0.5)  -- an unknown sub-stage: just before the output
    local kind = "h" .. (sub ~= "" and ("_" .. sub) or "")
    return { layer = tonumber(l), substage = sub, kind = kind,
             family = (sub == "" or sub == "in") and "stream" or kind, key = { tonumber(l), i, name } }
  end
  if name == "post_norm" then return { layer = math.huge, substage = "", kind = "post_norm", key = { math.huge, 0, name } } end
  if name == "logits" then return { layer = math.huge, substage = "", kind = "logits", key = { math.huge, 1, name } } end
  return { kind = name, key = { math.huge, 2, name } }
end

--- Sorts names into dump order: emb, layer by layer (h{l}_in ... h{l}), post_norm, logits, others.
---@param names string[] sorted in place
---@return string[] names
function M.sort(names)
  table.sort(names, function(a, b)
    local ka, kb = M.place(a).key, M.place(b).key
    for i = 1, 3 do
      if ka[i] ~= kb[i] then return ka[i] < kb[i] end
    end
    return false
  end)
  return names
end

--- Reads a dump: a directory of tensor files, or one .safetensors file of named tensors.
--- Returns { path, names (in dump order), tensors = {name = Tensor}, files = {name = file},
--- ignored = {file...} (what is not a tensor file or a sidecar) }.
---@param path string
---@return parity.Dump
function M.read(path)
  local kind = core.path_kind(path)
  if not kind then error(("%s: no such file or directory"):format(path), 0) end
  local d = { path = path, names = {}, tensors = {}, files = {}, ignored = {} }
  local function add(name, t, file)
    if d.tensors[name] then
      error(("%s: two tensors named %s (%s and %s)"):format(path, name, d.files[name], file), 0)
    end
    d.names[#d.names + 1], d.tensors[name], d.files[name] = name, t, file
  end
  local function read_file(file, stem)
    local tensors = core.tensors.load(file)
    local names = {}
    for n in pairs(tensors) do names[#names + 1] = n end
    if #names == 1 and stem then
      add(stem, tensors[names[1]], file)
    else
      table.sort(names)
      for _, n in ipairs(names) do add(n, tensors[n], file) end
    end
  end
  if kind == "file" then
    if not path:find("%.safetensors$") then
      error(("%s: a dump is a directory of tensor files or one .safetensors file of named tensors"):format(path), 0)
    end
    read_file(path, nil)
  else
    local entries = core.list_dir(path)
    local bins = {}
    for _, e in ipairs(entries) do
      if e:find("%.bin$") then bins[e:sub(1, -5) .. ".json"] = true end
    end
    for _, e in ipairs(entries) do
      local ext, file = saved.extension(e), path .. "/" .. e
      if ext and core.path_kind(file) == "file" then
        read_file(file, e:sub(1, -#ext - 2))
      elseif not bins[e] then
        d.ignored[#d.ignored + 1] = e
      end
    end
  end
  if #d.names == 0 then
    error(("%s: no tensors (expected files like emb.npy, h0.npy, ..., logits.npy; .safetensors, .npy or .bin + .json)"):format(path), 0)
  end
  M.sort(d.names)
  return d
end

--- The entry of `map` for `name`: its own key, else the first key starting with ^ (a Lua
--- pattern), in sorted order, that matches it. Returns the value and the pattern (nil for an exact key).
---@param map table<string, any>
---@param name string
---@return any value nil when no key matches
---@return string|nil pattern
function M.lookup(map, name)
  if map[name] ~= nil then return map[name] end
  local patterns = {}
  for k in pairs(map) do
    if type(k) == "string" and k:sub(1, 1) == "^" then patterns[#patterns + 1] = k end
  end
  table.sort(patterns)
  for _, k in ipairs(patterns) do
    if name:find(k) then return map[k], k end
  end
end

--- Renames a dump's tensors through a name mapping: { [name] = canonical } for exact names, and
--- { ["^lua pattern$"] = "replacement with %1" } for patterns (M.lookup), applied with
--- string.gsub. Names no entry matches stay as they are.
---@param d parity.Dump a dump (M.read)
---@param names table<string, string>|nil a name mapping (M.check_names); nil: `d` as it is
---@return parity.Dump
function M.rename(d, names)
  if not names then return d end
  local out = { path = d.path, names = {}, tensors = {}, files = {}, ignored = d.ignored, renamed = {} }
  for _, n in ipairs(d.names) do
    local to, pattern = M.lookup(names, n)
    if pattern then to = n:gsub(pattern, to) end
    to = to or n
    if out.tensors[to] then
      error(("%s: %s and %s both map to %s"):format(d.path, out.renamed[to] or to, n, to), 0)
    end
    out.names[#out.names + 1], out.tensors[to], out.files[to], out.renamed[to] = to, d.tensors[n], d.files[n], n
  end
  M.sort(out.names)
  return out
end

--- Bounds on the name patterns of shared files, which the host applies to every tensor name
--- outside the sandbox's limits: a pattern's length, its repetitions (* + - ?: each multiplies the
--- backtracking by a name's length), a replacement's length, and how many entries a table holds.
M.PATTERN_LIMITS = { length = 200, repetitions = 3, replacement = 200, entries = 10000 }

--- The repetition operators (* + - ?) and captures of a Lua pattern (escapes and sets skipped),
--- and what makes it malformed (matching raises that only when it gets that far, so it is read here).
local function pattern_shape(p)
  local reps, caps, open, i = 0, 0, 0, 1
  while i <= #p do
    local c = p:sub(i, i)
    if c == "%" then
      i = i + 1
      local e = p:sub(i, i)
      if i > #p then return reps, caps, "ends with '%'" end
      if e == "b" then i = i + 2 end
      if e == "f" and p:sub(i + 1, i + 1) ~= "[" then return reps, caps, "missing '[' after '%f'" end
      if e:match("%d") and (tonumber(e) == 0 or tonumber(e) > caps - open) then
        return reps, caps, ("%%%s refers to no closed capture"):format(e)
      end
    elseif c == "[" then
      i = i + 1
      if p:sub(i, i) == "^" then i = i + 1 end
      repeat  -- the first ] of a set is a member
        if p:sub(i, i) == "%" then i = i + 1 end
        i = i + 1
      until i > #p or p:sub(i, i) == "]"
      if i > #p then return reps, caps, "missing ']'" end
    elseif c == "*" or c == "+" or c == "-" or c == "?" then
      reps = reps + 1
    elseif c == "(" then
      caps, open = caps + 1, open + 1
    elseif c == ")" then
      open = open - 1
      if open < 0 then return reps, caps, "invalid pattern capture" end
    end
    i = i + 1
  end
  return reps, caps, open > 0 and "unfinished capture" or nil
end

--- Checks one name pattern (a key starting with ^) and, when given, its replacement; errors
--- name `origin`.
---@param pattern string
---@param replacement string|nil
---@param origin string
function M.check_pattern(pattern, replacement, origin)
  local lim = M.PATTERN_LIMITS
  local function bad(why) error(("%s: pattern %q %s"):format(origin, pattern:sub(1, 60), why), 0) end
  if #pattern > lim.length then bad(("is %d characters long; at most %d"):format(#pattern, lim.length)) end
  local reps, caps, malformed = pattern_shape(pattern)
  local ok, err = pcall(string.find, "", pattern)
  malformed = malformed or not ok and tostring(err):gsub("^.-: ", "")
  if malformed then bad(("is not a Lua pattern (%s)"):format(malformed)) end
  if reps > lim.repetitions then
    bad(("has %d repetitions (* + - ?); at most %d, each multiplies the matching work"):format(reps, lim.repetitions))
  end
  if replacement == nil then return end
  if #replacement > lim.replacement then
    bad(("has a replacement of %d characters; at most %d"):format(#replacement, lim.replacement))
  end
  for d in replacement:gsub("%%%%", ""):gmatch("%%(%d)") do  -- % before anything else is that character
    if tonumber(d) > math.max(caps, 1) then
      bad(("has %%%s in its replacement, which names no capture (it has %d)"):format(d, caps))
    end
  end
end

--- Checks a name mapping (a table of strings to strings, keys starting with ^ patterns); returns it.
---@param t any
---@param origin string names the mapping in errors
---@return table<string, string>
function M.check_names(t, origin)
  if type(t) ~= "table" then error(("%s: must be a table, got %s"):format(origin, type(t)), 0) end
  local n = 0
  for k, v in pairs(t) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error(("%s: entries map names (or ^patterns) to names, got %s = %s"):format(origin, tostring(k), tostring(v)), 0)
    end
    n = n + 1
    if n > M.PATTERN_LIMITS.entries then
      error(("%s: more than %d entries"):format(origin, M.PATTERN_LIMITS.entries), 0)
    end
    if k:sub(1, 1) == "^" then M.check_pattern(k, v, origin) end
  end
  return t
end

--- Loads a name mapping file (sandboxed Lua returning a table of strings to strings).
---@param path string
---@return table<string, string>
function M.load_names(path)
  return M.check_names(require("parity.sandbox").run_file(path, "name mapping"), "name mapping " .. path)
end

-- ---- writing a dump of a model, through the taps ----------------------------------------

local function first_tensor(list)
  local x = list and list[1]
  while type(x) == "table" do x = x[1] end
  return torch.is_tensor(x) and x or nil
end

local function same(a, b) return a ~= nil and b ~= nil and a == b end  -- Tensor == is torch.equal

--- Where each dump name is taken in a module tree, from its paths and one tapped run's calls:
--- the layer stack (the container with the most numbered children, outside any other numbered
--- module), each layer's input and output, its FFN (a child named like mlp/ffn/feed_forward/moe)
--- with weights, its input and output), the last module before it whose output the FFN takes
--- (its norm; the norm's input is the stream after the attention's residual add), and the first module after the stack that takes the last layer's output (the
--- final norm). Returns { {name, path, field = "inputs"|"outputs"}... } in dump order.
local function stack_of(modules)
  local groups, order = {}, {}
  for _, m in ipairs(modules) do
    local parent = m.path:match("^(.*)%.%d+$")
    if parent and not parent:find("%.%d+%.") and not parent:find("%.%d+$") and not parent:find("^%d+%.") then
      if not groups[parent] then groups[parent] = {}; order[#order + 1] = parent end
      table.insert(groups[parent], m.path)
    end
  end
  local stack
  for _, p in ipairs(order) do
    if not stack or #groups[p] > #groups[stack] then stack = p end
  end
  if not stack then return nil end
  local layers = groups[stack]
  table.sort(layers, function(a, b) return tonumber(a:match("(%d+)$")) < tonumber(b:match("(%d+)$")) end)
  return stack, layers
end

--- A direct child of `parent`.
local function child_of(path, parent) return descends(path, parent) and not path:find(".", #parent + 2, true) end

local function locate(modules, calls, stack, layers)
  local where = {}
  local function at(name, path, field) where[#where + 1] = { name = name, path = path, field = field } end
  at("emb", layers[1], "inputs")
  for l, path in ipairs(layers) do
    local i = l - 1
    at(("h%d_in"):format(i), path, "inputs")
    local children = {}
    for _, m in ipairs(modules) do
      if child_of(m.path, path) then children[#children + 1] = m end
    end
    local ffn, before = nil, {}
    for _, c in ipairs(children) do
      local leaf = c.path:match("([^.]+)$"):lower()
      if (leaf:find("mlp") or leaf:find("ffn") or leaf:find("feed_forward") or leaf:find("moe"))
          and not leaf:find("norm") and not leaf:find("^ln") and c.total_params > 0 then  -- not ffn_norm, not a dropout
        ffn = c.path
        break
      end
      before[#before + 1] = c.path
    end
    local ffn_in = ffn and calls[ffn] and first_tensor(calls[ffn][1].inputs)
    if ffn_in then
      for k = #before, 1, -1 do  -- the last module before the FFN whose output it takes: its norm
        local c = before[k]
        if calls[c] and same(first_tensor(calls[c][1].outputs), ffn_in) then
          at(("h%d_postattn"):format(i), c, "inputs")
          break
        end
      end
      at(("h%d_preffn"):format(i), ffn, "inputs")
      at(("h%d_ffnout"):format(i), ffn, "outputs")
    end
    at(("h%d"):format(i), path, "outputs")
  end
  local last = calls[layers[#layers]] and first_tensor(calls[layers[#layers]][1].outputs)
  local after = false
  for _, m in ipairs(modules) do
    if m.path == layers[#layers] then after = true
    elseif after and m.path ~= stack and not descends(m.path, stack)
      and calls[m.path] and same(first_tensor(calls[m.path][1].inputs), last) then
      at("post_norm", m.path, "outputs")
      break
    end
  end
  return where
end

--- Dumps a model's per-layer tensors for token ids [K, T] into `dir` (new or empty), one float32
--- .npy a name (M.read's layout, each [K, T, width]), through the taps: what a reference dumper
--- for `parity diff` writes. `module` must be freshly loaded (untapped). Returns { names, paths =
--- {name = "module path inputs|outputs"} }. With patch sets (parity.patches), the model dumped is
--- the patched one.
---@param module parity.Module
---@param tokens parity.Tensor int64 [K, T]
---@param dir string
---@param sets parity.PatchSet[]|nil
---@return {names: string[], paths: table<string, string>} written the names written, in dump order
function M.write(module, tokens, dir, sets)
  if type(dir) ~= "string" or dir == "" then error("dump: the directory must not be an empty path", 0) end
  if core.path_kind(dir) == "dir" and #core.list_dir(dir) > 0 then
    error(("%s is not empty: dump into a new or empty directory (a tensor left from another dump would be"
      .. " compared too)"):format(dir), 0)
  end
  local modules = module:modules()
  local stack, layers = stack_of(modules)
  if not stack then
    error("cannot dump per-layer states: no numbered layer stack (like model.layers.0, model.layers.1, ...)", 0)
  end
  local paths = {}  -- the layers, their children, and what runs outside the stack
  for _, m in ipairs(modules) do
    local p = m.path
    local layer = p:match("^(.*)%.[^.]+$")
    if p ~= "" and (not descends(p, stack) or child_of(p, stack) or (layer and child_of(layer, stack))) then
      paths[#paths + 1] = p
    end
  end
  local patches = require("parity.patches")
  for _, set in ipairs(sets or {}) do  -- a patched component needs its taps too
    for _, t in ipairs(patches.targets(module, set)) do
      for _, p in ipairs(t.paths) do paths[#paths + 1] = p end
    end
  end
  module:tap(paths)
  for _, set in ipairs(sets or {}) do patches.apply(module, set) end
  local out, calls = module:run_tapped({ tokens })
  local where = locate(modules, calls, stack, layers)
  local written, from = {}, {}
  for _, w in ipairs(where) do
    local x = calls[w.path] and first_tensor(calls[w.path][1][w.field])
    if x then
      core.tensors.save(("%s/%s.npy"):format(dir, w.name), x:float())
      written[#written + 1], from[w.name] = w.name, w.path .. " " .. w.field
    end
  end
  core.tensors.save(dir .. "/logits.npy", require("parity.lm").logits_of(out, "the model"):float())
  written[#written + 1], from.logits = "logits", "the model's output"
  return { names = written, paths = from }
end

return M
