// libFuzzer target for binding a checkpoint's tensors to a model: the input is
// a model.safetensors file for a fixed one-layer gpt-oss config (MXFP4
// experts as U8 blocks and scales, router and expert biases, sinks), so the
// fuzzer explores wrong dtypes, shapes, missing tensors, truncated data and
// hostile E8M0 scales. Whatever binds must run a forward pass of two tokens
// reading only inside the file; anything else must be refused with
// epwa::Error. Another exception, a bad read or undefined behaviour is a
// finding (the target is built with ASan and UBSan).
//
// The seed corpus is the checkpoint `synth` writes for that config:
//   EPWA_FUZZ_WRITE_SEED=fuzz/corpus/checkpoint/valid ./build-fuzz/checkpoint_fuzz -runs=0
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/thread_pool.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "synth/synth.h"

namespace {

namespace fs = std::filesystem;

// vocab 260 (the smallest synth tokenizer), d_model 32, one sliding layer, 2 heads of 16, 2 experts of 32, top-1.
const char* kConfig = R"({"architectures": ["GptOssForCausalLM"], "vocab_size": 260,
  "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
  "num_key_value_heads": 1, "head_dim": 16, "num_local_experts": 2, "num_experts_per_tok": 1,
  "sliding_window": 4, "layer_types": ["sliding_attention"], "max_position_embeddings": 64,
  "rope_theta": 150000, "torch_dtype": "bfloat16", "tie_word_embeddings": false,
  "quantization_config": {"quant_method": "mxfp4"}})";

struct Folder {
  Folder() {
    char tmpl[] = "/tmp/epwa-checkpoint-fuzz-XXXXXX";
    if (!mkdtemp(tmpl)) std::abort();
    path = tmpl;
    std::ofstream(path + "/config.json") << kConfig;
  }
  ~Folder() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string path;
};

Folder& TheFolder() {
  static Folder folder;
  return folder;
}

void WriteSeed(const char* out) {
  const std::string synth_dir = TheFolder().path + "/seed";
  epwa::SynthOptions o;
  o.config_path = TheFolder().path + "/config.json";
  o.out_dir = synth_dir;
  o.force = true;
  try {
    epwa::WriteSynthModel(o);
  } catch (const epwa::Error& e) {
    std::fprintf(stderr, "cannot write the seed: %s\n", e.what());
    std::abort();
  }
  fs::copy_file(synth_dir + "/model.safetensors", out, fs::copy_options::overwrite_existing);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool seeded = [] {
    if (const char* out = std::getenv("EPWA_FUZZ_WRITE_SEED")) WriteSeed(out);
    return true;
  }();
  (void)seeded;
  const std::string dir = TheFolder().path;
  {
    std::ofstream f(dir + "/model.safetensors", std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    static epwa::ThreadPool pool(1);
    const epwa::ModelConfig config = epwa::LoadModelConfig(dir);
    auto store = epwa::TensorStore::OpenDir(dir);
    epwa::ModelWeights weights = epwa::BindWeights(config, *store);
    epwa::Transformer model(config, std::move(weights), pool);
    epwa::KVCache cache(config, 4);
    std::vector<float> logits;
    const int32_t tokens[] = {1, 2};
    model.Forward(tokens, 0, cache, /*all_logits=*/true, &logits, nullptr);
  } catch (const epwa::Error&) {
    // A refusal with a message is the expected outcome for a bad checkpoint.
  }
  return 0;
}
