// Tests for safetensors reading, validation, model folders and writing.

#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/test_temp_dir.h"

namespace epwa {
namespace {

using testing::ReadBytes;
using testing::TempDir;
using testing::WriteBytes;

// Runs `fn`, expecting epwa::Error whose message contains every one of
// `parts`; returns the message so callers can check more.
template <typename Fn>
std::string ExpectError(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
    }
    return message;
  }
  ADD_FAILURE() << "expected epwa::Error mentioning " << (parts.empty() ? "" : parts[0]);
  return "";
}

// A safetensors file made by hand: the 8-byte length, `header` verbatim,
// then `data_bytes` bytes of a recognisable pattern.
std::vector<uint8_t> MakeFile(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> bytes(8);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(n >> (8 * i));
  bytes.insert(bytes.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) bytes.push_back(static_cast<uint8_t>(i * 7 + 1));
  return bytes;
}

std::vector<TensorInfo> Parse(const std::vector<uint8_t>& bytes,
                              const std::string& origin = "bad.safetensors") {
  // A heap copy of exactly the file's size, so a sanitizer build flags any
  // read past the end.
  std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes.size()]);
  if (!bytes.empty()) std::memcpy(copy.get(), bytes.data(), bytes.size());
  return ParseSafetensorsHeader(copy.get(), bytes.size(), origin);
}

// A TensorSpec whose fill copies from `data`, which must outlive the write.
TensorSpec SpecFrom(const std::string& name, DType dtype, std::vector<int64_t> shape,
                    const std::vector<uint8_t>* data) {
  TensorSpec spec;
  spec.name = name;
  spec.dtype = dtype;
  spec.shape = std::move(shape);
  spec.fill = [data](uint8_t* out, size_t offset, size_t n) {
    ASSERT_LE(offset + n, data->size());
    std::memcpy(out, data->data() + offset, n);
  };
  return spec;
}

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 13);
  return v;
}

std::vector<uint8_t> BytesOf(const TensorInfo& t) {
  return std::vector<uint8_t>(t.data, t.data + t.NumBytes());
}

// A small valid file with several dtypes, used by the robustness tests.
std::vector<uint8_t> SmallValidFile(const TempDir& dir) {
  const std::vector<uint8_t> a = Pattern(2 * 3 * 4, 1), b = Pattern(4 * 2, 2), c = Pattern(2, 3);
  const std::string path = dir.File("small.safetensors");
  WriteSafetensors(path,
                   {SpecFrom("a", DType::kF32, {2, 3}, &a), SpecFrom("b", DType::kF16, {4}, &b),
                    SpecFrom("c", DType::kBF16, {}, &c)},
                   {{"format", "pt"}});
  return ReadBytes(path);
}

// ---------------------------------------------------------------- round trips

TEST(SafetensorsTest, RoundTripAllDtypesMetadataEmptyAndScalar) {
  TempDir dir;
  const std::string path = dir.File("model.safetensors");
  const std::vector<uint8_t> f32 = Pattern(2 * 3 * 4, 10), f16 = Pattern(5 * 2, 20),
                             bf16 = Pattern(2 * 2 * 2, 30), scalar = Pattern(4, 40), none;
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"note", "hello \"world\""}};
  WriteSafetensors(
      path,
      {SpecFrom("w.f32", DType::kF32, {2, 3}, &f32), SpecFrom("w.f16", DType::kF16, {5}, &f16),
       SpecFrom("w.bf16", DType::kBF16, {2, 2}, &bf16),
       SpecFrom("w.empty", DType::kF32, {0, 5}, &none),
       SpecFrom("w.scalar", DType::kF32, {}, &scalar)},
      metadata);
  EXPECT_EQ(dir.List(), std::vector<std::string>{"model.safetensors"});  // no temp file left

  const std::vector<uint8_t> raw = ReadBytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u) << "header must be padded to 8 bytes";
  EXPECT_EQ(raw.size(), 8 + header_len + f32.size() + f16.size() + bf16.size() + scalar.size());

  auto file = SafetensorsFile::Open(path);
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->metadata(), metadata);
  ASSERT_EQ(file->tensors().size(), 5u);
  std::map<std::string, const TensorInfo*> by_name;
  for (const TensorInfo& t : file->tensors()) {
    by_name[t.name] = &t;
    EXPECT_EQ(t.file, path);
    // The data section starts 8-byte aligned; tensors are packed back to back
    // (the reference reader requires that), so only offsets decide the rest.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 8, t.begin % 8);
  }
  const TensorInfo& tf32 = *by_name.at("w.f32");
  EXPECT_EQ(tf32.dtype, DType::kF32);
  EXPECT_EQ(tf32.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(tf32.NumElements(), 6);
  EXPECT_EQ(tf32.begin, 0u);  // declaration order: first tensor first
  EXPECT_EQ(BytesOf(tf32), f32);
  const TensorInfo& tf16 = *by_name.at("w.f16");
  EXPECT_EQ(tf16.dtype, DType::kF16);
  EXPECT_EQ(tf16.begin, f32.size());
  EXPECT_EQ(BytesOf(tf16), f16);
  const TensorInfo& tbf16 = *by_name.at("w.bf16");
  EXPECT_EQ(tbf16.dtype, DType::kBF16);
  EXPECT_EQ(tbf16.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(BytesOf(tbf16), bf16);
  const TensorInfo& tempty = *by_name.at("w.empty");
  EXPECT_EQ(tempty.shape, (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(tempty.NumElements(), 0);
  EXPECT_EQ(tempty.NumBytes(), 0u);
  const TensorInfo& tscalar = *by_name.at("w.scalar");
  EXPECT_TRUE(tscalar.shape.empty());
  EXPECT_EQ(tscalar.NumElements(), 1);
  EXPECT_EQ(BytesOf(tscalar), scalar);

  // The tensors come back in file order.
  for (size_t i = 1; i < file->tensors().size(); ++i) {
    EXPECT_LE(file->tensors()[i - 1].begin, file->tensors()[i].begin);
  }
}

TEST(SafetensorsTest, WriterWithNoTensorsAndNoMetadata) {
  TempDir dir;
  const std::string path = dir.File("empty.safetensors");
  WriteSafetensors(path, {});
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file->tensors().empty());
  EXPECT_TRUE(file->metadata().empty());
}

TEST(SafetensorsTest, WriterChunksOnRowBoundaries) {
  TempDir dir;
  const std::string path = dir.File("chunked.safetensors");
  const std::vector<uint8_t> data = Pattern(7 * 3 * 4, 5);  // F32 [7, 3]: 12-byte rows
  for (size_t limit : {size_t{1}, size_t{12}, size_t{30}, size_t{1000}}) {
    std::vector<std::pair<size_t, size_t>> calls;
    TensorSpec spec;
    spec.name = "t";
    spec.dtype = DType::kF32;
    spec.shape = {7, 3};
    spec.fill = [&](uint8_t* out, size_t offset, size_t n) {
      calls.emplace_back(offset, n);
      std::memcpy(out, data.data() + offset, n);
    };
    WriteSafetensorsChunked(path, {spec}, {}, limit);
    const size_t expected_chunk =
        std::min<size_t>(data.size(), std::max<size_t>(12, limit / 12 * 12));
    size_t next = 0;
    for (const auto& [offset, n] : calls) {
      EXPECT_EQ(offset, next);
      EXPECT_EQ(offset % 12, 0u) << "chunks start on whole rows (limit " << limit << ")";
      EXPECT_LE(n, expected_chunk);
      next = offset + n;
    }
    EXPECT_EQ(next, data.size());
    EXPECT_EQ(calls.size(), (data.size() + expected_chunk - 1) / expected_chunk);
    auto file = SafetensorsFile::Open(path);
    ASSERT_EQ(file->tensors().size(), 1u);
    EXPECT_EQ(BytesOf(file->tensors()[0]), data);
  }
}

TEST(SafetensorsTest, WriterRejectsBadSpecsWithoutCreatingAFile) {
  TempDir dir;
  const std::string path = dir.File("out.safetensors");
  const std::vector<uint8_t> d = Pattern(8, 1);
  ExpectError(
      [&] {
        WriteSafetensors(
            path, {SpecFrom("x", DType::kF32, {2}, &d), SpecFrom("x", DType::kF32, {2}, &d)});
      },
      {path, "'x'", "more than once"});
  ExpectError([&] { WriteSafetensors(path, {SpecFrom("__metadata__", DType::kF32, {2}, &d)}); },
              {path, "reserved"});
  ExpectError(
      [&] {
        WriteSafetensors(path, {SpecFrom("neg", DType::kF32, {-1, 2}, &d)});
      },
      {path, "'neg'", "[-1, 2]"});
  TensorSpec no_fill;
  no_fill.name = "nofill";
  no_fill.shape = {2};
  ExpectError([&] { WriteSafetensors(path, {no_fill}); }, {path, "'nofill'", "fill"});
  ExpectError([&] { WriteSafetensors(dir.File("missing/out.safetensors"), {}); },
              {"missing/out.safetensors"});
  EXPECT_TRUE(dir.List().empty());
}

TEST(SafetensorsTest, WriterRefusesWhenTheDiskIsTooSmall) {
  TempDir dir;
  const std::string path = dir.File("huge.safetensors");
  TensorSpec spec;
  spec.name = "huge";
  spec.dtype = DType::kF32;
  spec.shape = {int64_t{1} << 50};  // 4 PiB, more than any test machine has
  bool filled = false;
  spec.fill = [&](uint8_t*, size_t, size_t) { filled = true; };
  ExpectError([&] { WriteSafetensors(path, {spec}); },
              {"writing " + path + " needs ", " GB but only ", " are free on " + dir.path()});
  EXPECT_FALSE(filled);
  EXPECT_TRUE(dir.List().empty());
}

TEST(SafetensorsTest, WriterLeavesNothingWhenFillThrows) {
  TempDir dir;
  const std::string path = dir.File("out.safetensors");
  const std::vector<uint8_t> d = Pattern(8, 1);
  TensorSpec bad;
  bad.name = "bad";
  bad.shape = {2};
  bad.fill = [](uint8_t*, size_t, size_t) { throw Error("conversion failed"); };
  ExpectError(
      [&] {
        WriteSafetensors(path, {SpecFrom("ok", DType::kF32, {2}, &d), bad});
      },
      {"conversion failed"});
  EXPECT_TRUE(dir.List().empty());

  // An existing file survives a failed rewrite untouched.
  WriteSafetensors(path, {SpecFrom("ok", DType::kF32, {2}, &d)});
  const std::vector<uint8_t> before = ReadBytes(path);
  EXPECT_THROW(WriteSafetensors(path, {bad}), Error);
  EXPECT_EQ(ReadBytes(path), before);
  EXPECT_EQ(dir.List(), std::vector<std::string>{"out.safetensors"});
}

// ---------------------------------------------------------------- parsing

TEST(SafetensorsTest, ParseReportsDataSectionOffsetAndAllowsGaps) {
  const std::string header = R"({"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::vector<uint8_t> bytes = MakeFile(header, 16);
  uint64_t offset = 0;
  const std::vector<TensorInfo> tensors =
      ParseSafetensorsHeader(bytes.data(), bytes.size(), "gap.safetensors", &offset);
  EXPECT_EQ(offset, 8 + header.size());
  ASSERT_EQ(tensors.size(), 2u);
  EXPECT_EQ(tensors[0].name, "a");  // file order
  EXPECT_EQ(tensors[1].name, "b");
  EXPECT_EQ(tensors[1].begin, 8u);
  EXPECT_EQ(tensors[1].end, 12u);
  EXPECT_EQ(tensors[1].file, "gap.safetensors");
  EXPECT_EQ(tensors[1].data, nullptr);
}

TEST(SafetensorsTest, EmptyTensorsMayShareOffsetsWithOthers) {
  const std::vector<uint8_t> bytes =
      MakeFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
               8);
  EXPECT_EQ(Parse(bytes).size(), 2u);
}

TEST(SafetensorsTest, ExactSizeMismatchMessage) {
  const std::vector<uint8_t> bytes = MakeFile(
      R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[10,4],"data_offsets":[0,100]}})",
      200);
  ExpectError([&] { Parse(bytes, "model.safetensors"); },
              {"model.safetensors: tensor 'model.embed_tokens.weight' has data_offsets [0, 100] "
               "but shape [10, 4] x F32 needs 160 bytes"});
}

TEST(SafetensorsTest, RejectsBadPrefix) {
  ExpectError([] { Parse({}); }, {"bad.safetensors", "too short"});
  ExpectError([] { Parse({1, 0, 0}); }, {"bad.safetensors", "too short"});
  // A length larger than the file.
  std::vector<uint8_t> bytes = MakeFile("{}", 0);
  bytes[0] = 50;
  ExpectError([&] { Parse(bytes); }, {"bad.safetensors", "50 bytes", "truncated"});
  // An absurd length, which must not be believed even before the size check.
  bytes = MakeFile("{}", 0);
  const uint64_t huge = 200'000'000;
  std::memcpy(bytes.data(), &huge, 8);
  ExpectError([&] { Parse(bytes); }, {"bad.safetensors", "100 MB"});
  bytes[7] = 0xff;
  ExpectError([&] { Parse(bytes); }, {"bad.safetensors", "100 MB"});
}

struct BadHeaderCase {
  const char* label;
  std::string header;
  size_t data_bytes;
  std::vector<std::string> expected;  // substrings of the message besides the file name
};

TEST(SafetensorsTest, RejectsEveryKindOfBadHeader) {
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<BadHeaderCase> cases = {
      {"malformed json", R"({"w": )", 0, {"not valid JSON"}},
      {"trailing garbage", R"({} x)", 0, {"not valid JSON"}},
      {"not an object", R"([1, 2])", 0, {"not an object"}},
      {"string root", R"("w")", 0, {"not an object"}},
      {"metadata not object",
       R"({"__metadata__": ["a"]})",
       0,
       {"__metadata__", "not a JSON object"}},
      {"metadata value not string",
       R"({"__metadata__": {"format": 1}})",
       0,
       {"__metadata__", "'format'", "not a string"}},
      {"entry not object", R"({"w": 3})", 0, {"'w'", "not described by a JSON object"}},
      {"missing dtype", R"({"w": {"shape":[2],"data_offsets":[0,8]}})", 8, {"'w'", "no \"dtype\""}},
      {"dtype not string",
       R"({"w": {"dtype":4,"shape":[2],"data_offsets":[0,8]}})",
       8,
       {"'w'", "\"dtype\" that is not a string"}},
      {"unsupported I8",
       R"({"w": {"dtype":"I8","shape":[2],"data_offsets":[0,2]}})",
       2,
       {"unsupported dtype I8 for tensor 'w' in bad.safetensors"}},
      {"unsupported F64",
       R"({"w": {"dtype":"F64","shape":[2],"data_offsets":[0,16]}})",
       16,
       {"unsupported dtype F64 for tensor 'w' in bad.safetensors"}},
      {"unsupported I8",
       R"({"w": {"dtype":"I8","shape":[2],"data_offsets":[0,2]}})",
       2,
       {"unsupported dtype I8 for tensor 'w' in bad.safetensors"}},
      {"missing shape",
       R"({"w": {"dtype":"F32","data_offsets":[0,8]}})",
       8,
       {"'w'", "no \"shape\""}},
      {"shape not array",
       R"({"w": {"dtype":"F32","shape":2,"data_offsets":[0,8]}})",
       8,
       {"'w'", "\"shape\" that is not an array"}},
      {"negative dim",
       R"({"w": {"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
       8,
       {"'w'", "-2", "non-negative integer"}},
      {"float dim",
       R"({"w": {"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})",
       8,
       {"'w'", "2.5", "non-negative integer"}},
      {"string dim",
       R"({"w": {"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})",
       8,
       {"'w'", "non-negative integer"}},
      {"dim beyond int64",
       R"({"w": {"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}})",
       8,
       {"'w'", "non-negative integer"}},
      {"shape overflows",
       R"({"w": {"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})",
       8,
       {"'w'", "overflows"}},
      {"bytes overflow",
       R"({"w": {"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})",
       8,
       {"'w'", "overflows"}},
      {"missing offsets",
       R"({"w": {"dtype":"F32","shape":[2]}})",
       8,
       {"'w'", "no \"data_offsets\""}},
      {"one offset",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[0]}})",
       8,
       {"'w'", "two non-negative integers"}},
      {"three offsets",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})",
       8,
       {"'w'", "two non-negative integers"}},
      {"negative offset",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})",
       8,
       {"'w'", "two non-negative integers"}},
      {"float offset",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})",
       8,
       {"'w'", "two non-negative integers"}},
      {"offsets not array",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":"0,8"}})",
       8,
       {"'w'", "two non-negative integers"}},
      {"begin after end",
       R"({"w": {"dtype":"F32","shape":[0],"data_offsets":[8,0]}})",
       8,
       {"'w'", "[8, 0]", "end before they begin"}},
      {"size mismatch",
       R"({"w": {"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})",
       8,
       {"'w'", "[0, 8]", "[3] x BF16 needs 6 bytes"}},
      {"past the data",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       8,
       {"'w'", "[4, 12]", "past the end of the data section (8 bytes"}},
      {"huge offsets",
       R"({"w": {"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,18446744073709551615]}})",
       8,
       {"'w'", "needs 8 bytes"}},
      {"overlap",
       R"({"w": )" + ok_entry + R"(, "v": {"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       8,
       {"'w'", "'v'", "overlap"}},
      {"identical ranges",
       R"({"w": )" + ok_entry + R"(, "v": )" + ok_entry + "}",
       8,
       {"'w'", "'v'", "overlap"}},
      {"duplicate tensor",
       R"({"w": )" + ok_entry + R"(, "w": )" + ok_entry + "}",
       8,
       {"'w'", "more than once"}},
      {"duplicate key",
       R"({"w": {"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})",
       8,
       {"'w'", "'dtype'", "more than once"}},
      {"too deep",
       R"({"w": {"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})",
       8,
       {"'w'", "nests deeper"}},
      {"very deep", std::string(100000, '[') + std::string(100000, ']'), 0, {"nests deeper"}},
      {"invalid utf-8", "{\"w\xff\": 1}", 0, {"not valid JSON"}},
  };
  for (const BadHeaderCase& c : cases) {
    SCOPED_TRACE(c.label);
    const std::vector<uint8_t> bytes = MakeFile(c.header, c.data_bytes);
    std::vector<std::string> expected = c.expected;
    expected.push_back("bad.safetensors");
    ExpectError([&] { Parse(bytes); }, expected);
  }
}

TEST(SafetensorsTest, OpenNamesThePathOnBadFiles) {
  TempDir dir;
  const std::string path = dir.File("broken.safetensors");
  WriteBytes(path,
             MakeFile(R"({"layer.0.w": {"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", 8));
  ExpectError([&] { SafetensorsFile::Open(path); }, {path, "'layer.0.w'", "needs 16 bytes"});
  ExpectError([&] { SafetensorsFile::Open(dir.File("absent.safetensors")); },
              {dir.File("absent.safetensors"), "No such file"});
  ExpectError([&] { SafetensorsFile::Open(dir.path()); }, {dir.path(), "folder"});
  WriteBytes(path, {});
  ExpectError([&] { SafetensorsFile::Open(path); }, {path, "too short"});
}

TEST(SafetensorsTest, MappedFileHandlesEmptyFiles) {
  TempDir dir;
  const std::string path = dir.File("empty");
  WriteBytes(path, {});
  auto file = MappedFile::Open(path);
  EXPECT_EQ(file->size(), 0u);
  EXPECT_EQ(file->data(), nullptr);
  EXPECT_EQ(file->path(), path);
  WriteBytes(path, {1, 2, 3});
  file = MappedFile::Open(path);
  ASSERT_EQ(file->size(), 3u);
  EXPECT_EQ(file->data()[2], 3);
}

// ---------------------------------------------------------------- robustness

// Every prefix of a valid file either parses or throws epwa::Error; none
// crashes or reads out of bounds (a sanitizer build checks the latter).
TEST(SafetensorsTest, EveryTruncationParsesOrThrows) {
  TempDir dir;
  const std::vector<uint8_t> full = SmallValidFile(dir);
  int parsed = 0;
  for (size_t len = 0; len <= full.size(); ++len) {
    const std::vector<uint8_t> prefix(full.begin(), full.begin() + len);
    try {
      Parse(prefix, "prefix.safetensors");
      ++parsed;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("prefix.safetensors"), std::string::npos) << e.what();
    }
    // The same through the file system, which exercises the mapping too.
    const std::string path = dir.File("prefix.safetensors");
    WriteBytes(path, prefix);
    try {
      SafetensorsFile::Open(path);
    } catch (const Error&) {
    }
  }
  // Only the whole file is valid: the last tensor ends exactly at its end.
  EXPECT_EQ(parsed, 1);
  EXPECT_EQ(Parse(full).size(), 3u);
}

// Corrupting any single byte of the length prefix or header, in a few
// characteristic ways, either still parses or throws epwa::Error.
TEST(SafetensorsTest, EverySingleByteCorruptionParsesOrThrows) {
  TempDir dir;
  const std::vector<uint8_t> full = SmallValidFile(dir);
  uint64_t header_len = 0;
  std::memcpy(&header_len, full.data(), 8);
  for (size_t pos = 0; pos < 8 + header_len; ++pos) {
    for (uint8_t value : {uint8_t{0}, uint8_t{0xff}, uint8_t{'"'}, uint8_t{'['}, uint8_t{'9'},
                          uint8_t{'-'}, uint8_t{'}'}, static_cast<uint8_t>(full[pos] ^ 1)}) {
      std::vector<uint8_t> bytes = full;
      bytes[pos] = value;
      try {
        Parse(bytes);
      } catch (const Error&) {
      }
    }
  }
}

// ---------------------------------------------------------------- model folders

class TensorStoreTest : public ::testing::Test {
 protected:
  // Writes a shard holding F32 tensors of the given names and shapes.
  void WriteShard(const std::string& name,
                  const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
    std::vector<TensorSpec> specs;
    for (const auto& [tensor, shape] : tensors) {
      TensorSpec spec;
      spec.name = tensor;
      spec.dtype = DType::kF32;
      spec.shape = shape;
      spec.fill = [](uint8_t* out, size_t offset, size_t n) {
        for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(offset + i);
      };
      specs.push_back(spec);
    }
    WriteSafetensors(dir_.File(name), specs);
  }
  void WriteIndex(const std::string& weight_map_json) {
    const std::string text =
        R"({"metadata": {"total_size": 0}, "weight_map": )" + weight_map_json + "}";
    WriteBytes(dir_.File("model.safetensors.index.json"),
               std::vector<uint8_t>(text.begin(), text.end()));
  }

  TempDir dir_;
};

TEST_F(TensorStoreTest, OpensAShardedFolder) {
  WriteShard("model-00001-of-00002.safetensors", {{"b.weight", {2, 3}}, {"a.weight", {4}}});
  WriteShard("model-00002-of-00002.safetensors", {{"c.weight", {3}}});
  WriteIndex(R"({"a.weight": "model-00001-of-00002.safetensors",
                 "b.weight": "model-00001-of-00002.safetensors",
                 "c.weight": "model-00002-of-00002.safetensors"})");
  auto store = TensorStore::OpenDir(dir_.path());
  EXPECT_EQ(store->files(),
            (std::vector<std::string>{dir_.File("model-00001-of-00002.safetensors"),
                                      dir_.File("model-00002-of-00002.safetensors")}));
  const std::vector<const TensorInfo*> all = store->All();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0]->name, "a.weight");
  EXPECT_EQ(all[1]->name, "b.weight");
  EXPECT_EQ(all[2]->name, "c.weight");
  EXPECT_EQ(store->TotalBytes(), (6u + 4u + 3u) * 4u);
  ASSERT_NE(store->Find("c.weight"), nullptr);
  EXPECT_EQ(store->Find("c.weight")->file, dir_.File("model-00002-of-00002.safetensors"));
  EXPECT_EQ(store->Find("c.weight")->data[5], 5);
  EXPECT_EQ(store->Find("nope"), nullptr);
  EXPECT_EQ(store->Require("b.weight", {2, 3}).NumElements(), 6);

  ExpectError(
      [&] {
        store->Require("b.weight", {3, 2});
      },
      {dir_.File("model-00001-of-00002.safetensors"), "'b.weight'", "[2, 3]", "[3, 2]"});
  ExpectError([&] { store->Require("lm_head.weight", {3, 2}); }, {"'lm_head.weight'", dir_.path()});
}

TEST_F(TensorStoreTest, IndexErrors) {
  WriteShard("s1.safetensors", {{"a", {1}}, {"b", {1}}});
  WriteShard("s2.safetensors", {{"b", {1}}, {"c", {1}}});

  WriteIndex(R"({"a": "s1.safetensors", "z": "s3.safetensors"})");
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"model.safetensors.index.json", "'s3.safetensors'", "does not exist"});

  WriteIndex(R"({"a": "s1.safetensors", "c": "s1.safetensors"})");
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"'c'", dir_.File("s1.safetensors"), "does not contain it"});

  WriteIndex(R"({"a": "s1.safetensors", "c": "s2.safetensors"})");
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"'b'", "twice", dir_.File("s1.safetensors"), dir_.File("s2.safetensors")});

  WriteIndex(R"({"a": "../s1.safetensors"})");
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); }, {"'a'", "plain file name"});

  WriteIndex(R"({"a": 3})");
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); }, {"model.safetensors.index.json", "'a'"});

  WriteIndex(R"({})");
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"model.safetensors.index.json", "no tensors"});

  WriteBytes(dir_.File("model.safetensors.index.json"), {'{', 'x'});
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"model.safetensors.index.json", "not valid JSON"});

  WriteBytes(dir_.File("model.safetensors.index.json"), {'{', '}'});
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"model.safetensors.index.json", "weight_map"});
}

TEST_F(TensorStoreTest, SingleFileFolders) {
  ExpectError([&] { TensorStore::OpenDir(dir_.File("nowhere")); },
              {"model folder '" + dir_.File("nowhere") + "' does not exist"});
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"no .safetensors weights in '" + dir_.path() +
               "' (expected model.safetensors or model.safetensors.index.json)"});

  // A lone file of any name is accepted.
  WriteShard("weights.safetensors", {{"x", {2}}});
  auto store = TensorStore::OpenDir(dir_.path());
  EXPECT_EQ(store->files(), std::vector<std::string>{dir_.File("weights.safetensors")});
  EXPECT_NE(store->Find("x"), nullptr);

  // Two of them without an index are ambiguous...
  WriteShard("other.safetensors", {{"y", {2}}});
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); },
              {"several", "other.safetensors", "weights.safetensors"});

  // ...unless one is model.safetensors, which is then the model.
  WriteShard("model.safetensors", {{"m", {2}}});
  store = TensorStore::OpenDir(dir_.path());
  EXPECT_EQ(store->files(), std::vector<std::string>{dir_.File("model.safetensors")});
  EXPECT_NE(store->Find("m"), nullptr);
  EXPECT_EQ(store->Find("x"), nullptr);

  // A broken model.safetensors is reported with its path.
  WriteBytes(dir_.File("model.safetensors"), {1, 2, 3});
  ExpectError([&] { TensorStore::OpenDir(dir_.path()); }, {dir_.File("model.safetensors")});
}

}  // namespace
}  // namespace epwa
