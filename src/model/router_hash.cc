#include "model/router_hash.h"

#include <cstring>
#include <vector>

#include "base/error.h"
#include "base/sha256.h"
#include "model/weights.h"

namespace epwa {
namespace {

void AppendU32(std::vector<uint8_t>* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// Appends a float tensor converted to float32, little-endian, row-major.
void HashFloats(Sha256& sha, const TensorInfo& t, int64_t rows, int64_t cols) {
  Require(IsFloatDType(t.dtype), t.file + ": tensor '" + t.name + "' is stored as " +
                                     DTypeName(t.dtype) + ", but it must be F32, F16 or BF16");
  const WeightView v{t.dtype, t.data, rows, cols};
  std::vector<uint8_t> row(static_cast<size_t>(v.cols) * 4);
  for (int64_t r = 0; r < v.rows; ++r) {
    for (int64_t c = 0; c < v.cols; ++c) {
      const float f = v.At(r, c);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      for (int i = 0; i < 4; ++i) row[c * 4 + i] = static_cast<uint8_t>(bits >> (8 * i));
    }
    sha.Add(row.data(), row.size());
  }
}

}  // namespace

int RouterHashVersion(const ModelConfig& config) { return config.router_bias || config.correction_bias ? 2 : 1; }

std::string RouterHash(const ModelConfig& config, const TensorStore& store) {
  Require(config.IsMoe(), "the model has no MoE routers to hash (dense " + config.architecture + ")");
  const int version = RouterHashVersion(config);
  Sha256 sha;
  std::vector<uint8_t> head(16, 0);
  std::memcpy(head.data(), version == 1 ? "EPW-A IRSH v1" : "EPW-A IRSH v2", 13);
  // Only MoE layers have routers: the count and the per-layer records cover
  // those, each under its model layer index (for Mixtral, every layer).
  const std::vector<int32_t> moe_layers = config.MoeLayers();
  AppendU32(&head, static_cast<uint32_t>(moe_layers.size()));
  sha.Add(head.data(), head.size());
  const int64_t E = config.num_experts, D = config.hidden_size;
  for (const int32_t l : moe_layers) {
    const TensorInfo& t = store.Require(TensorNames::Router(config, l), {E, D});
    std::vector<uint8_t> shape;
    AppendU32(&shape, static_cast<uint32_t>(l));
    AppendU32(&shape, static_cast<uint32_t>(E));
    AppendU32(&shape, static_cast<uint32_t>(D));
    sha.Add(shape.data(), shape.size());
    HashFloats(sha, t, E, D);
    if (version == 1) continue;
    // v2: which selection tensors follow (bit 0: the router's bias, bit 1:
    // DeepSeek-V3's correction bias), then each in that order.
    std::vector<uint8_t> flags;
    AppendU32(&flags, (config.router_bias ? 1u : 0u) | (config.correction_bias ? 2u : 0u));
    sha.Add(flags.data(), flags.size());
    if (config.router_bias) HashFloats(sha, store.Require(TensorNames::RouterBias(config, l), {E}), 1, E);
    if (config.correction_bias) HashFloats(sha, store.Require(TensorNames::CorrectionBias(l), {E}), 1, E);
  }
  return sha.Hex();
}

}  // namespace epwa
