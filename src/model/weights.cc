#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "kernels/kernels.h"

namespace epwa {
namespace {

// Converts a small tensor (a norm, a bias, a router) to float32. These are
// read whole here anyway, so each value is also checked: a NaN or infinite
// norm or router weight is refused at load, naming the tensor, instead of
// turning every later output into garbage.
std::vector<float> ToFloat(const TensorInfo& t) {
  Require(IsFloatDType(t.dtype), t.file + ": tensor '" + t.name + "' is stored as " +
                                     DTypeName(t.dtype) + ", but it must be F32, F16 or BF16");
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

// Tensor names of each expert layout (the rest of a layer is named alike in
// every supported family).
struct ExpertNaming {
  const char* router;       // per-layer suffix
  const char* expert_stem;  // "<stem><e>.<part>.weight"; empty for fused layouts
  const char* part[3];      // gate, up, down
  const char* fused_gate_up;  // fused layouts: [E, 2 d_ff, d_model], gate rows first
  const char* fused_down;     // [E, d_model, d_ff]
};

const ExpertNaming& NamingOf(ExpertLayout layout) {
  static const ExpertNaming kMixtral{"block_sparse_moe.gate.weight",
                                     "block_sparse_moe.experts.",
                                     {"w1", "w3", "w2"},
                                     nullptr,
                                     nullptr};
  static const ExpertNaming kPerExpert{"mlp.gate.weight",
                                       "mlp.experts.",
                                       {"gate_proj", "up_proj", "down_proj"},
                                       nullptr,
                                       nullptr};
  static const ExpertNaming kFused{"block_sparse_moe.router.layer.weight",
                                   nullptr,
                                   {"gate", "up", "down"},
                                   "block_sparse_moe.input_linear.weight",
                                   "block_sparse_moe.output_linear.weight"};
  static const ExpertNaming kMxfp4{"mlp.router.weight",
                                   nullptr,
                                   {"gate", "up", "down"},
                                   "mlp.experts.gate_up_proj",
                                   "mlp.experts.down_proj"};
  switch (layout) {
    case ExpertLayout::kMixtral: return kMixtral;
    case ExpertLayout::kPerExpert: return kPerExpert;
    case ExpertLayout::kFused: return kFused;
    case ExpertLayout::kMxfp4Interleaved: return kMxfp4;
  }
  return kMixtral;
}

const char* kMlpParts[3] = {"gate_proj", "up_proj", "down_proj"};

int PartIndex(FfnPart part) { return static_cast<int>(part); }

// The length of the q_norm / k_norm weights of each kind.
int64_t QkNormLength(const ModelConfig& c, bool key) {
  switch (c.qk_norm) {
    case QkNormKind::kNone: return 0;
    case QkNormKind::kPerHead: return c.head_dim;
    case QkNormKind::kWholeProjection: return key ? c.KvDim() : c.QDim();
  }
  return 0;
}

// A float32 copy of an FP8 matrix [rows, cols]: each value times the
// float32 scale of its 128 x 128 block in the sibling `<name>_scale_inv`
// [ceil(rows / 128), ceil(cols / 128)] (DeepSeek's layout). A missing or
// misshapen scale tensor, or a non-finite result, is refused naming it.
std::vector<float> DequantizeFp8(const TensorStore& store, const TensorInfo& t, int64_t rows, int64_t cols,
                                 int64_t block) {
  const std::string scale_name = t.name + "_scale_inv";
  Require(store.Find(scale_name) != nullptr,
          t.file + ": tensor '" + t.name + "' is FP8 (F8_E4M3) but its scales '" + scale_name +
              "' are missing");
  Require(block > 0, t.file + ": tensor '" + t.name +
                         "' is FP8 (F8_E4M3) but config.json has no fp8 quantization_config with "
                         "weight_block_size [128, 128]");
  const int64_t br = (rows + block - 1) / block, bc = (cols + block - 1) / block;
  const TensorInfo& scales = store.Require(scale_name, {br, bc});
  Require(scales.dtype == DType::kF32, scales.file + ": tensor '" + scale_name + "' must be F32, not " +
                                           DTypeName(scales.dtype));
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c0 = 0; c0 < cols; ++c0) {
      float s;
      std::memcpy(&s, scales.data + 4 * static_cast<size_t>((r / block) * bc + c0 / block), 4);
      const float v = F8E4M3ToF32(t.data[r * cols + c0]) * s;
      if (!std::isfinite(v))
        throw Error(t.file + ": tensor '" + t.name + "' is not finite at [" + std::to_string(r) + ", " +
                    std::to_string(c0) + "] (FP8 value or scale); the checkpoint is damaged");
      out[static_cast<size_t>(r * cols + c0)] = v;
    }
  }
  return out;
}

// One stacked MXFP4 tensor pair of a layer: `<stem>_blocks` [E, rows, cols /
// 32, 16] and `<stem>_scales` [E, rows, cols / 32], both U8, used in place.
// Returns expert e's matrix for each e, each checked by ValidateMxfp4 (a
// NaN or overflowing scale is refused here, naming the expert).
std::vector<WeightView> Mxfp4Stack(const TensorStore& store, const std::string& stem, int64_t E,
                                   int64_t rows, int64_t cols, uint64_t* mapped_bytes) {
  const std::string blocks_name = stem + "_blocks", scales_name = stem + "_scales";
  if (store.Find(blocks_name) == nullptr && store.Find(stem) != nullptr)
    throw Error(store.Find(stem)->file + ": tensor '" + stem +
                "' holds the experts dequantized; epwa reads gpt-oss experts in MXFP4, the format "
                "gpt-oss is published in ('" + blocks_name + "' and '" + scales_name + "')");
  const TensorInfo& blocks = store.Require(blocks_name, {E, rows, cols / 32, 16});
  const TensorInfo& scales = store.Require(scales_name, {E, rows, cols / 32});
  for (const TensorInfo* t : {&blocks, &scales})
    Require(t->dtype == DType::kU8, t->file + ": tensor '" + t->name + "' is stored as " +
                                        DTypeName(t->dtype) + ", but MXFP4 blocks and scales are U8");
  *mapped_bytes += blocks.NumBytes() + scales.NumBytes();
  std::vector<WeightView> out;
  const size_t block_bytes = static_cast<size_t>(rows * cols / 2);
  const size_t scale_bytes = static_cast<size_t>(rows * cols / 32);
  for (int64_t e = 0; e < E; ++e) {
    WeightView v{DType::kMXFP4, blocks.data + static_cast<size_t>(e) * block_bytes, rows, cols,
                 scales.data + static_cast<size_t>(e) * scale_bytes};
    try {
      kernels::ValidateMxfp4(v);
    } catch (const Error& err) {
      throw Error(blocks.file + ": expert " + std::to_string(e) + " of '" + blocks_name + "' / '" +
                  scales_name + "': " + err.what());
    }
    out.push_back(v);
  }
  return out;
}

// gpt-oss experts: interleaved gate/up and down in MXFP4, with float biases.
void BindMxfp4Experts(const ModelConfig& c, const TensorStore& store, int64_t l, LayerWeights* lw,
                      ModelWeights* w) {
  const int64_t E = c.num_experts, F = c.ExpertFf(), D = c.hidden_size;
  const ExpertNaming& naming = NamingOf(c.expert_layout);
  const std::string gu = TensorNames::Layer(l, naming.fused_gate_up);
  const std::string dn = TensorNames::Layer(l, naming.fused_down);
  const std::vector<WeightView> gate_up = Mxfp4Stack(store, gu, E, 2 * F, D, &w->mapped_bytes);
  const std::vector<WeightView> down = Mxfp4Stack(store, dn, E, D, F, &w->mapped_bytes);
  if (c.expert_bias) {
    lw->expert_gate_up_bias = ToFloat(store.Require(gu + "_bias", {E, 2 * F}));
    lw->expert_down_bias = ToFloat(store.Require(dn + "_bias", {E, D}));
    w->converted_bytes += (lw->expert_gate_up_bias.size() + lw->expert_down_bias.size()) * sizeof(float);
  }
  for (int64_t e = 0; e < E; ++e) {
    ExpertWeights x;
    x.gate_up = gate_up[e];
    x.down = down[e];
    if (c.expert_bias) {
      x.gate_up_bias = lw->expert_gate_up_bias.data() + e * 2 * F;
      x.down_bias = lw->expert_down_bias.data() + e * D;
    }
    lw->experts.push_back(x);
  }
}

}  // namespace

std::string TensorNames::Layer(int64_t layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::string TensorNames::Router(const ModelConfig& c, int64_t layer) {
  return Layer(layer, NamingOf(c.expert_layout).router);
}

std::string TensorNames::RouterBias(const ModelConfig& c, int64_t layer) {
  std::string name = Router(c, layer);
  return name.substr(0, name.size() - std::string("weight").size()) + "bias";
}

std::string TensorNames::Expert(const ModelConfig& c, int64_t layer, int64_t expert, FfnPart part) {
  const ExpertNaming& n = NamingOf(c.expert_layout);
  // Interleaved gate/up rows are one matrix: gate and up share its name.
  if (c.expert_layout == ExpertLayout::kMxfp4Interleaved)
    return Layer(layer, std::string(part == FfnPart::kDown ? n.fused_down : n.fused_gate_up) + "[" +
                            std::to_string(expert) + "]");
  if (n.expert_stem == nullptr)
    return Layer(layer, std::string(part == FfnPart::kDown ? n.fused_down : n.fused_gate_up) + "[" +
                            std::to_string(expert) + "]." + n.part[PartIndex(part)]);
  return Layer(layer, std::string(n.expert_stem) + std::to_string(expert) + "." +
                          n.part[PartIndex(part)] + ".weight");
}

std::string TensorNames::DenseMlp(int64_t layer, FfnPart part) {
  return Layer(layer, std::string("mlp.") + kMlpParts[PartIndex(part)] + ".weight");
}

std::string TensorNames::SharedExpert(const ModelConfig& c, int64_t layer, FfnPart part) {
  // Qwen2-MoE has one gated shared_expert; DeepSeek's shared_experts are one MLP.
  const char* stem = c.shared_expert == SharedExpertKind::kUngated ? "mlp.shared_experts." : "mlp.shared_expert.";
  return Layer(layer, std::string(stem) + kMlpParts[PartIndex(part)] + ".weight");
}

std::string TensorNames::CorrectionBias(int64_t layer) {
  return Layer(layer, "mlp.gate.e_score_correction_bias");
}

std::string TensorNames::SharedExpertGate(int64_t layer) {
  return Layer(layer, "mlp.shared_expert_gate.weight");
}

std::vector<CheckpointTensor> CheckpointTensors(const ModelConfig& c) {
  std::vector<CheckpointTensor> out;
  const int64_t D = c.hidden_size;
  auto ffn = [&](auto name_of, int64_t F) {
    out.push_back({name_of(FfnPart::kGate), {F, D}});
    out.push_back({name_of(FfnPart::kUp), {F, D}});
    out.push_back({name_of(FfnPart::kDown), {D, F}});
  };
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, D}});
  const bool layer_norm = c.norm == NormKind::kLayerNorm;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto n = [&](const std::string& s) { return TensorNames::Layer(l, s); };
    out.push_back({n("input_layernorm.weight"), {D}});
    if (layer_norm) out.push_back({n("input_layernorm.bias"), {D}});
    if (c.Latent()) {
      if (c.q_lora_rank > 0) {
        out.push_back({n("self_attn.q_a_proj.weight"), {c.q_lora_rank, D}});
        out.push_back({n("self_attn.q_a_layernorm.weight"), {c.q_lora_rank}});
        out.push_back({n("self_attn.q_b_proj.weight"), {c.QDim(), c.q_lora_rank}});
      } else {
        out.push_back({n("self_attn.q_proj.weight"), {c.QDim(), D}});
      }
      out.push_back({n("self_attn.kv_a_proj_with_mqa.weight"), {c.kv_lora_rank + c.head_dim, D}});
      out.push_back({n("self_attn.kv_a_layernorm.weight"), {c.kv_lora_rank}});
      out.push_back({n("self_attn.kv_b_proj.weight"),
                     {c.num_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}});
    } else {
      out.push_back({n("self_attn.q_proj.weight"), {c.QDim(), D}});
      out.push_back({n("self_attn.k_proj.weight"), {c.KvDim(), D}});
      out.push_back({n("self_attn.v_proj.weight"), {c.KvDim(), D}});
    }
    if (c.qkv_bias) {
      out.push_back({n("self_attn.q_proj.bias"), {c.QDim()}});
      out.push_back({n("self_attn.k_proj.bias"), {c.KvDim()}});
      out.push_back({n("self_attn.v_proj.bias"), {c.KvDim()}});
    }
    out.push_back({n("self_attn.o_proj.weight"), {D, c.AttnOutDim()}});
    if (c.o_bias) out.push_back({n("self_attn.o_proj.bias"), {D}});
    if (c.qk_norm != QkNormKind::kNone) {
      out.push_back({n("self_attn.q_norm.weight"), {QkNormLength(c, false)}});
      out.push_back({n("self_attn.k_norm.weight"), {QkNormLength(c, true)}});
    }
    if (c.attention_sinks) out.push_back({n("self_attn.sinks"), {c.num_heads}});
    out.push_back({n("post_attention_layernorm.weight"), {D}});
    if (layer_norm) out.push_back({n("post_attention_layernorm.bias"), {D}});
    if (c.IsMoeLayer(l)) {
      const ExpertNaming& naming = NamingOf(c.expert_layout);
      const int64_t E = c.num_experts, F = c.ExpertFf();
      out.push_back({TensorNames::Router(c, l), {E, D}});
      if (c.router_bias) out.push_back({TensorNames::RouterBias(c, l), {E}});
      if (c.correction_bias) out.push_back({TensorNames::CorrectionBias(l), {E}});
      if (c.expert_layout == ExpertLayout::kMxfp4Interleaved) {
        // MXFP4 blocks [E, rows, cols / 32, 16] and E8M0 scales [E, rows, cols / 32].
        const std::string gu = naming.fused_gate_up, dn = naming.fused_down;
        out.push_back({n(gu + "_blocks"), {E, 2 * F, D / 32, 16}, DType::kU8});
        out.push_back({n(gu + "_scales"), {E, 2 * F, D / 32}, DType::kU8});
        if (c.expert_bias) out.push_back({n(gu + "_bias"), {E, 2 * F}});
        out.push_back({n(dn + "_blocks"), {E, D, F / 32, 16}, DType::kU8});
        out.push_back({n(dn + "_scales"), {E, D, F / 32}, DType::kU8});
        if (c.expert_bias) out.push_back({n(dn + "_bias"), {E, D}});
      } else if (naming.expert_stem == nullptr) {
        out.push_back({n(naming.fused_gate_up), {E, 2 * F, D}});
        out.push_back({n(naming.fused_down), {E, D, F}});
      } else {
        for (int64_t e = 0; e < E; ++e)
          ffn([&](FfnPart part) { return TensorNames::Expert(c, l, e, part); }, F);
      }
      if (c.shared_expert != SharedExpertKind::kNone)
        ffn([&](FfnPart part) { return TensorNames::SharedExpert(c, l, part); },
            c.shared_expert_intermediate_size);
      if (c.shared_expert == SharedExpertKind::kSigmoidGated)
        out.push_back({TensorNames::SharedExpertGate(l), {1, D}});
    } else {
      ffn([&](FfnPart part) { return TensorNames::DenseMlp(l, part); }, c.intermediate_size);
    }
  }
  out.push_back({"model.norm.weight", {D}});
  if (layer_norm) out.push_back({"model.norm.bias", {D}});
  if (c.fp8_block > 0) {
    // FP8 checkpoints (DeepSeek-V3): every linear of the layers is F8_E4M3
    // with a float32 scale per block; embeddings, lm_head, norms and the
    // router stay in the checkpoint's float dtype.
    std::vector<CheckpointTensor> with_scales;
    const int64_t b = c.fp8_block;
    for (CheckpointTensor& t : out) {
      const bool linear = t.shape.size() == 2 && t.name.rfind("model.layers.", 0) == 0 &&
                          t.name.size() > 7 && t.name.compare(t.name.size() - 7, 7, ".weight") == 0 &&
                          t.name.find("norm.weight") == std::string::npos &&
                          t.name.find("mlp.gate.weight") == std::string::npos && t.name.find("shared_expert_gate") == std::string::npos;
      if (linear) t.dtype = DType::kF8E4M3;
      with_scales.push_back(t);
      if (linear)
        with_scales.push_back({t.name + "_scale_inv", {(t.shape[0] + b - 1) / b, (t.shape[1] + b - 1) / b}, DType::kF32});
    }
    out = std::move(with_scales);
  }
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, D}});
  if (c.lm_head_bias) out.push_back({"lm_head.bias", {c.vocab_size}});
  return out;
}

ModelWeights BindWeights(const ModelConfig& c, const TensorStore& store,
                         std::vector<std::string>* warnings) {
  ModelWeights w;
  const int64_t D = c.hidden_size;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorInfo& t = store.Require(name, {rows, cols});
    if (t.dtype == DType::kF8E4M3) {
      // FP8 is converted to float32 here; the level's plan starts from that copy.
      std::vector<float> values = DequantizeFp8(store, t, rows, cols, c.fp8_block);
      AlignedBuffer<uint8_t>& buffer = w.storage.emplace_back(values.size() * sizeof(float));
      std::memcpy(buffer.data(), values.data(), values.size() * sizeof(float));
      w.converted_bytes += values.size() * sizeof(float);
      return WeightView{DType::kF32, buffer.data(), rows, cols};
    }
    Require(IsFloatDType(t.dtype), t.file + ": tensor '" + name + "' is stored as " +
                                       DTypeName(t.dtype) + ", but it must be F32, F16 or BF16");
    w.mapped_bytes += t.NumBytes();
    return View(t);
  };
  auto vector = [&](const std::string& name, int64_t n) {
    const TensorInfo& t = store.Require(name, {n});
    w.converted_bytes += n * sizeof(float);
    return ToFloat(t);
  };
  auto ffn = [&](auto name_of, int64_t F) {
    return ExpertWeights{matrix(name_of(FfnPart::kGate), F, D), matrix(name_of(FfnPart::kUp), F, D),
                         matrix(name_of(FfnPart::kDown), D, F)};
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
  const bool layer_norm = c.norm == NormKind::kLayerNorm;
  if (layer_norm) w.final_norm_bias = vector("model.norm.bias", D);
  if (c.lm_head_bias) w.lm_head_bias = vector("lm_head.bias", c.vocab_size);

  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights lw;
    auto name = [&](const std::string& s) { return TensorNames::Layer(l, s); };
    lw.attn_norm = vector(name("input_layernorm.weight"), D);
    lw.ffn_norm = vector(name("post_attention_layernorm.weight"), D);
    if (layer_norm) {
      lw.attn_norm_bias = vector(name("input_layernorm.bias"), D);
      lw.ffn_norm_bias = vector(name("post_attention_layernorm.bias"), D);
    }
    // The q projection's height is where a head_dim that contradicts the
    // checkpoint shows first; name the config fields involved.
    if (const TensorInfo* q = store.Find(name("self_attn.q_proj.weight"))) {
      Require(q->shape == std::vector<int64_t>{c.QDim(), D},
              q->file + ": tensor '" + q->name + "' has shape " +
                  (q->shape.size() == 2 ? "[" + std::to_string(q->shape[0]) + ", " +
                                              std::to_string(q->shape[1]) + "]"
                                        : std::string("of rank ") + std::to_string(q->shape.size())) +
                  " but config.json's num_attention_heads x head_dim (" +
                  std::to_string(c.num_heads) + " x " + std::to_string(c.head_dim) +
                  ") and hidden_size (" + std::to_string(D) + ") say [" + std::to_string(c.QDim()) +
                  ", " + std::to_string(D) + "]");
    }
    if (c.Latent()) {
      if (c.q_lora_rank > 0) {
        lw.q_a = matrix(name("self_attn.q_a_proj.weight"), c.q_lora_rank, D);
        lw.q_a_norm = vector(name("self_attn.q_a_layernorm.weight"), c.q_lora_rank);
        lw.q_b = matrix(name("self_attn.q_b_proj.weight"), c.QDim(), c.q_lora_rank);
      } else {
        lw.q = matrix(name("self_attn.q_proj.weight"), c.QDim(), D);
      }
      lw.kv_a = matrix(name("self_attn.kv_a_proj_with_mqa.weight"), c.kv_lora_rank + c.head_dim, D);
      lw.kv_a_norm = vector(name("self_attn.kv_a_layernorm.weight"), c.kv_lora_rank);
      const TensorInfo& kv_b = store.Require(name("self_attn.kv_b_proj.weight"),
                                             {c.num_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
      lw.kv_b = kv_b.dtype == DType::kF8E4M3
                    ? DequantizeFp8(store, kv_b, kv_b.shape[0], kv_b.shape[1], c.fp8_block)
                    : ToFloat(kv_b);
      w.converted_bytes += lw.kv_b.size() * sizeof(float);
    } else {
      lw.q = matrix(name("self_attn.q_proj.weight"), c.QDim(), D);
      lw.k = matrix(name("self_attn.k_proj.weight"), c.KvDim(), D);
      lw.v = matrix(name("self_attn.v_proj.weight"), c.KvDim(), D);
    }
    lw.o = matrix(name("self_attn.o_proj.weight"), D, c.AttnOutDim());
    if (c.qkv_bias) {
      lw.q_bias = vector(name("self_attn.q_proj.bias"), c.QDim());
      lw.k_bias = vector(name("self_attn.k_proj.bias"), c.KvDim());
      lw.v_bias = vector(name("self_attn.v_proj.bias"), c.KvDim());
    }
    if (c.o_bias) lw.o_bias = vector(name("self_attn.o_proj.bias"), D);
    if (c.attention_sinks) lw.sinks = vector(name("self_attn.sinks"), c.num_heads);
    if (c.qk_norm != QkNormKind::kNone) {
      lw.q_norm = vector(name("self_attn.q_norm.weight"), QkNormLength(c, false));
      lw.k_norm = vector(name("self_attn.k_norm.weight"), QkNormLength(c, true));
    }
    lw.moe = c.IsMoeLayer(l);
    if (lw.moe) {
      const int64_t E = c.num_experts, F = c.ExpertFf();
      const TensorInfo& router = store.Require(TensorNames::Router(c, l), {E, D});
      lw.router = ToFloat(router);
      w.converted_bytes += lw.router.size() * sizeof(float);
      if (c.router_bias) lw.router_bias = vector(TensorNames::RouterBias(c, l), E);
      if (c.correction_bias) lw.correction_bias = vector(TensorNames::CorrectionBias(l), E);
      const ExpertNaming& naming = NamingOf(c.expert_layout);
      if (c.expert_layout == ExpertLayout::kMxfp4Interleaved) {
        BindMxfp4Experts(c, store, l, &lw, &w);
      } else if (naming.expert_stem == nullptr) {
        // Fused layout: each expert's matrices are row slices of the two
        // stacked tensors, used in place.
        const TensorInfo& gate_up = store.Require(name(naming.fused_gate_up), {E, 2 * F, D});
        const TensorInfo& down = store.Require(name(naming.fused_down), {E, D, F});
        w.mapped_bytes += gate_up.NumBytes() + down.NumBytes();
        const size_t esize_gu = DTypeSize(gate_up.dtype), esize_d = DTypeSize(down.dtype);
        for (int64_t e = 0; e < E; ++e) {
          const uint8_t* gu = gate_up.data + static_cast<size_t>(e * 2 * F * D) * esize_gu;
          lw.experts.push_back(
              {WeightView{gate_up.dtype, gu, F, D},
               WeightView{gate_up.dtype, gu + static_cast<size_t>(F * D) * esize_gu, F, D},
               WeightView{down.dtype, down.data + static_cast<size_t>(e * D * F) * esize_d, D, F}});
        }
      } else {
        for (int64_t e = 0; e < E; ++e)
          lw.experts.push_back(ffn([&](FfnPart part) { return TensorNames::Expert(c, l, e, part); }, F));
      }
      if (c.shared_expert != SharedExpertKind::kNone)
        lw.shared = ffn([&](FfnPart part) { return TensorNames::SharedExpert(c, l, part); },
                        c.shared_expert_intermediate_size);
      if (c.shared_expert == SharedExpertKind::kSigmoidGated) {
        const TensorInfo& gate = store.Require(TensorNames::SharedExpertGate(l), {1, D});
        lw.shared_gate = ToFloat(gate);
        w.converted_bytes += lw.shared_gate.size() * sizeof(float);
      }
    } else {
      lw.experts.push_back(
          ffn([&](FfnPart part) { return TensorNames::DenseMlp(l, part); }, c.intermediate_size));
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
