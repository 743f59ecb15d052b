// host/value.cpp — Value <-> IValue. The schema type decides how a Lua value is read:
// an integral number becomes an int where the schema wants int, a Scalar where it wants Scalar.
#include "host/value.hpp"

#include <ATen/core/Dict.h>
#include <ATen/core/List.h>
#include <c10/core/Layout.h>
#include <c10/core/MemoryFormat.h>
#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "host/dtype.hpp"

namespace parity {

const char* Value::kind() const {
  static const char* kNames[] = {"nil",    "boolean", "integer", "number",
                                 "string", "Tensor",  "array",   "table"};
  return kNames[v.index()];
}

namespace {

[[noreturn]] void mismatch(const Value& v, const c10::TypePtr& type) {
  throw std::invalid_argument(fmt::format("expected {}, got {}", type->annotation_str(), v.kind()));
}

c10::Layout parse_layout(const std::string& s) {
  if (s == "strided") return c10::kStrided;
  if (s == "sparse") return c10::kSparse;
  throw std::invalid_argument(fmt::format("unknown layout '{}' (use \"strided\" or \"sparse\")", s));
}

c10::MemoryFormat parse_memory_format(const std::string& s) {
  if (s == "contiguous") return c10::MemoryFormat::Contiguous;
  if (s == "preserve") return c10::MemoryFormat::Preserve;
  if (s == "channels_last") return c10::MemoryFormat::ChannelsLast;
  throw std::invalid_argument(fmt::format(
      "unknown memory format '{}' (use \"contiguous\", \"preserve\" or \"channels_last\")", s));
}

/// Enum-like arguments (ScalarType, Layout, MemoryFormat) are ints at run time; accept names.
int64_t enum_from_string(const std::string& s, c10::TypeKind kind) {
  switch (kind) {
    case c10::TypeKind::ScalarTypeType: return static_cast<int64_t>(parse_dtype(s));
    case c10::TypeKind::LayoutType: return static_cast<int64_t>(parse_layout(s));
    default: return static_cast<int64_t>(parse_memory_format(s));
  }
}

c10::IValue list_of(const Array& items, const c10::TypePtr& elem) {
  switch (elem->kind()) {
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType: {
      c10::List<int64_t> l;
      for (const auto& x : items) l.push_back(to_ivalue(x, elem).toInt());
      return l;
    }
    case c10::TypeKind::FloatType: {
      c10::List<double> l;
      for (const auto& x : items) l.push_back(to_ivalue(x, elem).toDouble());
      return l;
    }
    case c10::TypeKind::BoolType: {
      c10::List<bool> l;
      for (const auto& x : items) l.push_back(to_ivalue(x, elem).toBool());
      return l;
    }
    case c10::TypeKind::TensorType: {
      c10::List<at::Tensor> l;
      for (const auto& x : items) l.push_back(to_ivalue(x, elem).toTensor());
      return l;
    }
    default: {
      c10::impl::GenericList l(elem);
      for (const auto& x : items) l.push_back(to_ivalue(x, elem));
      return l;
    }
  }
}

}  // namespace

c10::IValue to_ivalue(const Value& v, const c10::TypePtr& type) {
  using K = c10::TypeKind;
  switch (type->kind()) {
    case K::AnyType: return to_ivalue(v);
    case K::OptionalType:
      if (v.is_nil()) return c10::IValue();
      return to_ivalue(v, type->expectRef<c10::OptionalType>().getElementType());
    case K::NoneType:
      if (v.is_nil()) return c10::IValue();
      break;
    case K::TensorType:
      if (auto t = v.get<at::Tensor>()) return *t;
      break;
    case K::IntType:
    case K::SymIntType:
      if (auto i = v.get<int64_t>()) return *i;
      if (auto b = v.get<bool>()) return static_cast<int64_t>(*b);
      break;
    case K::FloatType:
      if (auto d = v.get<double>()) return *d;
      if (auto i = v.get<int64_t>()) return static_cast<double>(*i);
      break;
    case K::NumberType:  // Scalar
      if (auto i = v.get<int64_t>()) return *i;
      if (auto d = v.get<double>()) return *d;
      if (auto b = v.get<bool>()) return *b;
      break;
    case K::ScalarTypeType:
    case K::LayoutType:
    case K::MemoryFormatType:
      if (auto s = v.get<std::string>()) return enum_from_string(*s, type->kind());
      if (auto i = v.get<int64_t>()) return *i;
      break;
    case K::BoolType:
      if (auto b = v.get<bool>()) return *b;
      break;
    case K::StringType:
      if (auto s = v.get<std::string>()) return *s;
      break;
    case K::DeviceObjType:
      if (auto s = v.get<std::string>()) return parse_device(*s);
      break;
    case K::ListType: {
      const auto& elem = type->expectRef<c10::ListType>().getElementType();
      if (auto a = v.get<Array>()) return list_of(*a, elem);
      if (v.get<Map>() && v.get<Map>()->empty()) return list_of({}, elem);
      // PyTorch lets a single int stand for int[N] (x.sum(1)); so do we.
      if (v.get<int64_t>() && (elem->kind() == K::IntType || elem->kind() == K::SymIntType))
        return list_of({v}, elem);
      break;
    }
    case K::TupleType: {
      const auto& elems = type->expectRef<c10::TupleType>().elements();
      auto a = v.get<Array>();
      if (!a) break;
      if (a->size() != elems.size())
        throw std::invalid_argument(fmt::format("expected {} ({} items), got {} items",
                                                type->annotation_str(), elems.size(), a->size()));
      std::vector<c10::IValue> items;
      for (size_t i = 0; i < a->size(); ++i) items.push_back(to_ivalue((*a)[i], elems[i]));
      return c10::ivalue::Tuple::create(std::move(items));
    }
    case K::DictType: {
      const auto& dict = type->expectRef<c10::DictType>();
      auto m = v.get<Map>();
      if (!m) break;
      c10::impl::GenericDict d(dict.getKeyType(), dict.getValueType());
      for (const auto& [k, x] : *m) d.insert(to_ivalue(Value(k), dict.getKeyType()),
                                             to_ivalue(x, dict.getValueType()));
      return d;
    }
    default: break;
  }
  mismatch(v, type);
}

c10::IValue to_ivalue(const Value& v) {
  struct Visitor {
    c10::IValue operator()(std::monostate) const { return {}; }
    c10::IValue operator()(bool b) const { return b; }
    c10::IValue operator()(int64_t i) const { return i; }
    c10::IValue operator()(double d) const { return d; }
    c10::IValue operator()(const std::string& s) const { return s; }
    c10::IValue operator()(const at::Tensor& t) const { return t; }
    c10::IValue operator()(const Array& a) const {
      std::vector<c10::IValue> items;
      for (const auto& x : a) items.push_back(to_ivalue(x));
      return c10::ivalue::Tuple::create(std::move(items));
    }
    c10::IValue operator()(const Map& m) const {
      c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
      for (const auto& [k, x] : m) d.insert(k, to_ivalue(x));
      return d;
    }
  };
  return std::visit(Visitor{}, v.v);
}

Value from_ivalue(const c10::IValue& iv) {
  if (iv.isNone()) return {};
  if (iv.isTensor()) return iv.toTensor();
  if (iv.isBool()) return iv.toBool();
  if (iv.isInt()) return iv.toInt();
  if (iv.isDouble()) return iv.toDouble();
  if (iv.isString()) return iv.toStringRef();
  if (iv.isDevice()) return iv.toDevice().str();
  if (iv.isTuple()) {
    Array a;
    for (const auto& x : iv.toTupleRef().elements()) a.push_back(from_ivalue(x));
    return a;
  }
  if (iv.isList()) {
    Array a;
    for (const auto& x : iv.toListRef()) a.push_back(from_ivalue(x));
    return a;
  }
  if (iv.isGenericDict()) {
    Map m;
    for (const auto& e : iv.toGenericDict()) {
      const auto& k = e.key();
      std::string key = k.isString() ? k.toStringRef()
                        : k.isInt()  ? std::to_string(k.toInt())
                                     : throw std::invalid_argument(fmt::format(
                                           "dict key of type {} has no Lua form",
                                           k.type()->annotation_str()));
      m.emplace_back(std::move(key), from_ivalue(e.value()));
    }
    return m;
  }
  throw std::invalid_argument(
      fmt::format("a value of type {} has no Lua form", iv.type()->annotation_str()));
}

Value on_device(const Value& v, c10::Device device) {
  if (const auto* t = v.get<at::Tensor>()) return t->to(device);
  if (const auto* a = v.get<Array>()) {
    Array out;
    for (const auto& x : *a) out.push_back(on_device(x, device));
    return out;
  }
  if (const auto* m = v.get<Map>()) {
    Map out;
    for (const auto& [k, x] : *m) out.emplace_back(k, on_device(x, device));
    return out;
  }
  return v;
}

}  // namespace parity
