--- parity.cli.args — the command line's parsing: flags and positionals by a spec, the nearest
--- name for a typo, and usage errors (they print without a traceback, then exit 2).
local M = {}

--- Writes a line to stderr: fmt formatted with the arguments, then a newline.
---@param fmt string
---@param ... any
local function stderr(fmt, ...)
  io.stderr:write((fmt):format(...), "\n")
end

--- Errors raised for bad command lines carry this marker, so they print without a traceback.
--- Raises {usage = msg}: it never returns.
---@param msg string what is wrong with the command line
local function usage_error(msg)
  error({ usage = msg }, 0)
end

--- list[from..] as a new list (unpack overflows LuaJIT's stack on a few thousand arguments).
---@generic T
---@param list T[]
---@param from integer
---@return T[]
local function tail(list, from)
  local out = {}
  for i = from, #list do out[#out + 1] = list[i] end
  return out
end

--- The edit distance of two strings: insertions, deletions, substitutions and swaps of two
--- neighbours (promts -> prompts 1, atlo -> atol 1).
local function distance(a, b)
  local d = {}
  for i = 0, #a do d[i] = { [0] = i } end
  for j = 1, #b do d[0][j] = j end
  for i = 1, #a do
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      d[i][j] = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        d[i][j] = math.min(d[i][j], d[i - 2][j - 2] + 1)
      end
    end
  end
  return d[#a][#b]
end

--- The names nearest to `word`, when close enough to be a typo of them: at most 2 edits, and
--- at most a third of the name (one for names of up to 5 letters); "" when none is.
---@param word string what was given
---@param names string[]
---@param prefix string written before each name ("--" for flags)
---@return string " (did you mean --a?)", or ""
local function nearest(word, names, prefix)
  local best, found = math.huge, {}
  for _, name in ipairs(names) do
    local d = distance(word, name)
    if d <= 2 and d <= math.max(1, math.floor(#name / 3)) then
      if d < best then best, found = d, {} end
      if d == best then found[#found + 1] = prefix .. name end
    end
  end
  if #found == 0 then return "" end
  table.sort(found)
  return (" (did you mean %s?)"):format(table.concat(found, " or "))
end

--- The keys of a table, as a list (in no particular order).
---@generic K
---@param t table<K, any>
---@return K[]
local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  return out
end

--- Parses `--flag`, `--key value`, `--key=value` and positionals against a spec.
---@param argv string[]
---@param spec table { flags = { name = "boolean"|"string"|"number"|"list"|"many" }, positional = { "NAME", ... },
---   rest = "NAME" }  ("list": a string flag given any number of times, its values in order; "many":
---   the same, and each takes every argument after it up to the next --flag; rest: positionals past
---   `positional`, any number, as a list)
---@return table<string, any> opts flag name -> its value (a string, number, true or a list),
---   positional NAME -> its argument; raises a usage error on a bad command line
local function parse(argv, spec)
  local opts, pos = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local key, value = a:match("^%-%-([%w%-]+)=(.*)$")
    key = key or a:match("^%-%-([%w%-]+)$")
    if key then
      local kind = spec.flags[key]
      if not kind then usage_error(("unknown option --%s%s"):format(key, nearest(key, keys(spec.flags), "--"))) end
      if kind == "boolean" then
        if value then usage_error(("--%s takes no value"):format(key)) end
        opts[key] = true
      else
        if not value then
          i = i + 1
          value = argv[i]
          if not value then usage_error(("--%s needs a value"):format(key)) end
        end
        if value == "" then usage_error(("--%s needs a value, got an empty one (an unset shell variable?)"):format(key)) end
        if kind == "number" then
          local n = require("parity.validate").decimal(value)
          if not n then usage_error(("--%s needs a number, got '%s'"):format(key, value)) end
          value = n
        end
        if kind == "list" or kind == "many" then
          opts[key] = opts[key] or {}
          table.insert(opts[key], value)
          while kind == "many" and argv[i + 1] and not argv[i + 1]:find("^%-%-") do
            i = i + 1
            if argv[i] == "" then usage_error(("--%s: an empty argument (an unset shell variable?)"):format(key)) end
            table.insert(opts[key], argv[i])
          end
        else
          opts[key] = value
        end
      end
    else
      if a == "" then usage_error("an empty argument (an unset shell variable?)") end
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  if #pos < #spec.positional then
    usage_error(("missing %s"):format(spec.positional[#pos + 1]))
  end
  if spec.rest then opts[spec.rest] = tail(pos, #spec.positional + 1) end
  if #pos > #spec.positional and not spec.rest then usage_error(("unexpected argument '%s'"):format(pos[#spec.positional + 1])) end
  for i2, name in ipairs(spec.positional) do opts[name] = pos[i2] end
  return opts
end

--- The --out of a command line that did not parse (the last one given), or nil.
---@param argv string[]
---@return string|nil
local function out_given(argv)
  local out
  for i, a in ipairs(argv) do
    if a == "--out" then out = argv[i + 1] end
    out = a:match("^%-%-out=(.+)$") or out
  end
  return out
end

M.stderr, M.usage_error, M.tail, M.nearest, M.keys, M.parse, M.out_given = stderr, usage_error, tail, nearest, keys,
  parse, out_given
return M
