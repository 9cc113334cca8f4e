// Where the AVX-512 integer decode, taking rows of x past four in further
// passes over the weights, beats the int8 prefill tiles: for each quantized
// type and expert-sized matrix shape, M = 8 .. 13 rows of x are multiplied
// both ways in alternation, 30 rounds of 40 calls each in one process, so
// that the host's drift (large on shared machines) falls on both alike. The
// weights come from a ring of copies of 256 MiB, as an MoE layer's prefill
// reads each expert from DRAM. Prints the median GFLOP/s of each path and
// the ratio of their median times (> 1: the passes are faster), which is
// what kernels_avx512.cc's UsesDecode and internal::Avx512QuantDecodeRows
// are set from (at M = 8 both run the decode: a control).
//   build/bench/decode_rows_ab [threads [dtype ...]]   (dtypes: Q8 Q4 NF4 MXFP4)
// A plain program rather than a Google Benchmark: those run one
// configuration after another, and the ratio needs them interleaved.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
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
  std::printf("%-6s %-13s %3s %12s %12s %8s\n", "dtype", "shape", "M", "tiles_GF/s", "passes_GF/s", "ratio");
  for (DType dtype : {DType::kQ8, DType::kQ4, DType::kNF4, DType::kMXFP4}) {
    if (argc > 2 && std::find(argv + 2, argv + argc, std::string(epwa::DTypeName(dtype))) == argv + argc) continue;
    for (const auto& shape : kShapes) {
      const int64_t N = shape[0], K = shape[1];
      const Ring ring = MakeRing(dtype, N, K, pool, rng);
      size_t next = 0;
      for (int64_t M = 8; M <= kernels::internal::kAvx512MaxQuantDecodeRows; ++M) {
        std::vector<float> x(static_cast<size_t>(M * K)), y(static_cast<size_t>(M * N));  // [M, K], [M, N]
        for (float& v : x) v = gaussian(rng);
        std::vector<double> seconds[2];  // [0]: tiles, [1]: passes
        for (int round = 0; round < kRounds; ++round) {
          for (int passes = 0; passes < 2; ++passes) {
            kernels::internal::SetDecodePassesForTesting(passes ? kernels::internal::DecodePasses::kAlways
                                                                : kernels::internal::DecodePasses::kNever);
            const auto start = std::chrono::steady_clock::now();
            for (int i = 0; i < kCalls; ++i) {
              kernels::MatMul(x.data(), M, ring.views[next], y.data(), pool);
              next = (next + 1) % ring.views.size();
            }
            seconds[passes].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
          }
        }
        kernels::internal::SetDecodePassesForTesting(kernels::internal::DecodePasses::kByRule);
        for (auto& s : seconds) std::sort(s.begin(), s.end());
        const double flops = 2.0 * static_cast<double>(M * N * K) * kCalls;
        const double tiles = seconds[0][kRounds / 2], passes = seconds[1][kRounds / 2];
        char name[32];
        std::snprintf(name, sizeof name, "[%lld,%lld]", static_cast<long long>(N), static_cast<long long>(K));
        std::printf("%-6s %-13s %3lld %12.0f %12.0f %8.3f\n", epwa::DTypeName(dtype), name,
                    static_cast<long long>(M), flops / tiles / 1e9, flops / passes / 1e9, tiles / passes);
      }
    }
  }
  return 0;
}
