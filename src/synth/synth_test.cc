#include "synth/synth.h"

#include <gtest/gtest.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/epwa-synth-XXXXXX";
    path_ = mkdtemp(pattern);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string path_;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Synth, EveryPresetIsAValidConfig) {
  for (const std::string& name : SynthPresetNames()) {
    const ModelConfig c = SynthPreset(name);
    const ModelConfig parsed = ParseModelConfig(ModelConfigToJson(c), name);
    EXPECT_EQ(parsed.architecture, c.architecture) << name;
    EXPECT_EQ(parsed.num_experts, c.num_experts) << name;
    EXPECT_EQ(parsed.sliding_window, c.sliding_window) << name;
    EXPECT_EQ(parsed.tie_word_embeddings, c.tie_word_embeddings) << name;
  }
  EXPECT_EQ(SynthPreset("olmoe-1b-7b").num_experts, 64);
  EXPECT_EQ(SynthPreset("olmoe-1b-7b").num_experts_per_tok, 8);
}

TEST(Synth, UnknownPresetListsThePresets) {
  try {
    SynthPreset("gpt-5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mixtral-8x7b"), std::string::npos) << e.what();
  }
}

TEST(Synth, UnitValuesHaveZeroMeanAndUnitVariance) {
  const uint64_t key = SynthTensorKey(1, "model.layers.0.mlp.up_proj.weight");
  double sum = 0, sum2 = 0;
  const int n = 1 << 20;
  for (int i = 0; i < n; ++i) {
    const double v = SynthUnitValue(key, i);
    ASSERT_LT(std::abs(v), 1.7321);
    sum += v;
    sum2 += v * v;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum2 / n, 1.0, 0.01);
  EXPECT_NE(SynthTensorKey(1, "a"), SynthTensorKey(2, "a"));
  EXPECT_NE(SynthTensorKey(1, "a"), SynthTensorKey(1, "b"));
}

TEST(Synth, SameSeedSameBytesAndNoLeftovers) {
  TempDir dir;
  SynthOptions o;
  o.preset = "fixture-mixtral";
  o.out_dir = dir.path_ + "/a";
  WriteSynthModel(o);
  o.out_dir = dir.path_ + "/b";
  WriteSynthModel(o);
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json"})
    EXPECT_EQ(Slurp(dir.path_ + "/a/" + f), Slurp(dir.path_ + "/b/" + f)) << f;
  o.seed = 2;
  o.out_dir = dir.path_ + "/c";
  WriteSynthModel(o);
  EXPECT_NE(Slurp(dir.path_ + "/a/model.safetensors"), Slurp(dir.path_ + "/c/model.safetensors"));
  // Only the three finished folders: no temporary folder left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path_), fs::directory_iterator()), 3);
}

TEST(Synth, ShardsWithAnIndexWhenLarge) {
  TempDir dir;
  SynthOptions o;
  o.preset = "fixture-llama";
  o.out_dir = dir.path_ + "/m";
  o.shard_bytes = 200000;  // force several shards
  WriteSynthModel(o);
  EXPECT_TRUE(fs::exists(o.out_dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(o.out_dir + "/model.safetensors"));
  // The store opens the shards through the index and finds every tensor.
  auto store = TensorStore::OpenDir(o.out_dir);
  EXPECT_GE(store->files().size(), 2u);
  EXPECT_NE(store->Find("lm_head.weight"), nullptr);
  EXPECT_NE(store->Find("model.embed_tokens.weight"), nullptr);
}

TEST(Synth, RefusesExistingFolderWithoutForce) {
  TempDir dir;
  SynthOptions o;
  o.preset = "fixture-mixtral";
  o.out_dir = dir.path_;
  EXPECT_THROW(WriteSynthModel(o), Error);
  o.layers = 5;  // the fixture has 2
  o.force = true;
  EXPECT_THROW(WriteSynthModel(o), Error);
}

// F2 of the hostile sweep: "synth --force --out ." deleted every file of the
// current folder. --force replaces only an earlier synth output.
TEST(Synth, ForceReplacesOnlyAnEarlierSynthFolder) {
  TempDir dir;
  SynthOptions o;
  o.preset = "fixture-mixtral";
  o.out_dir = dir.path_ + "/m";
  WriteSynthModel(o);
  o.force = true;
  o.seed = 3;
  WriteSynthModel(o);  // an earlier output is replaced
  EXPECT_TRUE(fs::exists(o.out_dir + "/model.safetensors"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path_), fs::directory_iterator()), 1);

  // A folder with anything else in it is left exactly as it was.
  const std::string precious = dir.path_ + "/home";
  fs::create_directories(precious + "/sub");
  std::ofstream(precious + "/thesis.tex") << "years of work";
  std::ofstream(precious + "/config.json") << "{}";
  o.out_dir = precious;
  try {
    WriteSynthModel(o);
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("which synth does not write"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Slurp(precious + "/thesis.tex"), "years of work");
  EXPECT_TRUE(fs::exists(precious + "/sub"));

  // The current folder, written as ".", even when it holds only model files.
  const fs::path saved = fs::current_path();
  fs::current_path(dir.path_ + "/m");
  o.out_dir = ".";
  EXPECT_THROW(WriteSynthModel(o), Error);
  o.out_dir = "..";
  EXPECT_THROW(WriteSynthModel(o), Error);
  fs::current_path(saved);
  EXPECT_TRUE(fs::exists(dir.path_ + "/m/model.safetensors"));

  // A file is not a folder to replace.
  o.out_dir = precious + "/thesis.tex";
  EXPECT_THROW(WriteSynthModel(o), Error);
  EXPECT_EQ(Slurp(precious + "/thesis.tex"), "years of work");
}

TEST(Synth, RefusesWhatDoesNotFitOnDisk) {
  // The full Mixtral-8x7B is about 93 GB; /dev/shm (memory-backed) is smaller
  // on any ordinary machine, so the refusal comes before anything is written.
  struct statvfs vfs;
  if (statvfs("/dev/shm", &vfs) != 0 ||
      static_cast<double>(vfs.f_bavail) * vfs.f_frsize > 80e9)
    GTEST_SKIP() << "/dev/shm is missing or too large for this check";
  SynthOptions o;
  o.preset = "mixtral-8x7b";
  o.out_dir = "/dev/shm/epwa-synth-too-big-" + std::to_string(getpid());
  try {
    WriteSynthModel(o);
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MiB are free"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.out_dir));
}

}  // namespace
}  // namespace epwa
