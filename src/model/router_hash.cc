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

}  // namespace

std::string RouterHash(const ModelConfig& config, const TensorStore& store) {
  Require(config.IsMoe(), "the model has no MoE routers to hash (dense " + config.architecture + ")");
  Sha256 sha;
  std::vector<uint8_t> head(16, 0);
  std::memcpy(head.data(), "EPW-A IRSH v1", 13);
  // Only MoE layers have routers: the count and the per-layer records cover
  // those, each under its model layer index (for Mixtral, every layer).
  const std::vector<int32_t> moe_layers = config.MoeLayers();
  AppendU32(&head, static_cast<uint32_t>(moe_layers.size()));
  sha.Add(head.data(), head.size());
  std::vector<uint8_t> row;
  for (const int32_t l : moe_layers) {
    const TensorInfo& t = store.Require(TensorNames::Router(config, l),
                                        {config.num_experts, config.hidden_size});
    std::vector<uint8_t> shape;
    AppendU32(&shape, static_cast<uint32_t>(l));
    AppendU32(&shape, static_cast<uint32_t>(config.num_experts));
    AppendU32(&shape, static_cast<uint32_t>(config.hidden_size));
    sha.Add(shape.data(), shape.size());
    const WeightView v{t.dtype, t.data, config.num_experts, config.hidden_size};
    row.resize(static_cast<size_t>(v.cols) * 4);
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
  return sha.Hex();
}

}  // namespace epwa
