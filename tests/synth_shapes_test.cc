// Every real-model shape `epwa synth` offers, shortened to one layer, loads
// and generates: the loader, the tokenizer that covers the whole vocabulary
// and the forward pass all work at real widths (d_model 2048-4096, 32k-152k
// vocabularies, 8-64 experts).
#include <gtest/gtest.h>
#include <sys/statvfs.h>

#include "runtime/engine.h"
#include "test_util.h"

namespace epwa {
namespace {

class SynthShapesTest : public ::testing::TestWithParam<const char*> {};

TEST_P(SynthShapesTest, OneLayerModelLoadsAndGenerates) {
  testing::TempDir dir;
  struct statvfs vfs;
  // The largest one-layer model (llama-3-8b, 128k vocabulary) is 2.6 GB.
  if (statvfs(dir.path().c_str(), &vfs) != 0 ||
      static_cast<double>(vfs.f_bavail) * vfs.f_frsize < 6e9)
    GTEST_SKIP() << "fewer than 6 GB free in /tmp: real-shape synth test skipped";
  SynthOptions o;
  o.preset = GetParam();
  o.out_dir = dir.path() + "/m";
  o.layers = 1;
  WriteSynthModel(o);
  const ModelConfig want = SynthPreset(GetParam());
  auto engine = Engine::Load({o.out_dir, 0});
  const ModelConfig& got = engine->config();
  EXPECT_EQ(got.num_layers, 1);
  EXPECT_EQ(got.hidden_size, want.hidden_size);
  EXPECT_EQ(got.vocab_size, want.vocab_size);
  EXPECT_EQ(got.num_experts, want.num_experts);
  EXPECT_EQ(got.num_experts_per_tok, want.num_experts_per_tok);
  EXPECT_EQ(engine->tokenizer().VocabSize(), want.vocab_size);
  GenerateOptions g;
  g.max_new_tokens = 2;
  GenerateResult r = engine->Generate(engine->EncodePrompt("Hello there"), g);
  EXPECT_EQ(r.tokens.size(), 2u);
  for (int32_t t : r.tokens) EXPECT_LT(t, want.vocab_size);
}

INSTANTIATE_TEST_SUITE_P(RealShapes, SynthShapesTest,
                         ::testing::Values("mixtral-8x7b", "mistral-7b", "llama-3-8b", "qwen2.5-3b",
                                           "olmoe-1b-7b", "qwen1.5-moe-a2.7b"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& ch : name)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return name;
                         });

}  // namespace
}  // namespace epwa
