// The quantized-weight cache end to end: written on the first load, used on
// the second with identical results, and every damaged file detected,
// reported and rebuilt, never used.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

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

// Every family's matrices round-trip through the cache: slices of Granite's
// fused expert stacks, a shared expert, dense layers among MoE ones.
TEST_F(WeightCacheTest, EveryFamilyRoundTripsAtIntLevels) {
  for (const char* preset : {"fixture-qwen3-moe", "fixture-olmoe", "fixture-qwen2-moe",
                             "fixture-granite-moe", "fixture-qwen3"}) {
    for (QuantLevel level : {QuantLevel::kInt8, QuantLevel::kInt4}) {
      SCOPED_TRACE(std::string(preset) + " " + QuantLevelName(level));
      testing::TempDir dir, cache;
      LoadOptions o(testing::MakeModel(dir, preset), 2);
      o.quant = level;
      o.cache_dir = cache.path();
      o.plan_ctx = 64;
      const std::vector<int32_t> ids = {1, 50, 300, 7, 99, 140, 12, 13};
      auto first = Engine::Load(o);
      EXPECT_EQ(first->load_stats().cache, "written");
      const std::vector<float> want = first->Score(ids).logits;
      first.reset();
      auto second = Engine::Load(o);
      EXPECT_EQ(second->load_stats().cache, "hit");
      EXPECT_EQ(second->Score(ids).logits, want);
    }
  }
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
      // A file written by an epwa whose cache held each matrix's scales in
      // one array (format 1): the same header with the older number.
      {"older format",
       [&] {
         std::string head(64, '\0');
         std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
         f.seekg(16);
         f.read(head.data(), 64);
         const size_t at = head.find("\"format\":2");
         ASSERT_NE(at, std::string::npos) << head;
         f.seekp(static_cast<std::streamoff>(16 + at + 9));
         f.write("1", 1);
       },
       "cache format 1"},
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

// F13 of the hostile sweep: a checkpoint edited in place whose size, inode and
// mtime were all kept (an in-place write followed by touch -r / os.utime) was
// served stale from the cache. The change time, which user space cannot set,
// is part of the identity.
TEST_F(WeightCacheTest, InPlaceEditWithRestoredMtimeIsNotServedStale) {
  Load();
  const std::string st = model_ + "/model.safetensors";
  struct stat before {};
  ASSERT_EQ(::stat(st.c_str(), &before), 0);
  {
    // Zero the last 64 KB of weights in place (same file, same size).
    std::fstream f(st, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(before.st_size - 65536));
    const std::string zeros(65536, '\0');
    f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
  }
  const timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, st.c_str(), times, 0), 0);
  struct stat after {};
  ASSERT_EQ(::stat(st.c_str(), &after), 0);
  ASSERT_EQ(after.st_ino, before.st_ino);
  ASSERT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);

  auto cached = Load();
  EXPECT_EQ(cached->load_stats().cache, "written");
  LoadOptions o(model_, 2);
  o.quant = QuantLevel::kInt4;
  o.use_cache = false;
  o.plan_ctx = 64;
  EXPECT_EQ(Logits(*cached), Logits(*Engine::Load(o)));
}

// F8: a writer killed by SIGKILL leaves "<cache>.tmp.<pid>"; the next load
// removes it once its process is gone and it has not been written for a
// minute. F4: a FIFO at the cache path is refused (not waited on) and
// replaced by a valid file.
TEST_F(WeightCacheTest, OrphanedTemporaryFilesAndFifosAreCleanedUp) {
  Load();
  const std::string path = CacheFile();
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string orphan = path + ".tmp." + std::to_string(child);
  std::ofstream(orphan) << std::string(4096, 'x');
  const timeval old[2] = {{::time(nullptr) - 600, 0}, {::time(nullptr) - 600, 0}};
  ASSERT_EQ(::utimes(orphan.c_str(), old), 0);
  EXPECT_EQ(Load()->load_stats().cache, "hit");
  EXPECT_FALSE(fs::exists(orphan));

  fs::remove(path);
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  auto e = Load();
  EXPECT_EQ(e->load_stats().cache, "written");
  ASSERT_EQ(e->load_stats().warnings.size(), 1u);
  EXPECT_NE(e->load_stats().warnings[0].find("FIFO"), std::string::npos) << e->load_stats().warnings[0];
  EXPECT_TRUE(fs::is_regular_file(path));
  EXPECT_EQ(Load()->load_stats().cache, "hit");
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
