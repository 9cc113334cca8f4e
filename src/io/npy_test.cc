// Tests for .npy writing and reading.

#include "io/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/test_temp_dir.h"

namespace epwa {
namespace {

using testing::ReadBytes;
using testing::TempDir;
using testing::WriteBytes;

std::string ErrorOf(const std::string& path) {
  try {
    ReadNpyF32(path, nullptr);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<uint8_t> Header(const std::string& dict, uint8_t major = 1) {
  std::vector<uint8_t> bytes = {0x93, 'N', 'U', 'M', 'P', 'Y', major, 0};
  std::string text = dict;
  text.append((64 - (10 + text.size() + 1) % 64) % 64, ' ');
  text += '\n';
  bytes.push_back(static_cast<uint8_t>(text.size() & 0xff));
  bytes.push_back(static_cast<uint8_t>(text.size() >> 8));
  bytes.insert(bytes.end(), text.begin(), text.end());
  return bytes;
}

TEST(NpyTest, ExactHeaderBytes) {
  TempDir dir;
  const std::string path = dir.File("logits.npy");
  const std::vector<float> data = {0.f, 1.f, -2.5f, 3.f, 4.f, 1e-3f};
  WriteNpyF32(path, data.data(), {2, 3});
  const std::vector<uint8_t> bytes = ReadBytes(path);
  ASSERT_EQ(bytes.size(), 128u + 6 * 4);
  std::string expected("\x93NUMPY\x01\x00\x76\x00", 10);  // version 1.0, header length 118
  expected += "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  expected += std::string(128 - 1 - expected.size(), ' ');
  expected += '\n';
  EXPECT_EQ(std::string(bytes.begin(), bytes.begin() + 128), expected);
  float first_values[6];
  std::memcpy(first_values, bytes.data() + 128, sizeof first_values);
  EXPECT_EQ(std::vector<float>(first_values, first_values + 6), data);
  EXPECT_EQ(dir.List(), std::vector<std::string>{"logits.npy"});
}

TEST(NpyTest, RoundTripOfManyShapes) {
  TempDir dir;
  const std::string path = dir.File("a.npy");
  const std::vector<std::vector<int64_t>> shapes = {
      {2, 3}, {7}, {}, {0, 4}, {1, 1, 5}, {3, 100000}, {12345678901, 0}};
  for (const auto& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> data(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) data[i] = static_cast<float>(i) * 0.5f - 3.f;
    WriteNpyF32(path, data.data(), shape);
    const std::vector<uint8_t> bytes = ReadBytes(path);
    EXPECT_EQ((bytes.size() - data.size() * 4) % 64, 0u) << "data starts 64-byte aligned";
    EXPECT_EQ(bytes[bytes.size() - data.size() * 4 - 1], '\n');
    std::vector<int64_t> read_shape = {99};
    EXPECT_EQ(ReadNpyF32(path, &read_shape), data);
    EXPECT_EQ(read_shape, shape);
  }
  std::vector<int64_t> shape;
  WriteNpyF32(path, nullptr, {0});
  EXPECT_TRUE(ReadNpyF32(path, &shape).empty());
  EXPECT_EQ(shape, std::vector<int64_t>{0});
}

TEST(NpyTest, ReadsOtherHeaderVariants) {
  TempDir dir;
  const std::string path = dir.File("v.npy");
  // Version 2.0 (4-byte header length), double quotes, no trailing comma.
  std::vector<uint8_t> bytes = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0};
  const std::string text = "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<f4\"}\n";
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<uint8_t>(text.size() >> (8 * i)));
  bytes.insert(bytes.end(), text.begin(), text.end());
  const float values[2] = {1.5f, -2.f};
  bytes.insert(bytes.end(), reinterpret_cast<const uint8_t*>(values),
               reinterpret_cast<const uint8_t*>(values) + sizeof values);
  WriteBytes(path, bytes);
  std::vector<int64_t> shape;
  EXPECT_EQ(ReadNpyF32(path, &shape), (std::vector<float>{1.5f, -2.f}));
  EXPECT_EQ(shape, std::vector<int64_t>{2});
}

TEST(NpyTest, ClearErrors) {
  TempDir dir;
  const std::string path = dir.File("bad.npy");
  const auto expect = [&](const std::vector<uint8_t>& bytes, const std::string& part) {
    WriteBytes(path, bytes);
    const std::string message = ErrorOf(path);
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(part), std::string::npos)
        << "\"" << message << "\" lacks \"" << part << "\"";
  };
  expect({}, "not a NumPy .npy file");
  expect({'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0, 0}, "not a NumPy .npy file");
  expect({0x93, 'N', 'U', 'M', 'P', 'Y', 9, 0, 0, 0}, "version 9");
  expect({0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0xff, 0x00, '{'}, "truncated");

  std::vector<uint8_t> f8 = Header("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }");
  f8.resize(f8.size() + 8);
  expect(f8, "'<f8'");
  std::vector<uint8_t> big_endian =
      Header("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }");
  big_endian.resize(big_endian.size() + 4);
  expect(big_endian, "'>f4'");
  std::vector<uint8_t> fortran =
      Header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }");
  fortran.resize(fortran.size() + 16);
  expect(fortran, "Fortran");
  std::vector<uint8_t> short_data =
      Header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }");
  short_data.resize(short_data.size() + 12);
  expect(short_data, "12 bytes of data but shape (2, 2) x float32 needs 16");
  expect(Header("{'descr': '<f4', 'fortran_order': False}"), "'shape'");
  expect(Header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }"),
         "tuple of integers");
  expect(Header("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }"), "True nor False");
  expect(Header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }"),
         "too large");
  expect(Header("{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }"), "malformed");
  expect(Header("['descr']"), "malformed");

  EXPECT_NE(ErrorOf(dir.File("absent.npy")).find("No such file"), std::string::npos);
}

TEST(NpyTest, WriteErrorsLeaveNoFile) {
  TempDir dir;
  const float x = 1.f;
  EXPECT_THROW(WriteNpyF32(dir.File("a.npy"), &x, {-1}), Error);
  EXPECT_THROW(WriteNpyF32(dir.File("a.npy"), nullptr, {2}), Error);
  EXPECT_THROW(WriteNpyF32(dir.File("missing/a.npy"), &x, {1}), Error);
  EXPECT_TRUE(dir.List().empty());
}

}  // namespace
}  // namespace epwa
