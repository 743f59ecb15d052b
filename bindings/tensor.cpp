// bindings/tensor.cpp — Lua view of at::Tensor. Glue only: checks, calls ATen/host, pushes.
// Methods are hand-bound where Lua needs a different shape (sizes as tables, dtype names);
// anything else falls through __index to the generic ATen dispatcher (x:rsqrt(), x:sum(1)).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "bindings/lua_value.hpp"
#include "bindings/vm.hpp"
#include "host/dispatch.hpp"
#include "host/dtype.hpp"
#include "host/tensor_format.hpp"

namespace parity {

at::Tensor* test_tensor(lua_State* L, int idx) {
  return static_cast<at::Tensor*>(luaL_testudata(L, idx, kTensorMeta));
}

at::Tensor& check_tensor(lua_State* L, int idx) {
  return *static_cast<at::Tensor*>(luaL_checkudata(L, idx, kTensorMeta));
}

// NOTE [ One userdata per tensor ]
// A tensor pushed while Lua holds it already is the same userdata (a weak-valued registry table
// keyed by its TensorImpl): the captures a tapped run shares (NOTE [ Captures shared ] in
// host/taps.cpp) stay one tensor in Lua, where a table keyed by them (a cache file's entries)
// sees them once, and their bytes are noted once. Lua has no in-place tensor ops.
static char kInternKey;

void push_tensor(lua_State* L, at::Tensor t) {
  const void* impl = t.defined() ? t.unsafeGetTensorImpl() : nullptr;
  if (impl) {
    lua_pushlightuserdata(L, &kInternKey);
    lua_rawget(L, LUA_REGISTRYINDEX);  // [interned]
    lua_pushlightuserdata(L, const_cast<void*>(impl));
    lua_rawget(L, -2);  // [interned, udata|nil]
    lua_remove(L, -2);
    if (!lua_isnil(L, -1)) return;
    lua_pop(L, 1);
  }
  note_native_bytes(L, t.defined() ? t.nbytes() : 0);  // NOTE [ GC accounting ] in vm.hpp
  new (lua_newuserdata(L, sizeof(at::Tensor))) at::Tensor(std::move(t));  // [udata]
  luaL_setmetatable(L, kTensorMeta);
  if (impl) {
    lua_pushlightuserdata(L, &kInternKey);
    lua_rawget(L, LUA_REGISTRYINDEX);  // [udata, interned]
    lua_pushlightuserdata(L, const_cast<void*>(impl));
    lua_pushvalue(L, -3);
    lua_rawset(L, -3);  // interned[impl] = udata
    lua_pop(L, 1);
  }
}

namespace {

int64_t check_dim(lua_State* L, const at::Tensor& t, int idx) {
  auto d = static_cast<int64_t>(luaL_checkinteger(L, idx));
  int64_t n = std::max<int64_t>(t.dim(), 1);
  if (d < -n || d >= n)
    luaL_error(L, "dim %d out of range for a %d-dim tensor (dims are 0-based, like PyTorch)",
               static_cast<int>(d), static_cast<int>(t.dim()));
  return d < 0 ? d + n : d;
}

/// A number operand becomes a wrapped scalar, so type promotion treats it like Python's `x + 1`.
at::Tensor operand(lua_State* L, int idx) {
  if (lua_type(L, idx) == LUA_TNUMBER) {
    double d = lua_tonumber(L, idx);
    at::Tensor s = std::floor(d) == d && std::fabs(d) < 9e15
                       ? at::scalar_tensor(static_cast<int64_t>(d), at::kLong)
                       : at::scalar_tensor(d, at::kDouble);
    s.unsafeGetTensorImpl()->set_wrapped_number(true);
    return s;
  }
  return check_tensor(L, idx);
}

int tensor_size(lua_State* L) {
  auto& t = check_tensor(L, 1);
  if (!lua_isnoneornil(L, 2)) {
    lua_pushnumber(L, static_cast<lua_Number>(t.size(check_dim(L, t, 2))));
    return 1;
  }
  lua_createtable(L, static_cast<int>(t.dim()), 0);
  for (int64_t i = 0; i < t.dim(); ++i) {
    lua_pushnumber(L, static_cast<lua_Number>(t.size(i)));
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  return 1;
}

int tensor_dim(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(check_tensor(L, 1).dim()));
  return 1;
}

int tensor_numel(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(check_tensor(L, 1).numel()));
  return 1;
}

int tensor_dtype(lua_State* L) {
  lua_pushstring(L, dtype_name(check_tensor(L, 1).scalar_type()).c_str());
  return 1;
}

int tensor_device(lua_State* L) {
  lua_pushstring(L, check_tensor(L, 1).device().str().c_str());
  return 1;
}

void push_scalar(lua_State* L, const at::Tensor& t) {
  if (t.scalar_type() == at::kBool) lua_pushboolean(L, t.item<bool>());
  else lua_pushnumber(L, t.item<double>());
}

int tensor_item(lua_State* L) {
  auto& t = check_tensor(L, 1);
  if (t.numel() != 1)
    return luaL_error(L, "item() needs a tensor with one element, this one has %d",
                      static_cast<int>(t.numel()));
  push_scalar(L, t);
  return 1;
}

void push_list(lua_State* L, const at::Tensor& t) {
  if (t.dim() == 0) return push_scalar(L, t);
  lua_createtable(L, static_cast<int>(t.size(0)), 0);
  for (int64_t i = 0; i < t.size(0); ++i) {
    push_list(L, t[i]);
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
}

int tensor_tolist(lua_State* L) {
  auto& t = check_tensor(L, 1);
  auto c = t.detach().cpu();
  push_list(L, c.is_floating_point() ? c.to(at::kDouble) : c);
  return 1;
}

/// x:to("bf16"), x:to("cpu"), x:to{dtype = "bf16", device = "cpu"}
int tensor_to(lua_State* L) {
  at::Tensor out = check_tensor(L, 1);
  auto to = check_to_target(L, 2);
  if (to.device) out = out.to(*to.device);
  if (to.dtype) out = out.to(*to.dtype);
  push_tensor(L, out);
  return 1;
}

template <c10::ScalarType T>
int tensor_cast(lua_State* L) {
  push_tensor(L, check_tensor(L, 1).to(T));
  return 1;
}

int tensor_clone(lua_State* L) {
  push_tensor(L, check_tensor(L, 1).clone());
  return 1;
}

int tensor_nbytes(lua_State* L) {
  lua_pushnumber(L, static_cast<lua_Number>(check_tensor(L, 1).nbytes()));
  return 1;
}

int tensor_tostring(lua_State* L) {
  lua_pushstring(L, format_tensor(check_tensor(L, 1)).c_str());
  return 1;
}

template <at::Tensor (*Op)(const at::Tensor&, const at::Tensor&)>
int binary(lua_State* L) {
  push_tensor(L, Op(operand(L, 1), operand(L, 2)));
  return 1;
}
at::Tensor op_add(const at::Tensor& a, const at::Tensor& b) { return at::add(a, b); }
at::Tensor op_sub(const at::Tensor& a, const at::Tensor& b) { return at::sub(a, b); }
at::Tensor op_mul(const at::Tensor& a, const at::Tensor& b) { return at::mul(a, b); }
at::Tensor op_div(const at::Tensor& a, const at::Tensor& b) { return at::div(a, b); }
at::Tensor op_pow(const at::Tensor& a, const at::Tensor& b) { return at::pow(a, b); }
at::Tensor op_mod(const at::Tensor& a, const at::Tensor& b) { return at::remainder(a, b); }

int tensor_unm(lua_State* L) {
  push_tensor(L, at::neg(check_tensor(L, 1)));
  return 1;
}

// Lua turns comparison results into booleans, so the operators compare whole tensors:
// a == b is torch.equal (same shape, dtype and values); a < b and a <= b hold for every element.
int tensor_eq(lua_State* L) {
  auto &a = check_tensor(L, 1), &b = check_tensor(L, 2);
  lua_pushboolean(L, a.sizes().equals(b.sizes()) && a.scalar_type() == b.scalar_type() &&
                         at::equal(a, b));
  return 1;
}
int tensor_lt(lua_State* L) {
  lua_pushboolean(L, at::lt(check_tensor(L, 1), check_tensor(L, 2)).all().item<bool>());
  return 1;
}
int tensor_le(lua_State* L) {
  lua_pushboolean(L, at::le(check_tensor(L, 1), check_tensor(L, 2)).all().item<bool>());
  return 1;
}

int tensor_len(lua_State* L) {
  auto& t = check_tensor(L, 1);
  if (t.dim() == 0) return luaL_error(L, "len() of a 0-dim tensor");
  lua_pushnumber(L, static_cast<lua_Number>(t.size(0)));
  return 1;
}

int tensor_gc(lua_State* L) {  // idempotent, never throws
  if (auto* t = test_tensor(L, 1)) {
    release_native_bytes(L, t->defined() ? t->nbytes() : 0);
    if (t->defined()) {  // (called by hand, the interned entry would outlive the tensor)
      lua_pushlightuserdata(L, &kInternKey);
      lua_rawget(L, LUA_REGISTRYINDEX);  // [interned]
      lua_pushlightuserdata(L, t->unsafeGetTensorImpl());
      lua_rawget(L, -2);
      bool mine = lua_rawequal(L, -1, 1);
      lua_pop(L, 1);
      if (mine) {
        lua_pushlightuserdata(L, t->unsafeGetTensorImpl());
        lua_pushnil(L);
        lua_rawset(L, -3);
      }
      lua_pop(L, 1);
    }
    t->~Tensor();
    lua_pushnil(L);
    lua_setmetatable(L, 1);  // no longer a Tensor
  }
  return 0;
}

/// __index(t, key): the methods table (upvalue 1), else an ATen op of that name, whose closure
/// is cached in a table of its own (upvalue 2) so that torch.Tensor lists only real methods.
int tensor_index(lua_State* L) {
  for (int up = 1; up <= 2; ++up) {
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(up));  // [m]
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
  }
  if (lua_type(L, 2) != LUA_TSTRING) return 0;
  std::string name = std::string("aten::") + lua_tostring(L, 2);
  if (!has_op(name))
    return luaL_error(L, "Tensor has no method '%s' (and no operator %s exists)",
                      lua_tostring(L, 2), name.c_str());
  push_op_closure(L, name);  // [f]: self is the op's first argument
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, lua_upvalueindex(2));  // cache[key] = f
  return 1;
}

const luaL_Reg kMethods[] = {
    {"size", guard<tensor_size>},
    {"dim", guard<tensor_dim>},
    {"numel", guard<tensor_numel>},
    {"dtype", guard<tensor_dtype>},
    {"device", guard<tensor_device>},
    {"item", guard<tensor_item>},
    {"tolist", guard<tensor_tolist>},
    {"to", guard<tensor_to>},
    {"float", guard<tensor_cast<at::kFloat>>},
    {"double", guard<tensor_cast<at::kDouble>>},
    {"half", guard<tensor_cast<at::kHalf>>},
    {"bfloat16", guard<tensor_cast<at::kBFloat16>>},
    {"long", guard<tensor_cast<at::kLong>>},
    {"int", guard<tensor_cast<at::kInt>>},
    {"bool", guard<tensor_cast<at::kBool>>},
    {"clone", guard<tensor_clone>},
    {"nbytes", guard<tensor_nbytes>},
    {nullptr, nullptr}};

const luaL_Reg kMeta[] = {
    {"__tostring", guard<tensor_tostring>},
    {"__add", guard<binary<op_add>>},
    {"__sub", guard<binary<op_sub>>},
    {"__mul", guard<binary<op_mul>>},
    {"__div", guard<binary<op_div>>},
    {"__pow", guard<binary<op_pow>>},
    {"__mod", guard<binary<op_mod>>},
    {"__unm", guard<tensor_unm>},
    {"__eq", guard<tensor_eq>},
    {"__lt", guard<tensor_lt>},
    {"__le", guard<tensor_le>},
    {"__len", guard<tensor_len>},
    {"__gc", tensor_gc},
    {nullptr, nullptr}};

}  // namespace

void open_tensor(lua_State* L) {
  lua_pushlightuserdata(L, &kInternKey);  // NOTE [ One userdata per tensor ]
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  luaL_newmetatable(L, kTensorMeta);  // [meta]
  luaL_setfuncs(L, kMeta, 0);
  lua_newtable(L);  // [meta, methods]
  luaL_setfuncs(L, kMethods, 0);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");  // meta.methods: the stdlib adds Lua methods here
  lua_newtable(L);                       // [meta, methods, cache]
  lua_pushcclosure(L, tensor_index, 2);  // [meta, __index]
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);  // []
}

}  // namespace parity
