---@meta _
-- stdlib/parity/_meta/program.lua — LuaCATS stubs for the .pt2 Program userdata and
-- core.load_program / core.programs_supported (bindings/program.cpp). Types only: never
-- embedded, never run. stdlib/parity/program.lua wraps a Program in a Module-like table.

--- A torch.export program compiled by AOTInductor (a .pt2 package), run whole (metatable
--- "parity.Program"; it has no __tostring).
---@class parity.Program
local Program = {}

--- The package's metadata (what aot_inductor.metadata gave at compile time).
---@return table<string, string>
function Program:metadata() end

--- Its constants (parameters, buffers, lifted tensors) by their names in the exported module.
---@return table<string, parity.Tensor>
function Program:constants() end

--- Runs the program on flat tensor inputs (every argument must be a Tensor); its flat outputs,
--- on the CPU.
---@param ... parity.Tensor
---@return parity.Tensor[]
function Program:run(...) end

--- The path it was loaded from.
---@return string
function Program:path() end

---@class parity.core
local core = {}

--- Loads a .pt2 package onto `device` (default: the CPU). Loading runs the compiled native code
--- it holds: load only packages you trust. Raises "PATH: ..." when it is missing, could exhaust
--- memory, is not an AOTInductor package, or this build cannot read one.
---@param path string
---@param device? parity.DeviceName
---@return parity.Program
function core.load_program(path, device) end

--- Whether this build reads .pt2 packages; when not, also which build does.
---@return boolean supported
---@return string? why_not
function core.programs_supported() end
