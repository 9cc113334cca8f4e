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
    std::string model_dir;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("-m,--model", f->model_dir, "Hugging Face model folder")->envname("EPW_MODEL_PATH");
  cmd->add_flag("--json", f->json, "print one JSON object");
  return [f]() {
    Require(!f->model_dir.empty(), "no model folder given (use -m MODEL_DIR or set EPW_MODEL_PATH)");
    const ModelConfig config = LoadModelConfig(f->model_dir);
    auto store = TensorStore::OpenDir(f->model_dir);
    Stopwatch clock;
    const std::string hash = RouterHash(config, *store);
    const double ms = clock.Millis();
    if (f->json) {
      PrintJson(json{{"model_dir", f->model_dir}, {"router_hash", hash}, {"scheme", "EPW-A IRSH v1"},
                     {"moe_layers", config.num_layers}, {"ms", ms}});
    } else {
      std::printf("%s\n", hash.c_str());
      std::fprintf(stderr, "router hash (EPW-A IRSH v1) over %lld MoE layers in %.1f ms\n",
                   static_cast<long long>(config.num_layers), ms);
    }
    return 0;
  };
}

}  // namespace epwa::cli
