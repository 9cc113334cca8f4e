// The quantized-weight cache end to end: written on the first load, used on
// the second with identical results, and every damaged file detected,
// reported and rebuilt, never used.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "runtime/engine.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

class WeightCacheTest : public ::testing::Test {
 protected:
  void SetUp() override { model_ = testing::MakeModel(dir_, "tiny-random-moe"); }

  std::unique_ptr<Engine> Load(QuantLevel level = QuantLevel::kInt4) {
    LoadOptions o(model_, 2);
    o.quant = level;
    o.cache_dir = cache_.path();
    o.plan_ctx = 64;
    return Engine::Load(o);
  }
  std::vector<float> Logits(Engine& e) { return e.Score(ids_).logits; }
  std::string CacheFile() {
    for (const auto& d : fs::recursive_directory_iterator(cache_.path()))
      if (d.path().extension() == ".epwq") return d.path().string();
    return "";
  }

  testing::TempDir dir_, cache_;
  std::string model_;
  const std::vector<int32_t> ids_ = {1, 50, 300, 7, 99, 640, 12, 13};
};

TEST_F(WeightCacheTest, SecondLoadUsesTheCacheWithIdenticalResults) {
  auto first = Load();
  EXPECT_EQ(first->load_stats().cache, "written");
  const std::vector<float> want = Logits(*first);
  first.reset();
  ASSERT_FALSE(CacheFile().empty());
  auto second = Load();
  EXPECT_EQ(second->load_stats().cache, "hit");
  EXPECT_EQ(second->load_stats().quantize_ms < 1.0, true);
  EXPECT_EQ(Logits(*second), want);
  EXPECT_TRUE(second->load_stats().warnings.empty());
}

TEST_F(WeightCacheTest, LevelsAndModelsGetTheirOwnFiles) {
  Load(QuantLevel::kInt4);
  Load(QuantLevel::kInt8);
  int files = 0;
  for (const auto& d : fs::recursive_directory_iterator(cache_.path()))
    files += d.path().extension() == ".epwq";
  EXPECT_EQ(files, 2);
  // fp16 quantizes nothing and caches nothing.
  EXPECT_EQ(Load(QuantLevel::kFp16)->load_stats().cache, "not used (nothing is quantized)");
}

// Each kind of damage: the load reports it, does not use the file, gives the
// same logits as a fresh quantization, and leaves a valid file behind.
TEST_F(WeightCacheTest, DamagedFilesAreDetectedAndRebuilt) {
  const std::vector<float> want = Logits(*Load());
  const std::string path = CacheFile();
  const auto size = fs::file_size(path);
  struct Damage {
    const char* name;
    std::function<void()> apply;
    const char* reason;
  };
  const std::vector<Damage> damages = {
      {"flipped payload byte",
       [&] {
         std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(static_cast<std::streamoff>(size - 1000));
         char c = 0;
         f.read(&c, 1);
         f.seekp(static_cast<std::streamoff>(size - 1000));
         c = static_cast<char>(c ^ 0x10);
         f.write(&c, 1);
       },
       "checksum"},
      {"truncated", [&] { fs::resize_file(path, size - 100); }, "truncated"},
      {"bad magic",
       [&] {
         std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
         f.write("XXXX", 4);
       },
       "magic"},
      {"garbage header",
       [&] {
         std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(16);  // the header's opening brace
         f.write("[[[[", 4);
       },
       "JSON"},
      {"empty file", [&] { fs::resize_file(path, 0); }, "magic"},
  };
  for (const Damage& d : damages) {
    d.apply();
    auto e = Load();
    const LoadStats& s = e->load_stats();
    EXPECT_EQ(s.cache, "written") << d.name;
    ASSERT_EQ(s.warnings.size(), 1u) << d.name;
    EXPECT_NE(s.warnings[0].find(d.reason), std::string::npos) << d.name << ": " << s.warnings[0];
    EXPECT_EQ(Logits(*e), want) << d.name;
    EXPECT_EQ(fs::file_size(path), size) << d.name;
    EXPECT_EQ(Load()->load_stats().cache, "hit") << d.name;
  }
}

TEST_F(WeightCacheTest, ChangedModelDoesNotHitTheOldFile) {
  Load();
  // Rewriting the checkpoint (new mtime/inode) changes the model identity.
  const std::string st = model_ + "/model.safetensors";
  fs::copy_file(st, st + ".copy");
  fs::rename(st + ".copy", st);
  EXPECT_EQ(Load()->load_stats().cache, "written");
}

TEST_F(WeightCacheTest, UnwritableCacheIsAWarningNotAnError) {
  LoadOptions o(model_, 2);
  o.quant = QuantLevel::kInt4;
  o.cache_dir = "/proc/epwa-no-such-dir";
  o.plan_ctx = 64;
  auto e = Engine::Load(o);
  EXPECT_EQ(e->load_stats().cache, "not written");
  ASSERT_EQ(e->load_stats().warnings.size(), 1u);
  EXPECT_FALSE(Logits(*e).empty());
}

}  // namespace
}  // namespace epwa
