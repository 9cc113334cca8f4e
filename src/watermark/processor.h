// Watermarked generation: a logits processor for Engine::Generate that adds a
// bias to the green tokens of the list keyed by the router's expert choice
// (GSG, EWP) or by the previous token (KGW baseline).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/routing.h"
#include "watermark/green_list.h"
#include "watermark/key.h"

namespace epwa::wm {

enum class Scheme {
  kGsg,  // gating-seeded green list: a fixed delta on the green list of expert e
  kEwp,  // expert-weighted perturbation: delta_e * softmax(router logits)[e]
  kKgw,  // Kirchenbauer et al.: green list keyed by the previous token
  // EPW-A v2 (docs/watermark.md): a fixed delta, lists keyed by context items.
  kEpw2Et,       // (a) the pair (expert at t - 1, token at t - 1)
  kEpw2MinHash,  // (b) self-salted min-hash over every layer's expert and the token at t - 1
  kEpw2Votes,    // (c) one vote per MoE layer: (that layer's expert, token) at t - 1
};
// "gsg", "ewp", "kgw", "epw2-et", "epw2-minhash", "epw2-votes"; throws
// epwa::Error naming the choices otherwise.
Scheme ParseScheme(const std::string& name);
const char* SchemeName(Scheme scheme);
// GSG and EWP share the expert-keyed green lists (they differ only in the
// bias), so one detector serves both.
inline KeyedBy KeyedByOf(Scheme s) {
  switch (s) {
    case Scheme::kKgw: return KeyedBy::kPreviousToken;
    case Scheme::kEpw2Et: return KeyedBy::kExpertToken;
    case Scheme::kEpw2MinHash: return KeyedBy::kMinHash;
    case Scheme::kEpw2Votes: return KeyedBy::kLayerVotes;
    default: return KeyedBy::kExpert;
  }
}
inline bool UsesRouter(Scheme s) { return s != Scheme::kKgw; }
// "EPW-A v1" for gsg, ewp and kgw; "EPW-A v2" for the epw2-* schemes.
inline const char* SchemeVersion(Scheme s) { return IsV2(KeyedByOf(s)) ? "EPW-A v2" : kSchemeName; }

inline constexpr int kSchemeDefaultLayer = -1000000;

// The scheme the front ends (detect, the server's detect endpoint, eval)
// assume when none is named. epw2-et was chosen by `epwa eval watermark`: it
// is the router-keyed scheme that best survives edits on both bundled models
// (docs/watermark.md, "Which variant"). Text marked with v1 is still detected,
// but only when its scheme is named (--watermark gsg).
inline constexpr Scheme kDefaultScheme = Scheme::kEpw2Et;

struct WatermarkParams {
  Scheme scheme = Scheme::kGsg;
  double gamma = 0.25;
  double delta = 2.0;
  // MoE layer whose router keys the green list (v1 and v2 (a)): an index into
  // the model's MoE layers, negative counts from the end (-1: the last one, as
  // the original). v2 (b) and (c) use every MoE layer.
  int router_layer = kSchemeDefaultLayer;
  // EWP base delta per expert ([num_experts]); empty: DefaultExpertDeltas.
  std::vector<double> expert_deltas;
};

// EWP's default table: 2 * delta for every expert, so that the bias equals
// delta at a router confidence of 0.5 and shrinks where the router is unsure
// (the positions whose expert is most likely to flip at detection).
std::vector<double> DefaultExpertDeltas(double delta, int64_t num_experts);
// Reads a JSON array of num_experts finite, non-negative numbers.
std::vector<double> ReadExpertDeltas(const std::string& path, int64_t num_experts);

// Resolves WatermarkParams::router_layer to a slot in [0, num_moe_layers);
// throws epwa::Error for an index outside the model.
int ResolveRouterLayer(int requested, int64_t num_moe_layers);
// The same, where kSchemeDefaultLayer stands for the scheme's own default:
// the last MoE layer for v1 (as the original), the first for v2 (a), whose
// routing depends least on distant context and so survives edits best
// (docs/watermark.md has the measurements).
int ResolveRouterLayer(Scheme scheme, int requested, int64_t num_moe_layers);

// The expert that keys a green list, read from one position's router logits:
// the argmax (lowest index on ties), its softmax probability, and the gap to
// the runner-up's probability (a small margin means the choice can flip
// under numeric noise such as another quantization level).
struct ExpertChoice {
  int32_t expert = -1;
  float confidence = 0;
  float margin = 0;
};
ExpertChoice ChooseExpert(std::span<const float> router_logits);
// The same for token t of a routing trace at MoE slot `slot`: the expert is
// the router's own first choice (Experts(t, slot)[0]), which is the argmax of
// the logits for every router kind except DeepSeek-V3's, whose choice follows
// the biased sigmoid scores and group limits; confidence and margin are
// always read from the softmax of the raw router logits.
ExpertChoice ChooseExpert(const RoutingTrace& routing, int64_t t, int slot);

// The EPW-A v2 context items of the token that follows position t, read from
// the routing at t (every MoE layer's first choice) and the token at t:
// (a) one item (slot's expert, token); (b) every layer's expert alone, then
// the token alone; (c) (layer's expert, token) for every layer.
std::vector<ContextItem> ContextItemsV2(KeyedBy keyed, const RoutingTrace& routing, int64_t t, int slot,
                                       int32_t token);

class WatermarkProcessor {
 public:
  // Throws epwa::Error for gsg/ewp on a dense model (pointing to kgw), a
  // router layer outside the model, or a bad expert-delta table.
  WatermarkProcessor(const SecretKey& key, const WatermarkParams& params, const ModelConfig& config,
                     const std::string& router_hash_hex);

  // The Engine::Generate hook. Throws epwa::Error if the routing of the step
  // is missing: text must never be called watermarked without a watermark.
  void Apply(std::span<float> logits, const RoutingTrace& routing, std::span<const int32_t> context);
  void ApplyV2(std::span<float> logits, const RoutingTrace& routing, std::span<const int32_t> context);

  const WatermarkParams& params() const { return params_; }
  int router_slot() const { return router_slot_; }
  int64_t steps() const { return steps_; }
  // The seeding expert of every step (empty for KGW): what detection must recover.
  const std::vector<int32_t>& experts_used() const { return experts_used_; }
  double mean_bias() const { return steps_ ? bias_sum_ / static_cast<double>(steps_) : 0.0; }
  GreenLists& green_lists() { return lists_; }

 private:
  WatermarkParams params_;
  GreenLists lists_;
  int router_slot_ = -1;
  int64_t vocab_ = 0;
  int64_t steps_ = 0;
  double bias_sum_ = 0;
  std::vector<int32_t> experts_used_;
  std::vector<ContextItem> items_;  // v2: this step's context items
  std::vector<float> bias_scratch_;
};

}  // namespace epwa::wm
