// Numeric kernels on plain float arrays and weight views.
//
// These functions know nothing about models. Each has a scalar reference in
// kernels/reference.h; the optimised versions (AVX-512, AVX2) are chosen once
// at start-up from the CPU's features and are tested against the reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "tensor/dtype.h"

namespace epwa::kernels {

// Instruction-set paths a kernel may be compiled for, best first.
enum class Isa { kAvx512, kAvx2, kScalar };
const char* IsaName(Isa isa);
// Paths compiled into this binary that the running CPU supports.
std::vector<Isa> SupportedIsas();
// The path in use (the best supported one unless overridden).
Isa ActiveIsa();
// Forces a path, for tests and benchmarks. Throws epwa::Error if unsupported.
void SetActiveIsa(Isa isa);

// y[m, n] = sum_k x[m, k] * w[n, k]
//   x: [M, K] float32, row-major, K == w.cols
//   w: [N, K] in w.dtype (N == w.rows)
//   y: [M, N] float32, row-major (overwritten)
// M == 1 is the decode case (matrix-vector, bandwidth bound): each weight row
// is streamed once and applied to every row of x in registers, which the
// vector paths also do for a few rows (M <= 8 with AVX-512, M <= 4 with
// AVX2). Larger M is prefill (matrix-matrix: each weight tile is converted to
// float once and reused for all M rows). Work is split over `pool` by output
// columns n; the result does not depend on the number of threads. Weights may
// start at any 2-byte aligned address (a tensor in a mapped file).
void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);

// In-place numerically stable softmax over n values.
void Softmax(float* x, int64_t n);

// gate[i] = silu(gate[i]) * up[i], silu(v) = v / (1 + exp(-v)).
void SiluMul(float* gate, const float* up, int64_t n);

// sum_i a[i] * b[i]
float Dot(const float* a, const float* b, int64_t n);

// y[i] += alpha * x[i]
void Axpy(float alpha, const float* x, float* y, int64_t n);

// dst[i] = float(src[i]) for n elements of `dtype` at src.
void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst);

// Machine probes for `epwa bench` and the benchmarks, run on the active path.
//
// Memory read bandwidth in GB/s (1e9 bytes/s): every thread of `pool` sums its
// share of a `bytes`-sized buffer with vector loads; best of five passes. The
// buffer must be far larger than the caches to measure DRAM.
double MeasureReadBandwidthGBs(ThreadPool& pool, size_t bytes = 1ull << 30);
// Floating-point peak in GFLOP/s (an FMA counts as two operations): every
// thread of `pool` runs independent FMA chains, enough to hide the latency,
// on the widest vectors of the active path; best of five runs.
double MeasureFmaPeakGflops(ThreadPool& pool);

}  // namespace epwa::kernels
