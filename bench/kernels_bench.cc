// Benchmarks of the numeric kernels against what the machine can do.
//
// Decode (matrix-vector) is bound by memory bandwidth, so it reports GB/s of
// weights streamed (codes plus fp16 scales for the quantized dtypes
// Q8/Q4/NF4, 4.5 bits per weight for Q4; blocks plus E8M0 scales for MXFP4,
// 4.25 bits per weight) and the percentage of the read bandwidth measured on
// the same thread count; prefill (matrix-matrix) is bound by arithmetic, so it
// reports GOP/s and the percentage of the measured peak of the instruction it
// uses: the fp32 FMA for float weights, the int8 dot product (vpdpbusd) for
// quantized and MXFP4 weights on AVX-512 with VNNI. Arguments are
// (dtype, threads) or (dtype, M, threads); run with --benchmark_filter to pick.
//
//   build-kern/bench/kernels_bench --benchmark_filter=MatVec
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// (one command line).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "base/aligned.h"
#include "base/timer.h"
#include "kernels/kernels.h"

namespace epwa::kernels {
namespace {

// Decode shape: 32768 output rows of 4096 inputs, 256 MiB in BF16/F16 and
// 512 MiB in F32, far beyond any cache, like an LM head or a large FFN.
constexpr int64_t kDecodeN = 32768;
constexpr int64_t kDecodeK = 4096;
// Prefill shape: a 4096 x 4096 projection.
constexpr int64_t kPrefillN = 4096;
constexpr int64_t kPrefillK = 4096;

ThreadPool& Pool(int threads) {
  static std::map<int, std::unique_ptr<ThreadPool>> pools;
  auto& pool = pools[threads];
  if (!pool) pool = std::make_unique<ThreadPool>(threads);
  return *pool;
}

// The reference figures are measured right before and after each benchmark
// and the better of the two kept: the memory bandwidth of a shared host
// varies from minute to minute with its other tenants, so a figure measured
// once at start-up would make the percentages drift.
double Bandwidth(int threads) { return MeasureReadBandwidthGBs(Pool(threads)); }
double Peak(int threads) { return MeasureFmaPeakGflops(Pool(threads)); }
// The peak of the instruction a prefill with weights of `dtype` uses
// (PrefillDotFor): the fp32 FMA or the int8 dot product.
double PrefillPeak(DType dtype, int threads) {
  switch (PrefillDotFor(dtype)) {
    case PrefillDot::kInt8: return MeasureInt8DotPeakGops(Pool(threads));
    case PrefillDot::kBf16: return MeasureBf16DotPeakGflops(Pool(threads));
    // Three tile products per multiply-add (x in three bf16 parts).
    case PrefillDot::kBf16Split: return MeasureBf16DotPeakGflops(Pool(threads)) / 3;
    case PrefillDot::kFp32Fma: break;
  }
  return Peak(threads);
}

// Weights of the given shape and dtype with small random values; cached so
// that the large matrices are built once per process. `copy` tells apart
// several matrices of the same shape (the experts of BM_ExpertMatVec).
// Quantized weights are made from the BF16 matrix with Quantize. MXFP4
// weights, which only come from checkpoints, get random codes and E8M0 scales
// between 2^-9 and 2^-1, the order of magnitude of trained weights (the
// speed does not depend on the values as long as they stay normal floats).
const WeightView& Weights(DType dtype, int64_t rows, int64_t cols, int copy = 0) {
  struct Entry {
    AlignedBuffer<uint8_t> bytes;
    AlignedBuffer<uint8_t> e8m0;     // E8M0 scales of MXFP4
    WeightView view;
  };
  static std::map<std::tuple<int, int64_t, int64_t, int>, std::unique_ptr<Entry>> cache;
  auto& entry = cache[{static_cast<int>(dtype), rows, cols, copy}];
  if (!entry && dtype == DType::kMXFP4) {
    entry = std::make_unique<Entry>();
    entry->bytes.Resize(static_cast<size_t>(CodeRowBytes(dtype, cols) * rows));  // [rows, cols / 32, 16]
    entry->e8m0.Resize(static_cast<size_t>(rows * cols / kQuantGroup));          // [rows, cols / 32]
    std::mt19937 rng(3 + copy);
    std::uniform_int_distribution<int> byte(0, 255), exponent(118, 126);
    // A short random pattern repeated keeps set-up fast for the large cases.
    std::vector<uint8_t> codes(4099), scales(1031);
    for (uint8_t& b : codes) b = static_cast<uint8_t>(byte(rng));
    for (uint8_t& e : scales) e = static_cast<uint8_t>(exponent(rng));
    for (size_t i = 0; i < entry->bytes.size(); ++i) entry->bytes.data()[i] = codes[i % codes.size()];
    for (size_t i = 0; i < entry->e8m0.size(); ++i) entry->e8m0.data()[i] = scales[i % scales.size()];
    entry->view = WeightView{dtype, entry->bytes.data(), rows, cols, entry->e8m0.data()};
  }
  if (!entry && IsQuantized(dtype)) {
    const WeightView& src = Weights(DType::kBF16, rows, cols, -1);
    entry = std::make_unique<Entry>();
    // In the layout the model quantizes into: each row's scales after its codes.
    entry->bytes.Resize(static_cast<size_t>(QuantizedBytes(dtype, rows, cols)));
    entry->view = QuantizeWithScalesInRows(src, dtype, entry->bytes.data(), Pool(2));
  }
  if (!entry) {
    entry = std::make_unique<Entry>();
    const size_t count = static_cast<size_t>(rows * cols);
    entry->bytes.Resize(count * DTypeSize(dtype));
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
    uint8_t* p = entry->bytes.data();
    // A short random pattern repeated keeps set-up fast for the 512 MiB case.
    std::vector<float> pattern(4099);
    for (float& f : pattern) f = dist(rng);
    for (size_t i = 0; i < count; ++i) {
      const float v = pattern[i % pattern.size()];
      if (dtype == DType::kF32) {
        std::memcpy(p + 4 * i, &v, 4);
      } else {
        const uint16_t h = dtype == DType::kF16 ? F32ToF16(v) : F32ToBF16(v);
        std::memcpy(p + 2 * i, &h, 2);
      }
    }
    entry->view = WeightView{dtype, p, rows, cols};
  }
  return entry->view;
}

std::vector<float> Activations(int64_t n) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

void SetLabel(benchmark::State& state, DType dtype, int threads) {
  state.SetLabel(std::string(DTypeName(dtype)) + " " + IsaName(ActiveIsa()) + " " +
                 std::to_string(threads) + "t");
}

// Machine probes, reported as benchmarks so they sit beside the kernels.
void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double gbs = 0.0;
  for (auto _ : state) gbs = MeasureReadBandwidthGBs(Pool(threads));
  state.counters["GB/s"] = gbs;
  state.SetLabel(std::to_string(threads) + "t");
}
BENCHMARK(BM_ReadBandwidth)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond);

void BM_FmaPeak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double gflops = 0.0;
  for (auto _ : state) gflops = MeasureFmaPeakGflops(Pool(threads));
  state.counters["GFLOP/s"] = gflops;
  state.SetLabel(std::to_string(threads) + "t");
}
BENCHMARK(BM_FmaPeak)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond);

// Integer (vpdpbusd, or AVX2's vpmaddubsw sequence) and bf16 (vdpbf16ps)
// dot-product peaks; an absent instruction reports 0.
void BM_Int8DotPeak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double gops = 0.0;
  for (auto _ : state) gops = MeasureInt8DotPeakGops(Pool(threads));
  state.counters["GOP/s"] = gops;
  state.SetLabel(std::to_string(threads) + "t");
}
BENCHMARK(BM_Int8DotPeak)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond);

void BM_Bf16DotPeak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  double gflops = 0.0;
  for (auto _ : state) gflops = MeasureBf16DotPeakGflops(Pool(threads));
  state.counters["GFLOP/s"] = gflops;
  state.SetLabel(std::to_string(threads) + "t");
}
BENCHMARK(BM_Bf16DotPeak)->Arg(1)->Arg(2)->Iterations(1)->Unit(benchmark::kMillisecond);

// Decode: y[1, N] = x[1, K] * W[N, K]^T.
void BM_MatVec(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const WeightView& w = Weights(dtype, kDecodeN, kDecodeK);
  const std::vector<float> x = Activations(kDecodeK);  // [1, K]
  std::vector<float> y(kDecodeN);                      // [1, N]
  ThreadPool& pool = Pool(threads);
  double bandwidth = Bandwidth(threads);
  MatMul(x.data(), 1, w, y.data(), pool);
  Stopwatch watch;
  for (auto _ : state) {
    MatMul(x.data(), 1, w, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  const double gbs = static_cast<double>(w.Bytes() + w.ScaleBytes()) * state.iterations() / watch.Seconds() / 1e9;
  bandwidth = std::max(bandwidth, Bandwidth(threads));
  state.counters["GB/s"] = gbs;
  state.counters["bw GB/s"] = bandwidth;
  state.counters["%bw"] = 100.0 * gbs / bandwidth;
  SetLabel(state, dtype, threads);
}

// Decode of MoE expert matrices: each call multiplies a different expert, as
// a decode step does when successive layers and tokens pick different
// experts, from a ring of copies several times the size of the L3 cache, so
// that the weights stream from DRAM as they do in a real model rather than
// staying cached. Arguments: (dtype, shape, threads) with shape 0 = [1024,
// 2048] (a down projection's input side), 1 = [2048, 1024], 2 = [4096, 4096].
// Reports the weight bytes (codes + scales) streamed per second, the
// percentage of the read bandwidth measured in the same run, and output rows
// per second (compare dtypes on the same shape: Q4 rows/s over BF16 rows/s
// is the decode speed-up). Shapes 3 and 4 are gpt-oss's experts: gate_up
// [5760, 2880] and down [2880, 2880] (MXFP4 in its checkpoints); 5 and 6
// Qwen3-30B-A3B's: gate or up [768, 2048] and down [2048, 768].
constexpr int64_t kExpertShapes[][2] = {{1024, 2048}, {2048, 1024}, {4096, 4096}, {5760, 2880},
                                        {2880, 2880}, {768, 2048},  {2048, 768}};

void BM_ExpertMatVec(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t N = kExpertShapes[state.range(1)][0], K = kExpertShapes[state.range(1)][1];
  const int threads = static_cast<int>(state.range(2));
  const uint64_t bytes = QuantizedBytes(dtype, N, K);
  // At least 256 MiB in all: several times the L3 of most CPUs, but not of
  // large server parts (the Emerald Rapids VM of docs/speed-log.md lists 300
  // MiB), where part of the ring is served by the L3; the rings stay cached
  // for the whole run, so they are not sized by the cache (kernels::
  // DramProbeBytes) or the full benchmark would need tens of GB.
  const int copies = static_cast<int>(std::max<uint64_t>(2, (256ull << 20) / bytes + 1));
  std::vector<const WeightView*> experts;
  for (int c = 0; c < copies; ++c) experts.push_back(&Weights(dtype, N, K, c));
  const std::vector<float> x = Activations(K);  // [1, K]
  std::vector<float> y(static_cast<size_t>(N));  // [1, N]
  ThreadPool& pool = Pool(threads);
  double bandwidth = Bandwidth(threads);
  size_t next = 0;
  Stopwatch watch;
  for (auto _ : state) {
    MatMul(x.data(), 1, *experts[next], y.data(), pool);
    next = (next + 1) % experts.size();
    benchmark::DoNotOptimize(y.data());
  }
  const double seconds = watch.Seconds();
  const double gbs = static_cast<double>(bytes) * state.iterations() / seconds / 1e9;
  bandwidth = std::max(bandwidth, Bandwidth(threads));
  state.counters["GB/s"] = gbs;
  state.counters["bw GB/s"] = bandwidth;
  state.counters["%bw"] = 100.0 * gbs / bandwidth;
  state.counters["Mrows/s"] = static_cast<double>(N) * state.iterations() / seconds / 1e6;
  SetLabel(state, dtype, threads);
}

// An expert's share of a prompt: M rows of x (the tokens routed to it) times
// one expert matrix, each call a different expert from a ring of copies
// several times the L3 cache, as in an MoE layer's prefill. Arguments:
// (dtype, shape of kExpertShapes, M); 2 threads. With 64 or 128 experts and
// 8 chosen per token, a prompt of 128 tokens gives experts 8 to 16 rows on
// average, where the integer decode and the prefill tiles meet.
void BM_ExpertShare(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t N = kExpertShapes[state.range(1)][0], K = kExpertShapes[state.range(1)][1];
  const int64_t M = state.range(2);
  const uint64_t bytes = QuantizedBytes(dtype, N, K);
  const int copies = static_cast<int>(std::max<uint64_t>(2, (256ull << 20) / bytes + 1));
  std::vector<const WeightView*> experts;
  for (int c = 0; c < copies; ++c) experts.push_back(&Weights(dtype, N, K, c));
  const std::vector<float> x = Activations(M * K);  // [M, K]
  std::vector<float> y(static_cast<size_t>(M * N));  // [M, N]
  ThreadPool& pool = Pool(2);
  double bandwidth = Bandwidth(2);
  size_t next = 0;
  Stopwatch watch;
  for (auto _ : state) {
    MatMul(x.data(), M, *experts[next], y.data(), pool);
    next = (next + 1) % experts.size();
    benchmark::DoNotOptimize(y.data());
  }
  const double seconds = watch.Seconds();
  const double gbs = static_cast<double>(bytes) * state.iterations() / seconds / 1e9;
  bandwidth = std::max(bandwidth, Bandwidth(2));
  state.counters["GB/s"] = gbs;
  state.counters["bw GB/s"] = bandwidth;
  state.counters["%bw"] = 100.0 * gbs / bandwidth;
  state.counters["GFLOP/s"] = 2.0 * static_cast<double>(M * N * K) * state.iterations() / seconds / 1e9;
  SetLabel(state, dtype, 2);
}

// The decode kernel's own speed, without memory: one OLMoE expert projection
// ([1024, 2048]; 1 MiB at Q4) multiplied again and again, so it stays in the
// caches and the figure is the instructions' limit, not DRAM's. Decode is
// memory-bound only while this rate in bytes exceeds the read bandwidth per
// core by a margin; the 4-bit formats read half the bytes of Q8 for the same
// multiply-adds, so they are the ones it can bind. Reports weights (one
// multiply-add each) per second, those bytes per second, and the fraction of
// the int8 dot-product peak (2 operations per weight) of the same threads.
void BM_DecodeInCache(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const int64_t N = 1024, K = 2048;
  const WeightView& w = Weights(dtype, N, K);
  const std::vector<float> x = Activations(K);  // [1, K]
  std::vector<float> y(static_cast<size_t>(N));  // [1, N]
  ThreadPool& pool = Pool(threads);
  const double peak = MeasureInt8DotPeakGops(pool);
  MatMul(x.data(), 1, w, y.data(), pool);
  Stopwatch watch;
  for (auto _ : state) {
    MatMul(x.data(), 1, w, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  const double seconds = watch.Seconds();
  const double weights = static_cast<double>(N * K) * state.iterations() / seconds;
  state.counters["Gweights/s"] = weights / 1e9;
  state.counters["GB/s"] = static_cast<double>(QuantizedBytes(dtype, N, K)) * state.iterations() / seconds / 1e9;
  state.counters["%int8peak"] = peak > 0 ? 100.0 * 2 * weights / 1e9 / peak : 0.0;
  SetLabel(state, dtype, threads);
}

// One MoE decode step's expert products: 8 experts of OLMoE-1B-7B's shape
// (gate and up [1024, 2048], down [2048, 1024]), chosen from a ring of 64
// experts (several times the L3 cache, so the weights come from DRAM), run
// either as 24 separate MatMul calls (argument 0) or as two MatMulMany calls
// (1: all gates and ups, then all downs), as Transformer does. Arguments:
// (dtype, fused, threads). Reports weight bytes streamed per second against
// the read bandwidth.
void BM_ExpertStep(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const bool fused = state.range(1) != 0;
  const int threads = static_cast<int>(state.range(2));
  constexpr int kExperts = 64, kChosen = 8;
  constexpr int64_t kD = 2048, kF = 1024;
  std::vector<const WeightView*> gate, up, down;
  for (int e = 0; e < kExperts; ++e) {
    gate.push_back(&Weights(dtype, kF, kD, 3 * e));
    up.push_back(&Weights(dtype, kF, kD, 3 * e + 1));
    down.push_back(&Weights(dtype, kD, kF, 3 * e + 2));
  }
  const uint64_t bytes_per_step = kChosen * (2 * QuantizedBytes(dtype, kF, kD) + QuantizedBytes(dtype, kD, kF));
  const std::vector<float> x = Activations(kD);
  std::vector<float> g(kChosen * kF), u(kChosen * kF), y(kChosen * kD);
  ThreadPool& pool = Pool(threads);
  double bandwidth = Bandwidth(threads);
  int next = 0;
  Stopwatch watch;
  for (auto _ : state) {
    std::vector<MatMulJob> first, second;
    for (int c = 0; c < kChosen; ++c) {
      const int e = (next + 7 * c) % kExperts;
      first.push_back({x.data(), 1, gate[e], g.data() + c * kF});
      first.push_back({x.data(), 1, up[e], u.data() + c * kF});
      second.push_back({g.data() + c * kF, 1, down[e], y.data() + c * kD});
    }
    next = (next + 1) % kExperts;
    if (fused) {
      MatMulMany(first, pool);
      MatMulMany(second, pool);
    } else {
      for (const MatMulJob& j : first) MatMul(j.x, j.M, *j.w, j.y, pool);
      for (const MatMulJob& j : second) MatMul(j.x, j.M, *j.w, j.y, pool);
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double gbs = static_cast<double>(bytes_per_step) * state.iterations() / watch.Seconds() / 1e9;
  bandwidth = std::max(bandwidth, Bandwidth(threads));
  state.counters["GB/s"] = gbs;
  state.counters["bw GB/s"] = bandwidth;
  state.counters["%bw"] = 100.0 * gbs / bandwidth;
  SetLabel(state, dtype, threads);
}

// Quantize from BF16: source bytes read per second. Argument: (target,
// threads); the source is a 4096 x 4096 BF16 matrix (32 MiB).
void BM_Quantize(benchmark::State& state) {
  const auto target = static_cast<DType>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const WeightView& src = Weights(DType::kBF16, 4096, 4096);
  AlignedBuffer<uint8_t> out(static_cast<size_t>(QuantizedBytes(target, src.rows, src.cols)));
  ThreadPool& pool = Pool(threads);
  Stopwatch watch;
  for (auto _ : state) {
    // The layout the model quantizes into at load.
    QuantizeWithScalesInRows(src, target, out.data(), pool);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["src GB/s"] = static_cast<double>(src.Bytes()) * state.iterations() / watch.Seconds() / 1e9;
  SetLabel(state, target, threads);
}

// Small M between decode and prefill, to place the switch between them
// (internal::kMaxDecodeRows): weights streamed per second, as for MatVec.
void BM_MatMulSmallM(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t M = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const WeightView& w = Weights(dtype, kDecodeN / 2, kDecodeK);
  const std::vector<float> x = Activations(M * kDecodeK);  // [M, K]
  std::vector<float> y(static_cast<size_t>(M * w.rows));    // [M, N]
  ThreadPool& pool = Pool(threads);
  MatMul(x.data(), M, w, y.data(), pool);
  Stopwatch watch;
  for (auto _ : state) {
    MatMul(x.data(), M, w, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  const double seconds = watch.Seconds();
  state.counters["GB/s"] = static_cast<double>(w.Bytes() + w.ScaleBytes()) * state.iterations() / seconds / 1e9;
  state.counters["GFLOP/s"] =
      2.0 * static_cast<double>(M * w.rows * w.cols) * state.iterations() / seconds / 1e9;
  SetLabel(state, dtype, threads);
}

// Prefill: y[M, N] = x[M, K] * W[N, K]^T.
void BM_Prefill(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t M = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const WeightView& w = Weights(dtype, kPrefillN, kPrefillK);
  const std::vector<float> x = Activations(M * kPrefillK);  // [M, K]
  std::vector<float> y(static_cast<size_t>(M * kPrefillN));  // [M, N]
  ThreadPool& pool = Pool(threads);
  double peak = PrefillPeak(dtype, threads);
  MatMul(x.data(), M, w, y.data(), pool);
  Stopwatch watch;
  for (auto _ : state) {
    MatMul(x.data(), M, w, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  const double gflops =
      2.0 * static_cast<double>(M * kPrefillN * kPrefillK) * state.iterations() / watch.Seconds() / 1e9;
  peak = std::max(peak, PrefillPeak(dtype, threads));
  // GOP/s: multiply-adds count two operations whether float or integer; the
  // peak is that of the instruction this dtype's prefill uses.
  state.counters["GOP/s"] = gflops;
  state.counters["peak GOP/s"] = peak;
  state.counters["%peak"] = 100.0 * gflops / peak;
  state.SetLabel(std::string(DTypeName(dtype)) + " " + IsaName(ActiveIsa()) + " " + std::to_string(threads) + "t " +
                 PrefillDotName(PrefillDotFor(dtype)));
}

// Decode attention: one query per head against a KV cache of `positions`
// rows of 16 heads x 128 dims (OLMoE-1B-7B's attention), the cache element
// type the first argument, laid out as KVCache lays it out (each head's
// positions consecutive). Each step reads one layer's keys and values, the
// layers taken in turn so that the 16 layers' caches (256 MiB in f32 at 2048
// positions) come from DRAM as in a model's decode step. Heads are dealt to
// the threads round-robin, each one AttentionBlock call over all positions,
// as Transformer::Attention makes it. Reports GB/s of cache read.
void BM_AttentionDecode(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t positions = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  constexpr int64_t kHeads = 16, kHeadDim = 128, kLayers = 16;
  constexpr int64_t kRow = kHeads * kHeadDim;  // floats (or elements) per cached position
  const int64_t element = dtype == DType::kF32 ? 4 : 2;
  const int64_t layer_bytes = positions * kRow * element;  // one of K or V
  std::vector<AlignedBuffer<uint8_t>> keys, values;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> source(static_cast<size_t>(positions * kRow));
  for (int64_t l = 0; l < kLayers; ++l) {
    for (float& v : source) v = normal(rng);
    keys.emplace_back(static_cast<size_t>(layer_bytes));
    ConvertFromF32(source.data(), positions * kRow, dtype, keys.back().data());
    for (float& v : source) v = normal(rng);
    values.emplace_back(static_cast<size_t>(layer_bytes));
    ConvertFromF32(source.data(), positions * kRow, dtype, values.back().data());
  }
  const std::vector<float> q = Activations(kHeads * kHeadDim);
  std::vector<float> out(static_cast<size_t>(kHeads * kHeadDim));
  const size_t scratch_floats = AttentionBlockScratchFloats(1, positions, kHeadDim);
  std::vector<float> scratch(static_cast<size_t>(threads) * scratch_floats);
  ThreadPool& pool = Pool(threads);
  double bandwidth = Bandwidth(threads);
  int64_t layer = 0;
  Stopwatch watch;
  for (auto _ : state) {
    const uint8_t* k = static_cast<const uint8_t*>(keys[static_cast<size_t>(layer)].data());
    const uint8_t* v = static_cast<const uint8_t*>(values[static_cast<size_t>(layer)].data());
    layer = (layer + 1) % kLayers;
    pool.RunOnAll([&](int thread) {
      for (int64_t h = thread; h < kHeads; h += threads) {
        const float* query = q.data() + h * kHeadDim;
        float* head_out = out.data() + h * kHeadDim;
        const int64_t begin = 0, end = positions;
        AttentionBlock({.queries = &query,
                        .outs = &head_out,
                        .begin = &begin,
                        .end = &end,
                        .count = 1,
                        .dim = kHeadDim,
                        .keys = k + h * positions * kHeadDim * element,
                        .values = v + h * positions * kHeadDim * element,
                        .cache_dtype = dtype,
                        .key_stride = kHeadDim,
                        .value_stride = kHeadDim,
                        .n = positions,
                        .scale = 0.088f},
                       scratch.data() + static_cast<size_t>(thread) * scratch_floats);
      }
    });
    benchmark::DoNotOptimize(out.data());
  }
  const double gbs = 2.0 * static_cast<double>(layer_bytes) * state.iterations() / watch.Seconds() / 1e9;
  bandwidth = std::max(bandwidth, Bandwidth(threads));
  state.counters["GB/s"] = gbs;
  state.counters["bw GB/s"] = bandwidth;
  state.counters["%bw"] = 100.0 * gbs / bandwidth;
  state.SetLabel(std::string(DTypeName(dtype)) + " cache " + IsaName(ActiveIsa()) + " " + std::to_string(threads) +
                 "t");
}

// Prompt attention: one layer of a `positions`-token prompt at OLMoE-1B-7B's
// attention (16 heads x 128 dims, no grouping), the cache element type the
// first argument, the cache laid out as KVCache lays it out. Work items as
// Transformer::Attention deals them: 16 consecutive rows of one head, dealt
// round-robin to the threads, each seeing the keys up to its own position.
// The fourth argument picks the kernel: 0 the per-query kernels the model
// used before AttentionBlock (AttentionScores in 64-key tiles, Softmax,
// AttentionValues), 1 AttentionBlock. Reports GFLOP/s (2 x 2 x head_dim per
// visible key per query: the scores and the weighted values) against the
// fp32 FMA peak.
void BM_AttentionPrefill(benchmark::State& state) {
  const auto dtype = static_cast<DType>(state.range(0));
  const int64_t positions = state.range(1);
  const int threads = static_cast<int>(state.range(2));
  const bool block = state.range(3) != 0;
  constexpr int64_t kHeads = 16, kHeadDim = 128, kRows = 16, kTile = 64;
  const int64_t element = dtype == DType::kF32 ? 4 : 2;
  const int64_t head_bytes = positions * kHeadDim * element;
  AlignedBuffer<uint8_t> keys(static_cast<size_t>(kHeads * head_bytes)), values(keys.size());
  {
    std::mt19937 rng(13);
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> source(static_cast<size_t>(kHeads * positions * kHeadDim));
    for (float& v : source) v = normal(rng);
    ConvertFromF32(source.data(), static_cast<int64_t>(source.size()), dtype, keys.data());
    for (float& v : source) v = normal(rng);
    ConvertFromF32(source.data(), static_cast<int64_t>(source.size()), dtype, values.data());
  }
  const std::vector<float> q = Activations(positions * kHeads * kHeadDim);  // [positions, heads * head_dim]
  std::vector<float> out(q.size());
  const uint64_t scratch_floats = AttentionBlockScratchFloats(kRows, positions, kHeadDim);
  std::vector<float> scratch(static_cast<size_t>(threads) * scratch_floats);
  ThreadPool& pool = Pool(threads);
  double peak = Peak(threads);
  const int64_t row_blocks = (positions + kRows - 1) / kRows;
  auto run = [&] {
    pool.RunOnAll([&](int thread) {
      float* scores = scratch.data() + static_cast<size_t>(thread) * scratch_floats;
      const float* queries[kRows];
      float* outs[kRows];
      int64_t begin[kRows], end[kRows];
      for (int64_t item = thread; item < row_blocks * kHeads; item += threads) {
        const int64_t t0 = item / kHeads * kRows, h = item % kHeads;
        const int64_t rows = std::min(kRows, positions - t0), n = t0 + rows;
        for (int64_t r = 0; r < rows; ++r) {
          queries[r] = q.data() + ((t0 + r) * kHeads + h) * kHeadDim;
          outs[r] = out.data() + ((t0 + r) * kHeads + h) * kHeadDim;
          begin[r] = 0;
          end[r] = t0 + r + 1;
        }
        const uint8_t* k = keys.data() + h * head_bytes;
        const uint8_t* v = values.data() + h * head_bytes;
        if (block) {
          AttentionBlock({.queries = queries, .outs = outs, .begin = begin, .end = end, .count = rows,
                          .dim = kHeadDim, .keys = k, .values = v, .cache_dtype = dtype, .key_stride = kHeadDim,
                          .value_stride = kHeadDim, .n = n, .scale = 0.088f},
                         scores);
          continue;
        }
        for (int64_t j0 = 0; j0 < n; j0 += kTile)
          AttentionScores(queries, rows, kHeadDim, k + j0 * kHeadDim * element, dtype, kHeadDim,
                          std::min(kTile, n - j0), 0.088f, scores + j0, n);
        for (int64_t r = 0; r < rows; ++r) {
          Softmax(scores + r * n, end[r]);
          std::fill(scores + r * n + end[r], scores + (r + 1) * n, 0.f);
        }
        for (int64_t j0 = 0; j0 < n; j0 += kTile)
          AttentionValues(scores + j0, rows, n, v + j0 * kHeadDim * element, dtype, kHeadDim,
                          std::min(kTile, n - j0), kHeadDim, outs, /*accumulate=*/j0 > 0);
      }
    });
  };
  run();
  Stopwatch watch;
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(out.data());
  }
  // Query t sees t + 1 keys.
  const double visible = 0.5 * static_cast<double>(positions) * static_cast<double>(positions + 1) * kHeads;
  const double gflops = 4.0 * kHeadDim * visible * state.iterations() / watch.Seconds() / 1e9;
  peak = std::max(peak, Peak(threads));
  state.counters["GFLOP/s"] = gflops;
  state.counters["peak GFLOP/s"] = peak;
  state.counters["%peak"] = 100.0 * gflops / peak;
  state.SetLabel(std::string(DTypeName(dtype)) + " cache " + IsaName(ActiveIsa()) + " " + std::to_string(threads) +
                 "t " + (block ? "AttentionBlock" : "per-query kernels"));
}

constexpr int64_t kF32 = static_cast<int64_t>(DType::kF32);
constexpr int64_t kF16 = static_cast<int64_t>(DType::kF16);
constexpr int64_t kBF16 = static_cast<int64_t>(DType::kBF16);
constexpr int64_t kQ8 = static_cast<int64_t>(DType::kQ8);
constexpr int64_t kQ4 = static_cast<int64_t>(DType::kQ4);
constexpr int64_t kNF4 = static_cast<int64_t>(DType::kNF4);
constexpr int64_t kMXFP4 = static_cast<int64_t>(DType::kMXFP4);

// On a shared machine other tenants only ever slow a run down, so with
// --benchmark_repetitions the best repetition ("min" time, "max" counters) is
// the figure to quote.
double Min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
double Max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

BENCHMARK(BM_MatVec)
    ->ArgsProduct({{kBF16, kF16, kF32, kQ8, kQ4, kNF4, kMXFP4}, {1, 2}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ExpertMatVec)
    ->ArgsProduct({{kBF16, kQ8, kQ4, kNF4, kMXFP4}, {0, 1, 2}, {1, 2}})
    ->UseRealTime()
    ->MinTime(0.3)
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMicrosecond);
// gpt-oss's expert shapes, MXFP4 as stored beside Q4 and BF16.
BENCHMARK(BM_ExpertMatVec)
    ->ArgsProduct({{kBF16, kQ4, kMXFP4}, {3, 4}, {1, 2}})
    ->UseRealTime()
    ->MinTime(0.3)
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DecodeInCache)
    ->ArgsProduct({{kBF16, kQ8, kQ4, kNF4, kMXFP4}, {1, 2}})
    ->UseRealTime()
    ->MinTime(0.3)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ExpertStep)
    ->ArgsProduct({{kBF16, kQ8, kQ4}, {0, 1}, {1, 2}})
    ->UseRealTime()
    ->MinTime(0.5)
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionDecode)
    ->ArgsProduct({{kF32, kBF16}, {512, 2048}, {1, 2}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionPrefill)
    ->ArgsProduct({{kF32, kBF16}, {512, 2048}, {1, 2}, {0, 1}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Quantize)
    ->ArgsProduct({{kQ8, kQ4, kNF4}, {1, 2}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ExpertShare)
    ->ArgsProduct({{kQ8, kQ4, kNF4, kMXFP4}, {0, 1, 5, 6}, {8, 9, 11, 13, 16}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMicrosecond);
// BF16 experts at the rows a 128-token prompt gives them (one and two tiles
// of 16 rows; with EPWA_BF16_ACTIVATIONS=1 the bf16 prefill, on AMX where
// the CPU has it, else the float prefill). Reported GB/s is the weights'.
BENCHMARK(BM_ExpertShare)
    ->ArgsProduct({{kBF16}, {0, 1}, {16, 24}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MatMulSmallM)
    ->ArgsProduct({{kBF16, kQ8, kQ4, kNF4, kMXFP4}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16}, {2}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Prefill)
    ->ArgsProduct({{kBF16, kF16, kF32, kQ8, kQ4, kNF4, kMXFP4}, {16, 32, 64, 128, 512}, {1, 2}})
    ->UseRealTime()
    ->ComputeStatistics("min", Min)
    ->ComputeStatistics("max", Max)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace epwa::kernels

// EPWA_ISA=avx2 (or scalar) benchmarks a slower path on a faster CPU;
// EPWA_BF16_ACTIVATIONS=1 the BF16 prefill with bf16 activations
// (kernels::SetBf16Activations), EPWA_SPLIT_ACTIVATIONS=1 the BF16 prefill
// with x in three bf16 parts on AMX (kernels::SetSplitBf16Activations),
// EPWA_FLOAT_ACTIVATIONS=1 the quantized kernels with float activations.
int main(int argc, char** argv) {
  if (const char* v = std::getenv("EPWA_BF16_ACTIVATIONS"); v && std::string(v) == "1")
    epwa::kernels::SetBf16Activations(true);
  if (const char* v = std::getenv("EPWA_FLOAT_ACTIVATIONS"); v && std::string(v) == "1")
    epwa::kernels::SetFloatActivations(true);
  if (const char* v = std::getenv("EPWA_SPLIT_ACTIVATIONS"); v && std::string(v) == "1")
    epwa::kernels::SetSplitBf16Activations(true);
  if (const char* isa = std::getenv("EPWA_ISA")) {
    using epwa::kernels::Isa;
    for (Isa candidate : {Isa::kAvx512, Isa::kAvx2, Isa::kScalar}) {
      if (std::string(isa) == epwa::kernels::IsaName(candidate)) epwa::kernels::SetActiveIsa(candidate);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
