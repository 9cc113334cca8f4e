// Scalar references that accumulate in double, so that their own rounding
// error is far below the tolerance the fast kernels are held to.
#include "kernels/reference.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace epwa::kernels::reference {

void MatMul(const float* x, int64_t M, const WeightView& w, float* y) {
  const int64_t N = w.rows;
  const int64_t K = w.cols;
  std::vector<double> row(static_cast<size_t>(K));  // [K]
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) row[k] = w.At(n, k);
    for (int64_t m = 0; m < M; ++m) {
      double sum = 0.0;
      for (int64_t k = 0; k < K; ++k) sum += static_cast<double>(x[m * K + k]) * row[k];
      y[m * N + n] = static_cast<float>(sum);
    }
  }
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i] * inv * weight[i]);
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  double max_v = x[0];
  for (int64_t i = 1; i < n; ++i) max_v = std::max(max_v, static_cast<double>(x[i]));
  std::vector<double> e(static_cast<size_t>(n));  // [n]
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    e[i] = std::exp(x[i] - max_v);
    sum += e[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(e[i] / sum);
}

namespace {

// The fp16 value of smallest magnitude not below |d|, with d's sign; at most
// 65504 in magnitude, and +0 for d == 0.
uint16_t ScaleAwayFromZero(float d) {
  if (d == 0.f) return 0;
  const float mag = std::fabs(d);
  uint16_t h = F32ToF16(mag);
  if (h >= 0x7c00u) h = 0x7bffu;
  while (h < 0x7bffu && F16ToF32(h) < mag) ++h;
  return static_cast<uint16_t>(h | (d < 0.f ? 0x8000u : 0u));
}

}  // namespace

void Quantize(const WeightView& src, DType target, uint8_t* codes, uint16_t* scales) {
  const int64_t groups = src.cols / kQuantGroup;
  const size_t row_bytes = static_cast<size_t>(CodeRowBytes(target, src.cols));
  for (int64_t r = 0; r < src.rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      float x[32];
      for (int j = 0; j < 32; ++j) x[j] = src.At(r, g * kQuantGroup + j);
      float amax = 0.f, largest = x[0], smallest = x[0];
      for (float v : x) {
        if (std::fabs(v) > amax) amax = std::fabs(v);
        if (v > largest) largest = v;
        if (v < smallest) smallest = v;
      }
      float d = amax;  // kNF4
      if (target == DType::kQ8) d = amax / 127.0f;
      if (target == DType::kQ4) d = (largest >= -smallest ? largest : smallest) / -8.0f;
      const uint16_t h = ScaleAwayFromZero(d);
      scales[r * groups + g] = h;
      const float s = F16ToF32(h);
      const float inv = s == 0.f ? 0.f : 1.0f / s;
      int code[32];
      for (int j = 0; j < 32; ++j) {
        const float t = x[j] * inv;
        if (target == DType::kNF4) {
          code[j] = 0;
          for (int i = 0; i < 15; ++i) {
            if (t > (kNF4Codebook[i] + kNF4Codebook[i + 1]) * 0.5f) ++code[j];
          }
        } else {
          // std::nearbyint rounds halfway cases to even in the default mode.
          const float lo = target == DType::kQ8 ? -127.f : -8.f;
          const float hi = target == DType::kQ8 ? 127.f : 7.f;
          code[j] = static_cast<int>(std::min(hi, std::max(lo, std::nearbyint(t))));
        }
      }
      uint8_t* out = codes + static_cast<size_t>(r) * row_bytes;
      if (target == DType::kQ8) {
        for (int j = 0; j < 32; ++j) out[g * 32 + j] = static_cast<uint8_t>(static_cast<int8_t>(code[j]));
      } else {
        const int offset = target == DType::kQ4 ? 8 : 0;
        for (int j = 0; j < 16; ++j) {
          out[g * 16 + j] = static_cast<uint8_t>((code[j] + offset) | ((code[j + 16] + offset) << 4));
        }
      }
    }
  }
}

void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

}  // namespace epwa::kernels::reference
