// Numeric kernels on plain float arrays and weight views.
//
// These functions know nothing about models. Each has a scalar reference in
// kernels/reference.h; the optimised versions (AVX-512, AVX2) are chosen once
// at start-up from the CPU's features and are tested against the reference.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
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
// The same by name ("avx512", "avx2" or "scalar", as IsaName gives them;
// EPWA_ISA and Python's set_kernel_flags). `what` names the setting in the
// error an unknown name throws.
void SetActiveIsa(std::string_view name, std::string_view what);

// Whether MatMul multiplies quantized and MXFP4 weights with float32
// activations on every path. Off (the default), the decode paths (up to 8
// rows of x) round the activations to int8 per group of 32 (see MatMul
// below): 0.5% relative error on an output, for integer dot products. On,
// every row count takes the exact path, as prefill does: the product equals
// the dequantized weights times x in float (for reference checks, and for
// users who prefer that to decode speed). Process-wide, like the ISA.
void SetFloatActivations(bool on);
bool FloatActivations();

// Whether the prefill with BF16 weights (MatMul above the decode row limit,
// or any M under ScopedRowInvariantMatMul) rounds x to bf16 and multiplies
// with vdpbf16ps, twice the fp32 FMA's multiply-adds per instruction, where
// the active path is AVX-512 and the CPU has AVX512-BF16. Off by default:
// each activation moves by up to 2^-9 of itself, so an output moves by up to
// about 2^-9 * sum_k |w[n, k] x[k]| against the float product (the measured
// cost on the bundled models is in the README), and prefill no longer
// computes what decode computes for the same token. Process-wide.
void SetBf16Activations(bool on);
bool Bf16Activations();

// Whether the float prefill with BF16 weights (Bf16Activations off) runs on
// AMX's tile unit, where the CPU has one and K is a multiple of 32, with
// each activation split into three bf16 parts, x = a + b + c exactly (a the
// bf16 rounding of x, b of x - a, c of x - a - b; each difference is exact
// in float, and three 8-bit significands hold float's 24). Each part times
// a bf16 weight is exact in float and the tile unit sums in float, so the
// product is float32's with its terms summed in another order (logits and
// routing against the float kernels are measured in the README). Off by
// default: the float kernels sum in one order on every CPU (AVX-512, AVX2),
// so a prompt gives the same bits everywhere, and the tile unit's order
// differs. Process-wide.
void SetSplitBf16Activations(bool on);
bool SplitBf16Activations();

// While an instance lives, MatMul calls made from this thread take the
// blocked (prefill) product at every row count, whose output rows do not
// depend on the other rows of the call: each is computed in the same order
// whether x has 1 row or 1,000. Scoring uses it so that a text gets the same
// routing, and so the same watermark score, alone or batched with others
// (where an expert's share of rows changes with the batch). Nests.
class ScopedRowInvariantMatMul {
 public:
  ScopedRowInvariantMatMul();
  ~ScopedRowInvariantMatMul();
  ScopedRowInvariantMatMul(const ScopedRowInvariantMatMul&) = delete;
  ScopedRowInvariantMatMul& operator=(const ScopedRowInvariantMatMul&) = delete;
};
bool RowInvariantMatMul();

// The instruction that does the multiply-adds of a prefill (MatMul above the
// decode row limit) with weights of `dtype` on the active path, and so the
// peak that bounds it: fp32 FMA (float weights; quantized weights on the
// scalar path, on AVX-512 without VNNI or with float activations), or int8
// dot products (quantized and MXFP4 weights on AVX-512 with VNNI and on
// AVX2), or bf16 dot products
// (BF16 weights with SetBf16Activations, on AVX512-BF16). The benchmarks set each
// prefill against the peak of its own instruction.
// kBf16Split: the tile unit's bf16 products with x in three parts
// (SetSplitBf16Activations), whose peak is a third of the tile unit's.
enum class PrefillDot { kFp32Fma, kInt8, kBf16, kBf16Split };
PrefillDot PrefillDotFor(DType dtype);
const char* PrefillDotName(PrefillDot dot);

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
// start at any 2-byte aligned address (a tensor in a mapped file); MXFP4
// blocks and scales, being bytes, at any address.
//
// Quantized weights (kQ8, kQ4, kNF4; w.cols % 32 == 0, w.scales set) follow
// the same contract. The vector decode paths, the AVX2 prefill and the
// AVX-512 prefill where the CPU has VNNI, quantize each row of x to int8 per group of 32 (scale =
// max|x| / 127, round to nearest) and multiply with integer dot products
// (VNNI vpdpbusd on AVX-512, vpmaddubsw on AVX2), scaling each group's
// integer sum by s_w * s_x in float. Against the dequantized float product
// this adds, per output, an error of at most sum over groups g of (s_x[g] / 2) *
// sum_{k in g} |w[n, k]| (each x moves by at most 1/254 of its group's
// max|x|), and for kNF4 at most sum_g (|s_w[g]| / 254) * sum_{k in g} |x[k]|,
// because the integer paths use the codebook rounded to multiples of 1/127.
// Measured on Gaussian data ([1024, 2048], x ~ N(0, 1)) the output moves by
// 0.54% (relative RMS) for Q8 and Q4 and 0.76% for NF4, 1.2-1.3% when every
// 97th activation is a 20x outlier: small against the 4-bit weight error
// (8.3%), comparable to the Q8 weight error (0.5%). The scalar path, the
// AVX-512 prefill without VNNI and every path under SetFloatActivations
// dequantize each
// panel of W to float exactly (as WeightView::At), run the float GEMM and
// have neither error. The integer prefill rounds x
// the same way and so has the same bound (its float steps differ in order
// from the decode path's, so a row's prefill and decode results may differ
// in the last bits).
//
// MXFP4 weights (kMXFP4, used in place from the checkpoint; layout in
// tensor/dtype.h) take the same two routes. The float prefill and the scalar
// path dequantize exactly (as WeightView::At). The integer paths (decode, the
// AVX2 prefill and the AVX-512 prefill with VNNI) use twice
// the E2M1 values as int8 levels (integers in [-12, 12], exact) against the
// same int8 x codes, and scale each block's integer sum by 2^(e - 127) / 2 *
// s_x (the halving is exact). The weights are thus exact, and the only error
// against the dequantized float product is the activation rounding above: at
// most sum_g (s_x[g] / 2) * sum_{k in g} |w[n, k]| per output, as for Q8 and
// Q4. Measured on MXFP4 weights quantized from Gaussian data by the OCP rule
// ([1024, 2048], x ~ N(0, 1); mxfp4_test.cc) the output moves by 0.55%
// (relative RMS), 1.1% with every 97th activation a 20x outlier: small
// against what MXFP4 itself does to that output (11%). Extreme scales follow
// float arithmetic: E8M0 0 is 2^-127 (a subnormal, exact), products that fall
// below float's normal range lose precision as in any float product, and
// weights of 2^128 or more (scales 253 and 254 with large codes) are
// infinite. E8M0 255 is NaN (OCP MX v1.0): each output that uses such a block
// is NaN on every path. Loaders should call ValidateMxfp4 once per matrix,
// which refuses both (reading only the scales of a valid matrix).
//
// Throws epwa::Error for a w with group scales (quantized or MXFP4) whose
// cols is not a multiple of 32 or that has no scales.
void MatMul(const float* x, int64_t M, const WeightView& w, float* y, ThreadPool& pool);

// One product of MatMulMany: y[M, w.rows] = x[M, w.cols] * w^T.
struct MatMulJob {
  const float* x;
  int64_t M;
  const WeightView* w;
  float* y;
};
// Runs every job, each with exactly MatMul's result, but decode-sized jobs
// (few rows of x, the same dtype, the vector decode path) share one parallel
// region: each thread takes a share of all their output rows, so the threads
// wake and meet once rather than once per job. Decoding one token through an
// MoE layer runs several small products (gate, up and down of each chosen
// expert, a few MiB each); alone, each pays the threads' start and finish and
// streams too briefly for the prefetchers, so two threads barely beat one.
// Prefill-sized jobs (an MoE layer's grouped experts) likewise share one
// region to prepare x and one to multiply, on AVX-512. Under
// ScopedRowInvariantMatMul every job takes the prefill MatMul takes there,
// grouped the same way, so scoring keeps both its row invariance and the
// shared regions. Jobs must not write where another job reads. Throws as
// MatMul does.
void MatMulMany(std::span<const MatMulJob> jobs, ThreadPool& pool);

// Quantizes src (F32, F16 or BF16, [rows, cols] with cols % 32 == 0) to
// `target` (kQ8, kQ4 or kNF4) with the rules and layout of tensor/dtype.h:
// fills codes (src.rows * CodeRowBytes(target, cols) bytes) and scales
// (src.rows * cols / 32 fp16 values). Rows are split over `pool`; every row
// is computed the same way whatever the thread count, and all paths produce
// identical bytes. Throws epwa::Error for a quantized or unknown src dtype, a
// float target, or cols % 32 != 0.
// Also throws epwa::Error (after quantizing) when src holds a NaN or an
// infinity, which no quantized format can represent.
void Quantize(const WeightView& src, DType target, void* codes, uint16_t* scales, ThreadPool& pool);

// The same into the layout with each row's scales after its codes
// (WeightView::WithScalesInRows, tensor/dtype.h): fills `out`
// (QuantizedBytes(target, rows, cols) bytes, 2-byte aligned, else
// epwa::Error) and returns the view of it. The
// codes and scales are the bytes Quantize writes, only placed differently.
// The model quantizes into this layout: its decode reads one stream per row.
WeightView QuantizeWithScalesInRows(const WeightView& src, DType target, void* out, ThreadPool& pool);

// The flat index (row * cols + col) of the first NaN or infinite element in
// rows [row_begin, row_end) of a F32, F16, BF16 or MXFP4 matrix; -1 when all
// are finite (and for formats that cannot hold NaN). For MXFP4 an element is
// NaN when its block's E8M0 scale is 255 and infinite when its value reaches
// 2^128 (scale 253 or 254 with a large code); only rows whose largest scale is
// 253 or more are read beyond their scales (1/17 of the matrix's bytes).
int64_t FirstNonFinite(const WeightView& w, int64_t row_begin, int64_t row_end);

// Checks a kMXFP4 matrix before use, for a loader to call once per matrix:
// throws epwa::Error, naming the row, column and scale, when cols is not a
// multiple of 32, the blocks or scales are missing, or an element is not
// finite (see FirstNonFinite), which no valid checkpoint holds. Throws for
// other dtypes too.
void ValidateMxfp4(const WeightView& w);

// An upper bound on the scratch memory MatMul keeps between calls (per-thread
// buffers that grow to the largest call and are never freed) for calls with
// at most `max_rows` rows of x and `max_k` input features on a pool of
// `threads` threads, on any instruction-set path: the packed or quantized
// rows of x (calling thread) and one packed weight panel or converted weight
// row per thread.
uint64_t MatMulScratchBytes(int64_t max_rows, int64_t max_k, int threads);

// out[c] = w.At(row, c) for c < w.cols, for any dtype including kMXFP4
// (bit-identical to At).
// Used for embedding lookups and tests.
void DequantizeRow(const WeightView& w, int64_t row, float* out);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);

// LayerNorm: out[i] = (x[i] - mean) / sqrt(var + eps) * weight[i] + bias[i],
// mean and (biased) variance over the n values, accumulated in double; out
// may alias x. Scalar: it runs once per row, beside O(n * d_ff) products.
void LayerNorm(const float* x, const float* weight, const float* bias, int64_t n, float eps, float* out);

// In-place numerically stable softmax over n values.
void Softmax(float* x, int64_t n);

// gate[i] = silu(gate[i]) * up[i], silu(v) = v / (1 + exp(-v)).
void SiluMul(float* gate, const float* up, int64_t n);

// Softmax over n values plus one extra logit `sink` that takes part in the
// normalisation but has no output (gpt-oss attention sinks): x[i] =
// exp(x[i] - m) / (sum_j exp(x[j] - m) + exp(sink - m)), m the largest of
// x and sink. The x then sum to less than 1. Scalar: it runs once per
// attention row, beside the O(n * head_dim) dot products.
void SoftmaxWithSink(float* x, int64_t n, float sink);

// gpt-oss's clamped SwiGLU: with g = min(gate[i], limit) and u =
// clamp(up[i], -limit, limit), gate[i] = (u + 1) * g * sigmoid(alpha * g).
void ClampedSwiGlu(float* gate, const float* up, int64_t n, float alpha, float limit);

// sum_i a[i] * b[i]
float Dot(const float* a, const float* b, int64_t n);

// y[i] += alpha * x[i]
void Axpy(float alpha, const float* x, float* y, int64_t n);

// Attention over a KV cache whose rows are F32, F16 or BF16 (KVCache's
// element type), for `count` queries that read the same key/value head: the
// query heads of a grouped-query group, and in a prompt several rows of them.
// Each cached row is read and widened once per four queries. Row j of the
// cache starts `stride` elements after row j - 1.
//
// scores[i * score_stride + j] = scale * (queries[i] . key_j) for i < count,
// j < n, each query `dim` floats. Each dot product is summed exactly as Dot
// sums it, so that with an F32 cache the scores are Dot's to the bit.
void AttentionScores(const float* const* queries, int64_t count, int64_t dim, const void* keys, DType cache_dtype,
                     int64_t stride, int64_t n, float scale, float* scores, int64_t score_stride);
// out[i][c] = sum over j < n of p[i * p_stride + j] * value_j[c] for i < count,
// c < dim, the terms added in order of j exactly as repeated Axpy calls would
// add them: from zero, or with `accumulate` onto out[i]'s contents (so that
// a long range may be taken in tiles with the same result).
void AttentionValues(const float* p, int64_t count, int64_t p_stride, const void* values, DType cache_dtype,
                     int64_t stride, int64_t n, int64_t dim, float* const* out, bool accumulate = false);

// One block of a prompt's attention: `count` queries that read the same
// key/value head (rows of one sequence times the query heads of a
// grouped-query group) against n cached rows, query i seeing the keys
// [begin[i], end[i]) (the causal mask and a sliding window; begin[i] < end[i]
// <= n):
//   out[i] = sum_j p_ij value_j, p_i = softmax over j in [begin[i], end[i]) of
//   scale * (queries[i] . key_j), with sinks[i] taking part in the softmax's
//   normalisation as in SoftmaxWithSink when sinks is not null.
// Each query's result is the same bits whatever the other queries of the
// block and their number (a text scores the same alone or batched), but its
// sums are not ordered as AttentionScores' and AttentionValues' are. On
// AVX-512 with at least kAttentionBlockMinQueries queries, or with
// row_invariant at any count, the block puts 16 queries in the
// lanes of a vector and multiplies them with each key element broadcast:
// no horizontal sums, and each key and value row read once per 16 queries;
// elsewhere it runs AttentionScores, the softmax and AttentionValues.
// `scratch` holds AttentionBlockScratchFloats(count, n, dim) floats.
struct AttentionBlockArgs {
  const float* const* queries = nullptr;  // [count] rows of dim floats
  float* const* outs = nullptr;           // [count] rows of dim floats, written
  const int64_t* begin = nullptr;         // [count]
  const int64_t* end = nullptr;           // [count]
  const float* sinks = nullptr;           // [count] or null
  int64_t count = 0, dim = 0;
  const void* keys = nullptr;    // n rows, key_stride elements apart
  const void* values = nullptr;  // n rows, value_stride elements apart
  DType cache_dtype = DType::kF32;
  int64_t key_stride = 0, value_stride = 0, n = 0;
  float scale = 1.f;
  // RowInvariantMatMul() of the thread that hands out the blocks (the flag
  // is per thread, and blocks run on the pool's): every block then takes the
  // same path whatever its count.
  bool row_invariant = false;
};
// Below this many queries (a decode step's heads of one group) the lanes
// would sit mostly empty: Qwen3-30B-A3B's 8-head groups decoded 1.01-1.23x
// as fast through the per-query kernels (4 layers, int4, after a 2,000-token
// prompt, 3 alternating pairs).
constexpr int64_t kAttentionBlockMinQueries = 12;
uint64_t AttentionBlockScratchFloats(int64_t count, int64_t n, int64_t dim);
void AttentionBlock(const AttentionBlockArgs& args, float* scratch);

// dst[i] = src[i] rounded to `dtype` (F32, F16 or BF16; what a KV cache
// stores): to nearest even, NaN kept, and for F16 values beyond the largest
// half (65504) saturated to it rather than turned into infinities. Every
// instruction-set path gives the same bits (NaN payloads aside).
void ConvertFromF32(const float* src, int64_t n, DType dtype, void* dst);

// dst[i] = float(src[i]) for n elements of `dtype` at src. Float dtypes only:
// quantized and MXFP4 data need their scales, so it throws epwa::Error for
// them (use DequantizeRow).
void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst);

// Machine probes for `epwa bench` and the benchmarks, run on the active path.
//
// Memory read bandwidth in GB/s (1e9 bytes/s): every thread of `pool` sums its
// share of a `bytes`-sized buffer with vector loads; best of five passes. The
// buffer must be far larger than the caches to measure DRAM: 0 (the default)
// reads DramProbeBytes().
double MeasureReadBandwidthGBs(ThreadPool& pool, size_t bytes = 0);
// Bytes a measurement must read for DRAM, not the caches, to serve it: at
// least 1 GiB and four times the last-level cache (ProbeLastLevelCacheBytes:
// server CPUs carry 300 MiB and more of L3, and some over 1 GiB), the latter
// bounded by a quarter of the free memory.
size_t DramProbeBytes();
// Floating-point peak in GFLOP/s (an FMA counts as two operations): every
// thread of `pool` runs independent FMA chains, enough to hide the latency,
// on the widest vectors of the active path; best of five runs.
double MeasureFmaPeakGflops(ThreadPool& pool);
// Integer dot-product peak in GOP/s (a multiply-add of two int8 values counts
// as two operations) with the instruction the active path's quantized
// kernels use: vpdpbusd (AVX-512 VNNI; AVX2's where the CPU lacks VNNI) or
// vpmaddubsw with int16 additions (AVX2: the cheapest step its kernels take;
// those that widen every product with vpmaddwd reach less of it); 0 on the
// scalar path. Independent chains on every thread, best of five runs.
double MeasureInt8DotPeakGops(ThreadPool& pool);
// bf16 dot-product peak in GFLOP/s (vdpbf16ps: a multiply-add counts as two
// operations); 0 unless the active path is AVX-512 and the CPU has
// AVX512-BF16.
double MeasureBf16DotPeakGflops(ThreadPool& pool);

}  // namespace epwa::kernels
