#include "plan/memory_plan.h"

#include <algorithm>
#include <cstdio>

#include "base/error.h"
#include "kernels/kernels.h"
#include "model/transformer.h"

namespace epwa {
namespace {

constexpr uint64_t kMiB = 1ull << 20;
// A CUDA context with cuBLAS loaded takes 300-500 MiB of device memory; the
// planner assumes the top of that range.
constexpr uint64_t kCudaContextBytes = 512 * kMiB;
// Margin: a fixed floor for allocator slack and page-cache effects plus a
// fraction of the expected peak.
constexpr uint64_t kMarginFloorBytes = 64 * kMiB;
constexpr double kMarginFraction = 0.03;

uint64_t MarginFor(uint64_t expected) {
  return kMarginFloorBytes + static_cast<uint64_t>(kMarginFraction * static_cast<double>(expected));
}

constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kFaultAroundBytes = 64 * 1024;

uint64_t RoundUp64(uint64_t n) { return (n + 63) / 64 * 64; }

DType SixteenBit(DType source) { return source == DType::kF32 ? DType::kBF16 : source; }

DType TargetFor(const MatrixSlot& m, QuantLevel level, bool raise_to_int8) {
  const WeightView& v = *m.view;
  // An untied embedding is only ever read one row per token, converted to
  // float32 on the way: keeping it in place costs no speed and no accuracy.
  if (m.role == MatrixRole::kEmbedding) return v.dtype;
  // MXFP4 experts (gpt-oss) stay MXFP4 at every level: it is how the model
  // was trained and published, so no other format holds them more exactly,
  // a float copy would be 4-8x larger for no accuracy, and int4 or int8 would
  // round them again for the same bytes or more. The level applies to the
  // other matrices (attention, lm_head).
  if (v.dtype == DType::kMXFP4) return DType::kMXFP4;
  if (level == QuantLevel::kNone) return DType::kF32;
  // The lm_head is quantized only when raised (PlanContext::int8_lm_head),
  // and then only to Q8.
  const bool quantizable = m.role != MatrixRole::kEmbedding && (m.role != MatrixRole::kLmHead || raise_to_int8) &&
                           v.cols % kQuantGroup == 0;
  if (level == QuantLevel::kFp16 || !quantizable) return SixteenBit(v.dtype);
  if (level == QuantLevel::kInt8 || raise_to_int8) return DType::kQ8;
  return kInt4Format;
}

// Order in which kMixed raises matrices to 8 bits: attention first (every
// token passes through it and it feeds the router), then the experts of the
// first and last layers, then the remaining ones in layer order.
std::vector<size_t> MixedRaiseOrder(const std::vector<MatrixSlot>& matrices, int64_t num_layers) {
  auto rank = [&](const MatrixSlot& m) {
    if (m.role == MatrixRole::kAttention) return 0;
    if (m.layer == 0 || m.layer == num_layers - 1) return 1;
    return 2;
  };
  std::vector<size_t> order;
  for (size_t i = 0; i < matrices.size(); ++i)
    if (matrices[i].role != MatrixRole::kEmbedding && matrices[i].role != MatrixRole::kLmHead)
      order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return rank(matrices[a]) < rank(matrices[b]); });
  return order;
}

void Total(const ModelConfig& config, const PlanContext& cx, LevelPlan* p) {
  p->weights_bytes = cx.vector_bytes;
  p->transient_bytes = 0;
  p->in_place_bytes = 0;
  // Loading converts the matrices one after another in this order (see
  // MaterializeWeights): while one is converted its source pages are
  // resident beside every copy made so far, and they are released right
  // after. The load peaks at the largest of those moments; the transient is
  // what that peak holds beyond the final set of converted weights (zero
  // when the largest source comes early, as a tied embedding does).
  uint64_t converted = cx.vector_bytes, load_peak = converted;
  for (const TensorPlan& t : p->tensors) {
    p->weights_bytes += t.bytes;
    const bool copied = t.InPlace() && cx.copy_weights && CopiesIntoMemory(t);
    if (t.InPlace() && !copied) {
      p->in_place_bytes += t.bytes;
      continue;
    }
    // A copy's source is the mapped matrix itself.
    const uint64_t source = copied ? t.bytes : static_cast<uint64_t>(t.rows * t.cols) * DTypeSize(t.source);
    load_peak = std::max(load_peak, converted + t.bytes + source);
    converted += t.bytes;
  }
  p->transient_bytes = load_peak > converted ? load_peak - converted : 0;
  const int64_t ctx = std::max<int64_t>(cx.ctx, 1);
  const int64_t parallel = std::max(cx.parallel, 1);
  // Every sequence may hold a full cache at once; one forward pass runs
  // their rows together (a logits row and a segment per sequence at most).
  p->kv_bytes = static_cast<uint64_t>(parallel) * KVCache::BytesFor(config, ctx, cx.kv_cache);
  const int64_t rows = PlannedBatchRows(cx);
  int64_t max_k = std::max(config.hidden_size, config.MaxFf());
  max_k = std::max(max_k, std::max(config.QDim(), config.AttnOutDim()));
  max_k = std::max(max_k, config.q_lora_rank);
  p->scratch_bytes =
      Transformer::BatchScratchBytes(config, rows, ctx, cx.threads, std::min(parallel, rows), parallel) +
      kernels::MatMulScratchBytes(rows, max_k, cx.threads);
  p->runtime_bytes = cx.runtime_bytes + (cx.device == Device::kCuda ? kCudaContextBytes : 0);
  p->margin_bytes = MarginFor(p->ExpectedBytes());
}

}  // namespace

const char* MatrixRoleName(MatrixRole role) {
  switch (role) {
    case MatrixRole::kEmbedding: return "embedding";
    case MatrixRole::kLmHead: return "lm_head";
    case MatrixRole::kAttention: return "attention";
    case MatrixRole::kExpert: return "expert";
    case MatrixRole::kDenseMlp: return "mlp";
  }
  return "?";
}

const char* DeviceName(Device device) { return device == Device::kCuda ? "cuda" : "cpu"; }

std::vector<MatrixSlot> ListMatrices(const ModelConfig& c, ModelWeights& w) {
  std::vector<MatrixSlot> out;
  // A tied embedding is the lm_head too, and is planned as one.
  out.push_back({"model.embed_tokens.weight",
                 c.tie_word_embeddings ? MatrixRole::kLmHead : MatrixRole::kEmbedding, -1, &w.embed});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = w.layers[l];
    auto name = [&](const std::string& s) { return TensorNames::Layer(l, s); };
    if (c.Latent()) {
      // MLA: kv_b_proj is read as float32 rows (converted at bind), not planned here.
      if (c.q_lora_rank > 0) {
        out.push_back({name("self_attn.q_a_proj.weight"), MatrixRole::kAttention, l, &lw.q_a});
        out.push_back({name("self_attn.q_b_proj.weight"), MatrixRole::kAttention, l, &lw.q_b});
      } else {
        out.push_back({name("self_attn.q_proj.weight"), MatrixRole::kAttention, l, &lw.q});
      }
      out.push_back({name("self_attn.kv_a_proj_with_mqa.weight"), MatrixRole::kAttention, l, &lw.kv_a});
    } else {
      out.push_back({name("self_attn.q_proj.weight"), MatrixRole::kAttention, l, &lw.q});
      out.push_back({name("self_attn.k_proj.weight"), MatrixRole::kAttention, l, &lw.k});
      out.push_back({name("self_attn.v_proj.weight"), MatrixRole::kAttention, l, &lw.v});
    }
    out.push_back({name("self_attn.o_proj.weight"), MatrixRole::kAttention, l, &lw.o});
    // Each feed-forward in checkpoint order: gate, down, up.
    auto ffn = [&](ExpertWeights& f, MatrixRole role, auto name_of) {
      if (f.Interleaved()) {
        out.push_back({name_of(FfnPart::kGate), role, l, &f.gate_up});
        out.push_back({name_of(FfnPart::kDown), role, l, &f.down});
        return;
      }
      out.push_back({name_of(FfnPart::kGate), role, l, &f.gate});
      out.push_back({name_of(FfnPart::kDown), role, l, &f.down});
      out.push_back({name_of(FfnPart::kUp), role, l, &f.up});
    };
    if (c.IsMoeLayer(l)) {
      for (int64_t e = 0; e < static_cast<int64_t>(lw.experts.size()); ++e)
        ffn(lw.experts[e], MatrixRole::kExpert,
            [&](FfnPart part) { return TensorNames::Expert(c, l, e, part); });
      // A shared expert runs for every token, like a dense MLP, and is planned as one.
      if (c.shared_expert != SharedExpertKind::kNone)
        ffn(lw.shared, MatrixRole::kDenseMlp,
            [&](FfnPart part) { return TensorNames::SharedExpert(c, l, part); });
    } else {
      ffn(lw.experts[0], MatrixRole::kDenseMlp,
          [&](FfnPart part) { return TensorNames::DenseMlp(l, part); });
    }
  }
  if (!c.tie_word_embeddings)
    out.push_back({"lm_head.weight", MatrixRole::kLmHead, -1, &w.lm_head});
  return out;
}

bool CopiesIntoMemory(const TensorPlan& t) { return t.InPlace() && t.role != MatrixRole::kEmbedding; }

uint64_t StoredBytes(DType dtype, int64_t rows, int64_t cols) {
  if (!HasGroupScales(dtype)) return RoundUp64(static_cast<uint64_t>(rows * cols) * DTypeSize(dtype));
  // The load-time quantized types are stored with each row's scales after
  // its codes (one buffer), MXFP4 as the checkpoint has it (two).
  const WeightView v = IsQuantized(dtype) ? WeightView::WithScalesInRows(dtype, nullptr, rows, cols)
                                          : WeightView{dtype, nullptr, rows, cols};
  return RoundUp64(v.Bytes()) + RoundUp64(v.ScaleBytes());
}

std::vector<TensorPlan> PlanTensors(const std::vector<MatrixSlot>& matrices, QuantLevel level,
                                    int64_t ctx, const std::vector<bool>& int8_matrices) {
  Require(level != QuantLevel::kAuto, "internal: PlanTensors needs a concrete level");
  std::vector<TensorPlan> out;
  for (size_t i = 0; i < matrices.size(); ++i) {
    const MatrixSlot& m = matrices[i];
    TensorPlan t;
    t.name = m.name;
    t.role = m.role;
    t.layer = m.layer;
    t.rows = m.view->rows;
    t.cols = m.view->cols;
    t.source = m.view->dtype;
    const bool raise = i < int8_matrices.size() && int8_matrices[i];
    t.target = TargetFor(m, level, raise);
    // Tensors used in place stay in the mapping: exactly their stored bytes,
    // which become resident as they are read. An untied embedding is read
    // one row per token: at most ctx distinct rows. Each maps its own pages
    // (one more than its length when it straddles a boundary) or, when it is
    // smaller, the kernel's fault-around window (64 KiB by default): a page
    // fault on a file mapping maps the cached pages around it too.
    // MXFP4 used in place: 4-bit codes plus one E8M0 byte per 32 (4.25 bits a weight).
    const uint64_t full = HasGroupScales(t.source) ? QuantizedBytes(t.source, t.rows, t.cols)
                                                   : static_cast<uint64_t>(t.rows * t.cols) * DTypeSize(t.source);
    if (!t.InPlace()) {
      t.bytes = StoredBytes(t.target, t.rows, t.cols);
    } else if (t.role == MatrixRole::kEmbedding) {
      const uint64_t row_pages =
          std::max<uint64_t>((t.cols * DTypeSize(t.source) + kPageBytes - 1) / kPageBytes + 1,
                             kFaultAroundBytes / kPageBytes);
      t.bytes = std::min<uint64_t>(full, static_cast<uint64_t>(std::min(t.rows, std::max<int64_t>(ctx, 1))) *
                                             row_pages * kPageBytes);
    } else {
      t.bytes = full;
    }
    out.push_back(std::move(t));
  }
  return out;
}

int64_t PlannedBatchRows(const PlanContext& cx) {
  const int64_t ctx = std::max<int64_t>(cx.ctx, 1);
  const int64_t budget = cx.batch_tokens > 0 ? cx.batch_tokens : ctx;
  return std::max<int64_t>(budget, std::max(cx.parallel, 1));
}

LevelPlan PlanLevel(const ModelConfig& config, const std::vector<MatrixSlot>& matrices,
                    QuantLevel level, const PlanContext& context, uint64_t budget_bytes) {
  Require(level != QuantLevel::kAuto, "internal: PlanLevel needs a concrete level");
  LevelPlan p;
  p.level = level;
  std::vector<bool> raised(matrices.size(), false);
  if (context.int8_lm_head && level != QuantLevel::kNone && level != QuantLevel::kFp16)
    for (size_t i = 0; i < matrices.size(); ++i)
      raised[i] = matrices[i].role == MatrixRole::kLmHead && matrices[i].name == "lm_head.weight";
  // The embedding rows all sequences together can touch.
  p.tensors = PlanTensors(matrices, level, context.ctx * std::max(context.parallel, 1), raised);
  Total(config, context, &p);
  if (level != QuantLevel::kMixed) return p;
  // Raise matrices to int8 one at a time while the plan still fits. Only the
  // weights term (and the margin, a function of the total) changes.
  for (size_t i : MixedRaiseOrder(matrices, config.num_layers)) {
    TensorPlan& t = p.tensors[i];
    if (t.target != kInt4Format) continue;
    const uint64_t int8_bytes = StoredBytes(DType::kQ8, t.rows, t.cols);
    const uint64_t expected = p.ExpectedBytes() + int8_bytes - t.bytes;
    if (expected + MarginFor(expected) > budget_bytes) break;
    p.weights_bytes += int8_bytes - t.bytes;
    p.margin_bytes = MarginFor(expected);
    t.target = DType::kQ8;
    t.bytes = int8_bytes;
    ++p.raised_to_int8;
  }
  return p;
}

PlanReport PlanAllLevels(const ModelConfig& config, const std::vector<MatrixSlot>& matrices,
                         const PlanContext& context, uint64_t budget_bytes) {
  PlanReport r;
  r.budget_bytes = budget_bytes;
  for (QuantLevel l : ConcreteLevels())
    r.levels.push_back(PlanLevel(config, matrices, l, context, budget_bytes));
  // For a 16-bit checkpoint fp16 is exact, like none, at half the memory.
  bool sixteen_bit = true;
  for (const MatrixSlot& m : matrices) sixteen_bit &= m.view->dtype != DType::kF32;
  std::vector<int> order = {0, 1, 2, 3, 4};
  if (sixteen_bit) std::swap(order[0], order[1]);
  for (int i : order) {
    const LevelPlan& p = r.levels[i];
    // Mixed with nothing raised is int4 under another name: let int4 answer.
    if (p.level == QuantLevel::kMixed && p.raised_to_int8 == 0) continue;
    if (p.RequiredBytes() <= budget_bytes) {
      r.chosen = i;
      break;
    }
  }
  if (r.chosen >= 0) return r;
  const LevelPlan& smallest = r.levels.back();  // int4
  const int parallel = std::max(context.parallel, 1);
  const std::string sequences =
      parallel > 1 ? " for " + std::to_string(parallel) + " sequences of " + std::to_string(context.ctx) +
                         " tokens"
                   : "";
  std::string advice = "Nothing fits in " + FormatBytes(budget_bytes) + ": the smallest level, " +
                       std::string(QuantLevelName(smallest.level)) + ", needs " +
                       FormatBytes(smallest.RequiredBytes()) + sequences + " (" +
                       FormatBytes(smallest.RequiredBytes() - budget_bytes) + " missing).";
  auto fits = [&](const PlanContext& c) {
    return PlanLevel(config, matrices, QuantLevel::kInt4, c, budget_bytes).RequiredBytes() <= budget_bytes;
  };
  // The longest context that would fit at int4, by bisection (memory grows
  // with the context through the KV caches and scratch). The batch budget
  // shrinks with it: a pass never needs more rows than the context.
  PlanContext shorter = context;
  int64_t lo = 0, hi = context.ctx;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    shorter.ctx = mid;
    shorter.batch_tokens = context.batch_tokens > 0 ? std::min(context.batch_tokens, mid) : 0;
    if (fits(shorter))
      lo = mid;
    else
      hi = mid - 1;
  }
  // With several sequences, the most that would fit at the given context.
  int fewer = 0;
  if (parallel > 1) {
    PlanContext c = context;
    int a = 0, b = parallel - 1;
    while (a < b) {
      const int mid = (a + b + 1) / 2;
      c.parallel = mid;
      if (fits(c))
        a = mid;
      else
        b = mid - 1;
    }
    fewer = a;
  }
  if (lo >= 16 || fewer >= 1) {
    advice += " ";
    if (lo >= 16)
      advice += "With --ctx " + std::to_string(lo) + " (instead of " + std::to_string(context.ctx) + ")" +
                (fewer >= 1 ? "" : " int4 would fit.");
    if (fewer >= 1)
      advice += std::string(lo >= 16 ? ", or with" : "With") + " --parallel " + std::to_string(fewer) +
                " (instead of " + std::to_string(parallel) + ") int4 would fit.";
  } else {
    advice += " No context length makes it fit: free " +
              FormatBytes(smallest.RequiredBytes() - budget_bytes) +
              " of memory or use a machine with more.";
  }
  r.advice = advice;
  return r;
}

LevelPlan ChooseLevel(const ModelConfig& config, const std::vector<MatrixSlot>& matrices,
                      QuantLevel requested, const PlanContext& context, uint64_t budget_bytes) {
  if (requested == QuantLevel::kAuto) {
    PlanReport r = PlanAllLevels(config, matrices, context, budget_bytes);
    Require(r.chosen >= 0, r.advice);
    return r.levels[r.chosen];
  }
  LevelPlan p = PlanLevel(config, matrices, requested, context, budget_bytes);
  if (p.RequiredBytes() > budget_bytes) {
    PlanReport r = PlanAllLevels(config, matrices, context, budget_bytes);
    std::string msg = std::string("level ") + QuantLevelName(requested) + " needs " +
                      FormatBytes(p.RequiredBytes()) + " but only " + FormatBytes(budget_bytes) +
                      " is available (" + FormatBytes(p.RequiredBytes() - budget_bytes) +
                      " missing).";
    if (r.chosen >= 0)
      msg += std::string(" Level ") + QuantLevelName(r.levels[r.chosen].level) + " fits (" +
             FormatBytes(r.levels[r.chosen].RequiredBytes()) + "): use --quant " +
             QuantLevelName(r.levels[r.chosen].level) + " or --quant auto.";
    else
      msg += " " + r.advice;
    throw Error(msg);
  }
  return p;
}

std::string FormatBytes(uint64_t bytes) {
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (bytes >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1ull << 30));
  else if (bytes >= (1ull << 20))
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1ull << 20));
  else
    std::snprintf(buf, sizeof buf, "%.0f KiB", b / 1024);
  return buf;
}

}  // namespace epwa
