// host/tensor_io.cpp — safetensors and .npy files as tensors: host/tensor_parse.hpp checks
// what a file claims, this file maps it, makes the tensors and writes files.
#include "host/tensor_io.hpp"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "host/dtype.hpp"
#include "host/files.hpp"
#include "host/tensor_parse.hpp"

namespace parity {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error(fmt::format("{}: {}", path, why));
}

constexpr std::pair<Held, c10::ScalarType> kHeld[] = {
    {Held::Bool, c10::kBool},   {Held::U8, c10::kByte},    {Held::I8, c10::kChar},
    {Held::I16, c10::kShort},   {Held::I32, c10::kInt},    {Held::I64, c10::kLong},
    {Held::F16, c10::kHalf},    {Held::BF16, c10::kBFloat16}, {Held::F32, c10::kFloat},
    {Held::F64, c10::kDouble},  {Held::C64, c10::kComplexFloat}, {Held::C128, c10::kComplexDouble},
};

c10::ScalarType scalar_type(Held h) {
  for (const auto& [held, type] : kHeld)
    if (held == h) return type;
  throw std::logic_error("unmapped element type");
}

const ElemType& safetensors_type_of(c10::ScalarType t) {
  for (const auto& [held, type] : kHeld)
    if (type == t)
      if (const ElemType* e = stored_type_for(held, Format::Safetensors)) return *e;
  throw std::invalid_argument(fmt::format("safetensors has no dtype for {}", dtype_name(t)));
}

/// The tensor a checked span describes, decoded from the mapped file.
at::Tensor make_tensor(const uint8_t* file, const TensorSpan& span, bool big_endian, const std::string& path) {
  at::Tensor t = at::empty(span.shape, at::TensorOptions().dtype(scalar_type(span.type->held)));
  if (span.count > 0) decode_span(file, span, big_endian, t.data_ptr(), path);
  return t;
}

/// A read-only mapping of a whole file, unmapped on scope exit.
struct Mapped {
  const uint8_t* data = nullptr;
  size_t size = 0;
  struct stat st {};
  explicit Mapped(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) fail(path, std::strerror(errno));
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

/// A safetensors file's checked layout, kept for the files read last: a spilled forward's
/// captures are read back a component at a time, and parsing the header of a file of a thousand
/// tensors each time was a third of that time (m's sweep: 300 reads). A file is the same while
/// its device, inode, size and modification time are (parity replaces files by a rename).
std::shared_ptr<const SafetensorsLayout> layout_of(const Mapped& file, const std::string& path) {
  using Key = std::tuple<dev_t, ino_t, off_t, int64_t, int64_t>;
  static std::mutex mutex;
  static std::vector<std::pair<Key, std::shared_ptr<const SafetensorsLayout>>> recent;  // newest last
  constexpr size_t kKept = 8;
  Key key{file.st.st_dev, file.st.st_ino, file.st.st_size, file.st.st_mtim.tv_sec, file.st.st_mtim.tv_nsec};
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = recent.begin(); it != recent.end(); ++it)
      if (it->first == key) {
        auto layout = it->second;
        recent.erase(it);
        recent.emplace_back(key, layout);
        return layout;
      }
  }
  auto layout = std::make_shared<const SafetensorsLayout>(parse_safetensors(file.data, file.size, path));
  std::lock_guard<std::mutex> lock(mutex);
  if (recent.size() == kKept) recent.erase(recent.begin());
  recent.emplace_back(key, layout);
  return layout;
}

}  // namespace

SafetensorsFile read_safetensors(const std::string& path, const std::vector<std::string>* only) {
  Mapped file(path);
  auto layout = layout_of(file, path);
  SafetensorsFile out;
  out.metadata = layout->metadata;
  std::unordered_set<std::string_view> wanted;
  if (only) wanted.insert(only->begin(), only->end());
  for (const auto& span : layout->tensors)
    if (!only || wanted.count(span.name))
      out.tensors.emplace_back(span.name, make_tensor(file.data, span, false, path));
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
    const auto& d = safetensors_type_of(t.scalar_type());
    uint64_t bytes = t.numel() * d.stored;
    header[name] = {{"dtype", d.safetensors}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string head(8, '\0');
  uint64_t n = text.size();
  std::memcpy(head.data(), &n, 8);
  head += text;
  std::vector<std::string_view> pieces{head};  // the tensors' bytes are written from where they are
  for (const auto& [name, t] : sorted)
    pieces.emplace_back(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, pieces);
}

// ---- raw .bin + JSON sidecar ------------------------------------------------------------

at::Tensor read_raw(const std::string& path) {
  Mapped file(path);  // a missing .bin is named before its sidecar
  std::string sidecar = path.substr(0, path.size() - (path.size() >= 4 && path.compare(path.size() - 4, 4, ".bin") == 0 ? 4 : 0)) + ".json";
  json meta;
  try {
    meta = json::parse(read_file(sidecar));
  } catch (const json::exception& e) {
    fail(sidecar, fmt::format("not valid JSON ({})", e.what()));
  } catch (const std::runtime_error& e) {
    fail(path, fmt::format("a raw array needs its sidecar {} giving dtype and shape ({})", sidecar, e.what()));
  }
  if (!meta.is_object() || !meta.contains("dtype") || !meta["dtype"].is_string() || !meta.contains("shape") ||
      !meta["shape"].is_array())
    fail(sidecar, R"(expected {"dtype": "float32", "shape": [dims...]})");
  c10::ScalarType type;
  try {
    type = parse_dtype(meta["dtype"].get<std::string>());
  } catch (const std::exception& e) {
    fail(sidecar, e.what());
  }
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  for (const auto& d : meta["shape"]) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() > (int64_t{1} << 40))
      fail(sidecar, fmt::format("shape entries must be whole numbers in 0..2^40, got {}", d.dump()));
    shape.push_back(d.get<int64_t>());
    numel *= static_cast<uint64_t>(shape.back());
    if (numel > (uint64_t{1} << 40)) fail(sidecar, "shape has more than 2^40 elements");
  }
  uint64_t want = numel * c10::elementSize(type);
  if (file.size != want)
    fail(path, fmt::format("{} bytes, but {} says {} [{}] = {} bytes", file.size, sidecar, dtype_name(type),
                           fmt::join(shape, ", "), want));
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  if (want > 0) std::memcpy(t.data_ptr(), file.data, want);
  return t;
}

// ---- .npy ---------------------------------------------------------------------------

at::Tensor read_npy(const std::string& path) {
  Mapped file(path);
  NpyLayout layout = parse_npy(file.data, file.size, path);
  auto span = layout.tensor;
  if (layout.fortran) std::reverse(span.shape.begin(), span.shape.end());
  at::Tensor out = make_tensor(file.data, span, layout.big_endian, path);
  if (layout.fortran && out.dim() > 1) {
    std::vector<int64_t> perm;
    for (int64_t i = out.dim() - 1; i >= 0; --i) perm.push_back(i);
    out = out.permute(perm).contiguous();
  }
  return out;
}

void write_npy(const std::string& path, const at::Tensor& tensor) {
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  const ElemType* nt = nullptr;
  for (const auto& [held, type] : kHeld)
    if (type == t.scalar_type()) nt = stored_type_for(held, Format::Npy);
  if (!nt)
    throw std::invalid_argument(fmt::format(
        "{}: .npy has no {} type; convert first (x:float()) or use safetensors", path,
        dtype_name(t.scalar_type())));
  std::string shape = t.dim() == 1 ? fmt::format("{},", t.size(0))  // "(4,)" but "(2, 3)"
                                   : fmt::format("{}", fmt::join(t.sizes(), ", "));
  std::string header = fmt::format("{{'descr': '{}{}{}', 'fortran_order': False, 'shape': ({}), }}",
                                   nt->stored == 1 ? '|' : '<', nt->npy_kind, nt->stored, shape);
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
