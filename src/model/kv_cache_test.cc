// The KV cache's layout contract: whatever the order in memory, KeyRow and
// ValueRow address the element a store put at (layer, position, column),
// and one head's consecutive positions lie key_stride() / value_stride()
// elements apart, which is how attention walks them.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "model/config.h"
#include "model/transformer.h"
#include "tensor/dtype.h"

namespace epwa {
namespace {

// A value unique to (layer, position, column) and exact in bf16 and f16.
float Tag(int64_t layer, int64_t pos, int64_t column, int64_t salt) {
  return static_cast<float>((layer * 7 + pos * 3 + column * 5 + salt) % 97) - 48.0f;
}

// Element i of a row of `dtype` as a float.
float Element(const void* row, int64_t i, DType dtype) {
  if (dtype == DType::kF32) {
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(row) + 4 * i, 4);
    return v;
  }
  uint16_t bits;
  std::memcpy(&bits, static_cast<const uint8_t*>(row) + 2 * i, 2);
  return dtype == DType::kF16 ? F16ToF32(bits) : BF16ToF32(bits);
}

void CheckLayout(const ModelConfig& config, DType dtype, int64_t expected_stride) {
  constexpr int64_t kCapacity = 5;
  KVCache cache(config, kCapacity, dtype);
  EXPECT_EQ(cache.Bytes(), KVCache::BytesFor(config, kCapacity, dtype));
  const int64_t kd = config.CacheKeyDim(), vd = config.CacheValueDim();
  EXPECT_EQ(cache.key_stride(), expected_stride);
  std::vector<float> row;
  for (int64_t layer = 0; layer < config.num_layers; ++layer)
    for (int64_t pos = 0; pos < kCapacity; ++pos) {
      row.resize(static_cast<size_t>(kd));
      for (int64_t c = 0; c < kd; ++c) row[static_cast<size_t>(c)] = Tag(layer, pos, c, 0);
      cache.StoreKey(layer, pos, row.data());
      row.resize(static_cast<size_t>(vd));
      for (int64_t c = 0; c < vd; ++c) row[static_cast<size_t>(c)] = Tag(layer, pos, c, 1);
      if (vd > 0) cache.StoreValue(layer, pos, row.data());
    }
  // Every element is read back where it was stored, both through its own
  // row and by walking from position 0 of its head with the stride.
  for (int64_t layer = 0; layer < config.num_layers; ++layer)
    for (int64_t pos = 0; pos < kCapacity; ++pos) {
      for (int64_t c = 0; c < kd; ++c) {
        ASSERT_EQ(Element(cache.KeyRow(layer, pos, c), 0, dtype), Tag(layer, pos, c, 0))
            << "key layer " << layer << " pos " << pos << " column " << c;
        ASSERT_EQ(Element(cache.KeyRow(layer, 0, c), pos * cache.key_stride(), dtype), Tag(layer, pos, c, 0));
      }
      for (int64_t c = 0; c < vd; ++c) {
        ASSERT_EQ(Element(cache.ValueRow(layer, pos, c), 0, dtype), Tag(layer, pos, c, 1))
            << "value layer " << layer << " pos " << pos << " column " << c;
        ASSERT_EQ(Element(cache.ValueRow(layer, 0, c), pos * cache.value_stride(), dtype), Tag(layer, pos, c, 1));
      }
    }
}

ModelConfig GroupedQuery() {
  ModelConfig c;
  c.num_layers = 3;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 6;
  return c;
}

// Standard attention: each key/value head's positions are consecutive, so
// the stride is the head's dims (a head's row runs up to its own end).
TEST(KvCacheTest, HeadsAreStoredPositionAfterPosition) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) CheckLayout(GroupedQuery(), dtype, 6);
}

// Latent attention caches one compressed row per position (no values): one
// head whose stride is the whole row.
TEST(KvCacheTest, LatentRowIsOneHead) {
  ModelConfig c;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.attention = AttentionKind::kLatent;
  c.kv_lora_rank = 8;
  c.head_dim = 4;  // the shared rotary key's dims
  ASSERT_EQ(c.CacheValueDim(), 0);
  CheckLayout(c, DType::kF32, 12);
}

}  // namespace
}  // namespace epwa
