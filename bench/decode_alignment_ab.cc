// Decode (one row of x) of bf16 matrices whose rows start on a cache line
// against the same matrices 40 bytes past one, as a checkpoint's tensors lie
// in place in a mapped safetensors file (epwa synth's 4-layer OLMoE file
// starts them there), alternating 30 times in one process so that the
// host's drift falls on both alike. The weights come from a ring of copies
// of a [1024, 2048] matrix (OLMoE's gate and up) of `copies` x 4 MiB, so
// that they stream from DRAM as a decode step's do; with one copy they stay
// in the caches and the figure is the kernel's instruction limit instead.
// Prints the median GB/s of each start and the read bandwidth measured in
// the same run.
//   build/bench/decode_alignment_ab [threads [copies]]   (default 2 64)
// A plain program rather than a Google Benchmark: those run one
// configuration after another, and the ratio needs them interleaved.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "base/aligned.h"
#include "base/thread_pool.h"
#include "kernels/kernels.h"

namespace {

using epwa::DType;
using epwa::WeightView;
namespace kernels = epwa::kernels;

constexpr int64_t kRows = 1024, kCols = 2048;
constexpr int kRounds = 30, kCalls = 200;
constexpr size_t kOffsets[] = {0, 40};

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  const int copies = argc > 2 ? std::max(1, std::atoi(argv[2])) : 64;
  epwa::ThreadPool pool(threads);
  const size_t bytes = static_cast<size_t>(kRows * kCols * 2);
  // Random bf16 weights around 0.05 in magnitude (a pattern repeated).
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> mantissa(0, 127), exponent(118, 122), sign(0, 1);
  std::vector<uint16_t> pattern(4099);
  for (uint16_t& h : pattern)
    h = static_cast<uint16_t>((sign(rng) << 15) | (exponent(rng) << 7) | mantissa(rng));
  std::vector<epwa::AlignedBuffer<uint8_t>> ring(static_cast<size_t>(copies));  // 64-byte aligned
  for (auto& buffer : ring) {
    buffer.Resize(bytes + 64);
    auto* h = reinterpret_cast<uint16_t*>(buffer.data());
    for (size_t i = 0; i < (bytes + 64) / 2; ++i) h[i] = pattern[i % pattern.size()];
  }
  std::vector<float> x(static_cast<size_t>(kCols)), y(static_cast<size_t>(kRows));  // [1, K], [1, N]
  std::normal_distribution<float> gaussian(0.f, 1.f);
  for (float& v : x) v = gaussian(rng);
  // Measured before and after the timed rounds (the better kept), since a
  // shared machine's bandwidth drifts with its neighbours' load.
  double bandwidth = kernels::MeasureReadBandwidthGBs(pool);
  std::vector<double> seconds[std::size(kOffsets)];
  for (int round = 0; round < kRounds; ++round) {
    for (size_t o = 0; o < std::size(kOffsets); ++o) {
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < kCalls; ++i) {
        const WeightView w{DType::kBF16, ring[static_cast<size_t>(i % copies)].data() + kOffsets[o], kRows, kCols,
                           nullptr};
        kernels::MatMul(x.data(), 1, w, y.data(), pool);
      }
      seconds[o].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  bandwidth = std::max(bandwidth, kernels::MeasureReadBandwidthGBs(pool));
  std::printf("bf16 [%lld, %lld] decode, %d threads, %d copies (%d MiB), %s; read bandwidth measured here %.1f GB/s\n",
              static_cast<long long>(kRows), static_cast<long long>(kCols), threads, copies, copies * 4,
              kernels::IsaName(kernels::ActiveIsa()), bandwidth);
  for (size_t o = 0; o < std::size(kOffsets); ++o) {
    std::sort(seconds[o].begin(), seconds[o].end());
    std::printf("rows %2zu bytes past a line: %6.1f GB/s\n", kOffsets[o],
                static_cast<double>(bytes) * kCalls / seconds[o][kRounds / 2] / 1e9);
  }
  return 0;
}
