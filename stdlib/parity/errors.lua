--- Error messages for people and JSON: without the "file.lua:12: " prefixes Lua adds.
local M = {}

--- `msg` as text without the position prefixes Lua adds ("file.lua:12: ", '[string "..."]:3: '),
--- however many are stacked.
---@param msg any an error value
---@return string
function M.clean(msg)
  msg = tostring(msg)
  while true do
    local rest = msg:match("^[%w_./%-]+%.lua:%d+: (.*)$") or msg:match("^%[string [^%]]*%]:%d+: (.*)$")
    if not rest then return msg end
    msg = rest
  end
end

return M
