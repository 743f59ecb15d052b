-- bench/timing.lua — the wall-clock median the benchmarks time with: fn run `repeats` times, a
-- full Lua collection after each (so no run pays for another's garbage).
local clock = require("parity.core").clock

return function(repeats, fn)
  local times = {}
  for i = 1, repeats do
    local t0 = clock()
    fn()
    times[i] = clock() - t0
    parity.collect()
  end
  table.sort(times)
  return times[math.floor((repeats + 1) / 2)]
end
