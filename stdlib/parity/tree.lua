--- Module trees for people and programs: pretty (box drawing), flat (one path a line), JSON.
--- Input: Module:modules(), root first, parents before children, in execution order.
local M = {}
--- One node of M.nested's tree.
---@class parity.TreeNode
---@field name string the last part of its path ("" for the root)
---@field path string
---@field type string its class name
---@field params number parameter elements it owns directly
---@field total_params number parameter elements with its children
---@field children parity.TreeNode[] a JSON array, in execution order

local function human(n)
  if n >= 1e9 then return ("%.1fB"):format(n / 1e9) end
  if n >= 1e6 then return ("%.1fM"):format(n / 1e6) end
  if n >= 1e3 then return ("%.1fK"):format(n / 1e3) end
  return tostring(n)
end

local function parent_of(path)
  return path:match("^(.*)%.[^.]+$") or ""
end

local function name_of(path)
  return path:match("([^.]+)$") or path
end

local function children_index(modules)
  local children = {}
  for _, m in ipairs(modules) do children[m.path] = {} end
  for i = 2, #modules do
    local m = modules[i]
    table.insert(children[parent_of(m.path)], m)
  end
  return children
end

--- The box-drawn tree; with `fold`, runs of numbered siblings whose subtrees are identical (class,
--- parameter counts, children, recursively) become one entry "{0..27}", drawn once.
local function render(modules, fold)
  local children = children_index(modules)
  local sigs = {}
  local function signature(m)
    if not sigs[m.path] then
      local parts = {}
      for _, c in ipairs(children[m.path]) do
        local n = name_of(c.path)
        parts[#parts + 1] = (n:match("^%d+$") and "#" or n) .. "=" .. signature(c)
      end
      sigs[m.path] = ("%s/%d(%s)"):format(m.type, m.total_params, table.concat(parts, ","))
    end
    return sigs[m.path]
  end
  local function folds(a, b)  -- b directly follows a, numbered, with the same subtree
    local na, nb = tonumber(name_of(a.path)), tonumber(name_of(b.path))
    return fold and na and nb == na + 1 and signature(a) == signature(b)
  end
  local root = modules[1]
  local lines = { ("%s  (%s params)"):format(root.type, human(root.total_params)) }
  local function walk(path, prefix)
    local kids, groups, i = children[path], {}, 1
    while i <= #kids do
      local j = i
      while j < #kids and folds(kids[j], kids[j + 1]) do j = j + 1 end
      groups[#groups + 1] = { kids[i], kids[j], j - i + 1 }
      i = j + 1
    end
    for gi, g in ipairs(groups) do
      local m, n, last = g[1], g[3], gi == #groups
      local name = n > 1 and ("{%s..%s}"):format(name_of(m.path), name_of(g[2].path)) or name_of(m.path)
      local count = m.total_params > 0 and ("  [%s%s]"):format(human(m.total_params), n > 1 and " each" or "") or ""
      lines[#lines + 1] = ("%s%s%s: %s%s"):format(prefix, last and "└─ " or "├─ ", name, m.type, count)
      walk(m.path, prefix .. (last and "   " or "│  "))
    end
  end
  walk(root.path, "")
  return table.concat(lines, "\n")
end

--- Box-drawn tree with class names and parameter counts (own/total).
---@param modules parity.ModuleInfo[]
---@return string
function M.pretty(modules) return render(modules, false) end

--- Like pretty, with runs of numbered siblings whose subtrees are identical folded into one
--- entry: "layers.{0..27}: LlamaDecoderLayer", drawn once.
---@param modules parity.ModuleInfo[]
---@return string
function M.compressed(modules) return render(modules, true) end

--- One module a line: path, class, parameter count with children (root shown as "(root)").
---@param modules parity.ModuleInfo[]
---@return string
function M.flat(modules)
  local lines = {}
  for _, m in ipairs(modules) do
    lines[#lines + 1] = ("%s\t%s\t%d"):format(m.path == "" and "(root)" or m.path, m.type, m.total_params)
  end
  return table.concat(lines, "\n")
end

--- Nested table {name, path, type, params, total_params, children = {...}} for JSON.
---@param modules parity.ModuleInfo[]
---@return parity.TreeNode root
function M.nested(modules)
  local children = children_index(modules)
  local json = require("parity.core").json
  local function node(m)
    local kids = json.array()
    for _, c in ipairs(children[m.path]) do kids[#kids + 1] = node(c) end
    return { name = name_of(m.path), path = m.path, type = m.type, params = m.params,
             total_params = m.total_params, children = kids }
  end
  return node(modules[1])
end

return M
