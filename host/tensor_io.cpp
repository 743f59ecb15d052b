// host/tensor_io.cpp — safetensors and .npy readers/writers.
#include "host/tensor_io.hpp"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <stdexcept>

#include "host/dtype.hpp"
#include "host/files.hpp"

namespace parity {
namespace {

using json = nlohmann::json;
constexpr uint64_t kMaxHeader = 100'000'000;  // the reference implementation's bound

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error(fmt::format("{}: {}", path, why));
}

/// How a safetensors dtype is stored on disk and what tensor it becomes here.
enum class Decode { Copy, U16, U32, U64, E4M3, E5M2, E8M0 };
struct StDtype {
  const char* name;
  size_t itemsize;
  c10::ScalarType type;
  Decode decode;
};
constexpr StDtype kStDtypes[] = {
    {"BOOL", 1, c10::kBool, Decode::Copy},      {"U8", 1, c10::kByte, Decode::Copy},
    {"I8", 1, c10::kChar, Decode::Copy},        {"I16", 2, c10::kShort, Decode::Copy},
    {"I32", 4, c10::kInt, Decode::Copy},        {"I64", 8, c10::kLong, Decode::Copy},
    {"F16", 2, c10::kHalf, Decode::Copy},       {"BF16", 2, c10::kBFloat16, Decode::Copy},
    {"F32", 4, c10::kFloat, Decode::Copy},      {"F64", 8, c10::kDouble, Decode::Copy},
    {"C64", 8, c10::kComplexFloat, Decode::Copy},
    {"U16", 2, c10::kInt, Decode::U16},         {"U32", 4, c10::kLong, Decode::U32},
    {"U64", 8, c10::kLong, Decode::U64},        {"F8_E4M3", 1, c10::kFloat, Decode::E4M3},
    {"F8_E5M2", 1, c10::kFloat, Decode::E5M2},  {"F8_E8M0", 1, c10::kFloat, Decode::E8M0},
};

const StDtype* st_dtype(const std::string& name) {
  for (const auto& d : kStDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const StDtype& st_dtype_for(c10::ScalarType t) {
  for (const auto& d : kStDtypes)
    if (d.decode == Decode::Copy && d.type == t) return d;
  throw std::invalid_argument(fmt::format("safetensors has no dtype for {}", dtype_name(t)));
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

template <typename From, typename To>
void widen(const uint8_t* src, To* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    From x;
    std::memcpy(&x, src + i * sizeof(From), sizeof(From));
    dst[i] = static_cast<To>(x);
  }
}

at::Tensor decode(const uint8_t* src, const StDtype& d, const std::vector<int64_t>& shape,
                  const std::string& path, const std::string& name) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(d.type));
  int64_t n = t.numel();
  switch (d.decode) {
    case Decode::Copy: std::memcpy(t.data_ptr(), src, n * d.itemsize); break;
    case Decode::U16: widen<uint16_t>(src, t.data_ptr<int32_t>(), n); break;
    case Decode::U32: widen<uint32_t>(src, t.data_ptr<int64_t>(), n); break;
    case Decode::U64:
      for (int64_t i = 0; i < n; ++i) {
        uint64_t x;
        std::memcpy(&x, src + i * 8, 8);
        if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          fail(path, fmt::format("tensor '{}': U64 value {} does not fit in int64", name, x));
        t.data_ptr<int64_t>()[i] = static_cast<int64_t>(x);
      }
      break;
    case Decode::E4M3:
    case Decode::E5M2:
    case Decode::E8M0: {
      auto f = d.decode == Decode::E4M3 ? fp8_e4m3 : d.decode == Decode::E5M2 ? fp8_e5m2 : fp8_e8m0;
      float* out = t.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) out[i] = f(src[i]);
      break;
    }
  }
  return t;
}

/// A read-only mapping of a whole file, unmapped on scope exit.
struct Mapped {
  const uint8_t* data = nullptr;
  size_t size = 0;
  explicit Mapped(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) fail(path, std::strerror(errno));
    struct stat st {};
    ::fstat(fd, &st);
    if (S_ISDIR(st.st_mode)) ::close(fd), fail(path, "is a directory");
    size = static_cast<size_t>(st.st_size);
    if (size > 0) {
      void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      ::close(fd);
      if (p == MAP_FAILED) fail(path, std::strerror(errno));
      data = static_cast<const uint8_t*>(p);
    } else {
      ::close(fd);
    }
  }
  ~Mapped() {
    if (data) ::munmap(const_cast<uint8_t*>(data), size);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
};

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path) {
  Mapped file(path);
  if (file.size < 8) fail(path, fmt::format("not a safetensors file ({} bytes, need at least 8)", file.size));
  uint64_t n = 0;
  std::memcpy(&n, file.data, 8);  // little-endian u64
  if (n > kMaxHeader) fail(path, fmt::format("header length {} exceeds the 100 MB limit", n));
  if (8 + n > file.size)
    fail(path, fmt::format("header length {} runs past the end of the file ({} bytes)", n, file.size));
  std::string text(reinterpret_cast<const char*>(file.data) + 8, n);
  if (text.empty() || text[0] != '{') fail(path, "header is not a JSON object");
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    fail(path, fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");

  SafetensorsFile out;
  struct Entry {
    std::string name;
    const StDtype* dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  const uint64_t data_len = file.size - 8 - n;
  for (const auto& [name, info] : header.items()) {
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
    const StDtype* d = st_dtype(dt);
    if (!d) {
      if (dt == "F4" || dt.rfind("F6", 0) == 0) bad(fmt::format("sub-byte dtype {} is not supported", dt));
      bad(fmt::format("unknown dtype '{}'", dt));
    }
    const auto& shape = info["shape"];
    const auto& offs = info["data_offsets"];
    if (!shape.is_array()) bad("shape is not an array");
    if (!offs.is_array() || offs.size() != 2 || !offs[0].is_number_unsigned() ||
        !offs[1].is_number_unsigned())
      bad("data_offsets is not [begin, end]");
    Entry e{name, d, {}, offs[0].get<uint64_t>(), offs[1].get<uint64_t>()};
    uint64_t count = 1;
    for (const auto& s : shape) {
      if (!s.is_number_unsigned()) bad("shape has a non-integer or negative dimension");
      uint64_t dim = s.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          mul_overflows(count, dim, &count))
        bad("shape overflows");
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t bytes;
    if (mul_overflows(count, d->itemsize, &bytes)) bad("shape overflows");
    if (e.end < e.begin) bad(fmt::format("data_offsets [{}, {}] end before begin", e.begin, e.end));
    if (e.end - e.begin != bytes)
      bad(fmt::format("data_offsets [{}, {}] hold {} bytes, shape and dtype need {}", e.begin,
                      e.end, e.end - e.begin, bytes));
    if (e.end > data_len)
      bad(fmt::format("data_offsets [{}, {}] run past the data ({} bytes)", e.begin, e.end, data_len));
    entries.push_back(std::move(e));
  }
  // The format requires the tensors to tile the data exactly: no overlap, no gap.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  uint64_t expect = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.begin < expect)
      fail(path, fmt::format("tensor '{}' overlaps tensor '{}' (offset {} < {})", e.name,
                             entries[i - 1].name, e.begin, expect));
    if (e.begin > expect)
      fail(path, fmt::format("gap of {} bytes before tensor '{}'", e.begin - expect, e.name));
    expect = e.end;
  }
  if (expect != data_len)
    fail(path, fmt::format("{} bytes after the last tensor are not described by the header",
                           data_len - expect));
  const uint8_t* base = file.data + 8 + n;
  for (const auto& e : entries)
    out.tensors.emplace_back(e.name, decode(base + e.begin, *e.dtype, e.shape, path, e.name));
  return out;
}

void write_safetensors(const std::string& path, const NamedTensorList& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<std::pair<std::string, at::Tensor>> sorted(tensors.begin(), tensors.end());
  std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.first < b.first; });
  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    auto& [name, t] = sorted[i];
    if (i > 0 && sorted[i - 1].first == name)
      throw std::invalid_argument(fmt::format("{}: duplicate tensor name '{}'", path, name));
    if (name == "__metadata__")
      throw std::invalid_argument(fmt::format("{}: '__metadata__' is reserved", path));
    t = t.detach().to(at::kCPU).contiguous();
    const auto& d = st_dtype_for(t.scalar_type());
    uint64_t bytes = t.numel() * d.itemsize;
    header[name] = {{"dtype", d.name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string blob(8, '\0');
  uint64_t n = text.size();
  std::memcpy(blob.data(), &n, 8);
  blob += text;
  blob.reserve(blob.size() + offset);
  for (const auto& [name, t] : sorted)
    blob.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, blob);
}

// ---- .npy ---------------------------------------------------------------------------

namespace {

struct NpyType {
  char kind;
  size_t size;
  c10::ScalarType type;
};
constexpr NpyType kNpyTypes[] = {
    {'b', 1, c10::kBool},  {'i', 1, c10::kChar},   {'u', 1, c10::kByte},
    {'i', 2, c10::kShort}, {'i', 4, c10::kInt},    {'i', 8, c10::kLong},
    {'u', 2, c10::kInt},   {'u', 4, c10::kLong},   {'u', 8, c10::kLong},
    {'f', 2, c10::kHalf},  {'f', 4, c10::kFloat},  {'f', 8, c10::kDouble},
    {'c', 8, c10::kComplexFloat}, {'c', 16, c10::kComplexDouble},
};

}  // namespace

at::Tensor read_npy(const std::string& path) {
  Mapped file(path);
  const char* p = reinterpret_cast<const char*>(file.data);
  if (file.size < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) fail(path, "not a .npy file (bad magic)");
  int major = static_cast<uint8_t>(p[6]);
  size_t hlen, hstart;
  if (major == 1) {
    hlen = static_cast<uint8_t>(p[8]) | (static_cast<uint8_t>(p[9]) << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (file.size < 12) fail(path, "truncated .npy header");
    uint32_t l;
    std::memcpy(&l, p + 8, 4);
    hlen = l;
    hstart = 12;
  } else {
    fail(path, fmt::format("unsupported .npy version {}", major));
  }
  if (hstart + hlen > file.size) fail(path, "truncated .npy header");
  std::string h(p + hstart, hlen);
  std::smatch m;
  if (!std::regex_search(h, m, std::regex(R"('descr'\s*:\s*'([<>|=])([biufc])(\d+)')")))
    fail(path, fmt::format("unsupported or missing descr in header {}", h));
  char order = m[1].str()[0], kind = m[2].str()[0];
  size_t size = std::stoul(m[3].str());
  bool fortran = std::regex_search(h, std::regex(R"('fortran_order'\s*:\s*True)"));
  if (!std::regex_search(h, m, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")))
    fail(path, "missing shape in header");
  std::vector<int64_t> shape;
  std::string dims = m[1].str();
  const std::regex number(R"(\d+)");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it)
    shape.push_back(std::stoll(it->str()));
  const NpyType* t = nullptr;
  for (const auto& x : kNpyTypes)
    if (x.kind == kind && x.size == size) t = &x;
  if (!t) fail(path, fmt::format("unsupported dtype {}{}", kind, size));

  int64_t count = 1;
  for (auto d : shape) count *= d;
  size_t bytes = count * size, data = hstart + hlen;
  if (data + bytes > file.size)
    fail(path, fmt::format("data is {} bytes, shape needs {}", file.size - data, bytes));
  std::vector<uint8_t> buf(file.data + data, file.data + data + bytes);
  if (order == '>' && size > 1) {  // to little-endian; complex swaps each half
    size_t w = kind == 'c' ? size / 2 : size;
    for (size_t i = 0; i < bytes; i += w) std::reverse(buf.begin() + i, buf.begin() + i + w);
  }
  std::vector<int64_t> torch_shape = shape;
  if (fortran) std::reverse(torch_shape.begin(), torch_shape.end());
  StDtype as{"", size, t->type,
             kind == 'u' && size == 2   ? Decode::U16
             : kind == 'u' && size == 4 ? Decode::U32
             : kind == 'u' && size == 8 ? Decode::U64
                                        : Decode::Copy};
  at::Tensor out = decode(buf.data(), as, torch_shape, path, "array");
  if (fortran && out.dim() > 1) {
    std::vector<int64_t> perm;
    for (int64_t i = out.dim() - 1; i >= 0; --i) perm.push_back(i);
    out = out.permute(perm).contiguous();
  }
  return out;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  const NpyType* nt = nullptr;
  for (const auto& x : kNpyTypes)  // the first entry for a type is its canonical one
    if (!nt && x.type == t.scalar_type()) nt = &x;
  if (!nt)
    throw std::invalid_argument(fmt::format(
        "{}: .npy has no {} type; convert first (x:float()) or use safetensors", path,
        dtype_name(t.scalar_type())));
  std::string shape = t.dim() == 1 ? fmt::format("{},", t.size(0))  // "(4,)" but "(2, 3)"
                                   : fmt::format("{}", fmt::join(t.sizes(), ", "));
  std::string header = fmt::format("{{'descr': '{}{}{}', 'fortran_order': False, 'shape': ({}), }}",
                                   nt->size == 1 ? '|' : '<', nt->kind, nt->size, shape);
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string blob("\x93NUMPY\x01\x00", 8);
  uint16_t hl = static_cast<uint16_t>(header.size());
  blob.append(reinterpret_cast<const char*>(&hl), 2);
  blob += header;
  blob.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, blob);
}

}  // namespace parity
