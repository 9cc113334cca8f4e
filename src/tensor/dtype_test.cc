#include "tensor/dtype.h"

#include <gtest/gtest.h>

#include <cmath>

namespace epwa {
namespace {

TEST(DType, BF16RoundTripsEveryBF16Value) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = BF16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToBF16(f), h);
  }
}

TEST(DType, F16RoundTripsEveryF16Value) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16(f), h) << h;
  }
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(F16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(F16ToF32(0xc000), -2.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F32ToF16(65504.f), 0x7bff);
  EXPECT_EQ(F32ToF16(1e6f), 0x7c00);
  // Round to nearest even at the halfway point between 1 and 1+2^-10.
  EXPECT_EQ(F32ToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(F32ToBF16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
}

// The quantized types are load-time formats: named, but never parsed from a
// checkpoint header.
TEST(DType, QuantizedTypesAreNamedButNotParsed) {
  EXPECT_STREQ(DTypeName(DType::kQ8), "Q8");
  EXPECT_STREQ(DTypeName(DType::kQ4), "Q4");
  EXPECT_STREQ(DTypeName(DType::kNF4), "NF4");
  DType t = DType::kF32;
  EXPECT_FALSE(ParseDType("Q8", &t));
  EXPECT_FALSE(ParseDType("Q4", &t));
  EXPECT_FALSE(ParseDType("NF4", &t));
  EXPECT_TRUE(ParseDType("BF16", &t));
  EXPECT_TRUE(IsQuantized(DType::kQ8) && IsQuantized(DType::kQ4) && IsQuantized(DType::kNF4));
  EXPECT_FALSE(IsQuantized(DType::kF32) || IsQuantized(DType::kF16) || IsQuantized(DType::kBF16));
}

TEST(DType, QuantizedSizes) {
  EXPECT_EQ(QuantizedBytes(DType::kQ8, 3, 64), 3u * 64 + 3 * 2 * 2);
  EXPECT_EQ(QuantizedBytes(DType::kQ4, 3, 64), 3u * 32 + 3 * 2 * 2);
  EXPECT_EQ(QuantizedBytes(DType::kNF4, 1, 4096), 2048u + 128 * 2);
  EXPECT_EQ(QuantizedBytes(DType::kBF16, 3, 64), 3u * 64 * 2);
  const WeightView q4{DType::kQ4, nullptr, 10, 96, nullptr};
  EXPECT_EQ(q4.RowBytes(), 48u);
  EXPECT_EQ(q4.Bytes(), 480u);
  EXPECT_EQ(q4.ScaleBytes(), 10u * 3 * 2);
  const WeightView q8{DType::kQ8, nullptr, 10, 96, nullptr};
  EXPECT_EQ(q8.RowBytes(), 96u);
  EXPECT_EQ((WeightView{DType::kF16, nullptr, 10, 96}.ScaleBytes()), 0u);
}

// WeightView::At decodes the layout documented in dtype.h: element j of a
// group in the low nibble of byte j, element j + 16 in its high nibble.
TEST(DType, AtDecodesTheQuantizedLayout) {
  uint8_t codes[2 * 16];
  for (int j = 0; j < 32; ++j) codes[j] = static_cast<uint8_t>(j | ((15 - j % 16) << 4));
  const uint16_t scales[2] = {F32ToF16(0.5f), F32ToF16(-2.0f)};
  const WeightView q4{DType::kQ4, codes, 1, 64, scales};
  EXPECT_EQ(q4.At(0, 0), (0 - 8) * 0.5f);
  EXPECT_EQ(q4.At(0, 3), (3 - 8) * 0.5f);
  EXPECT_EQ(q4.At(0, 16), (15 - 8) * 0.5f);
  EXPECT_EQ(q4.At(0, 19), (12 - 8) * 0.5f);
  EXPECT_EQ(q4.At(0, 32 + 1), ((17 & 15) - 8) * -2.0f);
  const WeightView nf4{DType::kNF4, codes, 1, 64, scales};
  EXPECT_EQ(nf4.At(0, 5), kNF4Codebook[5] * 0.5f);
  EXPECT_EQ(nf4.At(0, 21), kNF4Codebook[10] * 0.5f);
  const int8_t q8_codes[32] = {-127, 5, 127};
  const WeightView q8{DType::kQ8, q8_codes, 1, 32, scales};
  EXPECT_EQ(q8.At(0, 0), -63.5f);
  EXPECT_EQ(q8.At(0, 1), 2.5f);
  EXPECT_EQ(q8.At(0, 3), 0.f);
}

}  // namespace
}  // namespace epwa
