// Non-finite weights at quantization (F6 of the hostile-input sweep): a NaN
// or infinity cannot be quantized, and used to turn into finite garbage
// codes silently; Quantize now refuses it, naming the element.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "base/error.h"
#include "kernels/kernels.h"

namespace epwa::kernels {
namespace {

// A [rows, cols] matrix of small finite values in `dtype`, stored raw.
std::vector<uint8_t> Matrix(DType dtype, int64_t rows, int64_t cols) {
  std::vector<uint8_t> bytes(static_cast<size_t>(rows * cols) * DTypeSize(dtype));
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float v = 0.01f * static_cast<float>((i * 7) % 23 - 11);
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

void Poke(std::vector<uint8_t>& bytes, DType dtype, int64_t index, float v) {
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data() + 4 * index, &v, 4);
  } else {
    const uint16_t h = dtype == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
    std::memcpy(bytes.data() + 2 * index, &h, 2);
  }
}

TEST(FirstNonFinite, FindsTheFirstBadElementInEveryFloatFormat) {
  const int64_t rows = 9, cols = 64;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      std::vector<uint8_t> m = Matrix(dtype, rows, cols);
      const WeightView w{dtype, m.data(), rows, cols};
      EXPECT_EQ(FirstNonFinite(w, 0, rows), -1) << DTypeName(dtype);
      Poke(m, dtype, 5 * cols + 17, bad);
      Poke(m, dtype, 7 * cols + 1, bad);
      EXPECT_EQ(FirstNonFinite(w, 0, rows), 5 * cols + 17) << DTypeName(dtype) << " " << bad;
      EXPECT_EQ(FirstNonFinite(w, 6, rows), 7 * cols + 1);
      EXPECT_EQ(FirstNonFinite(w, 0, 5), -1);
    }
  }
  // The largest finite values are not mistaken for infinities.
  std::vector<uint8_t> m = Matrix(DType::kF32, 1, 32);
  Poke(m, DType::kF32, 3, std::numeric_limits<float>::max());
  Poke(m, DType::kF32, 4, -std::numeric_limits<float>::max());
  EXPECT_EQ(FirstNonFinite(WeightView{DType::kF32, m.data(), 1, 32}, 0, 1), -1);
}

TEST(Quantize, RefusesNonFiniteWeightsNamingTheElement) {
  ThreadPool pool(2);
  const int64_t rows = 64, cols = 96;
  for (DType target : {DType::kQ8, DType::kQ4, DType::kNF4}) {
    std::vector<uint8_t> m = Matrix(DType::kBF16, rows, cols);
    Poke(m, DType::kBF16, 40 * cols + 33, std::numeric_limits<float>::quiet_NaN());
    const WeightView w{DType::kBF16, m.data(), rows, cols};
    std::vector<uint8_t> codes(static_cast<size_t>(rows) * CodeRowBytes(target, cols));
    std::vector<uint16_t> scales(static_cast<size_t>(rows * cols / 32));
    try {
      Quantize(w, target, codes.data(), scales.data(), pool);
      ADD_FAILURE() << "a NaN was quantized to " << DTypeName(target);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("non-finite value (NaN or infinity) at row 40, column 33"),
                std::string::npos)
          << e.what();
    }
    Poke(m, DType::kBF16, 40 * cols + 33, 0.5f);
    EXPECT_NO_THROW(Quantize(w, target, codes.data(), scales.data(), pool));
  }
}

}  // namespace
}  // namespace epwa::kernels
