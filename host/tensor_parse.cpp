// host/tensor_parse.cpp — safetensors and .npy headers and element decoding, without torch.
#include "host/tensor_parse.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace parity {
namespace {

using json = nlohmann::json;
using Decode = ElemType::Decode;
constexpr uint64_t kMaxHeader = 100'000'000;  // the safetensors reference implementation's bound

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error(fmt::format("{}: {}", path, why));
}

constexpr ElemType kTypes[] = {
    {"BOOL", 'b', 1, Held::Bool, Decode::Copy},        {"U8", 'u', 1, Held::U8, Decode::Copy},
    {"I8", 'i', 1, Held::I8, Decode::Copy},            {"I16", 'i', 2, Held::I16, Decode::Copy},
    {"I32", 'i', 4, Held::I32, Decode::Copy},          {"I64", 'i', 8, Held::I64, Decode::Copy},
    {"F16", 'f', 2, Held::F16, Decode::Copy},          {"BF16", 0, 2, Held::BF16, Decode::Copy},
    {"F32", 'f', 4, Held::F32, Decode::Copy},          {"F64", 'f', 8, Held::F64, Decode::Copy},
    {"C64", 'c', 8, Held::C64, Decode::Copy},          {nullptr, 'c', 16, Held::C128, Decode::Copy},
    {"U16", 'u', 2, Held::I32, Decode::U16},           {"U32", 'u', 4, Held::I64, Decode::U32},
    {"U64", 'u', 8, Held::I64, Decode::U64},           {"F8_E4M3", 0, 1, Held::F32, Decode::E4M3},
    {"F8_E5M2", 0, 1, Held::F32, Decode::E5M2},        {"F8_E8M0", 0, 1, Held::F32, Decode::E8M0},
};

const ElemType* safetensors_type(const std::string& name) {
  for (const auto& t : kTypes)
    if (t.safetensors && name == t.safetensors) return &t;
  return nullptr;
}

const ElemType* npy_type(char kind, size_t size) {
  for (const auto& t : kTypes)
    if (t.npy_kind == kind && t.stored == size) return &t;
  return nullptr;
}

/// count = product of the dims, bytes = count * itemsize; false on overflow.
bool span_size(const std::vector<int64_t>& shape, size_t itemsize, uint64_t* count, uint64_t* bytes) {
  uint64_t c = 1;
  for (int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(c, static_cast<uint64_t>(d), &c)) return false;
  if (c > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *count = c;
  return !__builtin_mul_overflow(c, static_cast<uint64_t>(itemsize), bytes);
}

float fp8_e4m3(uint8_t b) {  // OCP E4M3FN: bias 7, no infinities, S.1111.111 is NaN
  int s = b >> 7, e = (b >> 3) & 0xF, m = b & 7;
  if (e == 0xF && m == 7) return std::numeric_limits<float>::quiet_NaN();
  float v = e == 0 ? std::ldexp(m / 8.0f, -6) : std::ldexp(1 + m / 8.0f, e - 7);
  return s ? -v : v;
}
float fp8_e5m2(uint8_t b) {  // IEEE-like: bias 15, with inf and NaN
  int s = b >> 7, e = (b >> 2) & 0x1F, m = b & 3;
  float v = e == 0x1F ? (m ? std::numeric_limits<float>::quiet_NaN()
                           : std::numeric_limits<float>::infinity())
            : e == 0 ? std::ldexp(m / 4.0f, -14)
                     : std::ldexp(1 + m / 4.0f, e - 15);
  return s ? -v : v;
}
float fp8_e8m0(uint8_t b) {  // exponent only: 2^(b-127), 0xFF is NaN
  return b == 0xFF ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, b - 127);
}

/// An unsigned integer of sizeof(T) bytes at p, in file byte order.
template <typename T>
T load(const uint8_t* p, bool swap) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, p, sizeof(T));
  if (swap) std::reverse(b, b + sizeof(T));
  T x;
  std::memcpy(&x, b, sizeof(T));
  return x;
}

template <typename From, typename To>
void widen(const uint8_t* src, uint64_t n, bool swap, void* out) {
  auto* dst = static_cast<To*>(out);
  for (uint64_t i = 0; i < n; ++i) dst[i] = static_cast<To>(load<From>(src + i * sizeof(From), swap));
}

// ---- the .npy header: a Python dict literal, scanned left to right, nothing recursive -------

struct Scanner {
  const std::string& s;
  const std::string& path;
  size_t i = 0;

  [[noreturn]] void bad(const std::string& why) const {
    fail(path, fmt::format(".npy header: {} at offset {}", why, i));
  }
  void skip_space() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool take(char c) {
    skip_space();
    if (i < s.size() && s[i] == c) return ++i, true;
    return false;
  }
  void expect(char c) {
    if (!take(c)) bad(fmt::format("expected '{}'", c));
  }
  std::string quoted() {
    skip_space();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) bad("expected a quoted string");
    char q = s[i++];
    size_t end = s.find(q, i);
    if (end == std::string::npos) bad("unterminated string");
    std::string out = s.substr(i, end - i);
    i = end + 1;
    return out;
  }
  bool boolean() {
    skip_space();
    for (const char* word : {"True", "False"})
      if (s.compare(i, std::strlen(word), word) == 0) {
        i += std::strlen(word);
        return word[0] == 'T';
      }
    bad("expected True or False");
  }
  int64_t dimension() {
    skip_space();
    if (i < s.size() && s[i] == '-') bad("negative dimension");
    if (i >= s.size() || s[i] < '0' || s[i] > '9') bad("expected a dimension");
    uint64_t v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (__builtin_mul_overflow(v, 10u, &v) || __builtin_add_overflow(v, static_cast<uint64_t>(s[i] - '0'), &v) ||
          v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        bad("dimension overflows");
      ++i;
    }
    if (i < s.size() && s[i] == 'L') ++i;  // Python 2 longs
    return static_cast<int64_t>(v);
  }
  std::vector<int64_t> shape() {
    expect('(');
    std::vector<int64_t> dims;
    while (!take(')')) {
      dims.push_back(dimension());
      if (dims.size() > 64) bad("more than 64 dimensions");
      if (!take(',')) {
        expect(')');
        break;
      }
    }
    return dims;
  }
};

}  // namespace

size_t held_size(Held h) {
  switch (h) {
    case Held::Bool: case Held::U8: case Held::I8: return 1;
    case Held::I16: case Held::F16: case Held::BF16: return 2;
    case Held::I32: case Held::F32: return 4;
    case Held::I64: case Held::F64: case Held::C64: return 8;
    case Held::C128: return 16;
  }
  return 0;
}

const ElemType* stored_type_for(Held h, Format f) {
  for (const auto& t : kTypes)
    if ((f == Format::Npy ? t.npy_kind != 0 : t.safetensors != nullptr) && t.decode == Decode::Copy && t.held == h)
      return &t;
  return nullptr;
}

SafetensorsLayout parse_safetensors(const uint8_t* data, size_t size, const std::string& path) {
  if (size < 8) fail(path, fmt::format("not a safetensors file ({} bytes, need at least 8)", size));
  uint64_t n = load<uint64_t>(data, false);  // little-endian u64
  if (n > kMaxHeader) fail(path, fmt::format("header length {} exceeds the 100 MB limit", n));
  if (n > size - 8)
    fail(path, fmt::format("header length {} runs past the end of the file ({} bytes)", n, size));
  std::string text(reinterpret_cast<const char*>(data) + 8, n);
  if (text.empty() || text[0] != '{') fail(path, "header is not a JSON object");
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    fail(path, fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");

  SafetensorsLayout out;
  const uint64_t data_start = 8 + n, data_len = size - data_start;
  for (const auto& item : header.items()) {
    const std::string& name = item.key();  // not a structured binding: lambdas capture it below
    const auto& info = item.value();
    if (name == "__metadata__") {
      if (!info.is_object()) fail(path, "__metadata__ is not an object of strings");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string()) fail(path, fmt::format("__metadata__['{}'] is not a string", k));
        out.metadata.emplace_back(k, v.get<std::string>());
      }
      continue;
    }
    auto bad = [&](const std::string& why) { fail(path, fmt::format("tensor '{}': {}", name, why)); };
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets"))
      bad("needs dtype, shape and data_offsets");
    if (!info["dtype"].is_string()) bad("dtype is not a string");
    std::string dt = info["dtype"].get<std::string>();
    TensorSpan span;
    span.name = name;
    span.type = safetensors_type(dt);
    if (!span.type) {
      if (dt == "F4" || dt.rfind("F6", 0) == 0) bad(fmt::format("sub-byte dtype {} is not supported", dt));
      bad(fmt::format("unknown dtype '{}'", dt));
    }
    const auto& shape = info["shape"];
    const auto& offs = info["data_offsets"];
    if (!shape.is_array()) bad("shape is not an array");
    if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() ||
        !offs[1].is_number_unsigned())
      bad("data_offsets is not [begin, end]");
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) bad("shape has a non-integer or negative dimension");
      uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) bad("shape overflows");
      span.shape.push_back(static_cast<int64_t>(v));
    }
    if (!span_size(span.shape, span.type->stored, &span.count, &span.bytes)) bad("shape overflows");
    uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
    if (end < begin) bad(fmt::format("data_offsets [{}, {}] end before begin", begin, end));
    if (end - begin != span.bytes)
      bad(fmt::format("data_offsets [{}, {}] hold {} bytes, shape and dtype need {}", begin, end,
                      end - begin, span.bytes));
    if (end > data_len)
      bad(fmt::format("data_offsets [{}, {}] run past the data ({} bytes)", begin, end, data_len));
    span.offset = data_start + begin;
    out.tensors.push_back(std::move(span));
  }
  // The format requires the tensors to tile the data exactly: no overlap, no gap.
  auto& ts = out.tensors;
  std::sort(ts.begin(), ts.end(), [](const TensorSpan& a, const TensorSpan& b) {
    return a.offset < b.offset || (a.offset == b.offset && a.bytes < b.bytes);
  });
  uint64_t expect = data_start;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].offset < expect)
      fail(path, fmt::format("tensor '{}' overlaps tensor '{}' (offset {} < {})", ts[i].name,
                             ts[i - 1].name, ts[i].offset - data_start, expect - data_start));
    if (ts[i].offset > expect)
      fail(path, fmt::format("gap of {} bytes before tensor '{}'", ts[i].offset - expect, ts[i].name));
    expect = ts[i].offset + ts[i].bytes;
  }
  if (expect != size)
    fail(path, fmt::format("{} bytes after the last tensor are not described by the header", size - expect));
  return out;
}

NpyLayout parse_npy(const uint8_t* data, size_t size, const std::string& path) {
  if (size < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0) fail(path, "not a .npy file (bad magic)");
  int major = data[6];
  uint64_t hlen, hstart;
  if (major == 1) {
    hlen = load<uint16_t>(data + 8, false);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) fail(path, "truncated .npy header");
    hlen = load<uint32_t>(data + 8, false);
    hstart = 12;
  } else {
    fail(path, fmt::format("unsupported .npy version {}", major));
  }
  if (hlen > size - hstart) fail(path, "truncated .npy header");
  std::string h(reinterpret_cast<const char*>(data) + hstart, hlen);

  NpyLayout out;
  out.tensor.name = "array";
  std::string descr;
  bool have_descr = false, have_order = false, have_shape = false;
  Scanner sc{h, path};
  sc.expect('{');
  while (!sc.take('}')) {
    std::string key = sc.quoted();
    sc.expect(':');
    if (key == "descr") {
      sc.skip_space();
      if (sc.i < h.size() && h[sc.i] == '[') sc.bad("structured dtypes are not supported");
      descr = sc.quoted();
      have_descr = true;
    } else if (key == "fortran_order") {
      out.fortran = sc.boolean();
      have_order = true;
    } else if (key == "shape") {
      out.tensor.shape = sc.shape();
      have_shape = true;
    } else {
      sc.bad(fmt::format("unexpected key '{}'", key));
    }
    if (!sc.take(',')) {
      sc.expect('}');
      break;
    }
  }
  sc.skip_space();
  if (sc.i != h.size()) sc.bad("trailing characters after the header dict");
  if (!have_descr || !have_order || !have_shape) fail(path, ".npy header needs descr, fortran_order and shape");

  // descr: byte order, kind, item size, e.g. "<f4", "|b1", ">i8"
  size_t itemsize = 0;
  bool digits = descr.size() >= 3 && descr.size() <= 4;
  for (size_t k = 2; digits && k < descr.size(); ++k) digits = descr[k] >= '0' && descr[k] <= '9';
  if (!digits || std::strchr("<>|=", descr[0]) == nullptr)
    fail(path, fmt::format("unsupported dtype descr '{}'", descr));
  itemsize = std::stoul(descr.substr(2));  // 1-2 digits: cannot throw
  out.tensor.type = npy_type(descr[1], itemsize);
  if (!out.tensor.type) fail(path, fmt::format("unsupported dtype descr '{}'", descr));
  out.big_endian = descr[0] == '>';

  auto& t = out.tensor;
  if (!span_size(t.shape, itemsize, &t.count, &t.bytes)) fail(path, "shape overflows");
  t.offset = hstart + hlen;
  if (t.bytes > size - t.offset)
    fail(path, fmt::format("data is {} bytes, shape needs {}", size - t.offset, t.bytes));
  return out;
}

void decode_span(const uint8_t* file, const TensorSpan& span, bool big_endian, void* out,
                 const std::string& path) {
  const uint8_t* src = file + span.offset;
  const ElemType& t = *span.type;
  uint64_t n = span.count;
  switch (t.decode) {
    case Decode::Copy: {
      if (span.bytes == 0) return;
      std::memcpy(out, src, span.bytes);
      size_t unit = t.npy_kind == 'c' ? t.stored / 2 : t.stored;  // complex: each half
      if (big_endian && unit > 1) {
        auto* b = static_cast<uint8_t*>(out);
        for (uint64_t i = 0; i < span.bytes; i += unit) std::reverse(b + i, b + i + unit);
      }
      return;
    }
    case Decode::U16: return widen<uint16_t, int32_t>(src, n, big_endian, out);
    case Decode::U32: return widen<uint32_t, int64_t>(src, n, big_endian, out);
    case Decode::U64:
      for (uint64_t i = 0; i < n; ++i) {
        uint64_t x = load<uint64_t>(src + i * 8, big_endian);
        if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail(path, fmt::format("tensor '{}': U64 value {} does not fit in int64", span.name, x));
        static_cast<int64_t*>(out)[i] = static_cast<int64_t>(x);
      }
      return;
    case Decode::E4M3:
    case Decode::E5M2:
    case Decode::E8M0: {
      auto f = t.decode == Decode::E4M3 ? fp8_e4m3 : t.decode == Decode::E5M2 ? fp8_e5m2 : fp8_e8m0;
      auto* dst = static_cast<float*>(out);
      for (uint64_t i = 0; i < n; ++i) dst[i] = f(src[i]);
      return;
    }
  }
}

}  // namespace parity
