// Where the AVX-512 integer decode, taking rows of x past four in further
// passes over the weights, beats the int8 prefill tiles: for each quantized
// type and expert-sized matrix shape, M = 8 .. 13 rows of x are multiplied
// both ways in alternation, 30 rounds of 40 calls each in one process, so
// that the host's drift (large on shared machines) falls on both alike. The
// weights come from a ring of copies of 256 MiB, as an MoE layer's prefill
// reads each expert from DRAM. Prints the median GFLOP/s of each path and
// the ratio of their median times (> 1: the passes are faster), which is
// what kernels_avx512.cc's UsesDecode and internal::Avx512QuantDecodeRows
// are set from (at M = 8 both run the decode: a control), and the faster
// path's rate as a share of the int8 dot-product peak measured first.
//   build/bench/decode_rows_ab [threads [dtype ...]]   (dtypes: Q8 Q4 NF4 MXFP4)
// Then the same comparison on whole MoE layers' expert products, as a
// prefill runs them: a 128-token prompt routed top-8 at random over Qwen3's
// and OLMoE's expert counts and sizes, gate and up of every expert in one
// MatMulMany and the down products in another, four layers of distinct
// weights; the rule (UsesDecode) against tiles beyond 8 rows.
// A plain program rather than a Google Benchmark: those run one
// configuration after another, and the ratio needs them interleaved.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "base/aligned.h"
#include "base/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"

namespace {

using epwa::DType;
using epwa::ThreadPool;
using epwa::WeightView;
namespace kernels = epwa::kernels;

// Expert matrices [rows, cols] of the MoE families: OLMoE's gate/up and
// down, Qwen3-30B-A3B's gate/up and down, a 1536-wide down (Qwen2-MoE's
// shared size class), gpt-oss's down and a dense [4096, 4096].
constexpr int64_t kShapes[][2] = {{1024, 2048}, {2048, 1024}, {768, 2048}, {2048, 768},
                                  {2048, 1536}, {2880, 2880}, {4096, 4096}};
constexpr int kRounds = 30, kCalls = 40;

struct Ring {
  std::vector<epwa::AlignedBuffer<uint8_t>> bytes, e8m0;
  std::vector<WeightView> views;
};

// Enough copies of one random matrix of `dtype` to fill 256 MiB.
Ring MakeRing(DType dtype, int64_t rows, int64_t cols, ThreadPool& pool, std::mt19937& rng) {
  Ring ring;
  const uint64_t bytes = epwa::QuantizedBytes(dtype, rows, cols);
  const int copies = static_cast<int>((256ull << 20) / bytes + 1);
  std::normal_distribution<float> gaussian(0.f, 0.05f);
  std::uniform_int_distribution<int> byte(0, 255), exponent(118, 126);
  std::vector<float> src(static_cast<size_t>(rows * cols));  // [rows, cols]
  for (float& v : src) v = gaussian(rng);
  const WeightView f32{DType::kF32, src.data(), rows, cols, nullptr};
  ring.bytes.resize(copies);
  ring.e8m0.resize(copies);
  for (int c = 0; c < copies; ++c) {
    if (dtype == DType::kMXFP4) {
      // MXFP4 is a checkpoint format (no quantizer): random codes and block
      // exponents around 1.
      ring.bytes[c].Resize(static_cast<size_t>(rows * cols / 2));
      ring.e8m0[c].Resize(static_cast<size_t>(rows * cols / 32));
      for (size_t i = 0; i < ring.bytes[c].size(); ++i) ring.bytes[c].data()[i] = static_cast<uint8_t>(byte(rng));
      for (size_t i = 0; i < ring.e8m0[c].size(); ++i) ring.e8m0[c].data()[i] = static_cast<uint8_t>(exponent(rng));
      ring.views.push_back(WeightView{dtype, ring.bytes[c].data(), rows, cols, ring.e8m0[c].data()});
    } else {
      ring.bytes[c].Resize(static_cast<size_t>(bytes));
      ring.views.push_back(kernels::QuantizeWithScalesInRows(f32, dtype, ring.bytes[c].data(), pool));
    }
  }
  return ring;
}

// Median seconds of `run` with the decode passes never used past 8 rows
// (first) and in `mode` (second), alternating `rounds` times.
template <typename Run>
std::pair<double, double> TilesAgainst(kernels::internal::DecodePasses mode, int rounds, Run run) {
  std::vector<double> seconds[2];
  for (int round = 0; round < rounds; ++round) {
    for (int other = 0; other < 2; ++other) {
      kernels::internal::SetDecodePassesForTesting(other ? mode : kernels::internal::DecodePasses::kNever);
      const auto start = std::chrono::steady_clock::now();
      run();
      seconds[other].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  kernels::internal::SetDecodePassesForTesting(kernels::internal::DecodePasses::kByRule);
  for (auto& s : seconds) std::sort(s.begin(), s.end());
  return {seconds[0][rounds / 2], seconds[1][rounds / 2]};
}

// One model's MoE expert products over a prompt: see the file comment.
void MoeLayers(const char* name, DType dtype, int experts, int64_t hidden, int64_t inner, ThreadPool& pool,
               std::mt19937& rng) {
  constexpr int kTokens = 128, kTop = 8, kLayers = 4;
  std::vector<int64_t> rows(static_cast<size_t>(experts), 0);
  std::vector<int> ids(static_cast<size_t>(experts));
  for (int t = 0; t < kTokens; ++t) {
    for (int e = 0; e < experts; ++e) ids[e] = e;
    std::shuffle(ids.begin(), ids.end(), rng);
    for (int j = 0; j < kTop; ++j) ++rows[ids[j]];
  }
  int in_range = 0;
  for (int64_t r : rows) in_range += r >= 9 && r <= kernels::internal::kAvx512MaxQuantDecodeRows;
  // Per layer and expert: gate, up [inner, hidden] and down [hidden, inner];
  // every copy quantized from one random matrix of each shape.
  std::normal_distribution<float> gaussian(0.f, 1.f);
  std::vector<epwa::AlignedBuffer<uint8_t>> bytes(static_cast<size_t>(3 * experts * kLayers));
  std::vector<WeightView> weights(bytes.size());
  std::vector<float> in_src(static_cast<size_t>(inner * hidden)), out_src(in_src.size());
  for (float& v : in_src) v = 0.05f * gaussian(rng);
  for (float& v : out_src) v = 0.05f * gaussian(rng);
  const WeightView in_f32{DType::kF32, in_src.data(), inner, hidden, nullptr};
  const WeightView out_f32{DType::kF32, out_src.data(), hidden, inner, nullptr};
  for (size_t i = 0; i < bytes.size(); ++i) {
    const WeightView& src = i % 3 == 2 ? out_f32 : in_f32;
    bytes[i].Resize(static_cast<size_t>(epwa::QuantizedBytes(dtype, src.rows, src.cols)));
    weights[i] = kernels::QuantizeWithScalesInRows(src, dtype, bytes[i].data(), pool);
  }
  std::vector<std::vector<float>> x(experts), h(experts), y(3 * experts);
  for (int e = 0; e < experts; ++e) {
    const size_t m = static_cast<size_t>(std::max<int64_t>(rows[e], 1));
    x[e].resize(m * hidden);  // [rows, hidden]
    h[e].resize(m * inner);   // [rows, inner]
    for (float& v : x[e]) v = gaussian(rng);
    for (float& v : h[e]) v = gaussian(rng);
    y[3 * e].resize(m * inner);
    y[3 * e + 1].resize(m * inner);
    y[3 * e + 2].resize(m * hidden);
  }
  const auto [never, rule] = TilesAgainst(kernels::internal::DecodePasses::kByRule, 20, [&] {
    for (int layer = 0; layer < kLayers; ++layer) {
      std::vector<kernels::MatMulJob> gate_up, down;
      for (int e = 0; e < experts; ++e) {
        if (rows[e] == 0) continue;
        const size_t w = static_cast<size_t>(3 * (layer * experts + e));
        gate_up.push_back({x[e].data(), rows[e], &weights[w], y[3 * e].data()});
        gate_up.push_back({x[e].data(), rows[e], &weights[w + 1], y[3 * e + 1].data()});
        down.push_back({h[e].data(), rows[e], &weights[w + 2], y[3 * e + 2].data()});
      }
      kernels::MatMulMany(gate_up, pool);
      kernels::MatMulMany(down, pool);
    }
  });
  std::printf("%-6s %-28s %6d %10.1f %10.1f %8.3f\n", epwa::DTypeName(dtype), name, in_range, never * 1e3 / kLayers,
              rule * 1e3 / kLayers, never / rule);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  if (kernels::ActiveIsa() != kernels::Isa::kAvx512 || !kernels::internal::HasAvx512Vnni()) {
    std::printf("decode_rows_ab: this CPU lacks AVX-512 VNNI, whose decode this compares; nothing to measure\n");
    return 0;
  }
  ThreadPool pool(threads);
  std::mt19937 rng(1);
  std::normal_distribution<float> gaussian(0.f, 1.f);
  // The limit these products run against: both paths multiply int8 codes
  // with vpdpbusd (a multiply and an add per code pair, as counted below).
  const double peak = kernels::MeasureInt8DotPeakGops(pool);
  std::printf("int8 dot-product peak measured here: %.0f GOP/s (%d threads)\n", peak, threads);
  std::printf("%-6s %-13s %3s %12s %12s %8s %8s\n", "dtype", "shape", "M", "tiles_GF/s", "passes_GF/s", "ratio",
              "best_pk");
  for (DType dtype : {DType::kQ8, DType::kQ4, DType::kNF4, DType::kMXFP4}) {
    if (argc > 2 && std::find(argv + 2, argv + argc, std::string(epwa::DTypeName(dtype))) == argv + argc) continue;
    for (const auto& shape : kShapes) {
      const int64_t N = shape[0], K = shape[1];
      const Ring ring = MakeRing(dtype, N, K, pool, rng);
      size_t next = 0;
      for (int64_t M = 8; M <= kernels::internal::kAvx512MaxQuantDecodeRows; ++M) {
        std::vector<float> x(static_cast<size_t>(M * K)), y(static_cast<size_t>(M * N));  // [M, K], [M, N]
        for (float& v : x) v = gaussian(rng);
        const auto [tiles, passes] = TilesAgainst(kernels::internal::DecodePasses::kAlways, kRounds, [&] {
          for (int i = 0; i < kCalls; ++i) {
            kernels::MatMul(x.data(), M, ring.views[next], y.data(), pool);
            next = (next + 1) % ring.views.size();
          }
        });
        const double flops = 2.0 * static_cast<double>(M * N * K) * kCalls;
        char name[32];
        std::snprintf(name, sizeof name, "[%lld,%lld]", static_cast<long long>(N), static_cast<long long>(K));
        std::printf("%-6s %-13s %3lld %12.0f %12.0f %8.3f %7.1f%%\n", epwa::DTypeName(dtype), name,
                    static_cast<long long>(M), flops / tiles / 1e9, flops / passes / 1e9, tiles / passes,
                    100.0 * flops / std::min(tiles, passes) / 1e9 / peak);
      }
    }
  }
  std::printf("\nMoE expert products of a 128-token prefill, per layer (ms), tiles past 8 rows vs the rule:\n");
  std::printf("%-6s %-28s %6s %10s %10s %8s\n", "dtype", "experts x [inner, hidden]", "9-13", "tiles_ms", "rule_ms",
              "ratio");
  for (DType dtype : {DType::kQ8, DType::kQ4}) {
    if (argc > 2 && std::find(argv + 2, argv + argc, std::string(epwa::DTypeName(dtype))) == argv + argc) continue;
    MoeLayers("qwen3-30b-a3b 128x[768,2048]", dtype, 128, 2048, 768, pool, rng);
    MoeLayers("olmoe-1b-7b 64x[1024,2048]", dtype, 64, 2048, 1024, pool, rng);
  }
  return 0;
}
