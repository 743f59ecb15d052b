---@meta _
-- stdlib/parity/_meta/module.lua — LuaCATS stubs for the TorchScript Module userdata and
-- core.load / core.load_library / core.usable_device (bindings/module.cpp). Types only: never
-- embedded, never run.

--- One entry of m:modules().
---@class parity.ModuleInfo
---@field path string dotted path from the root ("" for the root)
---@field type string demangled class name ("LlamaRMSNorm")
---@field params number parameter elements it owns directly
---@field total_params number parameter elements with its children
---@field depth number 0 for the root

--- One argument of a method's schema.
---@class parity.SchemaArgument
---@field name string
---@field type string TorchScript's annotation ("Tensor", "Optional[int]")
---@field default? string the default value as text, when it has one

--- m:schema(): a method's schema, without `self`.
---@class parity.Schema
---@field name string
---@field arguments parity.SchemaArgument[]
---@field returns {type: string}[]

--- One entry of m:tap(): what was spliced into that path's forward graphs.
---@class parity.TapSite
---@field path string
---@field inputs number tensor inputs tapped
---@field outputs number tensor outputs tapped
---@field untapped string[] values that are not tensors: "input 2 (int)", ...
---@field refused? string why the path has no taps (only with skip_shared)

--- One call of a tapped module in m:run_tapped()'s records (copies, on the CPU).
---@class parity.TapCall
---@field inputs parity.Tensor[]
---@field outputs parity.Tensor[]

--- m:run_tapped()'s options. inject[path][call][input] (1-based) = Tensor replaces that input
--- (cast to the tapped input's dtype and device); last_position[path] = input (1-based) cuts
--- that tensor input, [batch, seq, ...], to its last position before the module sees it.
---@class parity.RunTappedOptions
---@field capture? string[] paths whose calls are recorded (default: every tapped path)
---@field inject? table<string, table<integer, table<integer, parity.Tensor>>>
---@field last_position? table<string, integer>

--- A loaded TorchScript module (metatable "parity.Module"). m(...) runs forward: arguments are
--- bound against its schema (a trailing table with string keys: keyword arguments); tuples
--- and lists come back as arrays, dicts as tables with string keys. A module off the CPU takes
--- CPU tensors and gives its results back on the CPU. tostring(m) is "Module(TYPE)".
---@class parity.Module
---@overload fun(...: any): any
local Module = {}

--- Runs a method by name with the given arguments, bound as for m(...); raises "module TYPE has
--- no method 'NAME' (methods: ...)" when there is none.
---@param method string
---@param ... any
---@return any
function Module:call(method, ...) end

--- Runs forward and returns its first tensor, depth first (a dict: its "logits" first); raises
--- "TYPE's forward returned no tensor (a KIND)" when it has none.
---@param ... any
---@return parity.Tensor
function Module:forward1(...) end

--- The submodule at a dotted path ("model.layers.0.mlp"; "" is the root); raises "no submodule
--- 'PATH' (children of 'PARENT': ...)".
---@param path string
---@return parity.Module
function Module:child(path) end

--- Every submodule, the root first, then in the order forward first calls them (never-called
--- ones in definition order), parents before children.
---@return parity.ModuleInfo[]
function Module:modules() end

--- Its parameters, recursively, by dotted name.
---@return table<string, parity.Tensor>
function Module:parameters() end

--- Its buffers, recursively, by dotted name.
---@return table<string, parity.Tensor>
function Module:buffers() end

--- The names of its methods.
---@return string[]
function Module:methods() end

--- A method's schema (default "forward"); raises as m:call does for a missing method.
---@param method? string
---@return parity.Schema
function Module:schema(method) end

--- The demangled class name ("LlamaRMSNorm").
---@return string
function Module:type() end

--- Moves its parameters and buffers to a device and/or casts them to a dtype, in place (a
--- traced module keeps the dtypes it was traced with); returns the module itself.
---@param target parity.ToTarget
---@return parity.Module self
function Module:to(target) end

--- Its first parameter's device (else its first buffer's; "cpu" without either).
---@return string
function Module:device() end

--- Sets it (and its children) to eval mode; returns the module itself.
---@return parity.Module self
function Module:eval() end

--- Splices the parity::tap operator into those submodules' forward graphs (call it before the
--- module's first run). Raises when a path is missing, or shares its module type with another
--- module (unless skip_shared, which leaves it untapped with `refused` set).
---@param paths string[]
---@param opts? {skip_shared?: boolean} another key or type is an error
---@return parity.TapSite[]
function Module:tap(paths, opts) end

--- Runs forward with its taps: returns the output and the records of each captured path's
--- calls, in call order (1-based).
---@param args any[] forward's arguments, as an array
---@param opts? parity.RunTappedOptions {capture, inject, last_position}; another key or type is an error
---@return any output
---@return table<string, parity.TapCall[]> calls
function Module:run_tapped(args, opts) end

--- One call of a patched component, as its patch function sees it.
---@class parity.PatchCallInfo
---@field path string the component's path
---@field call integer 1-based, per forward of the whole model
---@field method string the method that ran ("forward"; "forward1" for a traced module's second call site)
---@field outputs integer how many tensor outputs the component returns (tuples flattened)
---@field original fun(...: parity.Tensor): parity.Tensor ... the component as it is (taps and patches inert)

--- Routes the component's calls (a tapped path) to fn(call, inputs...) -> outputs..., inside
--- the model's forward and its children's from now on; a second patch of the path replaces the
--- first. The outputs: each of the original's shape, dtype and device; the first k of them (the
--- others the component's own). An error, or other outputs, ends the run: "ORIGIN: patch of PATH
--- (call N): why".
---@param path string
---@param fn fun(call: parity.PatchCallInfo, ...: parity.Tensor): parity.Tensor ...
---@param origin? string where the patch comes from, for messages
function Module:patch(path, fn, origin) end

--- Removes the path's patch: the original outputs again, bit for bit.
---@param path string
---@return boolean had whether it had a patch
function Module:unpatch(path) end

--- The patched paths, sorted.
---@return string[]
function Module:patched() end

--- Calls `method` as the port computes it: no patch in the module, nor in its children, applies
--- (what a patched component computed before its patch).
---@param method string
---@param ... any its arguments
---@return any output
function Module:call_unpatched(method, ...) end

---@class parity.core
local core = {}

--- Loads a TorchScript file as a Module, its tensors on `device` (default: the CPU); raises
--- "PATH: no such file", "PATH: not a loadable TorchScript file (...)", or when its ZIP
--- directory declares more than memory allows. parity.load wraps it with parity.device.
---@param path string
---@param device? parity.DeviceName
---@return parity.Module
function core.load(path, device) end

--- Loads a shared library of custom operators (dlopen, global symbols); raises "cannot load
--- library PATH: ...".
---@param path string
function core.load_library(path) end

--- The canonical name ("cuda:0") of a device models can run on here; raises saying why not (no
--- GPU, a LibTorch without CUDA, no such index).
---@param name parity.DeviceName
---@return string
function core.usable_device(name) end
