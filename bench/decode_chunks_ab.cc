// How many chunks per thread the decode regions should be cut into
// (internal::DecodeChunksPerThread; ThreadPool::ParallelForClaimed): with
// one, each thread streams an equal share and the region waits for the
// slowest; with more, a thread that the hypervisor, another process or a
// late wake-up holds back leaves its chunks to the others, at some cost in
// locality. Measured on decode steps of OLMoE-1B-7B's shape: per layer q, k
// and v in one MatMulMany, o, the chosen 8 experts' gate and up in one
// MatMulMany and their down products in another, over 4 layers of 16
// distinct experts each, then the 16-bit lm_head [50304, 2048], as the int
// levels run it. The counts alternate, step by step, in one process (30
// rounds of 8 steps each), so the host's drift falls on all of them alike.
// Prints the median milliseconds per step, the weight bytes streamed per
// second, their share of the read bandwidth measured in the same run, and
// the time with one chunk per thread over the time with each count.
//   build/bench/decode_chunks_ab [threads [dtype ...]]   (dtypes: BF16 Q8 Q4)
// A plain program rather than a Google Benchmark: those run one
// configuration after another, and the ratio needs them interleaved.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

constexpr int64_t kHidden = 2048, kInner = 1024, kVocab = 50304;
constexpr int kLayers = 4, kExperts = 16, kTop = 8;
constexpr int kRounds = 30, kSteps = 8;
constexpr int kChunkCounts[] = {1, 2, 4, 8};

// A matrix of `dtype` [rows, cols]: random bf16 bits, or `source` quantized
// with the scales in the rows.
struct Matrix {
  epwa::AlignedBuffer<uint8_t> bytes;
  WeightView view;
};

void Fill(Matrix& m, DType dtype, const std::vector<float>& source, int64_t rows, int64_t cols, ThreadPool& pool,
          std::mt19937& rng) {
  if (dtype == DType::kBF16) {
    m.bytes.Resize(static_cast<size_t>(rows * cols * 2));
    std::normal_distribution<float> gaussian(0.f, 0.05f);
    auto* p = reinterpret_cast<uint16_t*>(m.bytes.data());
    // A short random pattern repeated keeps set-up fast for the large ones.
    std::vector<uint16_t> pattern(4099);
    for (uint16_t& h : pattern) {
      const float v = gaussian(rng);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      h = static_cast<uint16_t>(bits >> 16);
    }
    for (int64_t i = 0; i < rows * cols; ++i) p[i] = pattern[static_cast<size_t>(i) % pattern.size()];
    m.view = WeightView{DType::kBF16, m.bytes.data(), rows, cols, nullptr};
    return;
  }
  const WeightView f32{DType::kF32, source.data(), rows, cols, nullptr};
  m.bytes.Resize(static_cast<size_t>(epwa::QuantizedBytes(dtype, rows, cols)));
  m.view = kernels::QuantizeWithScalesInRows(f32, dtype, m.bytes.data(), pool);
}

int64_t StreamedBytes(const WeightView& w) { return w.Bytes() + w.ScaleBytes(); }

void Compare(DType dtype, ThreadPool& pool, std::mt19937& rng, double bandwidth) {
  std::normal_distribution<float> gaussian(0.f, 0.05f);
  std::vector<float> square(static_cast<size_t>(kHidden * kHidden)), in(static_cast<size_t>(kInner * kHidden)),
      out(in.size());
  for (auto* v : {&square, &in, &out})
    for (float& f : *v) f = gaussian(rng);
  // Per layer: q, k, v, o [hidden, hidden]; per expert gate, up [inner,
  // hidden] and down [hidden, inner].
  std::vector<Matrix> attention(4 * kLayers), experts(3 * kLayers * kExperts);
  for (Matrix& m : attention) Fill(m, dtype, square, kHidden, kHidden, pool, rng);
  for (size_t i = 0; i < experts.size(); ++i)
    Fill(experts[i], dtype, i % 3 == 2 ? out : in, i % 3 == 2 ? kHidden : kInner, i % 3 == 2 ? kInner : kHidden,
         pool, rng);
  Matrix lm_head;
  Fill(lm_head, DType::kBF16, {}, kVocab, kHidden, pool, rng);

  std::vector<float> x(kHidden), q(kHidden), k(kHidden), v(kHidden), o(kHidden), logits(kVocab);
  std::vector<float> h(static_cast<size_t>(kTop * kInner)), gate(h.size()), up(h.size()),
      down(static_cast<size_t>(kTop * kHidden));
  for (float& f : x) f = gaussian(rng) * 20;
  for (float& f : h) f = gaussian(rng) * 20;
  // Each step's chosen experts per layer, drawn once so every count sees the
  // same sequence.
  std::vector<int> chosen(static_cast<size_t>(kSteps * kLayers * kTop));
  std::vector<int> ids(kExperts);
  for (int s = 0; s < kSteps * kLayers; ++s) {
    for (int e = 0; e < kExperts; ++e) ids[e] = e;
    std::shuffle(ids.begin(), ids.end(), rng);
    std::copy(ids.begin(), ids.begin() + kTop, chosen.begin() + s * kTop);
  }
  int64_t bytes_per_step = StreamedBytes(lm_head.view);
  for (int layer = 0; layer < kLayers; ++layer) {
    for (int i = 0; i < 4; ++i) bytes_per_step += StreamedBytes(attention[static_cast<size_t>(4 * layer + i)].view);
    for (int j = 0; j < kTop; ++j)
      for (int p = 0; p < 3; ++p) bytes_per_step += StreamedBytes(experts[static_cast<size_t>(3 * j + p)].view);
  }
  auto step = [&](int s) {
    for (int layer = 0; layer < kLayers; ++layer) {
      const Matrix* a = &attention[static_cast<size_t>(4 * layer)];
      const kernels::MatMulJob qkv[] = {{x.data(), 1, &a[0].view, q.data()},
                                        {x.data(), 1, &a[1].view, k.data()},
                                        {x.data(), 1, &a[2].view, v.data()}};
      kernels::MatMulMany(qkv, pool);
      kernels::MatMul(x.data(), 1, a[3].view, o.data(), pool);
      std::vector<kernels::MatMulJob> gate_up, downs;
      for (int j = 0; j < kTop; ++j) {
        const int e = chosen[static_cast<size_t>((s * kLayers + layer) * kTop + j)];
        const Matrix* w = &experts[static_cast<size_t>(3 * (layer * kExperts + e))];
        gate_up.push_back({x.data(), 1, &w[0].view, gate.data() + j * kInner});
        gate_up.push_back({x.data(), 1, &w[1].view, up.data() + j * kInner});
        downs.push_back({h.data() + j * kInner, 1, &w[2].view, down.data() + j * kHidden});
      }
      kernels::MatMulMany(gate_up, pool);
      kernels::MatMulMany(downs, pool);
    }
    kernels::MatMul(x.data(), 1, lm_head.view, logits.data(), pool);
  };
  constexpr int kCounts = static_cast<int>(std::size(kChunkCounts));
  std::vector<double> seconds[kCounts];
  for (int round = 0; round < kRounds; ++round) {
    for (int c = 0; c < kCounts; ++c) {
      kernels::internal::SetDecodeChunksPerThreadForTesting(kChunkCounts[c]);
      const auto start = std::chrono::steady_clock::now();
      for (int s = 0; s < kSteps; ++s) step(s);
      seconds[c].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / kSteps);
    }
  }
  kernels::internal::SetDecodeChunksPerThreadForTesting(kernels::internal::kDefaultDecodeChunksPerThread);
  for (auto& s : seconds) std::sort(s.begin(), s.end());
  for (int c = 0; c < kCounts; ++c) {
    const double median = seconds[c][kRounds / 2];
    const double gbs = static_cast<double>(bytes_per_step) / median / 1e9;
    std::printf("%-6s %8.1f %7d %10.3f %8.1f %6.0f%% %8.3f\n", epwa::DTypeName(dtype),
                static_cast<double>(bytes_per_step) / 1e6, kChunkCounts[c], median * 1e3, gbs,
                100.0 * gbs / bandwidth, seconds[0][kRounds / 2] / median);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  ThreadPool pool(threads);
  std::mt19937 rng(1);
  const double bandwidth = kernels::MeasureReadBandwidthGBs(pool);
  std::printf("decode steps of the OLMoE-1B-7B shape (%d layers, %d of %d experts, bf16 lm_head), %d threads, %s;\n"
              "read bandwidth measured here %.1f GB/s\n",
              kLayers, kTop, kExperts, threads, kernels::IsaName(kernels::ActiveIsa()), bandwidth);
  std::printf("%-6s %8s %7s %10s %8s %7s %8s\n", "dtype", "MB/step", "chunks", "ms/step", "GB/s", "of_bw",
              "vs_1");
  for (DType dtype : {DType::kBF16, DType::kQ8, DType::kQ4}) {
    if (argc > 2 && std::find(argv + 2, argv + argc, std::string(epwa::DTypeName(dtype))) == argv + argc) continue;
    Compare(dtype, pool, rng, bandwidth);
  }
  return 0;
}
