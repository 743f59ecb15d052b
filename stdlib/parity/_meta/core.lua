---@meta parity.core
-- stdlib/parity/_meta/core.lua — LuaCATS stubs for the module parity.core: the functions
-- bindings/vm.cpp registers, and core.json (bindings/json.cpp). Module, Program, tensor files and
-- metrics are in their own files here. Types only: never embedded, never run. stdlib/parity/
-- init.lua re-exports much of it as parity.* (parity.version is core.version, ...).

--- The tensor-accounting figures (NOTE [ GC accounting ] in bindings/vm.hpp).
---@class parity.GcStats
---@field live_bytes number tensor bytes held by live userdata (approximate: views count)
---@field collections number full collections the accounting triggered

--- core.run_limited's limits; each is required and range-checked.
---@class parity.Limits
---@field instructions number the instruction budget, 1e3..1e15 (checked every 1000 instructions)
---@field memory number bytes the call may grow the Lua heap by, 1 MiB..1e15
---@field seconds number wall-clock backstop, 0.01..1e6: past it the process exits with 2
---@field what? string names the sandboxed code in the wall-clock message

--- The native core of the parity stdlib (built in C++ before any Lua runs).
---@class parity.core
---@field tensors parity.core.tensors tensor files (bindings/tensor_files.cpp)
---@field metrics parity.core.metrics comparison metrics (bindings/metrics.cpp)
---@field json parity.core.json JSON (bindings/json.cpp)
local core = {}

--- "file", "dir", or nil when nothing is there.
---@param path string
---@return "file"|"dir"|nil
function core.path_kind(path) end

--- SHA-256 of a file's bytes as 64 lowercase hex digits (cache keys); raises "PATH: cannot read
--- (...)".
---@param path string
---@return string
function core.hash_file(path) end

--- SHA-256 of a string (bytes, embedded NULs included) as 64 lowercase hex digits.
---@param s string
---@return string
function core.hash_string(s) end

--- What identifies one version of a file without reading it: "device-inode-size-mtime_ns";
--- raises "PATH: reason" when it cannot be stat'ed.
---@param path string
---@return string
function core.file_identity(path) end

--- A directory's entry names, sorted; raises "PATH: reason".
---@param path string
---@return string[]
function core.list_dir(path) end

--- Removes the temporary files an atomic write left in `dir` when its process was killed
--- ("NAME.tmp.PID[.N]" of dead PIDs, regular files only); a missing dir is 0.
---@param dir string
---@return integer removed
function core.remove_stale_temps(dir) end

--- Writes `text` atomically (a temporary file beside it, then a rename), creating missing
--- parent directories; raises "PATH: reason".
---@param path string
---@param text string
function core.write_text(path, text) end

--- nil when `path` is a real directory of the effective user's that nobody else can write
--- (with `create`, first created 0700 with missing parents), else the reason ("is a symlink",
--- "owned by uid N, not you", "writable by others (mode 0777)", "does not exist", ...).
---@param path string
---@param create? boolean any value, read for truth
---@return string? problem
function core.private_dir(path, create) end

--- The effective user's home directory from the password database (not $HOME), or nil.
---@return string?
function core.home_dir() end

--- The version line, e.g. "parity 0.1.0 (LuaJIT 2.1.0-beta3, LibTorch 1.13.0, 2 threads, 0 CUDA devices)".
---@return string
function core.version() end

--- The tensor-accounting figures, without collecting.
---@return parity.GcStats
function core.gc_stats() end

--- A full Lua collection now (frees tensors no longer referenced), then the figures.
---@return parity.GcStats
function core.collect() end

--- Calls fn(...) through a pcall under an instruction budget, a memory cap and a wall-clock
--- backstop (NOTE [ Sandbox limits ] in bindings/vm.hpp); turning the JIT off for fn is the
--- caller's job. Raises when nested, or when a limit is missing or out of range.
---@param fn function
---@param limits parity.Limits
---@param ... any fn's arguments
---@return boolean ok
---@return any ... fn's results; or the error message and "instructions"|"memory"|nil (the limit that tripped)
function core.run_limited(fn, limits, ...) end

--- "instructions" or "memory" when a limit of the current limited call has tripped, else nil
--- (the sandbox's own pcall re-raises on it).
---@return "instructions"|"memory"|nil
function core.limit_tripped() end

--- Seconds of a monotonic wall clock (for durations).
---@return number
function core.clock() end

--- The process's peak resident set so far, in bytes (getrusage: what /usr/bin/time -f %M says).
---@return number
function core.peak_rss() end

--- Whether stderr is a terminal.
---@return boolean
function core.stderr_is_tty() end

--- Whether stdout is a terminal (the summary's colour: parity.report.terminal.for_stdout).
---@return boolean
function core.stdout_is_tty() end

--- What this process has run so far (host/model.hpp ForwardCounts): whole-model forwards (a
--- loaded model called or run tapped; a .pt2 program run), component runs (a submodule called on
--- its own) and model loads. Calls from inside a forward (a patch's) are part of it. parity.forwards
--- turns two readings into a check's counts by kind.
---@return {whole: integer, component: integer, loads: integer}
function core.forward_counts() end

--- parity.core.json (parity.json): Lua values <-> JSON. Objects are written with
--- sorted keys (the same table always gives the same bytes); both directions stop past 100
--- levels of nesting. NaN and ±Inf encode as "NaN", "Infinity", "-Infinity".
---@class parity.core.json
---@field null lightuserdata stands for JSON null, both ways
local json = {}

--- Encodes a value (compact, or indented by opts.indent). A table with keys 1..n (or an empty
--- one marked by json.array) is an array, any other an object (string or number keys); a Tensor,
--- a function or another key type raises "json: WHERE is a ...".
---@param value any
---@param opts? {indent?: number}
---@return string
function json.encode(value, opts) end

--- Decodes text (strictly: nothing may follow the value); arrays come back marked as by
--- json.array. Errors start "ORIGIN: " (default "json.decode").
---@param text string
---@param origin? string
---@return any
function json.decode(text, origin) end

--- Reads and decodes a file; errors start "PATH: ".
---@param path string
---@return any
function json.read(path) end

--- Encodes `value` (indented by opts.indent, 2 by default) and writes it with a final newline,
--- atomically (a temporary file, then a rename); raises as json.encode does, or "PATH: reason".
---@param path string
---@param value any
---@param opts? {indent?: number}
function json.write(path, value, opts) end

--- Marks `t` (a new table when nil) as an array, so that an empty one encodes as [] rather than
--- {}; returns it. Another non-table is an argument error.
---@generic T: table
---@param t? T
---@return T
function json.array(t) end

return core
