// IRSH (Initial Router State Hashing): a SHA-256 that binds a watermark to one
// version of a model's MoE routers.
//
// Serialization, version 1 (all integers little-endian):
//   the 16 ASCII bytes "EPW-A IRSH v1\0\0\0"
//   u32  number of MoE layers L
//   for each MoE layer, in layer order:
//     u32 layer index, u32 rows (experts), u32 cols (hidden size)
//     rows x cols float32, row-major: the checkpoint's router weights
//     ("model.layers.N.block_sparse_moe.gate.weight") converted to float32
//     exactly (bf16 and f16 values are representable in float32)
// Version 2, for models with tensors besides the router weight that decide
// which experts are chosen (gpt-oss's router bias, DeepSeek-V3's correction
// bias): the tag "EPW-A IRSH v2" (same padding), and after each layer's weights
//     u32 flags: bit 0 set when a router bias [rows] follows, bit 1 when a
//         correction bias [rows] follows
//     rows float32: the router bias (mlp.router.bias), if bit 0
//     rows float32: the correction bias (mlp.gate.e_score_correction_bias), if bit 1
// Models without such tensors keep version 1, so their hashes are unchanged.
// The hash is the lowercase hex SHA-256 of that byte string. It reads the
// checkpoint, not the loaded copy, so it is the same at every quantization
// level, and it changes when any router weight, shape or layer changes.
#pragma once

#include <string>

#include "io/safetensors.h"
#include "model/config.h"

namespace epwa {

// 1 or 2: the IRSH version `config`'s hash uses.
int RouterHashVersion(const ModelConfig& config);

// Throws epwa::Error for a dense model (no routers to hash).
std::string RouterHash(const ModelConfig& config, const TensorStore& store);

}  // namespace epwa
