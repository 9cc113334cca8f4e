// epwa info: what a model folder holds, without running it.
#include <cstdio>
#include <map>

#include "cli.h"

namespace epwa::cli {

Runner RegisterInfo(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "architecture, parameter counts, experts, dtypes, bytes");
  struct Flags {
    ModelFlags model;
    bool json = false;
  };
  auto flags = std::make_shared<Flags>();
  AddModelFlags(cmd, &flags->model);
  AddBatchFlags(cmd, &flags->model);
  cmd->add_flag("--json", flags->json, "print one JSON object");
  return [flags]() {
    auto engine = LoadEngine(flags->model, /*quiet=*/flags->json);
    const ModelConfig& c = engine->config();
    int64_t total_params = 0, expert_params = 0;
    std::map<std::string, int64_t> tensors_by_dtype;
    for (const TensorInfo* t : engine->tensors().All()) {
      total_params += t->NumElements();
      tensors_by_dtype[DTypeName(t->dtype)] += 1;
    }
    // Routed expert parameters from the config, whatever the layout stores
    // them as (per-expert tensors or fused stacks); shared experts always run.
    for (int64_t l = 0; l < c.num_layers; ++l)
      if (c.IsMoeLayer(l)) expert_params += c.num_experts * 3 * c.hidden_size * c.ExpertFf();
    // Per token, a MoE layer runs num_experts_per_tok of its experts.
    const int64_t active_params =
        c.IsMoe() ? total_params - expert_params + expert_params * c.num_experts_per_tok / c.num_experts
                  : total_params;
    json j{{"model_dir", flags->model.model_dir},
           {"architecture", c.architecture},
           {"model_type", c.model_type},
           {"vocab_size", c.vocab_size},
           {"hidden_size", c.hidden_size},
           {"intermediate_size", c.intermediate_size},
           {"num_layers", c.num_layers},
           {"num_heads", c.num_heads},
           {"num_kv_heads", c.num_kv_heads},
           {"head_dim", c.head_dim},
           {"max_position_embeddings", c.max_position_embeddings},
           {"rope_theta", c.rope_theta},
           {"sliding_window", c.sliding_window},
           {"tie_word_embeddings", c.tie_word_embeddings},
           {"num_experts", c.num_experts},
           {"num_experts_per_tok", c.num_experts_per_tok},
           {"moe_layers", c.MoeLayers()},
           {"expert_intermediate_size", c.IsMoe() ? c.ExpertFf() : 0},
           {"router", c.IsMoe() ? RouterKindName(c.router) : "none"},
           {"norm_topk_prob", c.IsMoe() && c.norm_topk_prob},
           {"shared_expert_intermediate_size", c.shared_expert_intermediate_size},
           {"qk_norm", QkNormKindName(c.qk_norm)},
           {"attention", c.Latent() ? "latent (MLA)" : "multi-head"},
           {"attention_sinks", c.attention_sinks},
           {"sliding_layers", c.sliding_layers},
           {"norm", NormKindName(c.norm)},
           {"activation", ActivationKindName(c.activation)},
           {"kv_cache_floats_per_token_layer", c.CacheKeyDim() + c.CacheValueDim()},
           {"rope_scaling", RopeScalingKindName(c.rope_scaling.kind)},
           {"rope_scaling_factor", c.rope_scaling.factor},
           {"context_limit", c.ContextLimit()},
           {"parameters", total_params},
           {"active_parameters_per_token", active_params},
           {"expert_parameters", expert_params},
           {"tensor_dtypes", tensors_by_dtype},
           {"weight_bytes", engine->tensors().TotalBytes()},
           {"files", engine->tensors().files()},
           {"tokenizer_vocab_size", engine->tokenizer().VocabSize()},
           {"eos_token_ids", engine->defaults().eos_token_ids},
           {"load", LoadStatsJson(engine->load_stats())}};
    if (flags->json) {
      PrintJson(j);
      return 0;
    }
    std::printf("model        %s\n", flags->model.model_dir.c_str());
    std::printf("architecture %s (%s)\n", c.architecture.c_str(), c.model_type.c_str());
    std::printf("layers       %lld, d_model %lld, d_ff %lld, heads %lld (kv %lld, head_dim %lld)\n",
                (long long)c.num_layers, (long long)c.hidden_size, (long long)c.intermediate_size,
                (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim);
    if (c.IsMoe()) {
      const std::vector<int32_t> moe = c.MoeLayers();
      std::string which;
      if (static_cast<int64_t>(moe.size()) == c.num_layers) {
        which = "all " + std::to_string(c.num_layers) + " layers MoE";
      } else {
        for (int32_t l : moe) which += (which.empty() ? "" : ",") + std::to_string(l);
        which = std::to_string(moe.size()) + " of " + std::to_string(c.num_layers) +
                " layers MoE (" + which + "), the rest dense";
      }
      std::printf("experts      %lld per layer of d_ff %lld, top-%lld routing (%s%s); %s\n",
                  (long long)c.num_experts, (long long)c.ExpertFf(), (long long)c.num_experts_per_tok,
                  RouterKindName(c.router),
                  c.router == RouterKind::kSoftmaxTopK
                      ? (c.norm_topk_prob ? ", renormalised" : ", not renormalised")
                      : "",
                  which.c_str());
      if (c.shared_expert != SharedExpertKind::kNone)
        std::printf("shared       one %s shared expert of d_ff %lld per MoE layer\n",
                    c.shared_expert == SharedExpertKind::kSigmoidGated ? "sigmoid-gated" : "ungated",
                    (long long)c.shared_expert_intermediate_size);
    } else {
      std::printf("experts      none (dense MLP)\n");
    }
    std::printf("attention    q/k norm: %s%s%s%s\n", QkNormKindName(c.qk_norm),
                c.qkv_bias ? (c.o_bias ? "; q/k/v/o biases" : "; q/k/v biases") : "",
                c.clip_qkv > 0 ? ("; clip_qkv " + std::to_string(c.clip_qkv)).c_str() : "",
                c.attention_scale > 0 ? ("; scale " + std::to_string(c.attention_scale)).c_str() : "");
    if (c.Latent())
      std::printf("latent       q_lora_rank %lld, kv_lora_rank %lld, nope %lld + rope %lld per head, v %lld; "
                  "cache %lld floats per token and layer\n",
                  (long long)c.q_lora_rank, (long long)c.kv_lora_rank, (long long)c.qk_nope_head_dim,
                  (long long)c.head_dim, (long long)c.v_head_dim, (long long)c.CacheKeyDim());
    if (c.attention_sinks || !c.sliding_layers.empty() || c.norm != NormKind::kRms ||
        c.activation != ActivationKind::kSwiGLU) {
      int64_t sliding = 0;
      for (bool b : c.sliding_layers) sliding += b;
      std::printf("kinds        %s norm, %s%s%s\n", NormKindName(c.norm), ActivationKindName(c.activation),
                  c.attention_sinks ? ", attention sinks" : "",
                  c.sliding_layers.empty()
                      ? ""
                      : (", window on " + std::to_string(sliding) + " of " + std::to_string(c.num_layers) + " layers").c_str());
    }
    if (c.embedding_multiplier != 1 || c.residual_multiplier != 1 || c.logits_scaling != 1)
      std::printf("multipliers  embedding x%g, residual x%g, logits /%g\n", c.embedding_multiplier,
                  c.residual_multiplier, c.logits_scaling);
    std::printf("vocabulary   %lld (tokenizer: %d)\n", (long long)c.vocab_size,
                engine->tokenizer().VocabSize());
    std::printf("context      %lld positions, rope_theta %g, rope scaling %s%s%s\n",
                (long long)c.ContextLimit(), c.rope_theta, RopeScalingKindName(c.rope_scaling.kind),
                c.rope_scaling.kind != RopeScalingKind::kDefault
                    ? (" x" + std::to_string(c.rope_scaling.factor)).c_str()
                    : "",
                c.sliding_window ? (", sliding window " + std::to_string(c.sliding_window)).c_str() : "");
    std::printf("parameters   %.3f M total, %.3f M active per token\n", total_params / 1e6,
                active_params / 1e6);
    std::string dtypes;
    for (auto& [name, n] : tensors_by_dtype) dtypes += name + " x" + std::to_string(n) + " ";
    std::printf("tensors      %s\n", dtypes.c_str());
    std::printf("bytes        %.2f MB in %zu file(s)\n", engine->tensors().TotalBytes() / 1e6,
                engine->tensors().files().size());
    return 0;
  };
}

}  // namespace epwa::cli
