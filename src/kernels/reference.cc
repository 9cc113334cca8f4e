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

void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    gate[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

}  // namespace epwa::kernels::reference
