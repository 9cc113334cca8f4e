// ModelWeights: typed views of every tensor the forward pass reads.
//
// Large matrices stay where they are (memory-mapped checkpoint, zero-copy,
// stored dtype); small 1-D tensors and the MoE router are converted to
// float32 once, because they are read for every token and the router must be
// evaluated in float32 for routing decisions to be stable across precisions.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/aligned.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "tensor/dtype.h"

namespace epwa {

struct ExpertWeights {
  WeightView gate;  // w1: [d_ff, d_model]
  WeightView up;    // w3: [d_ff, d_model]
  WeightView down;  // w2: [d_model, d_ff]
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [d_model]
  std::vector<float> ffn_norm;   // [d_model]
  WeightView q, k, v, o;         // [q_dim, d_model], [kv_dim, d_model] x2, [d_model, q_dim]
  std::vector<float> q_bias, k_bias, v_bias, o_bias;  // empty unless the config has biases
  // Dense MLP (num_experts == 0): exactly one entry. MoE: one per expert.
  std::vector<ExpertWeights> experts;
  std::vector<float> router;  // [n_experts, d_model], float32; empty for dense layers
};

struct ModelWeights {
  WeightView embed;    // [vocab, d_model]
  WeightView lm_head;  // [vocab, d_model]; aliases embed when tied
  std::vector<float> final_norm;  // [d_model]
  std::vector<LayerWeights> layers;
  // Buffers owning matrices converted at load time (float32 or quantized);
  // views point into them.
  std::vector<AlignedBuffer<uint8_t>> storage;
  // The mapped weight cache file quantized views point into, when one was used.
  std::shared_ptr<MappedFile> cache_mapping;
  uint64_t mapped_bytes = 0;  // bytes of weights used in place from the mapping
  uint64_t converted_bytes = 0;  // bytes converted to float32 copies
};

// Hugging Face tensor names for layer `layer` (architecture data, not code
// paths: every supported architecture shares these names; MoE layers use
// Mixtral's block_sparse_moe names).
struct TensorNames {
  static std::string Layer(int64_t layer, const std::string& suffix);
  static std::string Expert(int64_t layer, int64_t expert, const char* which);  // w1/w2/w3
};

// Binds every required tensor, checking presence and exact shape. Throws
// epwa::Error naming the file and tensor on any mismatch, and for a checkpoint
// whose tensors contradict config.json. When `warnings` is given, it receives
// a line for checkpoint layers past config.json's num_hidden_layers, whose
// weights are not used (as Hugging Face warns about unused weights).
ModelWeights BindWeights(const ModelConfig& config, const TensorStore& store,
                         std::vector<std::string>* warnings = nullptr);

}  // namespace epwa
