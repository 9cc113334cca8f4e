#include "model/weights.h"

#include "base/error.h"

namespace epwa {
namespace {

std::vector<float> ToFloat(const TensorInfo& t) {
  std::vector<float> out(static_cast<size_t>(t.NumElements()));
  WeightView view{t.dtype, t.data, 1, t.NumElements()};
  for (int64_t i = 0; i < t.NumElements(); ++i) out[i] = view.At(0, i);
  return out;
}

WeightView View(const TensorInfo& t) {
  return WeightView{t.dtype, t.data, t.shape[0], t.shape.size() > 1 ? t.shape[1] : 1};
}

}  // namespace

std::string TensorNames::Layer(int64_t layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::string TensorNames::Expert(int64_t layer, int64_t expert, const char* which) {
  return Layer(layer, "block_sparse_moe.experts." + std::to_string(expert) + "." + which +
                          ".weight");
}

ModelWeights BindWeights(const ModelConfig& c, const TensorStore& store) {
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
  return w;
}

}  // namespace epwa
