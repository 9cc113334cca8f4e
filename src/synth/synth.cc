#include "synth/synth.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/weights.h"
#include "synth/corpus.h"
#include "tokenizer/tokenizer.h"

namespace epwa {
namespace {

namespace fs = std::filesystem;

ModelConfig Make(const char* arch, int64_t vocab, int64_t d, int64_t ff, int64_t layers,
                 int64_t heads, int64_t kv_heads, int64_t experts, int64_t top_k, int64_t ctx,
                 double theta) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = vocab;
  c.hidden_size = d;
  c.intermediate_size = ff;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = d / heads;
  c.num_experts = experts;
  c.num_experts_per_tok = top_k;
  c.max_position_embeddings = ctx;
  c.rope_theta = theta;
  c.rms_norm_eps = 1e-5f;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  const std::string a = arch;
  c.model_type = a == "MixtralForCausalLM" ? "mixtral"
                 : a == "MistralForCausalLM" ? "mistral"
                 : a == "Qwen2ForCausalLM" ? "qwen2"
                                           : "llama";
  c.qkv_bias = c.model_type == "qwen2";
  return c;
}

struct Preset {
  const char* name;
  const char* description;
  ModelConfig config;
};

std::vector<Preset> Presets() {
  std::vector<Preset> p;
  // Small models: the bundled default and the reference-test fixtures.
  p.push_back({"tiny-random-moe", "4-layer Mixtral layout, 8 experts top-2, GQA; the default model",
               Make("MixtralForCausalLM", 768, 128, 256, 4, 4, 2, 8, 2, 2048, 10000.0)});
  p.push_back({"fixture-mixtral", "2-layer Mixtral layout, 4 experts top-2 (reference tests)",
               Make("MixtralForCausalLM", 512, 64, 96, 2, 4, 2, 4, 2, 256, 10000.0)});
  {
    ModelConfig c = Make("MistralForCausalLM", 512, 64, 128, 2, 4, 1, 0, 0, 256, 10000.0);
    c.sliding_window = 5;
    p.push_back({"fixture-mistral-swa", "2-layer Mistral layout, sliding window 5 (reference tests)", c});
  }
  p.push_back({"fixture-llama", "2-layer Llama layout, untied lm_head (reference tests)",
               Make("LlamaForCausalLM", 512, 64, 160, 2, 8, 2, 0, 0, 256, 500000.0)});
  {
    ModelConfig c = Make("Qwen2ForCausalLM", 512, 64, 128, 2, 4, 2, 0, 0, 256, 1000000.0);
    c.tie_word_embeddings = true;
    p.push_back({"fixture-qwen2", "2-layer Qwen2 layout, q/k/v biases, tied embeddings (reference tests)", c});
  }
  // A Mixtral-shaped model of about 1 GB whose per-token weights leave the
  // caches: the decode/prefill benchmark.
  p.push_back({"bench-moe", "2-layer Mixtral layout, d_model 2048, 8 experts of d_ff 4096 (benchmarks)",
               Make("MixtralForCausalLM", 32000, 2048, 4096, 2, 16, 4, 8, 2, 4096, 1000000.0)});
  // Real shapes.
  {
    ModelConfig c = Make("MixtralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 8, 2, 32768, 1000000.0);
    p.push_back({"mixtral-8x7b", "Mixtral-8x7B", c});
  }
  p.push_back({"mistral-7b", "Mistral-7B-v0.1 (sliding window 4096)", [] {
                 ModelConfig c = Make("MistralForCausalLM", 32000, 4096, 14336, 32, 32, 8, 0, 0, 32768, 10000.0);
                 c.sliding_window = 4096;
                 return c;
               }()});
  p.push_back({"llama-3-8b", "Llama-3-8B",
               Make("LlamaForCausalLM", 128256, 4096, 14336, 32, 32, 8, 0, 0, 8192, 500000.0)});
  p.push_back({"qwen2.5-3b", "Qwen2.5-3B (tied embeddings)", [] {
                 ModelConfig c = Make("Qwen2ForCausalLM", 151936, 2048, 11008, 36, 16, 2, 0, 0, 32768, 1000000.0);
                 c.tie_word_embeddings = true;
                 return c;
               }()});
  p.push_back({"olmoe-1b-7b", "OLMoE-1B-7B shape in the Mixtral layout (64 experts, top-8)",
               Make("MixtralForCausalLM", 50304, 2048, 1024, 16, 16, 16, 64, 8, 4096, 10000.0)});
  p.push_back({"qwen1.5-moe-a2.7b", "Qwen1.5-MoE-A2.7B routed experts in the Mixtral layout (60 experts, top-4; no shared expert)",
               Make("MixtralForCausalLM", 151936, 2048, 1408, 24, 16, 16, 60, 4, 8192, 1000000.0)});
  return p;
}

uint64_t SplitMix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// How a tensor's values are scaled. Linear layers get std 1/sqrt(fan_in) so
// activations keep unit scale through the stack; the lm_head gets a larger
// std so logits are of order 1-10 and sampling is not uniform; norm weights
// are 1 +- a little so that a missing norm weight would show in tests.
struct Init {
  float scale;
  float offset;
};

Init InitFor(const std::string& name, const ModelConfig& c, int64_t fan_in) {
  auto ends_with = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  if (ends_with("norm.weight")) return {0.1f, 1.0f};
  if (ends_with(".bias")) return {0.1f, 0.0f};
  if (name == "model.embed_tokens.weight")
    return {c.tie_word_embeddings ? 3.0f / std::sqrt(static_cast<float>(c.hidden_size)) : 1.0f, 0.0f};
  if (name == "lm_head.weight") return {3.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
  if (ends_with("gate.weight") && name.find("block_sparse_moe") != std::string::npos)
    return {2.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
  return {1.0f / std::sqrt(static_cast<float>(fan_in)), 0.0f};
}

std::vector<TensorSpec> TensorSpecs(const ModelConfig& c, DType dtype, uint64_t seed) {
  struct Shape {
    std::string name;
    std::vector<int64_t> shape;
  };
  std::vector<Shape> shapes;
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  shapes.push_back({"model.embed_tokens.weight", {c.vocab_size, D}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto n = [&](const std::string& s) { return TensorNames::Layer(l, s); };
    shapes.push_back({n("input_layernorm.weight"), {D}});
    shapes.push_back({n("self_attn.q_proj.weight"), {c.QDim(), D}});
    shapes.push_back({n("self_attn.k_proj.weight"), {c.KvDim(), D}});
    shapes.push_back({n("self_attn.v_proj.weight"), {c.KvDim(), D}});
    if (c.qkv_bias) {
      shapes.push_back({n("self_attn.q_proj.bias"), {c.QDim()}});
      shapes.push_back({n("self_attn.k_proj.bias"), {c.KvDim()}});
      shapes.push_back({n("self_attn.v_proj.bias"), {c.KvDim()}});
    }
    shapes.push_back({n("self_attn.o_proj.weight"), {D, c.QDim()}});
    if (c.o_bias) shapes.push_back({n("self_attn.o_proj.bias"), {D}});
    shapes.push_back({n("post_attention_layernorm.weight"), {D}});
    if (c.IsMoe()) {
      shapes.push_back({n("block_sparse_moe.gate.weight"), {c.num_experts, D}});
      for (int64_t e = 0; e < c.num_experts; ++e) {
        shapes.push_back({TensorNames::Expert(l, e, "w1"), {F, D}});
        shapes.push_back({TensorNames::Expert(l, e, "w2"), {D, F}});
        shapes.push_back({TensorNames::Expert(l, e, "w3"), {F, D}});
      }
    } else {
      shapes.push_back({n("mlp.gate_proj.weight"), {F, D}});
      shapes.push_back({n("mlp.up_proj.weight"), {F, D}});
      shapes.push_back({n("mlp.down_proj.weight"), {D, F}});
    }
  }
  shapes.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) shapes.push_back({"lm_head.weight", {c.vocab_size, D}});

  std::vector<TensorSpec> specs;
  for (const auto& s : shapes) {
    const int64_t fan_in = s.shape.size() > 1 ? s.shape[1] : s.shape[0];
    const Init init = InitFor(s.name, c, fan_in);
    // Router and 1-D tensors are stored in float32 like the rest when the
    // dtype is float32, else in the checkpoint dtype, as real checkpoints do.
    TensorSpec spec;
    spec.name = s.name;
    spec.dtype = dtype;
    spec.shape = s.shape;
    const std::string name = s.name;
    const uint64_t key = SynthTensorKey(seed, name);
    spec.fill = [key, init, dtype](uint8_t* out, size_t offset_bytes, size_t nbytes) {
      const size_t esize = DTypeSize(dtype);
      const uint64_t first = offset_bytes / esize;
      const size_t count = nbytes / esize;
      for (size_t i = 0; i < count; ++i) {
        const float v = init.offset + init.scale * SynthUnitValue(key, first + i);
        switch (dtype) {
          case DType::kF32: std::memcpy(out + i * 4, &v, 4); break;
          case DType::kF16: { uint16_t h = F32ToF16(v); std::memcpy(out + i * 2, &h, 2); break; }
          case DType::kBF16: { uint16_t h = F32ToBF16(v); std::memcpy(out + i * 2, &h, 2); break; }
          // Checkpoints hold float tensors only; quantized types are made at
          // load time, so synth never writes them.
          case DType::kQ8:
          case DType::kQ4:
          case DType::kNF4: break;
        }
      }
    };
    specs.push_back(std::move(spec));
  }
  return specs;
}

size_t SpecBytes(const TensorSpec& s) {
  size_t n = DTypeSize(s.dtype);
  for (int64_t d : s.shape) n *= static_cast<size_t>(d);
  return n;
}

void WriteText(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.Write(text.data(), text.size());
  f.Commit();
}

}  // namespace

std::vector<std::string> SynthPresetNames() {
  std::vector<std::string> names;
  for (const auto& p : Presets()) names.push_back(p.name);
  return names;
}

ModelConfig SynthPreset(const std::string& name) {
  std::string list;
  for (const auto& p : Presets()) {
    if (name == p.name) return p.config;
    list += (list.empty() ? "" : ", ") + std::string(p.name);
  }
  throw Error("unknown synth preset '" + name + "' (presets: " + list + ")");
}

uint64_t SynthTensorKey(uint64_t seed, const std::string& name) {
  return SplitMix(seed ^ Fnv1a(name));
}

float SynthUnitValue(uint64_t tensor_key, uint64_t index) {
  const uint64_t bits = SplitMix(tensor_key + index);
  // 24 random bits -> [0, 1) exactly representable, then unit variance.
  const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
  return (u - 0.5f) * 3.4641016f;
}


// --force replaces a folder only when it holds nothing but what synth itself
// writes: "--out ." or "--out ~" with --force used to delete every file of
// the user's folder. Never the current folder or one above it, nor a
// symbolic link (whose target synth did not make).
static void CheckReplaceableSynthFolder(const fs::path& out, const std::string& shown) {
  const fs::file_status status = fs::symlink_status(out);
  Require(status.type() == fs::file_type::directory,
          "synth --force will not replace '" + shown + "': it is not a folder");
  std::error_code ec;
  const fs::path cwd = fs::current_path(ec);
  if (!ec) {
    for (fs::path p = cwd; !p.empty(); p = p.parent_path()) {
      Require(!fs::equivalent(p, out, ec),
              "synth --force will not replace '" + shown +
                  "': it is the current folder or one above it");
      if (p == p.parent_path()) break;
    }
  }
  static const std::regex kSynthFiles(
      R"((config|generation_config|tokenizer|tokenizer_config)\.json|model\.safetensors(\.index\.json)?|)"
      R"(model-[0-9]{5}-of-[0-9]{5}\.safetensors)");
  for (const fs::directory_entry& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    Require(e.symlink_status().type() == fs::file_type::regular && std::regex_match(name, kSynthFiles),
            "synth --force will not replace '" + shown + "': it holds '" + name +
                "', which synth does not write (only an earlier synth output folder is replaced)");
  }
}

uint64_t WriteSynthModel(const SynthOptions& o) {
  ModelConfig c = SynthPreset(o.preset);
  if (o.layers > 0) {
    Require(o.layers <= c.num_layers, "--layers " + std::to_string(o.layers) + " exceeds the " +
                                          std::to_string(c.num_layers) + " layers of " + o.preset);
    c.num_layers = o.layers;
  }
  c.torch_dtype = o.dtype == DType::kF32 ? "float32" : o.dtype == DType::kF16 ? "float16" : "bfloat16";
  Require(!o.out_dir.empty(), "synth needs an output folder (--out DIR)");
  // weakly_canonical drops "." and ".." so that "--out ." names the folder
  // itself, not an entry called "." inside it.
  const fs::path out = fs::weakly_canonical(fs::absolute(o.out_dir));
  Require(out.has_relative_path(), "synth --out '" + o.out_dir + "' names the root folder");
  if (fs::symlink_status(out).type() != fs::file_type::not_found) {
    Require(o.force, "output folder '" + o.out_dir + "' already exists (use --force to replace it)");
    CheckReplaceableSynthFolder(out, o.out_dir);
  }
  fs::create_directories(out.parent_path());

  std::vector<TensorSpec> specs = TensorSpecs(c, o.dtype, o.seed);
  uint64_t total = 0;
  for (const auto& s : specs) total += SpecBytes(s);

  struct statvfs vfs;
  if (statvfs(out.parent_path().c_str(), &vfs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    const uint64_t needed = total + (64ull << 20);
    Require(needed <= free_bytes,
            "writing " + o.preset + " needs " + std::to_string(needed >> 20) + " MiB but only " +
                std::to_string(free_bytes >> 20) + " MiB are free on " + out.parent_path().string() +
                " (try --layers N for fewer layers)");
  }

  // Build everything in a temporary sibling folder and rename it into place
  // at the end, so an interrupted run never leaves a half-written model.
  const fs::path tmp = out.string() + ".tmp-" + std::to_string(getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    // Shards: consecutive tensors up to shard_bytes each.
    std::vector<std::vector<TensorSpec>> shards(1);
    uint64_t in_shard = 0;
    for (auto& s : specs) {
      const uint64_t b = SpecBytes(s);
      if (in_shard > 0 && in_shard + b > o.shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(std::move(s));
      in_shard += b;
    }
    const std::map<std::string, std::string> metadata = {{"format", "pt"}};
    if (shards.size() == 1) {
      WriteSafetensors((tmp / "model.safetensors").string(), shards[0], metadata);
    } else {
      nlohmann::json index;
      index["metadata"] = {{"total_size", total}};
      index["weight_map"] = nlohmann::json::object();
      for (size_t i = 0; i < shards.size(); ++i) {
        char file[64];
        std::snprintf(file, sizeof(file), "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        WriteSafetensors((tmp / file).string(), shards[i], metadata);
        for (const auto& s : shards[i]) index["weight_map"][s.name] = file;
      }
      WriteText((tmp / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    }
    WriteText((tmp / "config.json").string(), ModelConfigToJson(c));
    nlohmann::json gen = {{"bos_token_id", 1}, {"eos_token_id", 2}, {"do_sample", true},
                          {"temperature", 0.8}, {"top_p", 0.95}, {"top_k", 40}};
    WriteText((tmp / "generation_config.json").string(), gen.dump(2) + "\n");
    const int32_t tokenizer_vocab = static_cast<int32_t>(c.vocab_size);
    WriteText((tmp / "tokenizer.json").string(),
              TrainByteFallbackBpeJson(SynthTokenizerCorpus(), tokenizer_vocab));
    WriteText((tmp / "tokenizer_config.json").string(), TokenizerConfigJson());
    // The old folder is moved aside before the new one takes its place and
    // only then deleted, so a failure at any step loses neither.
    const fs::path old = out.string() + ".old-" + std::to_string(getpid());
    const bool had_old = fs::symlink_status(out).type() != fs::file_type::not_found;
    if (had_old) fs::rename(out, old);
    try {
      fs::rename(tmp, out);
    } catch (...) {
      std::error_code ec;
      if (had_old) fs::rename(old, out, ec);
      throw;
    }
    if (had_old) {
      std::error_code ec;
      fs::remove_all(old, ec);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return total;
}

}  // namespace epwa
