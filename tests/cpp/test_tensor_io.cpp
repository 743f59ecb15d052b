// tests/cpp/test_tensor_io.cpp — safetensors/.npy round trips and rejection of malformed files.
#include <ATen/ATen.h>

#include <cstdio>
#include <cstring>
#include <unistd.h>  // getpid
#include <filesystem>
#include <fstream>
#include <string>

#include "host/files.hpp"
#include "host/tensor_io.hpp"
#include <doctest/doctest.h>  // after torch: glog defines CHECK

using namespace parity;

namespace {

std::string tmp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("parity_io_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

/// A safetensors file from a header text and raw data.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

#define CHECK_THAT_CONTAINS(text, needle) CHECK_MESSAGE((text).find(needle) != std::string::npos, text)

std::string read_error(const std::string& header, const std::string& data) {
  auto path = tmp_path("bad.safetensors");
  write_bytes(path, safetensors_bytes(header, data));
  try {
    read_safetensors(path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_SUITE("tensor_io") {
  TEST_CASE("safetensors round trip: every LibTorch dtype, metadata, names") {
    NamedTensorList in;
    for (auto dt : {at::kBool, at::kByte, at::kChar, at::kShort, at::kInt, at::kLong, at::kHalf,
                    at::kBFloat16, at::kFloat, at::kDouble}) {
      auto x = (at::randn({3, 4}) * 10).to(dt);
      in.emplace_back(std::string("t_") + c10::toString(dt), x);
    }
    in.emplace_back("scalar", at::scalar_tensor(3.5));
    in.emplace_back("empty", at::zeros({0, 5}));
    auto path = tmp_path("round.safetensors");
    write_safetensors(path, in, {{"format", "pt"}});
    auto out = read_safetensors(path);
    REQUIRE(out.tensors.size() == in.size());
    for (const auto& [name, t] : in) {
      bool found = false;
      for (const auto& [n2, t2] : out.tensors)
        if (n2 == name) {
          found = true;
          CHECK_MESSAGE((t2.scalar_type() == t.scalar_type()), name);
          CHECK_MESSAGE(t2.sizes().vec() == t.sizes().vec(), name);
          CHECK_MESSAGE(at::equal(t2, t), name);
        }
      CHECK_MESSAGE(found, name);
    }
    REQUIRE(out.metadata.size() == 1);
    CHECK(out.metadata[0].second == "pt");
    // the header is padded to 8 bytes, as the format recommends
    std::ifstream f(path, std::ios::binary);
    uint64_t n = 0;
    f.read(reinterpret_cast<char*>(&n), 8);
    CHECK(n % 8 == 0);
  }

  TEST_CASE("safetensors dtypes LibTorch 1.13 lacks are widened") {
    std::string data;
    uint16_t u16[2] = {1, 65535};
    uint32_t u32[1] = {4000000000u};
    uint8_t f8[4] = {0x38, 0xC0, 0x7F, 0x3C};  // E4M3: 1.0, -2.0, NaN ; E5M2: 0x3C = 1.0
    data.append(reinterpret_cast<char*>(u16), 4);
    data.append(reinterpret_cast<char*>(u32), 4);
    data.append(reinterpret_cast<char*>(f8), 4);
    std::string header = R"({"a":{"dtype":"U16","shape":[2],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"U32","shape":[1],"data_offsets":[4,8]},)"
                         R"("c":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[8,11]},)"
                         R"("d":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[11,12]}})";
    auto path = tmp_path("wide.safetensors");
    write_bytes(path, safetensors_bytes(header, data));
    auto out = read_safetensors(path);
    REQUIRE(out.tensors.size() == 4);
    CHECK((out.tensors[0].second.scalar_type() == at::kInt));
    CHECK(out.tensors[0].second[1].item<int64_t>() == 65535);
    CHECK((out.tensors[1].second.scalar_type() == at::kLong));
    CHECK(out.tensors[1].second[0].item<int64_t>() == 4000000000LL);
    CHECK(out.tensors[2].second[0].item<float>() == 1.0f);
    CHECK(out.tensors[2].second[1].item<float>() == -2.0f);
    CHECK(std::isnan(out.tensors[2].second[2].item<float>()));
    CHECK(out.tensors[3].second[0].item<float>() == 1.0f);
  }

  TEST_CASE("malformed safetensors files are rejected with the reason") {
    std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    CHECK(read_error(ok, std::string(8, '\0')) == "(no error)");

    auto path = tmp_path("tiny.safetensors");
    write_bytes(path, "abc");
    CHECK_THROWS_WITH(read_safetensors(path), doctest::Contains("need at least 8"));

    std::string huge(8, '\0');
    uint64_t big = 200'000'000;
    std::memcpy(huge.data(), &big, 8);
    write_bytes(path, huge + "{}");
    CHECK_THROWS_WITH(read_safetensors(path), doctest::Contains("exceeds the 100 MB limit"));

    std::string past(8, '\0');
    uint64_t len = 1000;
    std::memcpy(past.data(), &len, 8);
    write_bytes(path, past + "{}");
    CHECK_THROWS_WITH(read_safetensors(path), doctest::Contains("runs past the end of the file"));

    CHECK(read_error("[1, 2]", "") == path.substr(0, path.rfind('/')) + "/bad.safetensors: header is not a JSON object");
    CHECK_MESSAGE(read_error("{\"a\": ", "").find("not valid JSON") != std::string::npos, "bad json");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", std::string(8, '\0'))
                      .find("hold 16 bytes, shape and dtype need 8") != std::string::npos, "size");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'))
                      .find("run past the data") != std::string::npos, "bounds");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, '\0'))
                      .find("overlaps") != std::string::npos, "overlap");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'))
                      .find("gap of 4 bytes before tensor 'a'") != std::string::npos, "gap");
    CHECK_MESSAGE(read_error(ok, std::string(12, '\0')).find("4 bytes after the last tensor") != std::string::npos,
                  "trailing");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0'))
                      .find("unknown dtype 'Q4'") != std::string::npos, "dtype");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'))
                      .find("negative") != std::string::npos, "negative dim");
    CHECK_MESSAGE(read_error(R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0'))
                      .find("needs dtype, shape and data_offsets") != std::string::npos, "missing field");
    CHECK_THROWS_WITH(read_safetensors(tmp_path("missing.safetensors")), doctest::Contains("No such file"));
  }

  TEST_CASE("npy round trip and numpy layouts") {
    auto path = tmp_path("a.npy");
    for (auto dt : {at::kFloat, at::kDouble, at::kHalf, at::kLong, at::kInt, at::kByte, at::kBool}) {
      auto x = (at::randn({2, 3}) * 5).to(dt);
      write_npy(path, x);
      auto y = read_npy(path);
      CHECK_MESSAGE((y.scalar_type() == dt), std::string(c10::toString(dt)));
      CHECK_MESSAGE(at::equal(x, y), std::string(c10::toString(dt)));
    }
    write_npy(path, at::arange(4, at::kLong));
    CHECK(read_npy(path).sizes().vec() == std::vector<int64_t>{4});

    // Fortran order, big-endian: a 2x3 float64 matrix [[0,1,2],[3,4,5]] stored column-major
    std::string header = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }";
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    std::string bytes("\x93NUMPY\x01\x00", 8);
    uint16_t hl = header.size();
    bytes.append(reinterpret_cast<char*>(&hl), 2);
    bytes += header;
    for (double v : {0.0, 3.0, 1.0, 4.0, 2.0, 5.0}) {
      char be[8];
      std::memcpy(be, &v, 8);
      std::reverse(be, be + 8);
      bytes.append(be, 8);
    }
    write_bytes(path, bytes);
    auto m = read_npy(path);
    CHECK(at::equal(m, at::arange(6, at::kDouble).reshape({2, 3})));
  }

  TEST_CASE("content hashes are SHA-256, stable across runs (more in test_files.cpp)") {
    CHECK(hash_string("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(hash_string("a") == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
    auto path = tmp_path("h.txt");
    write_bytes(path, "a");
    CHECK(hash_file(path) == "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb");
    CHECK_THROWS_WITH(hash_file(tmp_path("nope.txt")), doctest::Contains("nope.txt: cannot read"));
  }

  TEST_CASE("tensor writes go through write_file_atomic: a link planted at the temporary name is not followed") {
    auto victim = tmp_path("victim.txt");
    write_bytes(victim, "precious");
    for (const char* name : {"linked.safetensors", "linked.npy"}) {
      auto path = tmp_path(name);
      auto tmp = path + ".tmp." + std::to_string(::getpid());
      std::filesystem::remove(tmp);
      std::filesystem::create_symlink(victim, tmp);
      auto t = at::arange(6, at::kFloat).reshape({2, 3});
      if (std::string(name).find(".npy") != std::string::npos) write_npy(path, t);
      else write_safetensors(path, {{"t", t}});
      std::ifstream in(victim);
      CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == "precious");
      CHECK(std::filesystem::is_symlink(std::filesystem::symlink_status(tmp)));
      std::filesystem::remove(tmp);
    }
    CHECK(at::equal(read_npy(tmp_path("linked.npy")), at::arange(6, at::kFloat).reshape({2, 3})));
    CHECK(at::equal(read_safetensors(tmp_path("linked.safetensors")).tensors.at(0).second,
                    at::arange(6, at::kFloat).reshape({2, 3})));
  }

  TEST_CASE("npy rejections") {
    auto path = tmp_path("b.npy");
    CHECK_THROWS_WITH(write_npy(path, at::zeros({2}, at::kBFloat16)), doctest::Contains(".npy has no bfloat16"));
    write_bytes(path, "not numpy at all");
    CHECK_THROWS_WITH(read_npy(path), doctest::Contains("bad magic"));
    write_npy(path, at::zeros({4}));
    std::string whole;
    {
      std::ifstream f(path, std::ios::binary);
      whole.assign(std::istreambuf_iterator<char>(f), {});
    }
    write_bytes(path, whole.substr(0, whole.size() - 4));
    CHECK_THROWS_WITH(read_npy(path), doctest::Contains("data is 12 bytes, shape needs 16"));
  }

  TEST_CASE("npy headers: a bounded scanner, overflow-checked sizes, the file named in every error") {
    // v1 file from a header dict and data (the header is padded and ends with a newline)
    auto npy = [](const std::string& dict, const std::string& data, int version = 1) {
      std::string h = dict + "\n";
      std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(version) + '\0';
      if (version == 1) {
        uint16_t n = static_cast<uint16_t>(h.size());
        out.append(reinterpret_cast<const char*>(&n), 2);
      } else {
        uint32_t n = static_cast<uint32_t>(h.size());
        out.append(reinterpret_cast<const char*>(&n), 4);
      }
      return out + h + data;
    };
    auto error_of = [](const std::string& bytes) -> std::string {
      auto path = tmp_path("h.npy");
      write_bytes(path, bytes);
      try {
        read_npy(path);
      } catch (const std::runtime_error& e) {
        return e.what();
      }
      return "(no error)";
    };
    std::string data(24, '\0');
    // 200 KB of spaces inside the shape crashed std::regex (stack overflow); it is a valid header
    std::string spaces(200000, ' ');
    auto path = tmp_path("spaces.npy");
    write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2," + spaces + "3), }", data, 2));
    CHECK(read_npy(path).sizes().vec() == std::vector<int64_t>{2, 3});
    CHECK(error_of(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }", data)) ==
          tmp_path("h.npy") + ": .npy header: negative dimension at offset 51");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", data)),
                        "h.npy: .npy header: dimension overflows");
    // each dim fits, the product does not (count *= d overflowed before)
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", data)),
                        "h.npy: shape overflows");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }", data)),
                        "h.npy: shape overflows");  // 2^61 elements x 8 bytes overflows the byte count
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f4', 'shape': (2, 3), }", data)),
                        "h.npy: .npy header needs descr, fortran_order and shape");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3), }", data)),
                        "h.npy: .npy header: expected True or False");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data)),
                        "h.npy: .npy header: unexpected key 'x'");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", data)),
                        "h.npy: .npy header: expected '}'");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': '<f99999999999', 'fortran_order': False, 'shape': (2,), }", data)),
                        "h.npy: unsupported dtype descr '<f99999999999'");
    CHECK_THAT_CONTAINS(error_of(npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", data)),
                        "h.npy: .npy header: structured dtypes are not supported");
    CHECK_THAT_CONTAINS(error_of(std::string("\x93NUMPY\x01\x00\xff\xff", 10)), "h.npy: truncated .npy header");
    // big-endian and Fortran order decode to the same tensor as little-endian C order
    std::string be;
    for (int i = 0; i < 6; ++i) {
      float v = static_cast<float>(i);
      char b[4];
      std::memcpy(b, &v, 4);
      be.append({b[3], b[2], b[1], b[0]});
    }
    path = tmp_path("be.npy");
    write_bytes(path, npy("{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }", be));
    CHECK(at::equal(read_npy(path), at::arange(6, at::kFloat).reshape({3, 2}).t()));
  }

  TEST_CASE("every kept fuzz regression input reads cleanly or fails with the file's name") {
    int files = 0;
    for (const char* format : {"safetensors", "npy"})
      for (const auto& entry :
           std::filesystem::recursive_directory_iterator(std::string(PARITY_FUZZ_REGRESSIONS) + "/" + format)) {
        if (!entry.is_regular_file()) continue;
        std::string path = entry.path().string();
        ++files;
        try {
          if (entry.path().extension() == ".npy") read_npy(path);
          else read_safetensors(path);
        } catch (const std::runtime_error& e) {
          CHECK_THAT_CONTAINS(std::string(e.what()), path + ": ");
        }
      }
    CHECK(files >= 3);
  }

  TEST_CASE("safetensors: a zero-element tensor reads back without touching its (empty) data") {
    auto path = tmp_path("zero.safetensors");
    write_bytes(path, safetensors_bytes(R"({"z":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})", ""));
    auto f = read_safetensors(path);
    REQUIRE(f.tensors.size() == 1);
    CHECK(f.tensors[0].second.sizes().vec() == std::vector<int64_t>{0, 3});
  }
}
