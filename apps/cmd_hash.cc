// epwa hash: the IRSH router hash of a model (model/router_hash.h), which
// binds a watermark key's green lists to one version of the routers.
#include <cstdio>

#include "base/error.h"
#include "base/timer.h"
#include "cli.h"
#include "model/router_hash.h"

namespace epwa::cli {

Runner RegisterHash(CLI::App& app) {
  auto* cmd = app.add_subcommand("hash", "IRSH: SHA-256 of every MoE layer's router weights");
  struct Flags {
    ModelFlags model;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  cmd->add_flag("--json", f->json, "print one JSON object");
  return [f]() {
    const std::string& dir = f->model.model_dir;
    Require(!dir.empty(), "no model folder given (use -m MODEL_DIR or set EPW_MODEL_PATH)");
    const ModelConfig config = LoadModelConfig(dir);
    Require(config.IsMoe(), "the model in '" + dir +
                                "' is dense: it has no MoE routers to hash (only --watermark kgw "
                                "applies to it)");
    std::string hash;
    double ms = 0;
    std::string level = "checkpoint";
    if (f->model.quant || f->model.mem_budget) {
      // Loaded as a watermarking run would load it: the hash the load
      // computes (the same at every level, by construction).
      auto engine = LoadEngine(f->model, /*quiet=*/true);
      hash = engine->load_stats().router_hash;
      ms = engine->load_stats().router_hash_ms;
      level = engine->load_stats().quant_level;
    } else {
      auto store = TensorStore::OpenDir(dir);
      Stopwatch clock;
      hash = RouterHash(config, *store);
      ms = clock.Millis();
    }
    const std::string scheme = "EPW-A IRSH v" + std::to_string(RouterHashVersion(config));
    if (f->json) {
      PrintJson(json{{"model_dir", dir}, {"router_hash", hash}, {"scheme", scheme},
                     {"moe_layers", config.NumMoeLayers()}, {"loaded_as", level}, {"ms", ms}});
    } else {
      std::printf("%s\n", hash.c_str());
      std::fprintf(stderr, "router hash (%s) over %lld MoE layers in %.1f ms\n", scheme.c_str(),
                   static_cast<long long>(config.NumMoeLayers()), ms);
    }
    return 0;
  };
}

}  // namespace epwa::cli
