#include "model/weights.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace epwa {
namespace {

// Converts a small tensor (a norm, a bias, a router) to float32. These are
// read whole here anyway, so each value is also checked: a NaN or infinite
// norm or router weight is refused at load, naming the tensor, instead of
// turning every later output into garbage.
std::vector<float> ToFloat(const TensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.NumElements()));
  WeightView view{t.dtype, t.data, 1, t.NumElements()};
  for (int64_t i = 0; i < t.NumElements(); ++i) {
    out[i] = view.At(0, i);
    if (!std::isfinite(out[i]))
      throw Error(t.file + ": tensor '" + t.name + "' holds " +
                  (std::isnan(out[i]) ? "NaN" : "an infinity") + " at element " +
                  std::to_string(i) + "; the checkpoint is damaged");
  }
  return out;
}

WeightView View(const TensorInfo& t) {
  return WeightView{t.dtype, t.data, t.shape[0], t.shape.size() > 1 ? t.shape[1] : 1};
}

// Layers of the checkpoint past config.json's num_hidden_layers. Running
// fewer layers than a checkpoint has is how some people probe truncated
// models, so, like Hugging Face (which reports "Some weights of the model
// checkpoint ... were not used"), this warns rather than refuses; but it must
// not pass in silence, because it is far more often a damaged config.json.
std::string UnusedLayersWarning(const ModelConfig& c, const TensorStore& store) {
  const std::string prefix = "model.layers.";
  int64_t last_layer = -1, tensors = 0;
  for (const TensorInfo* t : store.All()) {
    if (t->name.compare(0, prefix.size(), prefix) != 0) continue;
    int64_t layer = 0;
    size_t i = prefix.size(), digits = 0;
    for (; i < t->name.size() && t->name[i] >= '0' && t->name[i] <= '9' && digits < 12; ++i, ++digits)
      layer = layer * 10 + (t->name[i] - '0');
    if (digits == 0 || layer < c.num_layers) continue;
    last_layer = std::max(last_layer, layer);
    ++tensors;
  }
  if (last_layer < 0) return "";
  const int64_t unused = last_layer + 1 - c.num_layers;
  return "the checkpoint has " + std::to_string(last_layer + 1) +
         " layers but config.json's num_hidden_layers is " + std::to_string(c.num_layers) + ": " +
         std::to_string(unused) + (unused == 1 ? " layer" : " layers") + " (" +
         std::to_string(tensors) + " tensors, model.layers." + std::to_string(c.num_layers) +
         (unused == 1 ? ") is not used" : " to model.layers." + std::to_string(last_layer) +
                                                ") are not used");
}

}  // namespace

std::string TensorNames::Layer(int64_t layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::string TensorNames::Expert(int64_t layer, int64_t expert, const char* which) {
  return Layer(layer, "block_sparse_moe.experts." + std::to_string(expert) + "." + which +
                          ".weight");
}

ModelWeights BindWeights(const ModelConfig& c, const TensorStore& store,
                         std::vector<std::string>* warnings) {
  ModelWeights w;
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorInfo& t = store.Require(name, {rows, cols});
    w.mapped_bytes += t.NumBytes();
    return View(t);
  };
  auto vector = [&](const std::string& name, int64_t n) {
    const TensorInfo& t = store.Require(name, {n});
    w.converted_bytes += n * sizeof(float);
    return ToFloat(t);
  };

  // The embedding's row count is the first place a wrong vocab_size shows up;
  // say which side disagrees rather than only "shape mismatch".
  if (const TensorInfo* e = store.Find("model.embed_tokens.weight")) {
    Require(e->shape.size() == 2 && e->shape[0] == c.vocab_size && e->shape[1] == D,
            e->file + ": tensor 'model.embed_tokens.weight' has shape [" +
                (e->shape.empty() ? std::string("") : std::to_string(e->shape[0])) +
                (e->shape.size() > 1 ? ", " + std::to_string(e->shape[1]) : std::string("")) +
                "] but config.json says vocab_size " + std::to_string(c.vocab_size) +
                " and hidden_size " + std::to_string(D));
  }
  w.embed = matrix("model.embed_tokens.weight", c.vocab_size, D);
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed;
  } else {
    Require(store.Find("lm_head.weight") != nullptr,
            "tensor 'lm_head.weight' is missing and config.json does not set "
            "tie_word_embeddings=true");
    w.lm_head = matrix("lm_head.weight", c.vocab_size, D);
  }
  w.final_norm = vector("model.norm.weight", D);

  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    auto name = [&](const std::string& s) { return TensorNames::Layer(l, s); };
    lw.attn_norm = vector(name("input_layernorm.weight"), D);
    lw.ffn_norm = vector(name("post_attention_layernorm.weight"), D);
    lw.q = matrix(name("self_attn.q_proj.weight"), c.QDim(), D);
    lw.k = matrix(name("self_attn.k_proj.weight"), c.KvDim(), D);
    lw.v = matrix(name("self_attn.v_proj.weight"), c.KvDim(), D);
    lw.o = matrix(name("self_attn.o_proj.weight"), D, c.QDim());
    if (c.qkv_bias) {
      lw.q_bias = vector(name("self_attn.q_proj.bias"), c.QDim());
      lw.k_bias = vector(name("self_attn.k_proj.bias"), c.KvDim());
      lw.v_bias = vector(name("self_attn.v_proj.bias"), c.KvDim());
    }
    if (c.o_bias) lw.o_bias = vector(name("self_attn.o_proj.bias"), D);
    if (c.IsMoe()) {
      const TensorInfo& router = store.Require(name("block_sparse_moe.gate.weight"),
                                               {c.num_experts, D});
      lw.router = ToFloat(router);
      w.converted_bytes += lw.router.size() * sizeof(float);
      for (int64_t e = 0; e < c.num_experts; ++e) {
        lw.experts.push_back({matrix(TensorNames::Expert(l, e, "w1"), F, D),
                              matrix(TensorNames::Expert(l, e, "w3"), F, D),
                              matrix(TensorNames::Expert(l, e, "w2"), D, F)});
      }
    } else {
      lw.experts.push_back({matrix(name("mlp.gate_proj.weight"), F, D),
                            matrix(name("mlp.up_proj.weight"), F, D),
                            matrix(name("mlp.down_proj.weight"), D, F)});
    }
    w.layers.push_back(std::move(lw));
  }
  if (warnings) {
    if (std::string w_text = UnusedLayersWarning(c, store); !w_text.empty())
      warnings->push_back(std::move(w_text));
  }
  return w;
}

}  // namespace epwa
