// The per-instruction-set kernel tables behind kernels.h.
//
// Each instruction-set file (kernels.cc for scalar, kernels_avx2.cc,
// kernels_avx512.cc) fills one IsaKernels table; kernels.cc picks a table at
// start-up and forwards the public functions to it. Only the kernel files
// and the tests of this folder include this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/thread_pool.h"
#include "tensor/dtype.h"

namespace epwa::kernels {
struct MatMulJob;
}  // namespace epwa::kernels

namespace epwa::kernels::internal {

// When the AVX-512 MatMul multiplies weights of dtype d with the integer
// decode kernel (quantized types, int8 activations, outside
// ScopedRowInvariantMatMul): up to 8 rows of x always, and up to
// Avx512QuantDecodeRows(d) rows where the weights have at least
// Avx512QuantDecodeMinCols(d) columns; more rows take the int8 prefill
// tiles, whose sums run in another order. kernels_avx512.cc gives the
// measurements behind the figures. The instruction-set files evaluate these
// only in constant expressions, so none of them emits them
// (kernels_isa_common.h says why that matters); the tests call them at run
// time.
constexpr int64_t Avx512QuantDecodeRows(DType d) {
  return d == DType::kQ4 ? 13 : d == DType::kNF4 ? 10 : d == DType::kMXFP4 || d == DType::kQ8 ? 9 : 8;
}
constexpr int64_t Avx512QuantDecodeMinCols(DType d) {
  return d == DType::kQ4 ? 1536 : d == DType::kQ8 ? 1024 : 2048;
}

// Where Quantize writes a matrix: row r's codes at codes + r * code_stride,
// its fp16 scales at scales + r * scale_stride (bytes), in either layout of
// tensor/dtype.h (scales in an array of their own, or after each row's codes).
// A plain struct without member functions: the instruction-set files must
// not emit shared inline code (kernels_isa_common.h).
struct QuantizedOut {
  uint8_t* codes;
  int64_t code_stride;
  uint8_t* scales;
  int64_t scale_stride;
};

struct IsaKernels {
  void (*mat_mul)(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool);
  void (*rms_norm)(const float* x, const float* weight, int64_t n, float eps, float* out);
  void (*softmax)(float* x, int64_t n);
  void (*silu_mul)(float* gate, const float* up, int64_t n);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float alpha, const float* x, float* y, int64_t n);
  void (*convert_to_f32)(DType dtype, const void* src, int64_t n, float* dst);
  // kernels.h's ConvertFromF32, AttentionScores and AttentionValues
  // (arguments validated).
  void (*convert_from_f32)(const float* src, int64_t n, DType dtype, void* dst);
  void (*attention_scores)(const float* const* queries, int64_t count, int64_t dim, const void* keys,
                           DType cache_dtype, int64_t stride, int64_t n, float scale, float* scores,
                           int64_t score_stride);
  void (*attention_values)(const float* p, int64_t count, int64_t p_stride, const void* values,
                           DType cache_dtype, int64_t stride, int64_t n, int64_t dim, float* const* out,
                           bool accumulate);
  // kernels.h's AttentionBlock with the queries in vector lanes, for at most
  // 16 queries (arguments validated); null where the path has none.
  void (*attention_block)(const AttentionBlockArgs& args, float* scratch);
  // Quantizes rows [row_begin, row_end) of the float matrix src to `target`
  // into `out` (the whole matrix's codes and scales).
  void (*quantize_rows)(const WeightView& src, DType target, int64_t row_begin, int64_t row_end,
                        const QuantizedOut& out);
  // out[c] = w.At(row, c) for a quantized w.
  void (*dequantize_row)(const WeightView& w, int64_t row, float* out);
  // Sums n floats with the widest loads of this instruction set, reading
  // them as `streams` (1, 2 or 4) equal parts side by side, 256 bytes of each
  // part per step, and, when `prefetch`, prefetching each part
  // kProbePrefetchBytes ahead with a non-temporal hint. The bandwidth probe
  // times several such patterns and keeps the fastest.
  float (*sum_floats)(const float* p, int64_t n, int streams, bool prefetch);
  // Runs `iterations` rounds of independent FMA chains and returns the number
  // of floating-point operations it performed (an FMA counts as two).
  double (*fma_chains)(int64_t iterations);
  // The same with the integer dot product the quantized kernels of this path
  // use (a multiply-add of two int8 values counts as two operations); 0 where
  // the path has none.
  double (*int8_dot_chains)(int64_t iterations);
  // The same with bf16 dot products (vdpbf16ps); 0 where the path or the CPU
  // has none.
  double (*bf16_dot_chains)(int64_t iterations);
  // Runs n MatMul jobs of one dtype in shared parallel regions if this path
  // can (the fused decode, or the grouped prefill of kernels_many_inl.h) and
  // returns true, else returns false having done nothing. The jobs are
  // validated.
  bool (*mat_mul_many)(const MatMulJob* jobs, int64_t n, ThreadPool& pool);
};

// MatMulMany's first step: validates the jobs and runs them in shared
// parallel regions where the active path can, returning whether it did (if
// not, nothing was computed and MatMulMany runs them one by one). Tests use it
// to check that the grouped paths run where they should.
bool MatMulManyFused(std::span<const MatMulJob> jobs, ThreadPool& pool);

// Scratch space and the thread pool are reached from the instruction-set
// files only through these plain functions, defined in kernels.cc. Those
// files must not instantiate inline code with external linkage (std::function,
// AlignedBuffer, std::min, WeightView::Row, ...): the linker keeps a single
// copy of such code for the whole program, and if it kept the one compiled
// with -mavx512f, code outside the kernels would fault on CPUs without
// AVX-512. So they use local helpers in anonymous namespaces instead, and
// share code only in ways that give each of them a private copy
// (kernels_isa_common.h, kernels_blocking_inl.h).
enum class Scratch { kPackedX, kDecodeX, kPanel };
// A 64-byte aligned buffer of at least `count` floats, private to the calling
// thread and to `slot`, kept between calls; its contents are unspecified.
float* ThreadScratch(Scratch slot, size_t count);

// How far ahead of its loads the bandwidth probe prefetches each part
// (sum_floats with prefetch), as far as the decode kernels look ahead
// (kDecodePrefetchBytes in the AVX-512 file).
inline constexpr int64_t kProbePrefetchBytes = 2048;

// The active path's sum_floats, for tests of the probe's read patterns.
float SumFloatsForTesting(const float* p, int64_t n, int streams, bool prefetch);
// pool.ParallelFor(n, grain, ...) calling fn(context, begin, end).
using RangeFn = void (*)(void* context, int64_t begin, int64_t end);
void ParallelFor(ThreadPool& pool, int64_t n, int64_t grain, RangeFn fn, void* context);
// pool.ParallelForClaimed(n, grain, DecodeChunksPerThread(), ...): the decode
// regions, whose rows stream from DRAM independently, in chunks that the
// threads claim, so that a thread held up does not hold up the region.
void ParallelForDecode(ThreadPool& pool, int64_t n, int64_t grain, RangeFn fn, void* context);
// Chunks per thread of the decode regions; 1 gives ParallelFor's equal
// shares. The setter is for bench/decode_chunks_ab, which compares counts in
// one process, and for tests.
constexpr int kDefaultDecodeChunksPerThread = 4;
void SetDecodeChunksPerThreadForTesting(int chunks_per_thread);
int DecodeChunksPerThread();
// Whether the CPU has AVX-512 VNNI (vpdpbusd), which the AVX-512 integer
// decode and prefill kernels need; without it that path runs the AVX2 ones.
bool HasAvx512Vnni();
// Makes HasAvx512Vnni() report false while `masked` (tests only: no CPU we
// can test on lacks VNNI but has AVX-512).
void MaskAvx512VnniForTesting(bool masked);
// Whether the CPU has GFNI (vgf2p8affineqb), which the AVX-512 4-bit decode
// kernel uses to split nibbles where it exists (not on Cascade or Cooper
// Lake, which have VNNI).
bool HasGfni();
// Makes HasGfni() report false while `masked` (tests: both forms of the
// kernel must give the same bits on a CPU that has GFNI).
void MaskGfniForTesting(bool masked);
// Overrides when the AVX-512 MatMul gives quantized weights the integer
// decode past 8 rows of x: by the rule above, never, or always up to
// kAvx512MaxQuantDecodeRows (bench/decode_rows_ab compares the two paths in
// one process; tests check the decode's bits at every row count).
enum class DecodePasses : int { kByRule, kNever, kAlways };
constexpr int64_t kAvx512MaxQuantDecodeRows = 13;
void SetDecodePassesForTesting(DecodePasses mode);
DecodePasses DecodePassesMode();
// Whether the CPU has AVX-512 BF16 (vdpbf16ps).
bool HasAvx512Bf16();
// Whether AMX's bf16 tile products (tdpbf16ps) may run: the CPU has them
// (Sapphire Rapids and later), the OS saves the tile state and granted this
// process its use, and EPWA_AMX is not 0. The bf16 prefill
// (SetBf16Activations) then multiplies 16-row tiles of x on the tile unit.
bool HasAmxBf16();
// Makes HasAmxBf16() report false while `masked` (tests compare the AMX and
// AVX-512 bf16 prefills; benches compare their speed in one process).
void MaskAmxForTesting(bool masked);

extern const IsaKernels kScalarKernels;
#if defined(__x86_64__) || defined(__i386__)
extern const IsaKernels kAvx2Kernels;
extern const IsaKernels kAvx512Kernels;
#endif

}  // namespace epwa::kernels::internal
