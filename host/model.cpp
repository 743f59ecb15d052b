// host/model.cpp — TorchScript modules: loading (after a look at the archive's sizes), execution-ordered
// tree, schema-bound calls.
#include "host/model.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/stat.h>
#include <torch/script.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include "host/dispatch.hpp"
#include "host/taps.hpp"

namespace parity {
namespace {

std::string class_name(const torch::jit::Module& m) {
  auto t = m.type();
  return t->name() ? demangle_type(t->name()->qualifiedName()) : "Module";
}

/// Resolves the module a prim::CallMethod node calls, as a path relative to `self` (the
/// method's first graph input), by walking its prim::GetAttr chain. Empty when it is not one.
std::optional<std::string> callee_path(torch::jit::Value* v, torch::jit::Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    auto* n = v->node();
    if (n->kind() != c10::prim::GetAttr) return std::nullopt;
    parts.push_back(n->s(c10::attr::name));
    v = n->input(0);
  }
  std::string path;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) path += (path.empty() ? "" : ".") + *it;
  return path;
}

/// Appends, in call order, every submodule `method` of module `m` (at `prefix`) calls.
void walk_calls(const torch::jit::Module& m, const std::string& prefix, const std::string& method,
                std::vector<std::string>& order, std::set<std::string>& seen) {
  auto fn = m.find_method(method);
  if (!fn) return;
  auto graph = fn->graph();
  auto* self = graph->inputs().at(0);
  std::function<void(torch::jit::Block*)> visit = [&](torch::jit::Block* b) {
    for (auto* n : b->nodes()) {
      for (auto* sub : n->blocks()) visit(sub);
      if (n->kind() != c10::prim::CallMethod) continue;
      auto rel = callee_path(n->input(0), self);
      if (!rel || rel->empty()) continue;
      std::string path = prefix.empty() ? *rel : prefix + "." + *rel;
      torch::jit::Module callee = m;
      std::stringstream ss(*rel);
      for (std::string part; std::getline(ss, part, '.');) callee = callee.attr(part).toModule();
      if (seen.insert(path).second) order.push_back(path);
      walk_calls(callee, path, n->s(c10::attr::name), order, seen);
    }
  };
  visit(graph->block());
}

int64_t numel_of(const torch::jit::Module& m, bool recurse) {
  int64_t n = 0;
  for (const auto& p : m.parameters(recurse)) n += p.numel();
  return n;
}

NamedTensors named(const torch::jit::named_parameter_list& list) {
  NamedTensors out;
  for (const auto& p : list) out.emplace_back(p.name, p.value);
  return out;
}

}  // namespace

std::string demangle_type(const std::string& qualified) {
  auto dot = qualified.rfind('.');
  return dot == std::string::npos ? qualified : qualified.substr(dot + 1);
}

// NOTE [ Archive sizes ]
// torch::jit::load allocates every record of the archive at its declared uncompressed size and
// inflates it (miniz), all before it can say anything: a few MB of deflated zeros declaring
// gigabytes exhaust memory. So the central directory is read first, every count and offset
// bounded by the file's size, and loading is refused when
// - an entry is compressed (method != 0) and inflates past kMaxInflated or past kMaxRatio times
//   its compressed size: PyTorch stores every record (method 0), so such an entry was not
//   written by torch.jit.save anyway;
// - all entries together declare more than the memory available (MemAvailable).
// A file without a ZIP end record is left to torch, which says what it says of non-archives.
//
// The entry names also tell a torch.save pickle (a state dict, a pickled nn.Module) from a
// TorchScript archive, which torch would only report as "PytorchStreamReader failed locating
// file constants.pkl": both hold <prefix>/data.pkl, only TorchScript has <prefix>/code/ and
// <prefix>/constants.pkl. torch.save's legacy format (_use_new_zipfile_serialization=False) is
// no ZIP; it starts with its pickled magic number.
namespace {

constexpr uint64_t kMaxInflated = 64ull << 20;
constexpr uint64_t kMaxRatio = 1000;

uint64_t le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | static_cast<unsigned char>(p[i]);
  return v;
}

/// MemAvailable, else the physical memory, else "unknown" (no limit).
uint64_t memory_available() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, rest;
  uint64_t kb = 0;
  while (meminfo >> key >> kb && std::getline(meminfo, rest))
    if (key == "MemAvailable:") return kb * 1024;
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  return UINT64_MAX;
}

class ArchiveReader {
 public:
  ArchiveReader(const std::string& path, int fd, uint64_t size) : path_(path), fd_(fd), size_(size) {}
  uint64_t size() const { return size_; }

  std::runtime_error malformed(const std::string& why) const {
    return std::runtime_error(
        fmt::format("{}: not a loadable TorchScript file (malformed ZIP central directory: {})", path_, why));
  }
  std::string read(uint64_t offset, uint64_t n, const char* what) const {
    if (offset > size_ || n > size_ - offset)
      throw malformed(
          fmt::format("{} ({} bytes at offset {}) lies outside the file of {} bytes", what, n, offset, size_));
    std::string buf(n, '\0');
    for (uint64_t done = 0; done < n;) {
      ssize_t got = ::pread(fd_, buf.data() + done, n - done, static_cast<off_t>(offset + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0)
        throw std::runtime_error(fmt::format("{}: {}", path_, got < 0 ? std::strerror(errno) : "read past its end"));
      done += static_cast<uint64_t>(got);
    }
    return buf;
  }

 private:
  const std::string& path_;
  int fd_;
  uint64_t size_;
};

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

std::runtime_error torch_save_pickle(const std::string& path) {
  return std::runtime_error(fmt::format(
      "{}: a torch.save pickle (a state dict or a pickled nn.Module), not a TorchScript model: export the model itself "
      "with scripts/parity_export.py (docs/bundles.md)",
      path));
}

/// How the legacy torch.save format begins: pickle protocol 2, then the long 0x1950a86a20f9469cfc6c.
constexpr char kLegacyMagic[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

}  // namespace

void check_torchscript_archive(const std::string& path, uint64_t available) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // torch says why
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 22) return;
  ArchiveReader file(path, fd, static_cast<uint64_t>(st.st_size));

  // the end record: the last signature whose comment fits in the file
  uint64_t tail_size = std::min<uint64_t>(file.size(), 22 + 0xFFFF);
  std::string tail = file.read(file.size() - tail_size, tail_size, "the end");
  int64_t at = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0 && at < 0; --i)
    if (le(&tail[i], 4) == 0x06054b50 && i + 22 + le(&tail[i + 20], 2) <= tail_size) at = i;
  if (at < 0) {  // not a ZIP archive: torch's to report, unless torch.save wrote it
    std::string head = file.read(0, sizeof kLegacyMagic - 1, "the start");
    if (head == std::string(kLegacyMagic, sizeof kLegacyMagic - 1)) throw torch_save_pickle(path);
    return;
  }
  const char* e = &tail[at];
  uint64_t end_record = file.size() - tail_size + static_cast<uint64_t>(at);
  uint64_t disk = le(e + 4, 2), cd_disk = le(e + 6, 2), on_disk = le(e + 8, 2), entries = le(e + 10, 2);
  uint64_t cd_size = le(e + 12, 4), cd_offset = le(e + 16, 4), cd_limit = end_record;
  if (disk == 0xFFFF || cd_disk == 0xFFFF || on_disk == 0xFFFF || entries == 0xFFFF || cd_size == 0xFFFFFFFF ||
      cd_offset == 0xFFFFFFFF) {  // ZIP64: a locator just before the end record points at the ZIP64 end record
    if (end_record < 20) throw file.malformed("ZIP64 marks in the end record, but no ZIP64 locator");
    std::string loc = file.read(end_record - 20, 20, "the ZIP64 locator");
    if (le(&loc[0], 4) != 0x07064b50) throw file.malformed("ZIP64 marks in the end record, but no ZIP64 locator");
    uint64_t rec = le(&loc[8], 8);
    if (rec > end_record - 20 || end_record - 20 - rec < 56)
      throw file.malformed(fmt::format("the ZIP64 end record at offset {} does not fit before its locator", rec));
    std::string r = file.read(rec, 56, "the ZIP64 end record");
    if (le(&r[0], 4) != 0x06064b50) throw file.malformed(fmt::format("no ZIP64 end record at offset {}", rec));
    disk = le(&r[16], 4), cd_disk = le(&r[20], 4), on_disk = le(&r[24], 8), entries = le(&r[32], 8);
    cd_size = le(&r[40], 8), cd_offset = le(&r[48], 8), cd_limit = rec;
  }
  if (disk != 0 || cd_disk != 0 || on_disk != entries)
    throw file.malformed(fmt::format("{} entries in all but {} on this disk: a multi-disk archive", entries, on_disk));
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset)
    throw file.malformed(fmt::format("{} bytes at offset {} do not fit before its end record at offset {}", cd_size,
                                     cd_offset, cd_limit));
  if (entries > cd_size / 46)
    throw file.malformed(fmt::format("{} entries cannot fit in its {} bytes", entries, cd_size));
  std::string cd = file.read(cd_offset, cd_size, "the central directory");

  uint64_t total = 0, pos = 0;
  bool data_pkl = false, script = false;  // <prefix>/data.pkl; <prefix>/code/ or <prefix>/constants.pkl
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd_size - pos < 46 || le(&cd[pos], 4) != 0x02014b50)
      throw file.malformed(fmt::format("entry {} of {} has no header at offset {}", i + 1, entries, cd_offset + pos));
    const char* h = &cd[pos];
    uint64_t method = le(h + 10, 2), packed = le(h + 20, 4), size = le(h + 24, 4), local = le(h + 42, 4);
    uint64_t name_len = le(h + 28, 2), extra_len = le(h + 30, 2), comment_len = le(h + 32, 2);
    uint64_t len = 46 + name_len + extra_len + comment_len;
    if (len > cd_size - pos) throw file.malformed(fmt::format("entry {} of {} runs past its end", i + 1, entries));
    std::string name(h + 46, name_len);
    if (auto slash = name.find('/'); slash != std::string::npos) {
      std::string rest = name.substr(slash + 1);
      data_pkl = data_pkl || rest == "data.pkl";
      script = script || rest == "constants.pkl" || rest.rfind("code/", 0) == 0;
    }
    if (size == 0xFFFFFFFF || packed == 0xFFFFFFFF || local == 0xFFFFFFFF) {  // the ZIP64 extra field has them
      const char* x = h + 46 + name_len;
      bool found = false;
      for (uint64_t off = 0; off + 4 <= extra_len && !found;) {
        uint64_t id = le(x + off, 2), n = le(x + off + 2, 2);
        if (n > extra_len - off - 4) break;
        if (id == 1) {
          uint64_t k = 0;
          for (uint64_t* v : {&size, &packed, &local}) {
            if (*v != 0xFFFFFFFF) continue;
            if (k + 8 > n) throw file.malformed(fmt::format("entry {}: a short ZIP64 extra field", name));
            *v = le(x + off + 4 + k, 8), k += 8;
          }
          found = true;
        }
        off += 4 + n;
      }
      if (!found) throw file.malformed(fmt::format("entry {}: ZIP64 marks but no ZIP64 extra field", name));
    }
    if (local >= cd_offset || packed > cd_offset - local)
      throw file.malformed(fmt::format("entry {}: its {} bytes at offset {} are not before the directory", name,
                                       packed, local));
    if (method == 0 && packed != size)
      throw file.malformed(
          fmt::format("entry {} is stored, yet declares {} bytes for {} in the file", name, size, packed));
    if (method != 0 && (size > kMaxInflated || size / std::max<uint64_t>(packed, 1) > kMaxRatio))
      throw std::runtime_error(fmt::format(
          "{}: refusing to load: entry {} is compressed (method {}) and inflates {} bytes to {} ({}); PyTorch "
          "stores its archive entries uncompressed, so torch.jit.save did not write this one as it is",
          path, name, method, packed, size,
          size > kMaxInflated ? "more than 64 MiB" : fmt::format("a ratio above {}", kMaxRatio)));
    total = size > UINT64_MAX - total ? UINT64_MAX : total + size;
    pos += len;
  }
  if (data_pkl && !script) throw torch_save_pickle(path);
  if (available == 0) available = memory_available();
  if (total > available)
    throw std::runtime_error(fmt::format(
        "{}: refusing to load: its {} entries take {} bytes once read, more than the memory available ({} bytes)",
        path, entries, total, available));
}

namespace {
ForwardCounts counts;  // this process's (forward_counts)
}  // namespace

ForwardCounts& forward_counts() { return counts; }

void Model::count_forward() const {
  if (in_tapped_run()) return;  // inside a forward: part of it
  ++(root_ ? counts.whole : counts.component);
}

Model Model::load(const std::string& path, std::optional<c10::Device> device) {
  if (!std::filesystem::exists(path))
    throw std::runtime_error(fmt::format("{}: no such file", path));
  check_torchscript_archive(path);  // NOTE [ Archive sizes ]
  try {
    auto m = device ? torch::jit::load(path, *device) : torch::jit::load(path);
    auto root = std::make_shared<torch::jit::Module>(std::move(m));
    auto taps = std::make_shared<TapState>();
    taps->root = root;
    ++counts.loads;
    return Model(root, taps, true);
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    throw std::runtime_error(
        fmt::format("{}: not a loadable TorchScript file ({})", path, why.substr(0, why.find('\n'))));
  }
}

Model Model::child(const std::string& path) const {
  torch::jit::Module cur = *m_;
  std::string walked;
  std::stringstream ss(path);
  for (std::string part; std::getline(ss, part, '.');) {
    std::string here = walked.empty() ? part : walked + "." + part;
    if (!cur.hasattr(part) || !cur.attr(part).isModule()) {
      std::vector<std::string> children;
      for (const auto& c : cur.named_children()) children.push_back(c.name);
      throw std::invalid_argument(fmt::format("no submodule '{}' (children of '{}': {})", here,
                                              walked, fmt::join(children, ", ")));
    }
    cur = cur.attr(part).toModule();
    walked = here;
  }
  return Model(std::make_shared<torch::jit::Module>(cur), taps_, path.empty() && root_);
}

std::vector<ModuleInfo> Model::modules() const {
  std::vector<std::string> order{""};
  std::set<std::string> seen{""};
  walk_calls(*m_, "", "forward", order, seen);
  std::map<std::string, torch::jit::Module> by_path;
  for (const auto& nm : m_->named_modules()) {
    by_path.emplace(nm.name, nm.value);
    if (seen.insert(nm.name).second) order.push_back(nm.name);
  }
  // Parents before children: a parent first reached after its child (it was never called)
  // moves to just before that child.
  std::vector<std::string> sorted;
  std::set<std::string> placed;
  std::function<void(const std::string&)> place = [&](const std::string& p) {
    if (placed.count(p)) return;
    auto dot = p.rfind('.');
    if (!p.empty()) place(dot == std::string::npos ? "" : p.substr(0, dot));
    placed.insert(p);
    sorted.push_back(p);
  };
  for (const auto& p : order)
    if (by_path.count(p)) place(p);

  std::vector<ModuleInfo> out;
  for (const auto& p : sorted) {
    const auto& m = by_path.at(p);
    int depth = p.empty() ? 0 : 1 + static_cast<int>(std::count(p.begin(), p.end(), '.'));
    out.push_back({p, class_name(m), numel_of(m, false), numel_of(m, true), depth});
  }
  return out;
}

NamedTensors Model::parameters() const { return named(m_->named_parameters(true)); }
NamedTensors Model::buffers() const {
  NamedTensors out;
  for (const auto& b : m_->named_buffers(true)) out.emplace_back(b.name, b.value);
  return out;
}

std::vector<std::string> Model::method_names() const {
  std::vector<std::string> out;
  for (const auto& m : m_->get_methods()) out.push_back(m.name());
  return out;
}

std::string Model::type_name() const { return class_name(*m_); }

namespace {
const c10::FunctionSchema& method_schema(const torch::jit::Module& m, const std::string& name) {
  auto fn = m.find_method(name);
  if (!fn) {
    std::vector<std::string> names;
    for (const auto& x : m.get_methods()) names.push_back(x.name());
    throw std::invalid_argument(fmt::format("module {} has no method '{}' (methods: {})",
                                            class_name(m), name, fmt::join(names, ", ")));
  }
  return fn->function().getSchema();
}
}  // namespace

Model::Model(std::shared_ptr<torch::jit::Module> m, std::shared_ptr<TapState> taps, bool root)
    : m_(std::move(m)), taps_(std::move(taps)), root_(root) {}

Value Model::call(const std::string& method, const std::vector<Value>& args) const {
  count_forward();
  // with patches, or from inside one (its children, a reference's modules: on their device)
  if (!taps_->patches.empty() || in_tapped_run()) return call_patched(*this, method, args);
  return call_plain(method, args);
}

Value Model::call_plain(const std::string& method, const std::vector<Value>& args, bool to_cpu) const {
  taps_->ran = true;  // taps spliced in later would not be seen (install_taps)
  const auto& schema = method_schema(*m_, method);
  const auto& all = schema.arguments();
  auto without_self = schema.cloneWithArguments({all.begin() + 1, all.end()});
  auto dev = device();
  std::vector<Value> moved;
  if (!dev.is_cpu())
    for (const auto& a : args) moved.push_back(on_device(a, dev));
  auto inputs = bind_arguments(without_self, dev.is_cpu() ? args : moved);
  inputs.insert(inputs.begin(), m_->_ivalue());
  auto out = from_ivalue(m_->get_method(method).function()(std::move(inputs)));
  return dev.is_cpu() || !to_cpu ? out : on_device(out, c10::Device(c10::kCPU));
}

Value Model::schema(const std::string& method) const {
  const auto& s = method_schema(*m_, method);
  Array args, rets;
  for (size_t i = 1; i < s.arguments().size(); ++i) {
    const auto& a = s.arguments()[i];
    Map arg{{"name", a.name()}, {"type", a.type()->annotation_str()}};
    if (a.default_value()) {
      std::ostringstream os;
      os << *a.default_value();
      arg.emplace_back("default", os.str());
    }
    args.emplace_back(std::move(arg));
  }
  for (const auto& r : s.returns()) rets.emplace_back(Map{{"type", r.type()->annotation_str()}});
  return Map{{"name", s.name()}, {"arguments", std::move(args)}, {"returns", std::move(rets)}};
}

void Model::to(c10::ScalarType dtype) { m_->to(dtype); }
void Model::to(c10::Device device) { m_->to(device); }

c10::Device Model::device() const {
  for (const auto& p : m_->parameters()) return p.device();
  for (const auto& b : m_->buffers()) return b.device();
  return c10::Device(c10::kCPU);
}
void Model::set_training(bool on) { on ? m_->train() : m_->eval(); }

void load_library(const std::string& path) {
  if (!dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL))
    throw std::runtime_error(fmt::format("cannot load library {}: {}", path, dlerror()));
}

}  // namespace parity
