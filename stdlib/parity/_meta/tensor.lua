---@meta torch
-- stdlib/parity/_meta/tensor.lua — LuaCATS stubs (lua-language-server) for the Tensor userdata
-- (bindings/tensor.cpp), the global `torch` (bindings/torch_lib.cpp) and parity.core.tensors
-- (bindings/tensor_files.cpp). Types only: never embedded, never run (tests/lua/api_spec.lua
-- checks that every native name has a stub here or beside it).

---@alias parity.DtypeName
---| "float32" # also "fp32", "float", "f32"
---| "bfloat16" # also "bf16"
---| "float16" # also "fp16", "half", "f16"
---| "float64" # also "fp64", "double"
---| "int64" # also "long"
---| "int32" # also "int"
---| "int16"
---| "int8"
---| "uint8"
---| "bool"
---| "complex64"
---| "complex128"
---| string # any other name raises "unknown dtype '...'"

--- A device name as c10::Device parses it: "cpu", "cuda", "cuda:N", "meta"; others raise.
---@alias parity.DeviceName "cpu"|"cuda"|"meta"|string

--- What x:to(...) and m:to(...) take: a dtype name, a device name ("cpu", "meta", "cuda..."
--- count as devices), or a table of either or both; anything else is an argument error.
---@alias parity.ToTarget parity.DtypeName|parity.DeviceName|{dtype?: parity.DtypeName, device?: parity.DeviceName}

--- The options table of torch's creation functions. A non-table in its place is an argument
--- error; a field of the wrong type raises "option 'dtype' must be a string".
---@class parity.TensorOptions
---@field dtype? parity.DtypeName float32 unless the function says otherwise
---@field device? parity.DeviceName
---@field seed? number a private CPU generator seeded with it (torch.manual_seed's is untouched); random functions only; a whole number in 0..2^53

--- A torch tensor (metatable "parity.Tensor"). The methods below are hand-bound; any other
--- name is looked up as the ATen operator aten::NAME with the tensor as its first argument
--- (x:rsqrt(), x:sum(1), x:view{4, 2}), and raises "Tensor has no method 'NAME' (and no
--- operator aten::NAME exists)" when there is none. Dims are 0-based. Comparison operators
--- compare whole tensors: a == b is torch.equal (same shape, dtype and values; false against a
--- non-Tensor), a < b and a <= b hold when they hold for every element (both must be Tensors).
--- tostring(x) formats it. torch.Tensor is this method table: the stdlib extends it in Lua.
---@class parity.Tensor
---@field [string] fun(self: parity.Tensor, ...: any): any ... an ATen op aten::NAME (positional args, then an optional keyword table)
---@operator add(parity.Tensor|number): parity.Tensor
---@operator sub(parity.Tensor|number): parity.Tensor
---@operator mul(parity.Tensor|number): parity.Tensor
---@operator div(parity.Tensor|number): parity.Tensor
---@operator pow(parity.Tensor|number): parity.Tensor
---@operator mod(parity.Tensor|number): parity.Tensor
---@operator unm: parity.Tensor
---@operator len: number
local Tensor = {}

--- Sizes as a Lua array (x:size() of a [2, 3] tensor is {2, 3}), or one dim's size. The dim is
--- an integer, 0-based, negative from the end; out of range raises.
---@param dim? integer
---@return number[]|number
---@overload fun(self: parity.Tensor): number[]
---@overload fun(self: parity.Tensor, dim: integer): number
function Tensor:size(dim) end

--- The number of dims (0 for a scalar).
---@return number
function Tensor:dim() end

--- The number of elements.
---@return number
function Tensor:numel() end

--- The dtype's PyTorch name: "float32", "bfloat16", "int64", ...
---@return string
function Tensor:dtype() end

--- The device's name: "cpu", "cuda:0", ...
---@return string
function Tensor:device() end

--- The one element as a Lua number (a boolean for a bool tensor); raises unless numel() is 1.
---@return number|boolean
function Tensor:item() end

--- The values as nested Lua arrays, copied to the CPU (floats via float64); a 0-dim tensor
--- gives its number (or boolean).
---@return table|number|boolean
function Tensor:tolist() end

--- A tensor moved to a device and/or cast to a dtype: x:to("bf16"), x:to("cpu"),
--- x:to{dtype = "bf16", device = "cpu"}; an unknown name raises.
---@param target parity.ToTarget
---@return parity.Tensor
function Tensor:to(target) end

--- Cast to float32.
---@return parity.Tensor
function Tensor:float() end

--- Cast to float64.
---@return parity.Tensor
function Tensor:double() end

--- Cast to float16.
---@return parity.Tensor
function Tensor:half() end

--- Cast to bfloat16.
---@return parity.Tensor
function Tensor:bfloat16() end

--- Cast to int64.
---@return parity.Tensor
function Tensor:long() end

--- Cast to int32.
---@return parity.Tensor
function Tensor:int() end

--- Cast to bool.
---@return parity.Tensor
function Tensor:bool() end

--- A copy with its own storage.
---@return parity.Tensor
function Tensor:clone() end

--- The bytes of its elements (numel × element size).
---@return number
function Tensor:nbytes() end

--- The global `torch` (also the module "torch"): creation functions, torch.ops.NS.NAME for every
--- registered operator (torch.ops.aten["add.Scalar"] names one overload), and torch.NAME for
--- torch.ops.aten.NAME (torch.cat, torch.softmax: not cached, so pairs(torch) lists only the
--- functions below). An unknown operator raises "no operator named NS::NAME". Sizes are a table
--- {2, 3} or numbers 2, 3 (truncated to integers).
---@class torch
---@field Tensor parity.Tensor the Tensor method table: `function torch.Tensor:my_method() ... end` adds a method
---@field ops table<string, table<string, fun(...: any): any ...>> torch.ops.NS.NAME, torch.ops.aten["add.Scalar"]
---@field [string] fun(...: any): any ... torch.NAME is torch.ops.aten.NAME
torch = {}

--- Zeros. torch.zeros(2, 3), torch.zeros({2, 3}, opts); torch.zeros{} is a scalar. A first table
--- of keys alone is the options; sizes and options in one table are an error (torch.zeros{2,
--- dtype = "bf16"}); a size must be a whole number >= 0, an option one the function knows.
---@param sizes number[]
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(...: number|parity.TensorOptions): parity.Tensor
function torch.zeros(sizes, opts) end

--- Ones; sizes and options as torch.zeros.
---@param sizes number[]
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(...: number|parity.TensorOptions): parity.Tensor
function torch.ones(sizes, opts) end

--- An uninitialised tensor; sizes and options as torch.zeros.
---@param sizes number[]
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(...: number|parity.TensorOptions): parity.Tensor
function torch.empty(sizes, opts) end

--- A tensor filled with `value`: torch.full({2}, 7), or torch.full(2, 3, 7) (sizes as numbers,
--- then the value).
---@param sizes number[]
---@param value number
---@param opts? parity.TensorOptions
---@return parity.Tensor
function torch.full(sizes, value, opts) end

--- Standard normal samples; opts.seed draws from a private generator.
---@param sizes number[]
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(...: number|parity.TensorOptions): parity.Tensor
function torch.randn(sizes, opts) end

--- Uniform samples in [0, 1); opts.seed draws from a private generator.
---@param sizes number[]
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(...: number|parity.TensorOptions): parity.Tensor
function torch.rand(sizes, opts) end

--- Integers in [low, high) (low 0 when only high is given), int64 unless opts.dtype says
--- otherwise; raises unless high > low.
---@param low integer
---@param high integer
---@param sizes number[]
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(high: integer, sizes: number[], opts?: parity.TensorOptions): parity.Tensor
function torch.randint(low, high, sizes, opts) end

--- arange(end) or arange(start, end[, step]), then an optional options table: int64 when every
--- bound is a whole number, else float32 (like PyTorch); no number at all is an argument error.
---@param start number
---@param end_ number
---@param step? number
---@param opts? parity.TensorOptions
---@return parity.Tensor
---@overload fun(end_: number, opts?: parity.TensorOptions): parity.Tensor
function torch.arange(start, end_, step, opts) end

--- A tensor from nested Lua arrays of numbers or booleans (or one number: a scalar), float32
--- (bool for booleans) unless opts.dtype says otherwise; a ragged table or another value raises.
---@param data table|number|boolean
---@param opts? parity.TensorOptions
---@return parity.Tensor
function torch.tensor(data, opts) end

--- Seeds torch's global CPU generator (a whole number in 0..2^53).
---@param seed number
function torch.manual_seed(seed) end

--- Whether `v` is a Tensor.
---@param v any
---@return boolean
function torch.is_tensor(v) end

--- Sets torch's intra-op threads.
---@param n integer
function torch.set_num_threads(n) end

--- Torch's intra-op threads.
---@return number
function torch.get_num_threads() end

--- Every overload's schema of an operator ("aten::add", "aten::add.Tensor"), as text in
--- registration order; raises "no operator named NAME" when there is none.
---@param name string
---@return string[]
function torch.schemas(name) end

--- parity.core.tensors (parity.tensors): tensor files, by extension.
---@class parity.core.tensors
local tensors = {}

--- Reads .safetensors → {name = Tensor}, metadata; .npy, or raw .bin with its .json sidecar
--- {"dtype", "shape"} → {stem = Tensor}. Another extension or a malformed file raises
--- "PATH: reason".
---@param path string
---@return table<string, parity.Tensor> tensors
---@return table<string, string>? metadata the safetensors "__metadata__" (nil for .npy and .bin)
function tensors.load(path) end

--- Writes .safetensors (names sorted, header padded to 8 bytes; metadata maps strings to
--- strings) or .npy (a Tensor, or a table of exactly one; no metadata), atomically. Another
--- extension, a non-string name, a non-Tensor value or bfloat16 in .npy raises.
---@param path string
---@param tbl table<string, parity.Tensor>|parity.Tensor
---@param metadata? table<string, string> (not for .npy); another type is an error
function tensors.save(path, tbl, metadata) end

return torch
