// tests/cpp/test_model.cpp — Model::load reads a TorchScript archive's ZIP central directory
// before torch does: decompression bombs, archives larger than memory and malformed directories
// are refused with the file's name, before anything is inflated.
#include <caffe2/serialize/inline_container.h>
#include <torch/script.h>

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "host/files.hpp"
#include "host/model.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

using namespace parity;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("parity_model_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

// ---- CRC-32 (the ZIP one), also of long runs of zeros without touching them -----------------
uint32_t crc_table(uint32_t i) {
  for (int k = 0; k < 8; ++k) i = (i & 1) ? 0xEDB88320u ^ (i >> 1) : i >> 1;
  return i;
}
uint32_t crc32(const std::string& data) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = crc_table((c ^ b) & 255) ^ (c >> 8);
  return ~c;
}
/// The CRC state after one zero byte is linear in the state before: a 32x32 matrix over GF(2),
/// raised to the n-th power by squaring.
uint32_t gf2_apply(const uint32_t* m, uint32_t v) {
  uint32_t r = 0;
  for (int i = 0; v; ++i, v >>= 1)
    if (v & 1) r ^= m[i];
  return r;
}
uint32_t crc32_of_zeros(uint64_t n) {
  uint32_t m[32], sq[32];
  for (int i = 0; i < 32; ++i) m[i] = crc_table((1u << i) & 255) ^ ((1u << i) >> 8);
  uint32_t v = 0xFFFFFFFFu;
  for (; n; n >>= 1) {
    if (n & 1) v = gf2_apply(m, v);
    for (int i = 0; i < 32; ++i) sq[i] = gf2_apply(m, m[i]);
    std::memcpy(m, sq, sizeof m);
  }
  return ~v;
}

// ---- a raw deflate stream of n zero bytes: one dynamic-Huffman block whose codes are length 258
// (1 bit), a literal 0 and end of block (2 bits each), distance 1 (1 bit): 2 bits per 258 bytes,
// deflate's best ratio (1032).
struct BitWriter {
  std::string out;
  uint64_t acc = 0;
  int n = 0;
  void put(uint32_t v, int bits) {
    acc |= uint64_t(v) << n, n += bits;
    for (; n >= 8; n -= 8, acc >>= 8) out += static_cast<char>(acc & 255);
  }
  void code(uint32_t c, int len) {  // Huffman codes go most significant bit first
    uint32_t rev = 0;
    for (int i = 0; i < len; ++i) rev |= ((c >> i) & 1) << (len - 1 - i);
    put(rev, len);
  }
  std::string finish() {
    if (n) out += static_cast<char>(acc & 255);
    return out;
  }
};
std::string deflated_zeros(uint64_t n) {
  BitWriter b;
  b.put(1, 1), b.put(2, 2);                 // final block, dynamic Huffman
  b.put(29, 5), b.put(0, 5), b.put(14, 4);  // 286 literal/length codes, 1 distance code, 18 code-length codes
  const int order[18] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1};
  for (int sym : order) b.put(sym == 18 ? 1 : (sym == 1 || sym == 2) ? 2 : 0, 3);  // 18: '0', 1: '10', 2: '11'
  b.code(3, 2);                                               // literal 0: length 2
  b.code(0, 1), b.put(127, 7), b.code(0, 1), b.put(106, 7);  // 255 unused literals
  b.code(3, 2);                                               // end of block (256): length 2
  b.code(0, 1), b.put(17, 7);                                 // 28 unused lengths
  b.code(2, 2);                                               // 285 (length 258): length 1
  b.code(2, 2);                                               // distance code 0 (distance 1): length 1
  b.code(2, 2);                                               // the first zero, a literal ('10')
  for (uint64_t k = (n - 1) / 258; k; --k) b.code(0, 1), b.code(0, 1);  // 258 more ('0'), distance 1 ('0')
  for (uint64_t r = (n - 1) % 258; r; --r) b.code(2, 2);
  b.code(3, 2);  // end of block ('11')
  return b.finish();
}

// ---- a ZIP writer: local headers, central directory, end record (ZIP64 records on request) ------
struct Entry {
  std::string name, data;  // data as stored in the archive
  uint16_t method = 0;     // 0 stored, 8 deflated
  uint64_t size = 0;       // uncompressed
  uint32_t crc = 0;
};
Entry stored(std::string name, std::string data) {
  Entry e{std::move(name), std::move(data)};
  e.size = e.data.size(), e.crc = crc32(e.data);
  return e;
}

void le(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s += static_cast<char>((v >> (8 * i)) & 255);
}

std::string zip(const std::vector<Entry>& entries, bool zip64) {
  std::string out, cd;
  const uint32_t big = 0xFFFFFFFFu;
  for (const auto& e : entries) {
    uint64_t offset = out.size();
    std::string extra;
    if (zip64) le(extra, 1, 2), le(extra, 16, 2), le(extra, e.size, 8), le(extra, e.data.size(), 8);
    le(out, 0x04034b50, 4), le(out, zip64 ? 45 : 20, 2), le(out, 0, 2), le(out, e.method, 2), le(out, 0, 4);
    le(out, e.crc, 4), le(out, zip64 ? big : e.data.size(), 4), le(out, zip64 ? big : e.size, 4);
    le(out, e.name.size(), 2), le(out, extra.size(), 2);
    out += e.name + extra + e.data;
    std::string cextra;
    if (zip64)
      le(cextra, 1, 2), le(cextra, 24, 2), le(cextra, e.size, 8), le(cextra, e.data.size(), 8), le(cextra, offset, 8);
    le(cd, 0x02014b50, 4), le(cd, 45, 2), le(cd, zip64 ? 45 : 20, 2), le(cd, 0, 2), le(cd, e.method, 2), le(cd, 0, 4);
    le(cd, e.crc, 4), le(cd, zip64 ? big : e.data.size(), 4), le(cd, zip64 ? big : e.size, 4);
    le(cd, e.name.size(), 2), le(cd, cextra.size(), 2), le(cd, 0, 2), le(cd, 0, 2), le(cd, 0, 2), le(cd, 0, 4);
    le(cd, zip64 ? big : offset, 4);
    cd += e.name + cextra;
  }
  uint64_t cd_offset = out.size(), n = entries.size();
  out += cd;
  if (zip64) {
    uint64_t eocd64 = out.size();
    le(out, 0x06064b50, 4), le(out, 44, 8), le(out, 45, 2), le(out, 45, 2), le(out, 0, 4), le(out, 0, 4);
    le(out, n, 8), le(out, n, 8), le(out, cd.size(), 8), le(out, cd_offset, 8);
    le(out, 0x07064b50, 4), le(out, 0, 4), le(out, eocd64, 8), le(out, 1, 4);
  }
  le(out, 0x06054b50, 4), le(out, 0, 2), le(out, 0, 2);
  le(out, zip64 ? 0xFFFF : n, 2), le(out, zip64 ? 0xFFFF : n, 2);
  le(out, zip64 ? big : cd.size(), 4), le(out, zip64 ? big : cd_offset, 4), le(out, 0, 2);
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

/// The records of a small TorchScript archive saved by torch itself, as (name, bytes), names
/// under the archive's top directory "tiny/".
std::vector<Entry> tiny_records() {
  torch::jit::Module m("__torch__.Tiny");
  m.register_parameter("w", torch::arange(4, torch::kFloat), false);
  auto path = tmp_path("tiny.pt");
  m.save(path);
  caffe2::serialize::PyTorchStreamReader reader(path);
  std::vector<Entry> out;
  for (const auto& name : reader.getAllRecords()) {
    auto [ptr, size] = reader.getRecord(name);
    out.push_back(stored("tiny/" + name, std::string(static_cast<const char*>(ptr.get()), size)));
  }
  return out;
}

std::string load_error(const std::string& path) {
  try {
    Model::load(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "loaded";
}

long peak_rss_mb() {
  struct rusage u {};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

#define CHECK_THAT_CONTAINS(text, needle) CHECK_MESSAGE((text).find(needle) != std::string::npos, text)

}  // namespace

TEST_SUITE("model") {
  TEST_CASE("the test's own tools: deflated zeros inflate to zeros, CRC of zeros") {
    CHECK(crc32_of_zeros(0) == crc32(""));
    for (uint64_t n : {1, 7, 258, 1000, 65537}) CHECK(crc32_of_zeros(n) == crc32(std::string(n, '\0')));
    // the same bytes as a Python twin of deflated_zeros that zlib.decompressobj(-15) inflates to
    // 1000003 zeros, ending exactly at the end of the stream
    CHECK(deflated_zeros(1000003).size() == 1046);
    CHECK(hash_string(deflated_zeros(1000003)) == "b22c49f867c9f2c87a3089f7f84475a55899321bf0c5ab506105c43060acee8e");
  }

  TEST_CASE("archives torch wrote, and the same records re-zipped (also as ZIP64), load") {
    auto records = tiny_records();
    REQUIRE(records.size() >= 3);
    CHECK(load_error(tmp_path("tiny.pt")) == "loaded");
    for (bool zip64 : {false, true}) {
      auto path = tmp_path(zip64 ? "tiny_zip64.pt" : "tiny_zip32.pt");
      write_bytes(path, zip(records, zip64));
      CHECK(load_error(path) == "loaded");
      CHECK(Model::load(path).parameters().at(0).second.sum().item<float>() == 6.0f);
    }
  }

  TEST_CASE("a decompression bomb (2 GiB of deflated zeros in 2 MB) is refused before torch inflates it") {
    auto records = tiny_records();
    bool replaced = false;
    for (auto& e : records) {
      if (e.name.size() < 7 || e.name.compare(e.name.size() - 7, 7, "/data/0") != 0) continue;
      e.size = uint64_t(2) << 30;
      e.data = deflated_zeros(e.size);
      e.method = 8;
      e.crc = crc32_of_zeros(e.size);
      replaced = true;
    }
    REQUIRE(replaced);
    for (bool zip64 : {false, true}) {
      auto path = tmp_path(zip64 ? "bomb64.pt" : "bomb.pt");
      write_bytes(path, zip(records, zip64));
      CHECK(fs::file_size(path) < (4u << 20));
      long before = peak_rss_mb();
      auto start = std::chrono::steady_clock::now();
      std::string err = load_error(path);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      CHECK_THAT_CONTAINS(err, path + ": ");
      CHECK_THAT_CONTAINS(err, "tiny/data/0");
      CHECK_THAT_CONTAINS(err, "compressed");
      CHECK_THAT_CONTAINS(err, "PyTorch stores");
      CHECK_MESSAGE(peak_rss_mb() - before < 256, "peak RSS grew by ", peak_rss_mb() - before, " MB");
      CHECK(seconds < 2.0);
      fs::remove(path);
    }
  }

  TEST_CASE("a compressed entry with a ratio above 1000 is refused, even a small one") {
    auto records = tiny_records();
    Entry e;
    e.name = "tiny/extra/zeros", e.method = 8, e.size = 8u << 20;  // 8 MiB in 8 KB
    e.data = deflated_zeros(e.size), e.crc = crc32_of_zeros(e.size);
    records.push_back(e);
    auto path = tmp_path("ratio.pt");
    write_bytes(path, zip(records, false));
    std::string err = load_error(path);
    CHECK_THAT_CONTAINS(err, "tiny/extra/zeros");
    CHECK_THAT_CONTAINS(err, "ratio");
  }

  TEST_CASE("an archive declaring more than the memory available is refused") {
    auto path = tmp_path("tiny_budget.pt");
    write_bytes(path, zip(tiny_records(), true));
    CHECK_NOTHROW(check_torchscript_archive(path));
    CHECK_NOTHROW(check_torchscript_archive(path, 1u << 20));
    CHECK_THROWS_WITH(check_torchscript_archive(path, 100), doctest::Contains("memory available"));
    CHECK_THROWS_WITH(check_torchscript_archive(path, 100), doctest::Contains((path + ": ").c_str()));
  }

  TEST_CASE("a torch.save pickle (data.pkl, no code/) is named as such, in its ZIP and its legacy format") {
    const std::string why =
        ": a torch.save pickle (a state dict or a pickled nn.Module), not a TorchScript model: export the model "
        "itself with scripts/parity_export.py (docs/bundles.md)";
    auto path = tmp_path("state_dict.pt");
    // what torch.save({"w": torch.zeros(2)}) writes: the pickle, its tensor's storage, the version
    write_bytes(path, zip({stored("state_dict/data.pkl", std::string("\x80\x02}q\x00.", 6)),
                           stored("state_dict/data/0", std::string(8, '\0')), stored("state_dict/version", "3\n")},
                          false));
    CHECK_THROWS_WITH(check_torchscript_archive(path), (path + why).c_str());
    CHECK_EQ(load_error(path), path + why);
    write_bytes(path, std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15) +
                          std::string(40, 'x'));  // the legacy format's pickled magic number
    CHECK_EQ(load_error(path), path + why);
    // TorchScript has data.pkl too, and code/ and constants.pkl: it loads
    auto script = tmp_path("script.pt");
    write_bytes(script, zip(tiny_records(), false));
    CHECK_NOTHROW(check_torchscript_archive(script));
    CHECK_EQ(load_error(script), "loaded");
  }

  TEST_CASE("a malformed central directory is named as such; a file that is no ZIP is torch's to report") {
    auto good = zip(tiny_records(), false);
    auto path = tmp_path("bad.pt");
    auto with = [&](size_t at, uint64_t v, int bytes) {  // the archive with one field of its end record changed
      std::string s = good;
      for (int i = 0; i < bytes; ++i) s[s.size() - 22 + at + i] = static_cast<char>((v >> (8 * i)) & 255);
      write_bytes(path, s);
      return load_error(path);
    };
    CHECK_THAT_CONTAINS(with(16, 0x7FFFFFF0, 4), "central directory");  // its offset past the end
    CHECK_THAT_CONTAINS(with(12, 0x7FFFFFF0, 4), "central directory");  // its size past the end
    CHECK_THAT_CONTAINS(with(10, 60000, 2), "central directory");       // more entries than fit
    CHECK_THAT_CONTAINS(with(8, 60000, 2), "central directory");
    CHECK_THAT_CONTAINS(with(16, 0xFFFFFFFF, 4), "ZIP64");              // ZIP64 marker, no ZIP64 record
    std::string truncated = good.substr(0, good.size() - 30);        // the central directory cut short
    write_bytes(path, truncated + good.substr(good.size() - 22));
    CHECK_THAT_CONTAINS(load_error(path), "central directory");

    write_bytes(path, "not a zip at all");
    std::string err = load_error(path);
    CHECK_THAT_CONTAINS(err, path + ": not a loadable TorchScript file");
    write_bytes(path, "");
    CHECK_THAT_CONTAINS(load_error(path), path + ": not a loadable TorchScript file");
    CHECK_THAT_CONTAINS(load_error(tmp_path("missing.pt")), "no such file");
  }
}
