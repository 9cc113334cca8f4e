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
  cmd->add_flag("--json", flags->json, "print one JSON object");
  return [flags]() {
    auto engine = LoadEngine(flags->model, /*quiet=*/flags->json);
    const ModelConfig& c = engine->config();
    int64_t total_params = 0, expert_params = 0;
    std::map<std::string, int64_t> tensors_by_dtype;
    for (const TensorInfo* t : engine->tensors().All()) {
      total_params += t->NumElements();
      tensors_by_dtype[DTypeName(t->dtype)] += 1;
      if (t->name.find(".experts.") != std::string::npos) expert_params += t->NumElements();
    }
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
    if (c.IsMoe())
      std::printf("experts      %lld per layer, top-%lld routing\n", (long long)c.num_experts,
                  (long long)c.num_experts_per_tok);
    else
      std::printf("experts      none (dense MLP)\n");
    std::printf("vocabulary   %lld (tokenizer: %d)\n", (long long)c.vocab_size,
                engine->tokenizer().VocabSize());
    std::printf("context      %lld positions, rope_theta %g%s\n", (long long)c.max_position_embeddings,
                c.rope_theta,
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
