// Hostile-input regressions for the model's own files and numbers
// (../shared/reports/hostile-sweep-2026-12-01.md: F4/F11/F17 for the config
// files and prompt files, F6 non-finite weights, F9 generation settings,
// F12 thread counts, F14 ignored config fields, F15 misleading messages):
// the real epwa binary on damaged copies of the bundled model.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "test_util.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* kBundled = "models/tiny-moe";

class HostileModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cache_ = new testing::TempDir();
    setenv("EPWA_CACHE_DIR", cache_->path().c_str(), 1);
  }
  static void TearDownTestSuite() { delete cache_; }

  // A model folder `name` whose small files are copies (free to damage) and
  // whose weights and tokenizer are links to the bundled model's.
  std::string Model(const std::string& name) {
    const std::string m = scratch_.path() + "/" + name;
    fs::create_directory(m);
    for (const auto& entry : fs::directory_iterator(kBundled)) {
      const std::string file = entry.path().filename().string();
      if (file == "model.safetensors" || file == "tokenizer.json")
        fs::create_symlink(fs::absolute(entry.path()), m + "/" + file);
      else
        fs::copy_file(entry.path(), m + "/" + file);
    }
    return m;
  }
  static void Write(const std::string& path, const std::string& text) {
    fs::remove(path);
    std::ofstream(path, std::ios::binary) << text;
  }
  static json ReadJson(const std::string& path) { return json::parse(testing::ReadFile(path)); }

  // A copy of the bundled model with element(s) of one BF16 tensor set to
  // `value`: `row` < 0 sets element `index`, otherwise the whole row.
  std::string Damaged(const std::string& name, const std::string& tensor, float value,
                      int64_t index, int64_t row = -1) {
    const std::string m = Model(name);
    std::string bytes = testing::ReadFile(std::string(kBundled) + "/model.safetensors");
    uint64_t header_len = 0;
    std::memcpy(&header_len, bytes.data(), 8);
    const json header = json::parse(bytes.substr(8, header_len));
    const json& t = header.at(tensor);
    EXPECT_EQ(t.at("dtype"), "BF16");
    const uint64_t begin = 8 + header_len + t.at("data_offsets")[0].get<uint64_t>();
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    const uint16_t bf16 = static_cast<uint16_t>(bits >> 16);
    const int64_t cols = t.at("shape").size() > 1 ? t.at("shape")[1].get<int64_t>() : 1;
    const int64_t first = row < 0 ? index : row * cols, count = row < 0 ? 1 : cols;
    for (int64_t i = first; i < first + count; ++i)
      std::memcpy(bytes.data() + begin + 2 * i, &bf16, 2);
    fs::remove(m + "/model.safetensors");
    Write(m + "/model.safetensors", bytes);
    return m;
  }

  Result Run(const std::string& args) { return RunEpwa(args, scratch_); }

  static testing::TempDir* cache_;
  testing::TempDir scratch_;
};
testing::TempDir* HostileModelTest::cache_ = nullptr;

// F9: generation_config.json cannot smuggle in what the flags refuse, and
// every refusal names the file and the field.
TEST_F(HostileModelTest, GenerationConfigValuesTheFlagsRefuseAreRefused) {
  const std::string m = Model("gen");
  const struct {
    const char* json;
    const char* needle;
  } cases[] = {
      {R"({"temperature": -1})", "field 'temperature' is -1"},             // B_gen_temp_neg
      {R"({"top_p": 5})", "field 'top_p' is 5, must be in (0, 1]"},         // B_gen_top_p_5
      {R"({"top_p": -1})", "field 'top_p' is -1"},                          // B_gen_top_p_neg
      {R"({"top_k": -5})", "field 'top_k' is -5"},                          // B_gen_top_k_neg
      {R"({"repetition_penalty": 0})", "field 'repetition_penalty' is 0"},  // B_gen_rep_zero
      {R"({"repetition_penalty": -1})", "field 'repetition_penalty' is -1"},
      {R"({"min_p": 2})", "field 'min_p' is 2"},                            // B_gen_min_p_2
      {R"({"eos_token_id": "2"})", "field 'eos_token_id' must be a token id"},
      {R"({"eos_token_id": 8589934592})", "token id 8589934592, which is outside the vocabulary"},
      {R"({"bos_token_id": 99999})", "field 'bos_token_id' has token id 99999"},
      {R"({"max_new_tokens": -5})", "field 'max_new_tokens' is -5"},
      {R"({"max_new_tokens": 1099511627776})", "field 'max_new_tokens' is 1099511627776, which is too large"},
      {R"({"temperature": 1e39})", "field 'temperature' is 1e+39, which is not a finite"},
  };
  for (const auto& c : cases) {
    Write(m + "/generation_config.json", c.json);
    const Result r = Run("run -m " + m + " -p hi -n 2 --no-cache");
    ExpectCleanError(r, 1, "generation_config.json: ");
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.json << "\n" << r.err;
  }
  // The limits themselves still work.
  Write(m + "/generation_config.json", R"({"do_sample": false, "max_new_tokens": 3, "top_k": 0})");
  const Result ok = Run("run -m " + m + " -p hi --json --no-cache");
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(json::parse(ok.out)["ids"].size(), 3u);
}

// F9: NaN passes CLI11's range checks, and CLI11 clamps or wraps seeds that
// do not fit uint64; all are refused.
TEST_F(HostileModelTest, FlagsRefuseNanAndSeedsThatDoNotFit) {
  const std::string base = std::string("run -m ") + kBundled + " -p hi -n 2 --no-cache ";
  for (const std::string flag : {"--temp nan", "--top-p nan", "--min-p nan",
                                  "--repeat-penalty inf", "--temp -inf"}) {
    const Result r = Run(base + flag);
    ExpectCleanError(r, 2, flag.substr(0, flag.find(' ')) + ": ");
    EXPECT_NE(r.err.find("must be a finite number"), std::string::npos) << r.err;
  }
  for (const std::string seed :
       {"18446744073709551616", "-1", "99999999999999999999999", "0x10", "1e3", ""}) {
    const Result r = Run(base + "--seed '" + seed + "'");
    ExpectCleanError(r, 2, "--seed");
  }
  // The largest seed is accepted, and digits are decimal (CLI11 alone would
  // read 010 as octal 8).
  for (const auto& [given, expected] :
       std::vector<std::pair<std::string, uint64_t>>{{"18446744073709551615", UINT64_MAX}, {"010", 10}}) {
    const Result r = Run(base + "--json --seed " + given);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["sampler"]["seed"].get<uint64_t>(), expected) << given;
  }
}

// F14: config.json fields that change the model are honoured or refused.
TEST_F(HostileModelTest, ConfigFieldsThatChangeTheModelAreNotIgnored) {
  const std::string m = Model("cfg");
  const json original = ReadJson(m + "/config.json");
  auto with = [&](const char* key, const json& value) {
    json c = original;
    c[key] = value;
    Write(m + "/config.json", c.dump());
    return Run("run -m " + m + " -p hi -n 2 --temp 0 --no-cache");
  };
  for (const char* act : {"gelu", "no_such_activation"}) {  // B_cfg_hidden_act_*
    const Result r = with("hidden_act", act);
    ExpectCleanError(r, 1, "config.json: hidden_act \"" + std::string(act) + "\" is not supported");
    EXPECT_NE(r.err.find("\"silu\""), std::string::npos) << r.err;
  }
  ExpectCleanError(with("rms_norm_eps", 1e300), 1,  // B_cfg_eps_huge
                   "config.json: rms_norm_eps is 1e+300, which is not a positive float32");
  // F15 (B_cfg_*_u64max): the real value, not -1.
  ExpectCleanError(with("vocab_size", json::parse("18446744073709551615")), 1,
                   "'vocab_size' is 18446744073709551615, which is too large");
  // "swish" is Hugging Face's other name for SiLU: same output as "silu".
  const Result silu = with("hidden_act", "silu"), swish = with("hidden_act", "swish");
  ASSERT_EQ(swish.exit_code, 0) << swish.err;
  EXPECT_EQ(swish.out, silu.out);
  // B_cfg_layers_fewer: a config.json with fewer layers than the checkpoint
  // runs (as in Hugging Face), with a warning that counts the unused layers.
  const Result fewer = with("num_hidden_layers", 2);
  ASSERT_EQ(fewer.exit_code, 0) << fewer.err;
  EXPECT_NE(fewer.err.find("epwa: warning: the checkpoint has 4 layers but config.json's "
                           "num_hidden_layers is 2: 2 layers"),
            std::string::npos)
      << fewer.err;
  EXPECT_EQ(silu.err.find("warning"), std::string::npos) << silu.err;
}

// F4, F15, F17: config files that are not regular files, or absurdly large,
// are refused at once with what they are.
TEST_F(HostileModelTest, ConfigFilesMustBeSmallRegularFiles) {
  for (const char* file : {"config.json", "generation_config.json", "tokenizer_config.json"}) {
    const std::string m = Model(std::string("odd-") + file);
    const std::string path = m + "/" + file;
    fs::remove(path);
    fs::create_directory(path);  // A_dir_cfg_isdir
    ExpectCleanError(Run("run -m " + m + " -p hi -n 1"), 1, std::string(file) + "' is a folder");
    fs::remove(path);
    ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);  // A_dir_cfg_fifo
    const auto start = std::chrono::steady_clock::now();
    ExpectCleanError(Run("run -m " + m + " -p hi -n 1"), 1, std::string(file) + "' is a FIFO");
    fs::remove(path);
    {
      std::ofstream(path) << "{}";
    }
    fs::resize_file(path, 500ull << 20);  // B_cfg_500mb, sparse
    ExpectCleanError(Run("run -m " + m + " -p hi -n 1"), 1, "more than the 4 MiB");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 5.0) << file;
  }
}

// F11, F15: --prompt-file must be a regular file of sane size.
TEST_F(HostileModelTest, PromptFileMustBeARegularFile) {
  const std::string run = std::string("run -m ") + kBundled + " -n 1 -f ";
  ExpectCleanError(Run(run + scratch_.path()), 1, "the --prompt-file '" + scratch_.path() + "' is a folder");
  ExpectCleanError(Run(run + "/dev/zero"), 1, "the --prompt-file '/dev/zero' is a character device");
  const std::string fifo = scratch_.path() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectCleanError(Run(run + fifo), 1, "is a FIFO");
  const std::string empty = scratch_.path() + "/empty.txt";
  Write(empty, "");
  ExpectCleanError(Run(run + empty), 1, "the --prompt-file '" + empty + "' has no text");
}

// F6: NaN or infinite weights end in one error naming where the first
// non-finite value comes from, never in garbage text or null perplexities.
TEST_F(HostileModelTest, NonFiniteWeightsAreReportedNotComputedWith) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const struct {
    const char* tensor;
    float value;
    int64_t index, row;
    const char* args;
    const char* needle;
  } cases[] = {
      // Used in place (BF16 mapped): found by the logits check, located by
      // the checked re-run.
      {"model.embed_tokens.weight", nan, 0, 1, "run -p hi -n 4",  // A_st_nan_bos_row
       "comes from the embedding of token 1 (model.embed_tokens.weight)"},
      {"model.embed_tokens.weight", nan, 0, 1, "score -p hi --json",  // A_st_nan_bos_row_score
       "comes from the embedding of token 1"},
      {"model.layers.1.block_sparse_moe.experts.3.w1.weight", nan, 0, 0,  // A_st_nan_expert
       "run -p 'hello there my friend, how are you' -n 8",
       "layer 1, expert 3 (model.layers.1.block_sparse_moe.experts.3.w1.weight)"},
      {"lm_head.weight", nan, 5, -1, "score -p hi --json",  // A_st_nan_lmhead_score
       "the output projection (lm_head.weight)"},
      {"model.layers.0.self_attn.q_proj.weight", 3.3e38f, 0, 3, "run -p 'hello there' -n 2",
       "layer 0 (model.layers.0.self_attn.q_proj.weight)"},  // A_st_big_qproj
      // Converted to float32 at load (norms, routers): refused at load.
      {"model.layers.2.input_layernorm.weight", inf, 5, -1, "run -p hi -n 2",  // A_st_inf_norm
       "tensor 'model.layers.2.input_layernorm.weight' holds an infinity at element 5"},
      {"model.layers.0.block_sparse_moe.gate.weight", nan, 9, -1, "score -p hi --json",
       "tensor 'model.layers.0.block_sparse_moe.gate.weight' holds NaN at element 9"},
      // Quantized at load: refused by the quantizer.
      {"model.layers.1.block_sparse_moe.experts.2.w2.weight", nan, 100, -1,  // A_st_nan_expert_int8
       "run -p hi -n 2 --quant int8",
       "tensor 'model.layers.1.block_sparse_moe.experts.2.w2.weight': the matrix holds a "
       "non-finite value (NaN or infinity) at row 0, column 100"},
      {"model.layers.0.self_attn.q_proj.weight", -inf, 7, -1, "run -p hi -n 2 --quant int4",
       "tensor 'model.layers.0.self_attn.q_proj.weight': the matrix holds a non-finite value"},
  };
  int n = 0;
  for (const auto& c : cases) {
    const std::string m = Damaged("nan" + std::to_string(n++), c.tensor, c.value, c.index, c.row);
    std::string args = c.args;
    args.insert(args.find(' '), " -m " + m + " --no-cache");
    const Result r = Run(args);
    ExpectCleanError(r, 1, c.needle);
    EXPECT_EQ(r.out.find("null"), std::string::npos) << r.out;
  }
}

// F12: a thread count beyond the hardware is capped with a warning, and a
// run stays fast.
TEST_F(HostileModelTest, ThreadCountIsCappedToTheHardware) {
  const auto start = std::chrono::steady_clock::now();
  const Result r = Run(std::string("run -m ") + kBundled + " -p hi -n 4 -t 1024 --no-cache");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("epwa: warning: 1024 threads were asked for, but this process may run on "
                       "only "),
            std::string::npos)
      << r.err;
  EXPECT_LT(seconds, 10.0);
}

}  // namespace
}  // namespace epwa
