// Helpers shared by the instruction-set files (kernels_avx2.cc and
// kernels_avx512.cc), which include this header first.
//
// Those files are compiled with different -m flags, so nothing they share may
// have external or vague linkage: the linker keeps a single copy of an inline
// function, template instantiation or in-class member function for the whole
// program, and if it kept the one compiled with -mavx512f, the AVX2 path would
// fault on CPUs without AVX-512 (see kernels_internal.h). Everything below
// therefore lives in an anonymous namespace: each file that includes this
// header gets its own private copy, compiled with that file's own flags, and
// no symbol of it is visible to the linker. Only code without ISA-specific
// intrinsics belongs here, or with intrinsics every file that includes it
// enables: the SSE intrinsics in Sqrt exist on every x86-64 CPU, and both
// files are compiled for AVX2 (GroupBytes).
#pragma once

#if !defined(__x86_64__) && !defined(__i386__)
#error "kernels_isa_common.h is for the x86 instruction-set files only."
#endif

// GCC 12 reports the deliberately undefined pass-through operands inside its
// own intrinsic headers as uninitialised (GCC bug 105593); the headers' code
// is correct, so the warning is silenced for them only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <cstdint>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"

namespace epwa::kernels {
using internal::QuantizedOut;
namespace {

// Local stand-ins for std::min, std::clamp, DTypeSize, WeightView::Row and
// E8M0ToF32, so that the instruction-set files emit no shared inline code.
constexpr int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
constexpr int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }
constexpr int64_t Clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; }
// Bytes of n consecutive elements of a row (for the 4-bit types n is even;
// for types with group scales the codes only).
inline int64_t SpanBytes(DType dtype, int64_t n) {
  switch (dtype) {
    case DType::kF32: return 4 * n;
    case DType::kF16:
    case DType::kBF16: return 2 * n;
    case DType::kQ8: return n;
    case DType::kQ4:
    case DType::kNF4:
    case DType::kMXFP4: return n / 2;
    case DType::kU8:
    case DType::kF8E4M3: return n;
  }
  return 0;
}
inline int64_t RowBytes(const WeightView& w) { return SpanBytes(w.dtype, w.cols); }
// Types stored as codes plus one scale per group of 32 (tensor/dtype.h's
// HasGroupScales): the load-time quantized types with fp16 scales and kMXFP4
// with E8M0 scales. They share the integer decode and dequantizing prefill.
constexpr bool HasScales(DType d) {
  return d == DType::kQ8 || d == DType::kQ4 || d == DType::kNF4 || d == DType::kMXFP4;
}
// Bytes of group scales in one row of w (fp16 or E8M0).
inline int64_t ScaleRowBytes(const WeightView& w) { return (w.cols / 32) * (w.dtype == DType::kMXFP4 ? 1 : 2); }
// Bytes from one row's codes to the next, and from one row's scales to the
// next: the scales may sit in an array of their own or after each row's
// codes (WeightView::scales_in_rows, tensor/dtype.h).
inline int64_t RowStride(const WeightView& w) { return RowBytes(w) + (w.scales_in_rows ? ScaleRowBytes(w) : 0); }
inline int64_t ScaleStride(const WeightView& w) { return w.scales_in_rows ? RowStride(w) : ScaleRowBytes(w); }
inline const uint8_t* RowAt(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + r * RowStride(w);
}
// The group scales of row r of w: fp16 bits for the load-time quantized
// types, E8M0 bytes for kMXFP4; ScaleAddress is the scale of group g of row r
// in either format (for prefetching).
inline const uint16_t* ScaleRow(const WeightView& w, int64_t r) {
  return reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(w.scales) + r * ScaleStride(w));
}
inline const uint8_t* E8M0Row(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.scales) + r * ScaleStride(w);
}
inline const void* ScaleAddress(const WeightView& w, int64_t r, int64_t g) {
  if (w.dtype == DType::kMXFP4) return E8M0Row(w, r) + g;
  return ScaleRow(w, r) + g;
}
// Where Quantize writes the codes and scales of row r.
inline uint8_t* CodeRowOut(const QuantizedOut& out, int64_t r) { return out.codes + r * out.code_stride; }
inline uint16_t* ScaleRowOut(const QuantizedOut& out, int64_t r) {
  return reinterpret_cast<uint16_t*>(out.scales + r * out.scale_stride);
}
// The float bit pattern of an E8M0 scale 2^(e - 127): exactly E8M0ToF32
// (tensor/dtype.h), also in the vector versions of the instruction-set files.
constexpr uint32_t kE8M0ZeroBits = 0x00400000u;  // 2^-127, a float subnormal.
constexpr uint32_t kE8M0NaNBits = 0x7fc00000u;   // E8M0 255 is NaN (OCP MX v1.0).
inline float E8M0ToFloat(uint8_t e) {
  const uint32_t bits = e == 0 ? kE8M0ZeroBits : e == 255 ? kE8M0NaNBits : static_cast<uint32_t>(e) << 23;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
inline float Sqrt(float v) { return _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(v))); }

// Both instruction-set files are compiled with F16C, so the scalar half
// conversions below may use it.
inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

// The stored form of a quantization group's scale d (tensor/dtype.h): d
// rounded to fp16 away from zero, saturating at the largest finite half; zero
// (of either sign) is stored as +0 so that every path agrees on the bits.
inline uint16_t StoredScale(float d) {
  if (d == 0.f) return 0;
  uint16_t h = static_cast<uint16_t>(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
  if ((h & 0x7fffu) >= 0x7c00u) return static_cast<uint16_t>((h & 0x8000u) | 0x7bffu);
  if (__builtin_fabsf(_cvtsh_ss(h)) < __builtin_fabsf(d)) ++h;  // One step up in magnitude.
  return h;
}

// The midpoints between consecutive NF4 codebook values, computed in float as
// tensor/dtype.h specifies, padded to 16 with +inf (never probed).
inline void NF4Midpoints(float out[16]) {
  for (int i = 0; i < 15; ++i) out[i] = (kNF4Codebook[i] + kNF4Codebook[i + 1]) * 0.5f;
  out[15] = __builtin_inff();
}

// The integer decode kernels multiply int8 weight levels by int8 activation
// codes. The AVX-512 kernel (vpdpbusd: unsigned x signed bytes) sees each
// weight as the unsigned byte level + offset and subtracts offset * (sum of
// the group's x codes) afterwards: offset 128 for kQ8 (code ^ 0x80) and kNF4,
// 8 for kQ4 (the nibble itself, level + 8), 12 for kMXFP4 (the smallest that
// makes its levels in [-12, 12] unsigned: a smaller offset leaves less to
// cancel in float when the correction is subtracted).
template <DType D>
constexpr float kLevelOffset = D == DType::kQ4 ? 8.f : D == DType::kMXFP4 ? 12.f : 128.f;

// The int8 levels the integer decode kernels use for NF4: codebook * 127,
// rounded to nearest. The rounding moves a weight by at most |scale| / 254,
// an error the tests allow for (see kernels.h).
inline void NF4Levels(int8_t out[16]) {
  for (int i = 0; i < 16; ++i) {
    out[i] = static_cast<int8_t>(_mm_cvtss_si32(_mm_set_ss(kNF4Codebook[i] * 127.f)));
  }
}

// The int8 levels the integer decode kernels use for MXFP4: twice the E2M1
// values, so integers in [-12, 12] and exact; the factor 1/2 goes into the
// block scale (2^(e - 127) / 2, still exact as a float). Indexed by nibble.
inline void E2M1Levels(int8_t out[16]) {
  for (int i = 0; i < 16; ++i) out[i] = static_cast<int8_t>(kE2M1Values[i] * 2.f);
}

// The quantized rows of x in scratch memory. Row m holds `codes` (int8,
// padded with zeros to a whole number of 64-weight pairs), then the group
// scales s_x and the offset corrections offset * s_x * sum(q) as floats, both
// padded with zeros to a multiple of 16 groups.
//
// The order of the codes within a group or pair of groups is each kernel's
// own (see QuantizeX in the instruction-set files). The corrections are zero
// for kernels whose weight operand needs no offset.
struct QuantizedX {
  const float* base;
  int64_t row_floats;  // Floats per row of x.
  int64_t kpad;        // Codes per row (K rounded up to 64).
  int64_t gpad;        // Groups per row (K / 32 rounded up to 16).
  const int8_t* Codes(int m) const { return reinterpret_cast<const int8_t*>(base + m * row_floats); }
  const float* Scales(int m) const { return base + m * row_floats + kpad / 4; }
  const float* Corrections(int m) const { return Scales(m) + gpad; }
};

inline int64_t RoundUp(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// How far ahead of its loads the quantized decode kernel prefetches each
// weight row, given the bytes of the R rows it processes together. Those
// rows are consecutive in memory, so a fixed distance shorter than that
// block lands in rows already being read (quantized rows are short: 2 KiB
// for 4096 columns of Q4) and prefetches nothing new. A whole number of row
// blocks, at least 4 KiB, lands at the same column of a later block instead
// (measured on Zen 4, one core, Q4 [4096, 4096] from DRAM: 10 -> 22 GB/s;
// 4 KiB beat 2 KiB for 1024 columns). At least 8 KiB: OLMoE's gate and up
// rows of Q4 (2048 columns, 1152 bytes with their scales) make 4.6 KiB
// blocks, and one block ahead left too few lines in flight with two threads
// streaming experts from DRAM (Zen 5 VM, 2 threads, alternating runs of one
// build: kernels_bench ExpertStep/4/1/2 median of 6 rounds 44.0 GB/s at
// 4 KiB, 49.3 at 6 KiB, 49.0 at 9 KiB, 48.1 at 13.5 KiB, 48.0 at 18 KiB;
// full-depth OLMoE int4 decode 47.0-50.2 -> 53.7-55.7 tok/s; int8, whose
// gate and up blocks were 8.5 KiB already, within noise).
inline int64_t QuantPrefetchDistance(int64_t block_bytes) {
  constexpr int64_t kMin = 8192;
  return (kMin + block_bytes - 1) / block_bytes * block_bytes;
}

// Bytes of the scales of g groups of D (fp16 or E8M0).
template <DType D>
constexpr int64_t SpanScaleBytes(int64_t g) { return g * (D == DType::kMXFP4 ? 1 : 2); }

// pool.ParallelFor over a lambda, without instantiating std::function here.
template <typename F>
void ParallelRange(ThreadPool& pool, int64_t n, int64_t grain, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  internal::ParallelFor(
      pool, n, grain, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); }, &fn);
}

// The same over internal::ParallelForDecode: chunks claimed by the threads.
template <typename F>
void ParallelDecodeRange(ThreadPool& pool, int64_t n, int64_t grain, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  internal::ParallelForDecode(
      pool, n, grain, [](void* c, int64_t b, int64_t e) { (*static_cast<Fn*>(c))(b, e); }, &fn);
}

// Asks for the cache line holding p to be brought into L2. An asm statement,
// because GCC deletes loops that contain nothing but __builtin_prefetch.
// Prefetches never fault, so the address may lie past the end of a row or of
// the mapping.
inline void PrefetchL2(const void* p) {
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
}

// The same into L1, for the decode kernels, which read each line once and
// soon: measured on Zen 4 (2 threads, 512 MB of weights from DRAM, M = 1),
// prefetcht0 streamed BF16 rows 1.0-1.15x and AVX-512 Q4 rows 1.03-1.25x as
// fast as prefetcht1 at the same distance (AVX2 Q4: no difference).
inline void PrefetchL1(const void* p) {
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
}

// Byte offset, from the start of a row in a block of `rows` consecutive rows
// of row_bytes each, of the line the decode kernels prefetch while reading
// `offset`: `distance` further along the same row or, past its end, along the
// same row of the next block. A kernel that walks R rows side by side
// consumes the next block's rows in the same order, so every prefetched line
// is used in the order it arrives and none is fetched twice; a plain
// `offset + distance` would land in the next row of the same block, which is
// already being read.
inline int64_t DecodePrefetchOffset(int64_t offset, int64_t distance, int64_t row_bytes, int rows) {
  const int64_t target = offset + distance;
  return target < row_bytes ? target : target + (rows - 1) * row_bytes;
}

// For MatMulMany's fused decode in both files: the first of jobs [0, j)
// that reads job j's x with the same rows and width, else j. The callers
// pass one x to many jobs (q, k and v; the gate and up of every chosen
// expert), which is then prepared (quantized, or deinterleaved) once, on the
// calling thread while the workers wait: 16 times over for an OLMoE layer's
// gates and ups before.
inline int64_t SharedXOwner(const MatMulJob* jobs, int64_t j) {
  for (int64_t i = 0; i < j; ++i)
    if (jobs[i].x == jobs[j].x && jobs[i].M == jobs[j].M && jobs[i].w->cols == jobs[j].w->cols) return i;
  return j;
}

// Where each job of MatMulMany's fused decode goes: job j's output rows
// start at start[j] of the region's row index (a multiple of 4, so that a
// thread's share of a job splits where Decode's would), and its prepared x
// at x_offset[j] floats into the scratch buffer (x_offset[n]: the total),
// unless it shares job owner[j]'s. x_floats(job) gives the floats a job's x
// takes prepared (0 where the kernel reads x as given).
template <int64_t kMaxJobs>
struct FusedDecodeLayout {
  int64_t start[kMaxJobs + 1], x_offset[kMaxJobs + 1], owner[kMaxJobs];

  template <typename XFloats>
  FusedDecodeLayout(const MatMulJob* jobs, int64_t n, XFloats&& x_floats) {
    start[0] = x_offset[0] = 0;
    for (int64_t j = 0; j < n; ++j) {
      start[j + 1] = start[j] + RoundUp(jobs[j].w->rows, 4);
      owner[j] = SharedXOwner(jobs, j);
      x_offset[j + 1] = x_offset[j] + (owner[j] == j ? RoundUp(x_floats(jobs[j]), 16) : 0);
    }
  }
};

// fn(j, n0, n1) for each job whose output rows [n0, n1) lie in [b, e) of a
// fused decode's row index, in which job j's rows start at start[j].
template <typename Fn>
void ForJobRows(const MatMulJob* jobs, int64_t n, const int64_t* start, int64_t b, int64_t e, Fn&& fn) {
  for (int64_t j = 0; j < n; ++j) {
    const int64_t lo = Max(b, start[j]), hi = Min(e, start[j] + jobs[j].w->rows);
    if (lo < hi) fn(j, lo - start[j], hi - start[j]);
  }
}

// fn(type) with a weight matrix's element type as a compile-time constant,
// for the types the matrix kernels take; false for raw checkpoint bytes
// (kernels.cc refuses those first). MatMulMany's dispatch in both files.
template <typename Fn>
bool ForMatrixType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF32: return fn(std::integral_constant<DType, DType::kF32>{});
    case DType::kF16: return fn(std::integral_constant<DType, DType::kF16>{});
    case DType::kBF16: return fn(std::integral_constant<DType, DType::kBF16>{});
    case DType::kQ8: return fn(std::integral_constant<DType, DType::kQ8>{});
    case DType::kQ4: return fn(std::integral_constant<DType, DType::kQ4>{});
    case DType::kNF4: return fn(std::integral_constant<DType, DType::kNF4>{});
    case DType::kMXFP4: return fn(std::integral_constant<DType, DType::kMXFP4>{});
    case DType::kU8:
    case DType::kF8E4M3: break;
  }
  return false;
}

// The attention kernels' dispatch, shared by both files: fn(type) with the
// KV cache element type as a compile-time constant, and fn(blocks, first)
// for each block of up to four queries (a compile-time count) from `first`.
template <typename Fn>
void ForCacheType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kF16: return fn(std::integral_constant<DType, DType::kF16>{});
    case DType::kBF16: return fn(std::integral_constant<DType, DType::kBF16>{});
    default: return fn(std::integral_constant<DType, DType::kF32>{});
  }
}

template <typename Fn>
void ForQueryBlocks(int64_t count, Fn&& fn) {
  for (int64_t first = 0; first < count; first += 4) {
    switch (Min(4, count - first)) {
      case 1: fn(std::integral_constant<int, 1>{}, first); break;
      case 2: fn(std::integral_constant<int, 2>{}, first); break;
      case 3: fn(std::integral_constant<int, 3>{}, first); break;
      default: fn(std::integral_constant<int, 4>{}, first); break;
    }
  }
}

// Bytes of one KV cache row of `stride` elements of D.
constexpr int64_t CacheRowBytes(DType dtype, int64_t stride) { return stride * (dtype == DType::kF32 ? 4 : 2); }

// Packs `rows` rows of x (row stride K) as one tile of MR rows for an
// integer prefill: for each group of 32 inputs, the 8 quads of int8 codes of
// each row [8][MR] as words, then s_x [MR] as floats and the correction
// -offset * sum(q) [MR] as int32; rows beyond `rows` are zero codes with zero
// scale and correction. round_group(xg, quads, &scale, &sum) rounds the 32
// floats at xg to codes (in order, four to a word) with the instruction
// set's own arithmetic, which must be its decode's.
template <int MR, typename RoundGroup>
void PackXTile(const float* x, int64_t K, int64_t rows, int32_t offset, int32_t* out, RoundGroup&& round_group) {
  const int64_t groups = K / 32;
  constexpr int64_t kGroupWords = 10 * MR;
  for (int64_t g = 0; g < groups; ++g) {
    int32_t* group = out + g * kGroupWords;
    float* scales = reinterpret_cast<float*>(group + 8 * MR);
    int32_t* corrections = group + 9 * MR;
    for (int m = 0; m < MR; ++m) {
      alignas(32) int32_t quads[8] = {};
      float scale = 0.f;
      int32_t sum = 0;
      if (m < rows) round_group(x + m * K + 32 * g, quads, &scale, &sum);
      for (int j = 0; j < 8; ++j) group[j * MR + m] = quads[j];
      scales[m] = scale;
      corrections[m] = -offset * sum;
    }
  }
}

// The int8 levels of a 4-bit type's 16 nibbles plus `offset` (wrapping, as
// vpaddb does), as the 16 bytes of a vpshufb table: MXFP4's E2M1 values * 2,
// else NF4's codebook * 127 (Q8 and Q4 never look their table up).
template <DType D>
__m128i NibbleLevelTable(int offset) {
  int8_t levels[16];
  if constexpr (D == DType::kMXFP4) {
    E2M1Levels(levels);
  } else {
    NF4Levels(levels);
  }
  for (int8_t& level : levels) level = static_cast<int8_t>(level + offset);
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(levels));
}

// The 32 weights of group g of a row of D as bytes in input order: Q8's codes
// as stored, Q4's nibbles, and NF4's and MXFP4's nibbles mapped through
// level_table (16 bytes, in both 128-bit lanes, for vpshufb). Q4 and NF4 keep
// inputs 0..15 in the low nibbles of the group's 16 bytes and 16..31 in the
// high ones; MXFP4 keeps inputs 2j and 2j + 1 in the low and high nibble of
// byte j. AVX2 instructions, which both instruction-set files enable: the
// integer prefills of both pack their panels from it.
template <DType D>
__attribute__((always_inline)) inline __m256i GroupBytes(const uint8_t* row, int64_t g, __m256i level_table) {
  if constexpr (D == DType::kQ8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * g));
  } else {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * g));
    const __m128i nibble = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(b, nibble), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nibble);
    __m256i levels;
    if constexpr (D == DType::kMXFP4) {
      levels = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
    } else {
      levels = _mm256_set_m128i(hi, lo);
    }
    if constexpr (D == DType::kQ4) return levels;
    return _mm256_shuffle_epi8(level_table, levels);
  }
}

// The kernel MatMulMany's grouped prefill (kernels_many_inl.h) runs for one
// job: the one MatMul would run for it. An instruction-set file picks among
// those it has (AVX2 has no bf16 products).
enum class ManyPath : uint8_t { kDecodeQuantized, kDecodeFloat, kPrefillInt8, kPrefillBf16, kPrefillBf16Amx, kPrefillFloat };

}  // namespace
}  // namespace epwa::kernels
