#include "watermark/processor.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/file_read.h"

namespace epwa::wm {

Scheme ParseScheme(const std::string& name) {
  if (name == "gsg") return Scheme::kGsg;
  if (name == "ewp") return Scheme::kEwp;
  if (name == "kgw") return Scheme::kKgw;
  if (name == "epw2-et") return Scheme::kEpw2Et;
  if (name == "epw2-minhash") return Scheme::kEpw2MinHash;
  if (name == "epw2-votes") return Scheme::kEpw2Votes;
  throw Error("unknown watermark '" + name + "': use gsg, ewp, kgw, epw2-et, epw2-minhash or epw2-votes");
}

const char* SchemeName(Scheme scheme) {
  switch (scheme) {
    case Scheme::kGsg: return "gsg";
    case Scheme::kEwp: return "ewp";
    case Scheme::kKgw: return "kgw";
    case Scheme::kEpw2Et: return "epw2-et";
    case Scheme::kEpw2MinHash: return "epw2-minhash";
    case Scheme::kEpw2Votes: return "epw2-votes";
  }
  return "?";
}

std::vector<double> DefaultExpertDeltas(double delta, int64_t num_experts) {
  return std::vector<double>(static_cast<size_t>(num_experts), 2.0 * delta);
}

std::vector<double> ReadExpertDeltas(const std::string& path, int64_t num_experts) {
  // A list of a few numbers: the config-file limit is plenty, and
  // ReadRegularFile refuses FIFOs and devices instead of hanging on them.
  const std::string text = ReadRegularFile(path, kMaxConfigFileBytes, "the expert-delta file");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  Require(j.is_array() && static_cast<int64_t>(j.size()) == num_experts,
          "the expert-delta file '" + path + "' must hold a JSON array of " +
              std::to_string(num_experts) + " numbers, one per expert");
  std::vector<double> deltas;
  for (const auto& v : j) {
    Require(v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() >= 0 &&
                v.get<double>() <= 100,
            "the expert-delta file '" + path + "' must hold numbers between 0 and 100");
    deltas.push_back(v.get<double>());
  }
  return deltas;
}

int ResolveRouterLayer(int requested, int64_t num_moe_layers) {
  const int64_t slot = requested < 0 ? num_moe_layers + requested : requested;
  Require(slot >= 0 && slot < num_moe_layers,
          "--router-layer " + std::to_string(requested) + " is outside the model's " +
              std::to_string(num_moe_layers) + " MoE layers (use 0.." +
              std::to_string(num_moe_layers - 1) + ", or -1 for the last)");
  return static_cast<int>(slot);
}

int ResolveRouterLayer(Scheme scheme, int requested, int64_t num_moe_layers) {
  if (requested == kSchemeDefaultLayer) requested = IsV2(KeyedByOf(scheme)) ? 0 : -1;
  return ResolveRouterLayer(requested, num_moe_layers);
}

ExpertChoice ChooseExpert(std::span<const float> router_logits) {
  ExpertChoice c;
  if (router_logits.empty()) return c;
  int32_t best = 0, second = -1;
  for (int32_t e = 1; e < static_cast<int32_t>(router_logits.size()); ++e) {
    if (router_logits[e] > router_logits[best]) {
      second = best;
      best = e;
    } else if (second < 0 || router_logits[e] > router_logits[second]) {
      second = e;
    }
  }
  double sum = 0;
  for (float v : router_logits) sum += std::exp(static_cast<double>(v) - router_logits[best]);
  c.expert = best;
  c.confidence = static_cast<float>(1.0 / sum);
  const double p2 =
      second < 0 ? 0.0 : std::exp(static_cast<double>(router_logits[second]) - router_logits[best]) / sum;
  c.margin = static_cast<float>(c.confidence - p2);
  return c;
}

ExpertChoice ChooseExpert(const RoutingTrace& routing, int64_t t, int slot) {
  const std::span<const float> logits = routing.Logits(t, slot);
  ExpertChoice c = ChooseExpert(logits);
  const int32_t chosen = routing.Experts(t, slot)[0];
  if (chosen < 0 || chosen == c.expert) return c;
  // The router chose another expert than the argmax (group-limited sigmoid
  // routing): its probability, and the gap to the best other one.
  double max_logit = logits[0];
  for (float v : logits) max_logit = std::max(max_logit, static_cast<double>(v));
  double sum = 0, best_other = 0;
  for (size_t e = 0; e < logits.size(); ++e) {
    const double p = std::exp(static_cast<double>(logits[e]) - max_logit);
    sum += p;
    if (static_cast<int32_t>(e) != chosen) best_other = std::max(best_other, p);
  }
  c.expert = chosen;
  c.confidence = static_cast<float>(std::exp(static_cast<double>(logits[chosen]) - max_logit) / sum);
  c.margin = static_cast<float>(c.confidence - best_other / sum);
  return c;
}

namespace {
KeyedBy CheckedKeying(const WatermarkParams& p, const ModelConfig& config) {
  Require(p.scheme == Scheme::kKgw || config.IsMoe(),
          std::string("--watermark ") + SchemeName(p.scheme) +
              " keys green lists by the MoE router, but this model is dense (no experts); use "
              "--watermark kgw, which keys them by the previous token");
  Require(std::isfinite(p.delta) && p.delta >= 0 && p.delta <= 100,
          "--delta must be between 0 and 100");
  return KeyedByOf(p.scheme);
}
}  // namespace

WatermarkProcessor::WatermarkProcessor(const SecretKey& key, const WatermarkParams& params,
                                       const ModelConfig& config, const std::string& router_hash_hex)
    : params_(params),
      lists_(key, CheckedKeying(params, config), router_hash_hex, config.vocab_size, params.gamma),
      vocab_(config.vocab_size) {
  if (UsesRouter(params_.scheme)) {
    // Every layer of the MoE architectures epwa runs is an MoE layer, so the
    // MoE layer count is the layer count (the trace lists them: moe_layers()).
    router_slot_ = ResolveRouterLayer(params_.scheme, params_.router_layer, config.NumMoeLayers());
    if (params_.scheme == Scheme::kEwp) {
      if (params_.expert_deltas.empty())
        params_.expert_deltas = DefaultExpertDeltas(params_.delta, config.num_experts);
      Require(static_cast<int64_t>(params_.expert_deltas.size()) == config.num_experts,
              "the EWP expert-delta table needs one entry per expert (" +
                  std::to_string(config.num_experts) + ")");
    }
  }
}

void WatermarkProcessor::Apply(std::span<float> logits, const RoutingTrace& routing,
                               std::span<const int32_t> context) {
  Require(static_cast<int64_t>(logits.size()) == vocab_,
          "the watermark expected " + std::to_string(vocab_) + " logits per step, got " +
              std::to_string(logits.size()));
  const KeyedBy keyed = KeyedByOf(params_.scheme);
  if (IsV2(keyed)) {
    ApplyV2(logits, routing, context);
    return;
  }
  double bias = params_.delta;
  int32_t seed_value = 0;
  if (params_.scheme == Scheme::kKgw) {
    Require(!context.empty(), "the KGW watermark needs a previous token");
    seed_value = context.back();
  } else {
    Require(routing.num_tokens() > 0 && routing.num_moe_layers() > router_slot_ &&
                routing.num_experts() > 0,
            "the routing of this step is missing, so no watermark can be applied; refusing to "
            "generate unwatermarked text under --watermark");
    const ExpertChoice choice = ChooseExpert(routing, routing.num_tokens() - 1, router_slot_);
    seed_value = choice.expert;
    experts_used_.push_back(choice.expert);
    if (params_.scheme == Scheme::kEwp)
      bias = params_.expert_deltas[static_cast<size_t>(choice.expert)] * choice.confidence;
  }
  const GreenMask& green = lists_.For(seed_value);
  const float b = static_cast<float>(bias);
  for (int32_t id : green.ids()) logits[static_cast<size_t>(id)] += b;
  bias_sum_ += bias;
  ++steps_;
}

std::vector<ContextItem> ContextItemsV2(KeyedBy keyed, const RoutingTrace& routing, int64_t t, int slot,
                                       int32_t token) {
  std::vector<ContextItem> items;
  const int layers = static_cast<int>(routing.num_moe_layers());
  switch (keyed) {
    case KeyedBy::kExpertToken:
      items.push_back({slot, ChooseExpert(routing, t, slot).expert, token});
      break;
    case KeyedBy::kMinHash:
      for (int l = 0; l < layers; ++l) items.push_back({l, ChooseExpert(routing, t, l).expert, -1});
      items.push_back({-1, -1, token});
      break;
    case KeyedBy::kLayerVotes:
      for (int l = 0; l < layers; ++l) items.push_back({l, ChooseExpert(routing, t, l).expert, token});
      break;
    default:
      throw Error("not an EPW-A v2 keying");
  }
  return items;
}

void WatermarkProcessor::ApplyV2(std::span<float> logits, const RoutingTrace& routing,
                                 std::span<const int32_t> context) {
  Require(!context.empty(), "the EPW-A v2 watermark needs a previous token");
  Require(routing.num_tokens() > 0 && routing.num_moe_layers() > router_slot_ && routing.num_experts() > 0,
          "the routing of this step is missing, so no watermark can be applied; refusing to "
          "generate unwatermarked text under --watermark");
  const KeyedBy keyed = KeyedByOf(params_.scheme);
  const int64_t t = routing.num_tokens() - 1;
  items_ = ContextItemsV2(keyed, routing, t, router_slot_, context.back());
  experts_used_.push_back(ChooseExpert(routing, t, router_slot_).expert);
  const float delta = static_cast<float>(params_.delta);
  if (keyed == KeyedBy::kMinHash) {
    // Self-salted: every candidate picks the item of smallest rank for
    // itself, and is green if it is on that item's list.
    std::vector<const GreenMask*> masks;
    std::vector<std::array<uint64_t, 2>> keys;
    lists_.ReserveItems(items_.size());
    for (const ContextItem& item : items_) {
      masks.push_back(&lists_.ForItem(item));
      keys.push_back(lists_.RankKey(item));
    }
    for (int32_t v = 0; v < static_cast<int32_t>(vocab_); ++v)
      if (masks[GreenLists::MinRanked(keys, v)]->Contains(v)) logits[static_cast<size_t>(v)] += delta;
  } else {
    // One vote per item; a candidate gets delta times the share of votes it
    // is green in (a single item: delta on its list).
    const float share = delta / static_cast<float>(items_.size());
    for (const ContextItem& item : items_)
      for (int32_t id : lists_.ForItem(item).ids()) logits[static_cast<size_t>(id)] += share;
  }
  bias_sum_ += params_.delta;
  ++steps_;
}

}  // namespace epwa::wm
