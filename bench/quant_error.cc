// One-off measurement: how much do the quantized weight formats change the
// weights and the products computed with them?
//
// For every 2-D tensor of a safetensors model (columns a multiple of 32), and
// for synthetic Gaussian and heavy-tailed (Student t, 5 degrees of freedom)
// matrices, it quantizes to Q8, Q4 and NF4 with kernels::Quantize and prints
//   weight rel. RMS  sqrt(sum (w - dequant(w))^2 / sum w^2), and
//   output rel. RMS  the same for y = W x with x ~ N(0, 1), i.e. the error a
//                    layer's output sees (per-group errors partly cancel),
// per group of tensors (attention, experts, router, embeddings, other).
// Q4 with scale = absmax / 7 (not a DType; computed here) is printed for
// comparison with the Q4_0 rule (scale = max-magnitude value / -8) that kQ4
// uses.
//
//   build-quant/bench/quant_error [model.safetensors or model folder]
// (default /tmp/epwa-train/medium-model; the model part is skipped if it is
// absent). Not a CTest test: it reads a model outside the repository.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"

namespace {

using epwa::DType;
using epwa::WeightView;

// Sums of squares of the reference values and of the errors.
struct ErrorSums {
  double ref = 0.0, err = 0.0;
  void Add(double want, double got) {
    ref += want * want;
    err += (want - got) * (want - got);
  }
  double Rel() const { return ref > 0 ? std::sqrt(err / ref) : 0.0; }
};

// The columns of the report: three real formats and the absmax/7 variant.
constexpr int kFormats = 4;
const char* kFormatNames[kFormats] = {"Q8", "Q4 (Q4_0: m/-8)", "Q4 (absmax/7)", "NF4"};

struct Row {
  ErrorSums weight[kFormats], output[kFormats];
  int64_t tensors = 0, elements = 0;
};

// Q4 with d = absmax / 7, levels [-7, 7], reconstructed in float (the scale
// rounded to fp16 like the real formats, to nearest here).
std::vector<float> Q4AbsmaxOver7(const std::vector<float>& w) {
  std::vector<float> out(w.size());
  for (size_t g = 0; g < w.size(); g += 32) {
    float amax = 0.f;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(w[g + j]));
    const float s = epwa::F16ToF32(epwa::F32ToF16(amax / 7.f));
    for (size_t j = 0; j < 32; ++j) {
      const float q = s > 0 ? std::clamp(std::nearbyint(w[g + j] / s), -7.f, 7.f) : 0.f;
      out[g + j] = q * s;
    }
  }
  return out;
}

// Adds the errors of one float matrix w [rows, cols] to `row`.
void Measure(const std::vector<float>& w, int64_t rows, int64_t cols, epwa::ThreadPool& pool, std::mt19937& rng,
             Row& row) {
  const WeightView src{DType::kF32, w.data(), rows, cols};
  std::vector<std::vector<float>> deq(kFormats);
  const DType types[kFormats] = {DType::kQ8, DType::kQ4, DType::kQ4, DType::kNF4};
  for (int f = 0; f < kFormats; ++f) {
    if (f == 2) {
      deq[f] = Q4AbsmaxOver7(w);
      continue;
    }
    std::vector<uint8_t> codes(epwa::CodeRowBytes(types[f], cols) * static_cast<size_t>(rows));
    std::vector<uint16_t> scales(static_cast<size_t>(rows * cols / 32));
    epwa::kernels::Quantize(src, types[f], codes.data(), scales.data(), pool);
    const WeightView q{types[f], codes.data(), rows, cols, scales.data()};
    deq[f].resize(w.size());
    for (int64_t r = 0; r < rows; ++r) epwa::kernels::DequantizeRow(q, r, deq[f].data() + r * cols);
  }
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(cols));
  for (float& v : x) v = normal(rng);
  for (int64_t r = 0; r < rows; ++r) {
    double want = 0.0, got[kFormats] = {};
    for (int64_t c = 0; c < cols; ++c) {
      const size_t i = static_cast<size_t>(r * cols + c);
      want += static_cast<double>(w[i]) * x[c];
      for (int f = 0; f < kFormats; ++f) {
        row.weight[f].Add(w[i], deq[f][i]);
        got[f] += static_cast<double>(deq[f][i]) * x[c];
      }
    }
    for (int f = 0; f < kFormats; ++f) row.output[f].Add(want, got[f]);
  }
  ++row.tensors;
  row.elements += rows * cols;
}

void Print(const std::string& title, const std::map<std::string, Row>& rows) {
  std::printf("\n%s\n%-22s %8s %10s", title.c_str(), "group", "tensors", "elements");
  for (const char* name : kFormatNames) std::printf(" | %-17s", name);
  std::printf("\n%-22s %8s %10s", "", "", "");
  for (int f = 0; f < kFormats; ++f) std::printf(" | %8s %8s", "weight", "output");
  std::printf("\n");
  for (const auto& [name, row] : rows) {
    std::printf("%-22s %8lld %10lld", name.c_str(), static_cast<long long>(row.tensors),
                static_cast<long long>(row.elements));
    for (int f = 0; f < kFormats; ++f) std::printf(" | %7.3f%% %7.3f%%", 100 * row.weight[f].Rel(), 100 * row.output[f].Rel());
    std::printf("\n");
  }
}

std::string GroupOf(const std::string& name) {
  if (name.find("block_sparse_moe.gate") != std::string::npos || name.find("mlp.gate.") != std::string::npos) return "router";
  if (name.find("experts") != std::string::npos) return "experts";
  if (name.find("self_attn") != std::string::npos) return "attention";
  if (name.find("embed") != std::string::npos || name.find("lm_head") != std::string::npos) return "embeddings/lm_head";
  return "other";
}

}  // namespace

int main(int argc, char** argv) {
  epwa::ThreadPool pool(2);
  std::mt19937 rng(1234);

  // Synthetic matrices [1024, 1024].
  std::map<std::string, Row> synthetic;
  {
    std::normal_distribution<float> normal(0.f, 0.02f);
    std::student_t_distribution<float> heavy(5.f);
    for (int kind = 0; kind < 2; ++kind) {
      std::vector<float> w(1024 * 1024);
      for (float& v : w) v = kind == 0 ? normal(rng) : 0.02f * heavy(rng);
      Measure(w, 1024, 1024, pool, rng, synthetic[kind == 0 ? "Gaussian" : "Student t (5 dof)"]);
    }
  }
  Print("Synthetic [1024 x 1024] (relative RMS error of the weights and of y = W x)", synthetic);

  std::string path = argc > 1 ? argv[1] : "/tmp/epwa-train/medium-model";
  if (!std::filesystem::exists(path)) {
    std::printf("\n%s is absent; skipping the trained model.\n", path.c_str());
    return 0;
  }
  try {
    std::unique_ptr<epwa::TensorStore> store;
    std::unique_ptr<epwa::SafetensorsFile> file;
    std::vector<const epwa::TensorInfo*> tensors;
    if (std::filesystem::is_directory(path)) {
      store = epwa::TensorStore::OpenDir(path);
      tensors = store->All();
    } else {
      file = epwa::SafetensorsFile::Open(path);
      for (const auto& t : file->tensors()) tensors.push_back(&t);
    }
    std::map<std::string, Row> model;
    Row all;
    for (const epwa::TensorInfo* t : tensors) {
      if (t->shape.size() != 2 || t->shape[1] % 32 != 0) continue;
      const int64_t rows = t->shape[0], cols = t->shape[1];
      std::vector<float> w(static_cast<size_t>(rows * cols));
      epwa::kernels::ConvertToF32(t->dtype, t->data, rows * cols, w.data());
      Measure(w, rows, cols, pool, rng, model[GroupOf(t->name)]);
    }
    for (const auto& [name, row] : model) {
      for (int f = 0; f < kFormats; ++f) {
        all.weight[f].ref += row.weight[f].ref;
        all.weight[f].err += row.weight[f].err;
        all.output[f].ref += row.output[f].ref;
        all.output[f].err += row.output[f].err;
      }
      all.tensors += row.tensors;
      all.elements += row.elements;
    }
    model["~all 2-D tensors"] = all;
    Print("Trained model " + path + " (relative RMS error of the weights and of y = W x)", model);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
