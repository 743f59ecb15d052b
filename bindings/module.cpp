// bindings/module.cpp — Lua view of a TorchScript module (host/model.hpp) and parity.load.
#include <fmt/format.h>

#include <cstdlib>
#include <stdexcept>

#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/dtype.hpp"
#include "host/model.hpp"
#include "host/runtime.hpp"
#include "host/taps.hpp"

namespace parity {
namespace {

constexpr const char* kModuleMeta = "parity.Module";
lua_State* main_state = nullptr;  // where patches run: a coroutine that set one may be gone by then

Model& check_module(lua_State* L, int idx) {
  return *static_cast<Model*>(luaL_checkudata(L, idx, kModuleMeta));
}

void push_module(lua_State* L, Model m) {
  new (lua_newuserdata(L, sizeof(Model))) Model(std::move(m));  // [udata]
  luaL_setmetatable(L, kModuleMeta);
}

std::vector<Value> args_from(lua_State* L, int first) {
  std::vector<Value> args;
  for (int i = first, n = lua_gettop(L); i <= n; ++i) args.push_back(to_value(L, i));
  return args;
}

/// core.load(path[, device]) -> Module
int load(lua_State* L) {
  std::optional<c10::Device> device;
  if (!lua_isnoneornil(L, 2)) device = parse_device(luaL_checkstring(L, 2));
  push_module(L, Model::load(luaL_checkstring(L, 1), device));
  return 1;
}

/// core.forward_counts() -> {whole, component, loads}: what this process has run (host/model.hpp)
int forward_counts_fn(lua_State* L) {
  const auto& c = forward_counts();
  push_value(L, Map{{"whole", c.whole}, {"component", c.component}, {"loads", c.loads}});
  return 1;
}

/// core.usable_device(name) -> its canonical name ("cuda:0"), or an error saying why not here
int usable_device_fn(lua_State* L) {
  lua_pushstring(L, usable_device(luaL_checkstring(L, 1)).str().c_str());
  return 1;
}

int load_library_fn(lua_State* L) {
  load_library(luaL_checkstring(L, 1));
  return 0;
}

/// m(...) calls forward
int module_call(lua_State* L) {
  push_value(L, check_module(L, 1).call("forward", args_from(L, 2)));
  return 1;
}

/// The first tensor of a forward's output, depth first ((out, input) -> out; {logits = ...} too).
const at::Tensor* first_tensor(const Value& v) {
  if (auto* t = v.get<at::Tensor>()) return t;
  if (auto* a = v.get<Array>()) {
    for (auto& x : *a)
      if (auto* t = first_tensor(x)) return t;
  }
  if (auto* m = v.get<Map>()) {
    for (auto& [k, x] : *m)
      if (k == "logits") return first_tensor(x);
    for (auto& [k, x] : *m)
      if (auto* t = first_tensor(x)) return t;
  }
  return nullptr;
}

/// m:forward1(...): forward's primary output, its first tensor (a traced HF RMSNorm returns
/// (out, input); a dict its "logits", else its first tensor); an error when it returns none
int module_forward1(lua_State* L) {
  auto& m = check_module(L, 1);
  Value out = m.call("forward", args_from(L, 2));
  const at::Tensor* t = first_tensor(out);
  if (!t) throw std::runtime_error(fmt::format("{}'s forward returned no tensor (a {})", m.type_name(), out.kind()));
  push_tensor(L, *t);
  return 1;
}

/// m:call("method", ...)
int module_call_method(lua_State* L) {
  auto& m = check_module(L, 1);
  std::string name = luaL_checkstring(L, 2);
  push_value(L, m.call(name, args_from(L, 3)));
  return 1;
}

/// m:call_unpatched("method", ...): as the port computes it, no patch in it applied
int module_call_unpatched(lua_State* L) {
  auto& m = check_module(L, 1);
  std::string name = luaL_checkstring(L, 2);
  push_value(L, call_unpatched(m, name, args_from(L, 3)));
  return 1;
}

int module_child(lua_State* L) {
  push_module(L, check_module(L, 1).child(luaL_checkstring(L, 2)));
  return 1;
}

/// m:modules() -> { {path=, type=, params=, total_params=, depth=}, ... } in execution order
int module_modules(lua_State* L) {
  auto list = check_module(L, 1).modules();
  lua_createtable(L, static_cast<int>(list.size()), 0);
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& m = list[i];
    push_value(L, Map{{"path", m.path},
                      {"type", m.type},
                      {"params", m.own_params},
                      {"total_params", m.total_params},
                      {"depth", static_cast<int64_t>(m.depth)}});
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  return 1;
}

int module_parameters(lua_State* L) {
  push_named_tensors(L, check_module(L, 1).parameters());
  return 1;
}

int module_buffers(lua_State* L) {
  push_named_tensors(L, check_module(L, 1).buffers());
  return 1;
}

int module_methods(lua_State* L) {
  Array names;
  for (auto& n : check_module(L, 1).method_names()) names.emplace_back(n);
  push_value(L, names);
  return 1;
}

int module_schema(lua_State* L) {
  push_value(L, check_module(L, 1).schema(luaL_optstring(L, 2, "forward")));
  return 1;
}

int module_type(lua_State* L) {
  lua_pushstring(L, check_module(L, 1).type_name().c_str());
  return 1;
}

/// m:to("bf16"), m:to("cuda:0"), m:to{dtype = "bf16", device = "cpu"}
int module_to(lua_State* L) {
  auto& m = check_module(L, 1);
  auto to = check_to_target(L, 2);
  if (to.device) m.to(*to.device);
  if (to.dtype) m.to(*to.dtype);
  lua_settop(L, 1);
  return 1;
}

int module_device(lua_State* L) {
  lua_pushstring(L, check_module(L, 1).device().str().c_str());
  return 1;
}

int module_eval(lua_State* L) {
  check_module(L, 1).set_training(false);
  lua_settop(L, 1);
  return 1;
}

/// m:tap({paths}[, {skip_shared = true}]) -> { {path, inputs, outputs, untapped = {...}[, refused]}, ... }:
/// splices taps (before the module's first run)
int module_tap(lua_State* L) {
  auto& m = check_module(L, 1);
  bool skip_shared = false;
  if (check_options(L, 3, "tap", {"skip_shared"})) {
    lua_getfield(L, 3, "skip_shared");
    skip_shared = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  Array out;
  for (const auto& site : install_taps(m, check_strings(L, 2), skip_shared)) {
    Array untapped;
    for (const auto& u : site.untapped) untapped.emplace_back(u);
    Map entry{{"path", site.path},
              {"inputs", static_cast<int64_t>(site.inputs)},
              {"outputs", static_cast<int64_t>(site.outputs)},
              {"untapped", std::move(untapped)}};
    if (!site.refused.empty()) entry.emplace_back("refused", site.refused);
    out.emplace_back(std::move(entry));
  }
  push_value(L, out);
  return 1;
}

/// Reads {[path] = {[call] = {[input] = Tensor}}} (1-based call and input) at `idx`.
TapInjections injections_from(lua_State* L, int idx) {
  TapInjections out;
  if (lua_isnoneornil(L, idx)) return out;
  luaL_checktype(L, idx, LUA_TTABLE);
  for (lua_pushnil(L); lua_next(L, idx); lua_pop(L, 1)) {  // [path, calls]
    std::string path = luaL_checkstring(L, -2);
    luaL_checktype(L, -1, LUA_TTABLE);
    int calls = lua_gettop(L);
    for (lua_pushnil(L); lua_next(L, calls); lua_pop(L, 1)) {  // [.., call, inputs]
      int64_t call = luaL_checkinteger(L, -2) - 1;
      luaL_checktype(L, -1, LUA_TTABLE);
      int inputs = lua_gettop(L);
      for (lua_pushnil(L); lua_next(L, inputs); lua_pop(L, 1))  // [.., input, tensor]
        out[path][call][luaL_checkinteger(L, -2) - 1] = check_tensor(L, -1);
    }
  }
  return out;
}

/// m:run_tapped({args...}[, {capture = {paths} (default: every tapped path), inject = {...},
///                          last_position = {[path] = input}}])
///   -> output, calls: {[path] = { {inputs = {Tensor...}, outputs = {Tensor...}}, ... }}
int module_run_tapped(lua_State* L) {
  auto& m = check_module(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  std::vector<Value> args;
  for (int i = 1, n = static_cast<int>(lua_objlen(L, 2)); i <= n; ++i) {
    lua_rawgeti(L, 2, i);
    args.push_back(to_value(L, -1));
    lua_pop(L, 1);
  }
  TapRequest request;
  if (check_options(L, 3, "run_tapped", {"capture", "inject", "last_position"})) {
    lua_getfield(L, 3, "capture");  // [.., capture]
    if (lua_istable(L, -1)) request.capture = check_strings(L, lua_gettop(L));
    lua_pop(L, 1);
    lua_getfield(L, 3, "inject");
    request.inject = injections_from(L, lua_gettop(L));
    lua_pop(L, 1);
    lua_getfield(L, 3, "last_position");  // {[path] = input index (1-based)}
    if (lua_istable(L, -1))
      for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
        request.last_position[luaL_checkstring(L, -2)] = luaL_checkinteger(L, -1) - 1;
    lua_pop(L, 1);
  }
  TapCalls calls;
  Value out = run_tapped(m, args, request, &calls);
  push_value(L, out);
  lua_createtable(L, 0, static_cast<int>(calls.size()));  // [out, calls]
  for (const auto& [path, list] : calls) {
    lua_createtable(L, static_cast<int>(list.size()), 0);
    for (size_t i = 0; i < list.size(); ++i) {
      lua_createtable(L, 0, 2);
      for (const auto& [field, tensors] : {std::make_pair("inputs", &list[i].inputs),
                                           std::make_pair("outputs", &list[i].outputs)}) {
        lua_createtable(L, static_cast<int>(tensors->size()), 0);
        for (size_t j = 0; j < tensors->size(); ++j) {
          push_tensor(L, (*tensors)[j]);
          lua_rawseti(L, -2, static_cast<int>(j + 1));
        }
        lua_setfield(L, -2, field);
      }
      lua_rawseti(L, -2, static_cast<int>(i + 1));
    }
    lua_setfield(L, -2, path.c_str());
  }
  return 2;
}

int module_tostring(lua_State* L) {
  lua_pushstring(L, fmt::format("Module({})", check_module(L, 1).type_name()).c_str());
  return 1;
}

int module_gc(lua_State* L) {
  if (auto* m = static_cast<Model*>(luaL_testudata(L, 1, kModuleMeta))) {
    m->~Model();
    lua_pushnil(L);
    lua_setmetatable(L, 1);
  }
  return 0;
}

/// original(...) inside a patch: the component as it is on other tensor inputs. Upvalues: the
/// model (a Module), the component's path, the method that ran, the call (0-based).
int patch_original(lua_State* L) {
  Model& m = check_module(L, lua_upvalueindex(1));
  PatchCall call{lua_tostring(L, lua_upvalueindex(2)), lua_tostring(L, lua_upvalueindex(3)),
                 static_cast<int64_t>(lua_tointeger(L, lua_upvalueindex(4))), {}, 0};
  std::vector<at::Tensor> inputs;
  for (int i = 1, n = lua_gettop(L); i <= n; ++i) inputs.push_back(check_tensor(L, i));
  auto outs = call_original(m, call, inputs);
  for (auto& t : outs) push_tensor(L, t);
  return static_cast<int>(outs.size());
}

/// A registry reference, released with its holder (a patch replaced or removed: the VM is alive
/// then; a patch still set when the VM closes is never destroyed, its model being in a cycle).
struct LuaRef {
  LuaRef(lua_State* state, int r) : L(state), ref(r) {}
  LuaRef(const LuaRef&) = delete;
  LuaRef& operator=(const LuaRef&) = delete;
  ~LuaRef() { luaL_unref(L, LUA_REGISTRYINDEX, ref); }
  lua_State* L;
  int ref;
};

/// m:patch(path, fn[, origin]): the component's calls computed by fn(call, inputs...) -> outputs..., where
/// call = {path, call (1-based), method, outputs (how many it returns), original = function(...)
/// -> the component as it is}
int module_patch(lua_State* L) {
  Model& m = check_module(L, 1);
  std::string path = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  std::string origin = luaL_optstring(L, 4, "");
  lua_pushvalue(L, 3);
  auto fn = std::make_shared<LuaRef>(main_state, luaL_ref(L, LUA_REGISTRYINDEX));  // the registry is shared
  Model model = m;  // shares the module and its taps: original() calls it
  set_patch(m, path, [fn, model](const PatchCall& call) {
    lua_State* L = fn->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn->ref);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, call.path.c_str());
    lua_setfield(L, -2, "path");
    lua_pushinteger(L, static_cast<lua_Integer>(call.call + 1));
    lua_setfield(L, -2, "call");
    lua_pushstring(L, call.method.c_str());
    lua_setfield(L, -2, "method");
    lua_pushinteger(L, call.outputs);
    lua_setfield(L, -2, "outputs");
    push_module(L, model);
    lua_pushstring(L, call.path.c_str());
    lua_pushstring(L, call.method.c_str());
    lua_pushinteger(L, static_cast<lua_Integer>(call.call));
    lua_pushcclosure(L, guard<patch_original>, 4);
    lua_setfield(L, -2, "original");
    for (const auto& t : call.inputs) push_tensor(L, t);
    std::string error;
    if (!call_traced(L, 1 + static_cast<int>(call.inputs.size()), LUA_MULTRET, &error)) {
      lua_settop(L, top);
      // the patch's own line says where; the traceback with PARITY_DEBUG=1, as for commands
      const char* debug = std::getenv("PARITY_DEBUG");
      if (!(debug && std::string(debug) == "1")) error = error.substr(0, error.find("\nstack traceback:"));
      throw std::runtime_error(error);
    }
    std::vector<at::Tensor> outs;
    for (int i = top + 1, n = lua_gettop(L); i <= n; ++i) {
      at::Tensor* t = test_tensor(L, i);
      if (!t) {
        std::string type = luaL_typename(L, i);
        lua_settop(L, top);
        throw std::invalid_argument(fmt::format("returns a {} as output {}, not a Tensor", type, i - top));
      }
      outs.push_back(*t);
    }
    lua_settop(L, top);
    return outs;
  }, origin);
  return 0;
}

/// m:unpatch(path) -> whether it had a patch (the original outputs again, bit for bit)
int module_unpatch(lua_State* L) {
  lua_pushboolean(L, remove_patch(check_module(L, 1), luaL_checkstring(L, 2)));
  return 1;
}

/// m:patched() -> the patched paths, sorted
int module_patched(lua_State* L) {
  push_strings(L, patched_paths(check_module(L, 1)));
  return 1;
}

const luaL_Reg kMethods[] = {
    {"call", guard<module_call_method>}, {"forward1", guard<module_forward1>}, {"child", guard<module_child>},
    {"modules", guard<module_modules>},  {"parameters", guard<module_parameters>},
    {"buffers", guard<module_buffers>},  {"methods", guard<module_methods>},
    {"schema", guard<module_schema>},    {"type", guard<module_type>},
    {"to", guard<module_to>},            {"eval", guard<module_eval>},
    {"device", guard<module_device>},
    {"tap", guard<module_tap>},          {"run_tapped", guard<module_run_tapped>},
    {"patch", guard<module_patch>},      {"unpatch", guard<module_unpatch>},
    {"patched", guard<module_patched>}, {"call_unpatched", guard<module_call_unpatched>},
    {nullptr, nullptr}};

const luaL_Reg kCore[] = {
    {"load", guard<load>}, {"load_library", guard<load_library_fn>},
    {"usable_device", guard<usable_device_fn>}, {"forward_counts", guard<forward_counts_fn>}, {nullptr, nullptr}};

}  // namespace

void open_module(lua_State* L) {
  main_state = L;
  luaL_newmetatable(L, kModuleMeta);  // [meta]
  lua_pushcfunction(L, guard<module_call>);
  lua_setfield(L, -2, "__call");
  lua_pushcfunction(L, guard<module_tostring>);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, module_gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);  // [meta, methods]
  luaL_setfuncs(L, kMethods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);  // []
  push_core_table(L, nullptr, kCore);
  lua_pop(L, 1);
}

}  // namespace parity
