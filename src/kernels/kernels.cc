// Run-time dispatch between the instruction-set paths, the portable scalar
// path, and the machine probes (read bandwidth, FMA peak).
#include "kernels/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "base/aligned.h"
#include "base/error.h"
#include "base/timer.h"
#include "kernels/kernels_internal.h"

namespace epwa::kernels {
namespace scalar {
namespace {

// Converts n 16-bit values (F16 or BF16, as `ToF32` decodes them) to floats.
template <float (*ToF32)(uint16_t)>
void WidenHalves(const uint8_t* bytes, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    dst[i] = ToF32(h);
  }
}

// Weights may sit at any even offset of a memory-mapped file, so all values
// are read through memcpy rather than a possibly misaligned pointer.
void ConvertRow(DType dtype, const void* src, int64_t n, float* dst) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kF16: return WidenHalves<F16ToF32>(bytes, n, dst);
    case DType::kBF16: return WidenHalves<BF16ToF32>(bytes, n, dst);
  }
}

// Four partial sums let the compiler overlap the additions.
float DotF32(const float* a, const float* b, int64_t n) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Each weight row is converted once into a thread-local float row and then
// reused for every row of x, which serves both decode (M == 1) and prefill.
void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  const int64_t N = w.rows;
  const int64_t K = w.cols;
  pool.ParallelFor(N, 8, [&](int64_t n0, int64_t n1) {
    thread_local AlignedBuffer<float> row;  // [K]
    if (row.size() < static_cast<size_t>(K)) row.Resize(static_cast<size_t>(K));
    for (int64_t n = n0; n < n1; ++n) {
      ConvertRow(w.dtype, w.Row(n), K, row.data());
      for (int64_t m = 0; m < M; ++m) y[m * N + n] = DotF32(x + m * K, row.data(), K);
    }
  });
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  float s0 = 0.f, s1 = 0.f;
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    s0 += x[i] * x[i];
    s1 += x[i + 1] * x[i + 1];
  }
  for (; i < n; ++i) s0 += x[i] * x[i];
  const float inv = 1.0f / std::sqrt((s0 + s1) / static_cast<float>(n) + eps);
  for (i = 0; i < n; ++i) out[i] = x[i] * inv * weight[i];
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float max_v = x[0];
  for (int64_t i = 1; i < n; ++i) max_v = std::max(max_v, x[i]);
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_v);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

float SumFloats(const float* p, int64_t n) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  for (; i < n; ++i) s0 += p[i];
  return (s0 + s1) + (s2 + s3);
}

// Eight independent multiply-add chains. The portable build has no FMA
// instruction, so each step is a multiply and an add: still two operations.
double FmaChains(int64_t iterations) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = static_cast<float>(i);
  const float a = 0.999999f, b = 1e-7f;
  for (int64_t it = 0; it < iterations; ++it) {
    // Without -ffast-math the compiler may not reassociate these, so the
    // chains stay as written.
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * a + b;
  }
  volatile float sink = acc[0] + acc[7];
  (void)sink;
  return static_cast<double>(iterations) * 8 * 2;
}

}  // namespace
}  // namespace scalar

namespace internal {

float* ThreadScratch(Scratch slot, size_t count) {
  thread_local AlignedBuffer<float> buffers[3];
  AlignedBuffer<float>& buffer = buffers[static_cast<int>(slot)];
  if (buffer.size() < count) buffer.Resize(count);
  return buffer.data();
}

void ParallelFor(ThreadPool& pool, int64_t n, int64_t grain, RangeFn fn, void* context) {
  pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) { fn(context, begin, end); });
}

const IsaKernels kScalarKernels = {
    scalar::MatMul, scalar::RmsNorm, scalar::Softmax,   scalar::SiluMul,  scalar::DotF32,
    scalar::Axpy,   scalar::ConvertRow, scalar::SumFloats, scalar::FmaChains,
};

}  // namespace internal

namespace {

using internal::IsaKernels;

const IsaKernels& TableFor(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
    case Isa::kAvx512: return internal::kAvx512Kernels;
    case Isa::kAvx2: return internal::kAvx2Kernels;
#else
    case Isa::kAvx512:
    case Isa::kAvx2:
#endif
    case Isa::kScalar: break;
  }
  return internal::kScalarKernels;
}

// The active path as an index into Isa; -1 until first use so that the CPU is
// only probed once something needs a kernel.
std::atomic<int> g_active{-1};

const IsaKernels& Active() {
  int isa = g_active.load(std::memory_order_acquire);
  if (isa < 0) {
    isa = static_cast<int>(SupportedIsas().front());
    g_active.store(isa, std::memory_order_release);
  }
  return TableFor(static_cast<Isa>(isa));
}

#if defined(__x86_64__) || defined(__i386__)
// CPUID leaf 1, ECX bit 29. Read directly because clang's
// __builtin_cpu_supports does not know "f16c"; F16C uses the AVX register
// state, whose OS support the "avx2" check already covers.
bool HasF16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
}
#endif

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: return "scalar";
  }
  return "?";
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> isas;
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the wide registers;
  // the explicit init makes it safe to call from static constructors.
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    isas.push_back(Isa::kAvx512);
  }
  if (avx2) isas.push_back(Isa::kAvx2);
#endif
  isas.push_back(Isa::kScalar);
  return isas;
}

Isa ActiveIsa() {
  Active();
  return static_cast<Isa>(g_active.load(std::memory_order_acquire));
}

void SetActiveIsa(Isa isa) {
  const std::vector<Isa> isas = SupportedIsas();
  Require(std::find(isas.begin(), isas.end(), isa) != isas.end(),
          std::string("The ") + IsaName(isa) +
              " kernels are not supported by this CPU or were not compiled into this binary.");
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  if (M <= 0 || w.rows <= 0) return;
  if (w.cols <= 0) {
    // An empty sum is zero; the vector paths assume at least one column.
    std::fill(y, y + M * w.rows, 0.f);
    return;
  }
  Active().mat_mul(x, M, w, y, pool);
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  if (n > 0) Active().rms_norm(x, weight, n, eps, out);
}

void Softmax(float* x, int64_t n) {
  if (n > 0) Active().softmax(x, n);
}

void SiluMul(float* gate, const float* up, int64_t n) {
  if (n > 0) Active().silu_mul(gate, up, n);
}

float Dot(const float* a, const float* b, int64_t n) { return n > 0 ? Active().dot(a, b, n) : 0.f; }

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  if (n > 0) Active().axpy(alpha, x, y, n);
}

void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst) {
  if (n > 0) Active().convert_to_f32(dtype, src, n, dst);
}

double MeasureReadBandwidthGBs(ThreadPool& pool, size_t bytes) {
  const IsaKernels& k = Active();
  const int64_t n = static_cast<int64_t>(std::max<size_t>(bytes, 1 << 20) / sizeof(float));
  // AlignedBuffer zero-fills, which also faults every page in before timing.
  AlignedBuffer<float> buffer(static_cast<size_t>(n));  // [n]
  std::atomic<int64_t> sink{0};
  double best = 0.0;
  for (int run = 0; run < 5; ++run) {
    Stopwatch watch;
    pool.ParallelFor(n, 4096, [&](int64_t b, int64_t e) {
      sink.fetch_add(static_cast<int64_t>(k.sum_floats(buffer.data() + b, e - b)),
                     std::memory_order_relaxed);
    });
    const double seconds = watch.Seconds();
    best = std::max(best, static_cast<double>(n) * sizeof(float) / seconds / 1e9);
  }
  return best;
}

double MeasureFmaPeakGflops(ThreadPool& pool) {
  const IsaKernels& k = Active();
  constexpr int64_t kIterations = 1 << 22;
  k.fma_chains(kIterations / 16);  // Warms the cores up to their working clock.
  double best = 0.0;
  for (int run = 0; run < 5; ++run) {
    std::vector<double> flops(static_cast<size_t>(pool.size()), 0.0);
    Stopwatch watch;
    pool.RunOnAll([&](int t) { flops[static_cast<size_t>(t)] = k.fma_chains(kIterations); });
    const double seconds = watch.Seconds();
    double total = 0.0;
    for (double f : flops) total += f;
    best = std::max(best, total / seconds / 1e9);
  }
  return best;
}

}  // namespace epwa::kernels
