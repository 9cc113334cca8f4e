// Run-time dispatch between the instruction-set paths, the portable scalar
// path, and the machine probes (read bandwidth, FMA peak).
#include "kernels/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "base/aligned.h"
#include "base/error.h"
#include "base/meminfo.h"
#include "base/timer.h"
#include "kernels/kernels_internal.h"

namespace epwa::kernels {
using internal::QuantizedOut;
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

// Bytes of codes before group g of a row.
int64_t SpanOf(DType target, int64_t g) { return target == DType::kQ8 ? g * 32 : g * 16; }

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
    // Rows with group scales need them: see DequantizeRow.
    case DType::kQ8:
    case DType::kQ4:
    case DType::kNF4:
    case DType::kMXFP4:
    case DType::kU8:
    case DType::kF8E4M3: return;
  }
}

// out[c] = w.At(row, c) for a w with group scales, group by group.
void DequantizeRow(const WeightView& w, int64_t row, float* out) {
  const uint8_t* codes = w.Row(row);
  for (int64_t g = 0; g < w.cols / kQuantGroup; ++g) {
    const float s = w.GroupScale(row, g);
    float* o = out + g * kQuantGroup;
    if (w.dtype == DType::kMXFP4) {
      // Byte j holds elements 2 j (low nibble) and 2 j + 1 (high nibble).
      const uint8_t* bytes = codes + g * 16;
      for (int j = 0; j < 16; ++j) {
        o[2 * j] = kE2M1Values[bytes[j] & 0x0f] * s;
        o[2 * j + 1] = kE2M1Values[bytes[j] >> 4] * s;
      }
      continue;
    }
    if (w.dtype == DType::kQ8) {
      for (int j = 0; j < 32; ++j) o[j] = static_cast<float>(static_cast<int8_t>(codes[g * 32 + j])) * s;
      continue;
    }
    const uint8_t* bytes = codes + g * 16;
    for (int j = 0; j < 16; ++j) {
      const int lo = bytes[j] & 0x0f, hi = bytes[j] >> 4;
      if (w.dtype == DType::kQ4) {
        o[j] = static_cast<float>(lo - 8) * s;
        o[j + 16] = static_cast<float>(hi - 8) * s;
      } else {
        o[j] = kNF4Codebook[lo] * s;
        o[j + 16] = kNF4Codebook[hi] * s;
      }
    }
  }
}

// The group scale as stored: d rounded to fp16 away from zero, saturating at
// the largest finite half, zero as +0 (tensor/dtype.h).
uint16_t StoredScale(float d) {
  if (d == 0.f) return 0;  // +0 whatever the sign of d.
  uint16_t h = F32ToF16(d);
  if ((h & 0x7fffu) >= 0x7c00u) return static_cast<uint16_t>((h & 0x8000u) | 0x7bffu);
  if (std::fabs(F16ToF32(h)) < std::fabs(d)) ++h;  // One step up in magnitude, sign kept.
  return h;
}

// Codes of one group of 32 floats for `target`; returns the stored scale.
uint16_t QuantizeGroup(const float* x, DType target, uint8_t* codes) {
  float amax = 0.f, max_v = x[0], min_v = x[0];
  for (int j = 0; j < 32; ++j) {
    amax = std::max(amax, std::fabs(x[j]));
    max_v = std::max(max_v, x[j]);
    min_v = std::min(min_v, x[j]);
  }
  float d = amax;
  if (target == DType::kQ8) d = amax / 127.0f;
  if (target == DType::kQ4) d = (max_v >= -min_v ? max_v : min_v) / -8.0f;
  const uint16_t h = StoredScale(d);
  const float s = F16ToF32(h);
  const float inv = s != 0.f ? 1.0f / s : 0.f;
  int n[32];
  for (int j = 0; j < 32; ++j) {
    const float t = x[j] * inv;
    if (target == DType::kQ8) {
      n[j] = static_cast<int>(std::clamp(std::nearbyint(t), -127.0f, 127.0f));
    } else if (target == DType::kQ4) {
      n[j] = static_cast<int>(std::clamp(std::nearbyint(t), -8.0f, 7.0f)) + 8;
    } else {
      // Binary search over the 15 midpoints between codebook values.
      int idx = 0;
      for (int step = 8; step >= 1; step /= 2) {
        const int probe = idx + step - 1;
        if (t > (kNF4Codebook[probe] + kNF4Codebook[probe + 1]) * 0.5f) idx += step;
      }
      n[j] = idx;
    }
  }
  if (target == DType::kQ8) {
    for (int j = 0; j < 32; ++j) codes[j] = static_cast<uint8_t>(static_cast<int8_t>(n[j]));
  } else {
    for (int j = 0; j < 16; ++j) codes[j] = static_cast<uint8_t>(n[j] | (n[j + 16] << 4));
  }
  return h;
}

void QuantizeRows(const WeightView& src, DType target, int64_t row_begin, int64_t row_end, const QuantizedOut& out) {
  const int64_t K = src.cols, groups = K / kQuantGroup;
  thread_local AlignedBuffer<float> row;  // [K]
  if (row.size() < static_cast<size_t>(K)) row.Resize(static_cast<size_t>(K));
  for (int64_t r = row_begin; r < row_end; ++r) {
    ConvertRow(src.dtype, src.Row(r), K, row.data());
    auto* scales = reinterpret_cast<uint16_t*>(out.scales + r * out.scale_stride);
    for (int64_t g = 0; g < groups; ++g)
      scales[g] = QuantizeGroup(row.data() + g * kQuantGroup, target, out.codes + r * out.code_stride + SpanOf(target, g));
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
      if (HasGroupScales(w.dtype)) {
        DequantizeRow(w, n, row.data());
      } else {
        ConvertRow(w.dtype, w.Row(n), K, row.data());
      }
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

// The portable path reads the parts side by side like the vector paths (so
// the probe's patterns mean the same on every path) but without prefetching.
float SumFloats(const float* p, int64_t n, int streams, bool /*prefetch*/) {
  const int64_t parts = std::clamp(streams, 1, 4);
  const int64_t part = n / parts / 64 * 64;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t i = 0; i < part; i += 64)
    for (int64_t r = 0; r < parts; ++r)
      for (int64_t j = 0; j < 64; ++j) acc[j % 4] += p[r * part + i + j];
  for (int64_t i = parts * part; i < n; ++i) acc[0] += p[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
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

// The portable build has no dot-product instruction to measure.
double NoDotChains(int64_t) { return 0.0; }

// Nor a fused decode: MatMulMany runs its jobs one by one.
bool NoMatMulMany(const MatMulJob*, int64_t, ThreadPool&) { return false; }

// F16 saturates at the largest half instead of overflowing to infinity.
constexpr float kLargestHalf = 65504.0f;

void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst) {
  if (dtype == DType::kF32) {
    std::copy_n(src, n, static_cast<float*>(dst));
    return;
  }
  auto* out = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    out[i] = dtype == DType::kBF16 ? F32ToBF16(v)
                                   : F32ToF16(std::isnan(v) ? v : std::clamp(v, -kLargestHalf, kLargestHalf));
  }
}

// The cache row element `i` of `dtype` as a float.
float CacheElement(DType dtype, const void* row, int64_t i) {
  switch (dtype) {
    case DType::kF16: return F16ToF32(static_cast<const uint16_t*>(row)[i]);
    case DType::kBF16: return BF16ToF32(static_cast<const uint16_t*>(row)[i]);
    default: return static_cast<const float*>(row)[i];
  }
}

const void* CacheRow(const void* base, DType dtype, int64_t stride, int64_t j) {
  return static_cast<const uint8_t*>(base) + j * stride * static_cast<int64_t>(DTypeSize(dtype));
}

// Per dot product DotF32's four partial sums over a row widened to floats.
void AttentionScores(const float* const* queries, int64_t count, int64_t dim, const void* keys, DType cache_dtype,
                     int64_t stride, int64_t n, float scale, float* scores, int64_t score_stride) {
  thread_local std::vector<float> key;  // [dim]
  key.resize(static_cast<size_t>(dim));
  for (int64_t j = 0; j < n; ++j) {
    const void* row = CacheRow(keys, cache_dtype, stride, j);
    for (int64_t i = 0; i < dim; ++i) key[i] = CacheElement(cache_dtype, row, i);
    for (int64_t g = 0; g < count; ++g) scores[g * score_stride + j] = DotF32(queries[g], key.data(), dim) * scale;
  }
}

void AttentionValues(const float* p, int64_t count, int64_t p_stride, const void* values, DType cache_dtype,
                     int64_t stride, int64_t n, int64_t dim, float* const* out, bool accumulate) {
  if (!accumulate)
    for (int64_t g = 0; g < count; ++g) std::fill_n(out[g], dim, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const void* row = CacheRow(values, cache_dtype, stride, j);
    for (int64_t g = 0; g < count; ++g) {
      const float a = p[g * p_stride + j];
      float* o = out[g];
      for (int64_t c = 0; c < dim; ++c) o[c] += a * CacheElement(cache_dtype, row, c);  // as Axpy
    }
  }
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

namespace {
std::atomic<int> decode_chunks_per_thread{kDefaultDecodeChunksPerThread};
}  // namespace

void ParallelForDecode(ThreadPool& pool, int64_t n, int64_t grain, RangeFn fn, void* context) {
  pool.ParallelForClaimed(n, grain, DecodeChunksPerThread(),
                          [&](int64_t begin, int64_t end) { fn(context, begin, end); });
}

void SetDecodeChunksPerThreadForTesting(int chunks_per_thread) {
  decode_chunks_per_thread.store(std::max(chunks_per_thread, 1), std::memory_order_relaxed);
}
int DecodeChunksPerThread() { return decode_chunks_per_thread.load(std::memory_order_relaxed); }

namespace {
// Set by tests (MaskAvx512VnniForTesting) to run this machine's AVX-512 path
// as a CPU without VNNI (Skylake-SP/X) would.
std::atomic<bool> vnni_masked{false};
}  // namespace

bool HasAvx512Vnni() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return has && !vnni_masked.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void MaskAvx512VnniForTesting(bool masked) { vnni_masked.store(masked, std::memory_order_relaxed); }

namespace {
std::atomic<bool> gfni_masked{false};
}  // namespace

bool HasGfni() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("gfni") != 0;
  }();
  return has && !gfni_masked.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void MaskGfniForTesting(bool masked) { gfni_masked.store(masked, std::memory_order_relaxed); }

namespace {
std::atomic<DecodePasses> decode_passes{DecodePasses::kByRule};
}  // namespace

void SetDecodePassesForTesting(DecodePasses mode) { decode_passes.store(mode, std::memory_order_relaxed); }
DecodePasses DecodePassesMode() { return decode_passes.load(std::memory_order_relaxed); }

bool HasAvx512Bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return has;
#else
  return false;
#endif
}

namespace {
std::atomic<bool> amx_masked{false};

#if defined(__x86_64__) || defined(__i386__)
// AMX needs three things: the CPU's tile unit with its bf16 products (CPUID
// leaf 7, EDX bits 24 and 22), an OS that saves the tile state (XCR0 bits 17
// and 18), and, on Linux, this process's permission to use that state,
// which the kernel grants on request (arch_prctl ARCH_REQ_XCOMP_PERM for
// XFEATURE_XTILEDATA) and which then holds for every thread. Without the
// request the first tile instruction faults.
bool DetectAmxBf16() {
  // EPWA_AMX=0 keeps the AVX-512 kernels (for comparisons, or where AMX's
  // frequency licence costs the rest of the machine more than it gains).
  if (const char* env = std::getenv("EPWA_AMX"); env != nullptr && std::strcmp(env, "0") == 0) return false;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if ((edx & (1u << 24)) == 0 || (edx & (1u << 22)) == 0) return false;
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
#endif
  return true;
}
#endif
}  // namespace

bool HasAmxBf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = DetectAmxBf16();
  return has && !amx_masked.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void MaskAmxForTesting(bool masked) { amx_masked.store(masked, std::memory_order_relaxed); }

const IsaKernels kScalarKernels = {
    scalar::MatMul,       scalar::RmsNorm,       scalar::Softmax,   scalar::SiluMul,
    scalar::DotF32,       scalar::Axpy,          scalar::ConvertRow, scalar::ConvertFromF32, scalar::AttentionScores,
    scalar::AttentionValues, nullptr, scalar::QuantizeRows,
    scalar::DequantizeRow, scalar::SumFloats,    scalar::FmaChains, scalar::NoDotChains, scalar::NoDotChains,
    scalar::NoMatMulMany,
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

namespace {
std::atomic<bool> g_float_activations{false};
}  // namespace

void SetFloatActivations(bool on) { g_float_activations.store(on, std::memory_order_release); }
bool FloatActivations() { return g_float_activations.load(std::memory_order_acquire); }

namespace {
std::atomic<bool> g_bf16_activations{false};
}  // namespace
void SetBf16Activations(bool on) { g_bf16_activations.store(on, std::memory_order_release); }
bool Bf16Activations() { return g_bf16_activations.load(std::memory_order_acquire); }

namespace {
std::atomic<bool> g_split_bf16_activations{false};
}  // namespace
void SetSplitBf16Activations(bool on) { g_split_bf16_activations.store(on, std::memory_order_release); }
bool SplitBf16Activations() { return g_split_bf16_activations.load(std::memory_order_acquire); }

namespace {
thread_local int t_row_invariant = 0;
}  // namespace

ScopedRowInvariantMatMul::ScopedRowInvariantMatMul() { ++t_row_invariant; }
ScopedRowInvariantMatMul::~ScopedRowInvariantMatMul() { --t_row_invariant; }
bool RowInvariantMatMul() { return t_row_invariant > 0; }

void SetActiveIsa(Isa isa) {
  const std::vector<Isa> isas = SupportedIsas();
  Require(std::find(isas.begin(), isas.end(), isa) != isas.end(),
          std::string("The ") + IsaName(isa) +
              " kernels are not supported by this CPU or were not compiled into this binary.");
  g_active.store(static_cast<int>(isa), std::memory_order_release);
}

void SetActiveIsa(std::string_view name, std::string_view what) {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kScalar})
    if (name == IsaName(isa)) return SetActiveIsa(isa);
  throw Error(std::string(what) + " must be avx512, avx2 or scalar, got '" + std::string(name) + "'");
}

void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool) {
  Require(w.dtype != DType::kU8 && w.dtype != DType::kF8E4M3, "MatMul: raw U8 and F8_E4M3 checkpoint bytes (converted at load) are not a weight matrix.");
  if (HasGroupScales(w.dtype) && (w.cols % kQuantGroup != 0 || (w.scales == nullptr && w.rows > 0))) {
    throw Error(std::string("MatMul: a ") + DTypeName(w.dtype) +
                " weight needs a multiple of 32 columns and its scales.");
  }
  if (M <= 0 || w.rows <= 0) return;
  if (w.cols <= 0) {
    // An empty sum is zero; the vector paths assume at least one column.
    std::fill(y, y + M * w.rows, 0.f);
    return;
  }
  Active().mat_mul(x, M, w, y, pool);
}

namespace internal {
bool MatMulManyFused(std::span<const MatMulJob> jobs, ThreadPool& pool) {
  bool fusable = jobs.size() > 1;
  for (const MatMulJob& j : jobs) {
    const WeightView& w = *j.w;
    Require(w.dtype != DType::kU8 && w.dtype != DType::kF8E4M3, "MatMul: raw U8 and F8_E4M3 checkpoint bytes (converted at load) are not a weight matrix.");
    if (HasGroupScales(w.dtype) && (w.cols % kQuantGroup != 0 || (w.scales == nullptr && w.rows > 0)))
      throw Error(std::string("MatMul: a ") + DTypeName(w.dtype) + " weight needs a multiple of 32 columns and its scales.");
    fusable = fusable && j.M > 0 && w.rows > 0 && w.cols > 0 && w.dtype == jobs[0].w->dtype;
  }
  return fusable && Active().mat_mul_many(jobs.data(), static_cast<int64_t>(jobs.size()), pool);
}
}  // namespace internal

void MatMulMany(std::span<const MatMulJob> jobs, ThreadPool& pool) {
  if (internal::MatMulManyFused(jobs, pool)) return;
  for (const MatMulJob& j : jobs) MatMul(j.x, j.M, *j.w, j.y, pool);
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

void LayerNorm(const float* x, const float* weight, const float* bias, int64_t n, float eps, float* out) {
  if (n <= 0) return;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / static_cast<double>(n);
  double sq = 0;
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  const double inv = 1.0 / std::sqrt(sq / static_cast<double>(n) + static_cast<double>(eps));
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<float>((x[i] - mean) * inv) * weight[i] + bias[i];
}

void SoftmaxWithSink(float* x, int64_t n, float sink) {
  float max_v = sink;
  for (int64_t i = 0; i < n; ++i) max_v = std::max(max_v, x[i]);
  float sum = std::exp(sink - max_v);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_v);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void ClampedSwiGlu(float* gate, const float* up, int64_t n, float alpha, float limit) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::min(gate[i], limit);
    const float u = std::clamp(up[i], -limit, limit);
    gate[i] = (u + 1.0f) * g / (1.0f + std::exp(-alpha * g));
  }
}

float Dot(const float* a, const float* b, int64_t n) { return n > 0 ? Active().dot(a, b, n) : 0.f; }

void Axpy(float alpha, const float* x, float* y, int64_t n) {
  if (n > 0) Active().axpy(alpha, x, y, n);
}

namespace {

void RequireCacheDType(DType dtype, const char* who) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16)
    throw Error(std::string(who) + ": a KV cache holds F32, F16 or BF16 rows, not " + DTypeName(dtype) + ".");
}

}  // namespace

void AttentionScores(const float* const* queries, int64_t count, int64_t dim, const void* keys, DType cache_dtype,
                     int64_t stride, int64_t n, float scale, float* scores, int64_t score_stride) {
  RequireCacheDType(cache_dtype, "AttentionScores");
  Require(count >= 0 && dim >= 0 && n >= 0 && stride >= dim && (count <= 1 || score_stride >= n),
          "AttentionScores: inconsistent shape.");
  if (count > 0 && n > 0)
    Active().attention_scores(queries, count, dim, keys, cache_dtype, stride, n, scale, scores, score_stride);
}

void AttentionValues(const float* p, int64_t count, int64_t p_stride, const void* values, DType cache_dtype,
                     int64_t stride, int64_t n, int64_t dim, float* const* out, bool accumulate) {
  RequireCacheDType(cache_dtype, "AttentionValues");
  Require(count >= 0 && dim >= 0 && n >= 0 && stride >= dim && (count <= 1 || p_stride >= n),
          "AttentionValues: inconsistent shape.");
  if (count <= 0 || dim <= 0) return;
  Active().attention_values(p, count, p_stride, values, cache_dtype, stride, n, dim, out, accumulate);
}

namespace {

// Cached rows a composed block takes at a time: few enough that a tile of
// keys or values stays in L1 while every query of the block reads it.
constexpr int64_t kAttentionTile = 64;

const void* CacheRowAt(const void* base, DType dtype, int64_t stride, int64_t j) {
  return static_cast<const uint8_t*>(base) + j * stride * static_cast<int64_t>(DTypeSize(dtype));
}

// AttentionBlock through the per-query kernels: scores [count, n] in
// scratch, each query's softmax over its own keys (the rest weighted 0,
// which adds exactly nothing), then the weighted values, tile by tile.
void ComposedAttentionBlock(const AttentionBlockArgs& a, float* scores) {
  const IsaKernels& k = Active();
  const int64_t n = a.n;
  // Up to four queries are one block of the scores kernels, which then read
  // each key once whatever the range, so they take it whole (a lone query's
  // keys go in streams over its quarters on AVX-512); more queries take it
  // in tiles that stay in L1 between their blocks.
  const int64_t tile = a.count <= 4 ? std::max<int64_t>(n, 1) : kAttentionTile;
  for (int64_t j0 = 0; j0 < n; j0 += tile)
    k.attention_scores(a.queries, a.count, a.dim, CacheRowAt(a.keys, a.cache_dtype, a.key_stride, j0), a.cache_dtype,
                       a.key_stride, std::min(tile, n - j0), a.scale, scores + j0, n);
  for (int64_t i = 0; i < a.count; ++i) {
    float* row = scores + i * n;
    const int64_t begin = a.begin[i], end = a.end[i];
    if (a.sinks)
      SoftmaxWithSink(row + begin, end - begin, a.sinks[i]);
    else
      k.softmax(row + begin, end - begin);
    std::fill(row, row + begin, 0.f);
    std::fill(row + end, row + n, 0.f);
  }
  // The values always go in tiles: a kernel that takes the columns in
  // several passes (AVX2: 32 at a time) then finds the tile in L1.
  for (int64_t j0 = 0; j0 < n; j0 += kAttentionTile)
    k.attention_values(scores + j0, a.count, n, CacheRowAt(a.values, a.cache_dtype, a.value_stride, j0), a.cache_dtype,
                       a.value_stride, std::min(kAttentionTile, n - j0), a.dim, a.outs, /*accumulate=*/j0 > 0);
}

bool UsesLanes(const AttentionBlockArgs& a) {
  return Active().attention_block != nullptr && (a.row_invariant || a.count >= kAttentionBlockMinQueries);
}

}  // namespace

uint64_t AttentionBlockScratchFloats(int64_t count, int64_t n, int64_t dim) {
  const uint64_t c = static_cast<uint64_t>(std::max<int64_t>(count, 0));
  const uint64_t rows = static_cast<uint64_t>(std::max<int64_t>(n, 0)), d = static_cast<uint64_t>(std::max<int64_t>(dim, 0));
  // The lanes path: probabilities [n, 16], the queries transposed [dim, 16]
  // and one tile of keys widened to floats [kAttentionTile, dim].
  const uint64_t lanes = 16 * rows + 16 * d + static_cast<uint64_t>(kAttentionTile) * d;
  return std::max(c * rows, lanes);
}

void AttentionBlock(const AttentionBlockArgs& a, float* scratch) {
  RequireCacheDType(a.cache_dtype, "AttentionBlock");
  Require(a.count >= 0 && a.dim >= 0 && a.n >= 0 && a.key_stride >= a.dim && a.value_stride >= a.dim,
          "AttentionBlock: inconsistent shape.");
  // The message is built only on failure: this runs for every query of
  // every attention item of every layer.
  for (int64_t i = 0; i < a.count; ++i)
    if (!(0 <= a.begin[i] && a.begin[i] < a.end[i] && a.end[i] <= a.n))
      throw Error("AttentionBlock: query " + std::to_string(i) + " sees no keys or keys past the block.");
  if (a.count == 0 || a.dim == 0) return;
  if (!UsesLanes(a)) return ComposedAttentionBlock(a, scratch);
  // Each query's lane computes alone, so blocks of 16 give every query the
  // same bits as any other split would.
  for (int64_t first = 0; first < a.count; first += 16) {
    AttentionBlockArgs part = a;
    part.queries += first;
    part.outs += first;
    part.begin += first;
    part.end += first;
    if (part.sinks) part.sinks += first;
    part.count = std::min<int64_t>(16, a.count - first);
    Active().attention_block(part, scratch);
  }
}

void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst) {
  RequireCacheDType(dtype, "ConvertFromF32");
  if (n > 0) Active().convert_from_f32(src, n, dtype, dst);
}

void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst) {
  Require(dtype != DType::kU8 && dtype != DType::kF8E4M3, "ConvertToF32: raw U8 and F8_E4M3 checkpoint bytes (converted at load) have no float values.");
  if (HasGroupScales(dtype)) {
    throw Error(std::string("ConvertToF32 cannot read ") + DTypeName(dtype) +
                " data without its scales; use DequantizeRow.");
  }
  if (n > 0) Active().convert_to_f32(dtype, src, n, dst);
}

namespace {

void QuantizeInto(const WeightView& src, DType target, const QuantizedOut& out, ThreadPool& pool) {
  Require(src.dtype == DType::kF32 || src.dtype == DType::kF16 || src.dtype == DType::kBF16,
          std::string("Quantize needs an F32, F16 or BF16 source, not ") + DTypeName(src.dtype) + ".");
  Require(IsQuantized(target),
          std::string("Quantize needs a quantized target (Q8, Q4 or NF4), not ") + DTypeName(target) + ".");
  Require(src.rows >= 0 && src.cols >= 0 && src.cols % kQuantGroup == 0,
          "Quantize needs a number of columns that is a multiple of 32, got " + std::to_string(src.cols) + ".");
  if (src.rows == 0 || src.cols == 0) return;
  Require(src.data != nullptr && out.codes != nullptr && out.scales != nullptr, "Quantize was given a null buffer.");
  const IsaKernels& k = Active();
  // Quantizing NaN or infinity has no meaning (the group scale ignores NaN
  // and the float-to-int cast of the codes is undefined), and it would hide
  // the damage behind finite garbage, so each chunk of rows is checked just
  // before it is quantized (it then stays in cache for the quantizer).
  // Workers cannot throw; they record the first bad element.
  std::atomic<int64_t> first_bad{INT64_MAX};
  pool.ParallelFor(src.rows, 4, [&](int64_t r0, int64_t r1) {
    const int64_t bad = FirstNonFinite(src, r0, r1);
    if (bad < 0) {
      k.quantize_rows(src, target, r0, r1, out);
      return;
    }
    int64_t seen = first_bad.load();
    while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
    }
  });
  const int64_t bad = first_bad.load();
  if (bad != INT64_MAX)
    throw Error("the matrix holds a non-finite value (NaN or infinity) at row " +
                std::to_string(bad / src.cols) + ", column " + std::to_string(bad % src.cols) +
                ", which cannot be quantized; the checkpoint is damaged");
}

}  // namespace

void Quantize(const WeightView& src, DType target, void* codes, uint16_t* scales, ThreadPool& pool) {
  const auto code_stride = static_cast<int64_t>(CodeRowBytes(target, src.cols));
  QuantizeInto(src, target,
               {static_cast<uint8_t*>(codes), code_stride, reinterpret_cast<uint8_t*>(scales),
                static_cast<int64_t>(src.cols / kQuantGroup * sizeof(uint16_t))},
               pool);
}

WeightView QuantizeWithScalesInRows(const WeightView& src, DType target, void* out, ThreadPool& pool) {
  // Every row's fp16 scales must be 2-byte aligned to be read as uint16_t;
  // RowBytes is even, so that holds when `out` is.
  Require(reinterpret_cast<uintptr_t>(out) % alignof(uint16_t) == 0,
          "QuantizeWithScalesInRows needs a 2-byte aligned buffer.");
  const WeightView view = WeightView::WithScalesInRows(target, out, src.rows, src.cols);
  auto* bytes = static_cast<uint8_t*>(out);
  const auto stride = static_cast<int64_t>(view.RowStride());
  QuantizeInto(src, target,
               {bytes, stride, bytes == nullptr ? nullptr : bytes + view.RowBytes(), stride}, pool);
  return view;
}

namespace {

// True when one of the `bytes` bytes at p, read as values of the element type
// of Vec's lanes, has all the bits of `mask` set (NaN or infinity when mask is
// the exponent field). Written with the compilers' vector extension because
// GCC's -O2 leaves the plain loop scalar: this runs over every quantized
// weight at load, fused with the quantizer, and must not slow it down.
template <typename Vec, typename Lane>
bool AnyMasked(const uint8_t* p, size_t bytes, Lane mask) {
  constexpr size_t kLanes = sizeof(Vec) / sizeof(Lane);
  Vec m;
  for (size_t l = 0; l < kLanes; ++l) m[l] = mask;
  Vec bad0 = m ^ m, bad1 = bad0;
  size_t i = 0;
  for (; i + 2 * sizeof(Vec) <= bytes; i += 2 * sizeof(Vec)) {
    Vec a, b;
    std::memcpy(&a, p + i, sizeof(Vec));
    std::memcpy(&b, p + i + sizeof(Vec), sizeof(Vec));
    bad0 |= (Vec)((a & m) == m);
    bad1 |= (Vec)((b & m) == m);
  }
  const Vec bad = bad0 | bad1;
  Lane any = 0;
  for (size_t l = 0; l < kLanes; ++l) any |= bad[l];
  for (; i + sizeof(Lane) <= bytes; i += sizeof(Lane)) {
    Lane v;
    std::memcpy(&v, p + i, sizeof(Lane));
    any |= static_cast<Lane>((v & mask) == mask);
  }
  return any != 0;
}

// MXFP4 elements are finite unless their block's E8M0 scale is 255 (NaN) or
// so large that the value overflows float: 2^(e - 127) * 6 < 2^128 for every
// e <= 252. Only the scales are scanned (one byte per 32 weights, reduced
// with a max the compiler vectorizes); a row whose largest scale is 253 or
// more is searched element by element.
int64_t FirstNonFiniteMxfp4(const WeightView& w, int64_t row_begin, int64_t row_end) {
  if (w.cols % kQuantGroup != 0 || w.scales == nullptr) return -1;  // MatMul refuses such a view anyway.
  const int64_t groups = w.cols / kQuantGroup;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* e = w.E8M0ScaleRow(r);
    uint8_t largest = 0;
    for (int64_t g = 0; g < groups; ++g) largest = std::max(largest, e[g]);
    if (largest < 253) continue;
    for (int64_t c = 0; c < w.cols; ++c) {
      if (!std::isfinite(w.At(r, c))) return r * w.cols + c;
    }
  }
  return -1;
}

}  // namespace

int64_t FirstNonFinite(const WeightView& w, int64_t row_begin, int64_t row_end) {
  // A value is NaN or infinite exactly when its exponent bits are all ones;
  // testing the raw bits needs no conversion. Rows are screened with the
  // vector test; only a row that fails it is searched element by element.
  typedef uint32_t U32x4 __attribute__((vector_size(16)));
  typedef uint16_t U16x8 __attribute__((vector_size(16)));
  auto scan = [&](auto lane, auto mask, auto any_masked) -> int64_t {
    using Lane = decltype(lane);
    const size_t row_bytes = static_cast<size_t>(w.cols) * sizeof(Lane);
    for (int64_t r = row_begin; r < row_end; ++r) {
      const uint8_t* row = w.Row(r);
      if (!any_masked(row, row_bytes)) continue;
      for (int64_t c = 0; c < w.cols; ++c) {
        Lane v;
        std::memcpy(&v, row + c * sizeof(Lane), sizeof(Lane));
        if ((v & mask) == mask) return r * w.cols + c;
      }
    }
    return -1;
  };
  if (w.dtype == DType::kMXFP4) return FirstNonFiniteMxfp4(w, row_begin, row_end);
  switch (w.dtype) {
    case DType::kF32:
      return scan(uint32_t{0}, uint32_t{0x7f800000u}, [](const uint8_t* p, size_t n) {
        return AnyMasked<U32x4, uint32_t>(p, n, 0x7f800000u);
      });
    case DType::kF16:
      return scan(uint16_t{0}, uint16_t{0x7c00u}, [](const uint8_t* p, size_t n) {
        return AnyMasked<U16x8, uint16_t>(p, n, 0x7c00u);
      });
    case DType::kBF16:
      return scan(uint16_t{0}, uint16_t{0x7f80u}, [](const uint8_t* p, size_t n) {
        return AnyMasked<U16x8, uint16_t>(p, n, 0x7f80u);
      });
    default:
      return -1;  // the load-time quantized formats cannot hold NaN
  }
}

void ValidateMxfp4(const WeightView& w) {
  Require(w.dtype == DType::kMXFP4, std::string("ValidateMxfp4 was given a ") + DTypeName(w.dtype) + " matrix.");
  Require(w.rows >= 0 && w.cols >= 0 && w.cols % kQuantGroup == 0,
          "an MXFP4 matrix needs a number of columns that is a multiple of 32, got " + std::to_string(w.cols) + ".");
  if (w.rows == 0 || w.cols == 0) return;
  Require(w.data != nullptr && w.scales != nullptr, "an MXFP4 matrix needs its blocks and its scales.");
  const int64_t bad = FirstNonFinite(w, 0, w.rows);
  if (bad < 0) return;
  const int64_t r = bad / w.cols, c = bad % w.cols;
  const int e = w.E8M0ScaleRow(r)[c / kQuantGroup];
  throw Error("the MXFP4 matrix holds a non-finite value at row " + std::to_string(r) + ", column " +
              std::to_string(c) + ": its block scale is E8M0 " + std::to_string(e) +
              (e == 255 ? ", which is NaN" : ", which overflows float with this element's code") +
              "; the checkpoint is damaged");
}

uint64_t MatMulScratchBytes(int64_t max_rows, int64_t max_k, int threads) {
  // Mirrors the ThreadScratch requests of the instruction-set files, taking
  // the largest constants of any of them: kMc = 256 rows of packed x (prefill),
  // up to 8 rows of x deinterleaved (AVX2 BF16 decode) or kAvx512MaxQuantDecodeRows
  // = 13 quantized (codes padded to 128 plus two floats per group padded to 16
  // groups), and one kKb x kNb = 256 x 256 float panel per thread; the scalar
  // path keeps one converted weight row of max_k floats per thread.
  const uint64_t k = static_cast<uint64_t>(std::max<int64_t>(max_k, 0));
  const uint64_t rows = static_cast<uint64_t>(std::clamp<int64_t>(max_rows, 0, 256));
  const uint64_t decode_rows = std::min<uint64_t>(rows, internal::kAvx512MaxQuantDecodeRows);
  const uint64_t quantized_x_row = (k + 127) / 128 * 32 + 2 * ((k / 32 + 15) / 16 * 16);
  // The AMX float prefill's x in three bf16 parts (SetSplitBf16Activations,
  // set before a model is planned) takes 1.5 floats per input of each row,
  // its rows padded to tiles of 16.
  const bool split = SplitBf16Activations() && !Bf16Activations() && internal::HasAmxBf16();
  const uint64_t split_x = split ? (rows + 15) / 16 * 16 * k * 3 / 2 : 0;
  const uint64_t calling_thread = std::max(rows * k, split_x) + decode_rows * std::max(k, quantized_x_row);
  // (The AMX bf16 prefill pads a final block of up to 16 weight rows of k
  // bf16 each in the same buffer: 8 k floats.)
  const uint64_t per_thread = std::max<uint64_t>(256 * 256, 8 * k);
  return 4 * (calling_thread + static_cast<uint64_t>(std::max(threads, 1)) * per_thread);
}

void DequantizeRow(const WeightView& w, int64_t row, float* out) {
  Require(w.dtype != DType::kU8 && w.dtype != DType::kF8E4M3, "DequantizeRow: raw U8 and F8_E4M3 checkpoint bytes (converted at load) have no float values.");
  if (w.cols <= 0) return;
  if (HasGroupScales(w.dtype)) {
    Require(w.cols % kQuantGroup == 0 && w.scales != nullptr,
            std::string("DequantizeRow: a ") + DTypeName(w.dtype) + " weight needs a multiple of 32 columns and its scales.");
    Active().dequantize_row(w, row, out);
  } else {
    Active().convert_to_f32(w.dtype, w.Row(row), w.cols, out);
  }
}

namespace internal {
float SumFloatsForTesting(const float* p, int64_t n, int streams, bool prefetch) {
  return Active().sum_floats(p, n, streams, prefetch);
}
}  // namespace internal

size_t DramProbeBytes() {
  static const size_t bytes = [] {
    // Four times the cache, but not more than a quarter of the free memory
    // (a CPU with 1 GiB of L3 in a small container); never less than the
    // 1 GiB the probe always read.
    const uint64_t free_quarter = ProbeHostMemory().free_bytes / 4;
    uint64_t want = 4 * ProbeLastLevelCacheBytes();
    if (free_quarter > 0) want = std::min(want, free_quarter);
    return static_cast<size_t>(std::max<uint64_t>(uint64_t{1} << 30, want));
  }();
  return bytes;
}

double MeasureReadBandwidthGBs(ThreadPool& pool, size_t bytes) {
  if (bytes == 0) bytes = DramProbeBytes();
  const IsaKernels& k = Active();
  const int64_t n = static_cast<int64_t>(std::max<size_t>(bytes, 1 << 20) / sizeof(float));
  // AlignedBuffer zero-fills, which also faults every page in before timing.
  AlignedBuffer<float> buffer(static_cast<size_t>(n));  // [n]
  // Which read pattern the memory system serves fastest differs between
  // machines and from one minute to the next on a shared one (one stream,
  // or a few side by side with prefetching as the decode kernels read their
  // rows): the probe alternates them and keeps the best pass of any, which
  // is the least the machine is known to deliver.
  struct Pattern {
    int streams;
    bool prefetch;
  };
  constexpr Pattern kPatterns[] = {{1, false}, {2, true}, {4, true}};
  std::atomic<int64_t> sink{0};
  double best = 0.0;
  for (int run = 0; run < 5; ++run) {
    for (const Pattern& pattern : kPatterns) {
      Stopwatch watch;
      pool.ParallelFor(n, 4096, [&](int64_t b, int64_t e) {
        sink.fetch_add(static_cast<int64_t>(k.sum_floats(buffer.data() + b, e - b, pattern.streams, pattern.prefetch)),
                       std::memory_order_relaxed);
      });
      const double seconds = watch.Seconds();
      best = std::max(best, static_cast<double>(n) * sizeof(float) / seconds / 1e9);
    }
  }
  return best;
}

namespace {

// Runs `chains` on every thread of `pool` (after a warm-up that brings the
// cores to their working clock) and returns the best of five rates in
// billions of operations per second; 0 when the chains report no work.
double MeasurePeak(ThreadPool& pool, double (*chains)(int64_t)) {
  constexpr int64_t kIterations = 1 << 22;
  if (chains(kIterations / 16) == 0.0) return 0.0;
  double best = 0.0;
  for (int run = 0; run < 5; ++run) {
    std::vector<double> ops(static_cast<size_t>(pool.size()), 0.0);
    Stopwatch watch;
    pool.RunOnAll([&](int t) { ops[static_cast<size_t>(t)] = chains(kIterations); });
    const double seconds = watch.Seconds();
    double total = 0.0;
    for (double f : ops) total += f;
    best = std::max(best, total / seconds / 1e9);
  }
  return best;
}

}  // namespace

PrefillDot PrefillDotFor(DType dtype) {
  // The AVX-512 integer prefill uses vpdpbusd where the CPU has VNNI and
  // runs the AVX2 one (vpmaddubsw) where it does not.
  const bool integer_prefill = ActiveIsa() == Isa::kAvx512 || ActiveIsa() == Isa::kAvx2;
  if (HasGroupScales(dtype) && !FloatActivations() && integer_prefill) return PrefillDot::kInt8;
  if (dtype == DType::kBF16 && Bf16Activations() && ActiveIsa() == Isa::kAvx512 && internal::HasAvx512Bf16())
    return PrefillDot::kBf16;
  // (A model's products whose K is not a multiple of 32 take the FMA
  // kernels; every bundled and supported family's are.)
  if (dtype == DType::kBF16 && SplitBf16Activations() && ActiveIsa() == Isa::kAvx512 && internal::HasAvx512Bf16() &&
      internal::HasAmxBf16())
    return PrefillDot::kBf16Split;
  return PrefillDot::kFp32Fma;
}

const char* PrefillDotName(PrefillDot dot) {
  switch (dot) {
    case PrefillDot::kInt8: return "int8 dot";
    // The tile unit where the bf16 prefill runs on it (Bf16DotChains
    // measures the same).
    case PrefillDot::kBf16:
      return ActiveIsa() == Isa::kAvx512 && internal::HasAvx512Bf16() && internal::HasAmxBf16() ? "AMX bf16 tile"
                                                                                                : "bf16 dot";
    case PrefillDot::kBf16Split: return "AMX bf16 tile (x in 3 parts)";
    case PrefillDot::kFp32Fma: break;
  }
  return "fp32 FMA";
}

double MeasureFmaPeakGflops(ThreadPool& pool) { return MeasurePeak(pool, Active().fma_chains); }
double MeasureInt8DotPeakGops(ThreadPool& pool) { return MeasurePeak(pool, Active().int8_dot_chains); }
double MeasureBf16DotPeakGflops(ThreadPool& pool) { return MeasurePeak(pool, Active().bf16_dot_chains); }

}  // namespace epwa::kernels
