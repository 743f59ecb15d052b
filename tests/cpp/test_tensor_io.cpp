// tests/cpp/test_tensor_io.cpp — safetensors/.npy round trips and rejection of malformed files.
#include <ATen/ATen.h>

#include <cstdio>
#include <cstring>
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

  TEST_CASE("content hashes are FNV-1a 64, stable across runs") {
    CHECK(hash_string("") == "cbf29ce484222325");
    CHECK(hash_string("a") == "af63dc4c8601ec8c");
    auto path = tmp_path("h.txt");
    write_bytes(path, "a");
    CHECK(hash_file(path) == "af63dc4c8601ec8c");
    CHECK_THROWS_WITH(hash_file(tmp_path("nope.txt")), doctest::Contains("nope.txt: cannot read"));
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
}
