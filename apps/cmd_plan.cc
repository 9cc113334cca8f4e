// epwa plan: the memory each quantization level needs for a model, term by
// term, against the free memory of the device, and the level `auto` picks.
// Reads only headers: no weights are loaded.
#include <cstdio>
#include <cstdlib>

#include "base/error.h"
#include "base/meminfo.h"
#include "base/sysinfo.h"
#include "cli.h"
#include "model/weights.h"
#include "plan/memory_plan.h"

namespace epwa::cli {

Runner RegisterPlan(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "plan", "memory needed at each quantization level vs free memory, and the recommendation");
  struct Flags {
    ModelFlags model;
    std::string device = "auto";
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  AddBatchFlags(cmd, &f->model);
  cmd->add_option("--device", f->device, "plan for cpu, cuda or auto (the GPU when usable)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_flag("--json", f->json, "print one JSON object");

  return [f]() {
    ApplyKernelFlags(f->model);
    const auto getenv = [](const char* n) { return std::getenv(n); };
    const LevelRequest request = ResolveLevel(f->model.quant, getenv);
    const bool force_cpu = EnvForcesCpu(getenv);
    const std::string& dir = f->model.model_dir;
    Require(!dir.empty(), "no model folder given (use -m MODEL_DIR or set EPW_MODEL_PATH)");
    ModelConfig config = LoadModelConfig(dir);
    auto tokenizer = Tokenizer::FromFile(dir + "/tokenizer.json");
    auto store = TensorStore::OpenDir(dir);
    ModelWeights weights = BindWeights(config, *store);
    std::vector<MatrixSlot> slots = ListMatrices(config, weights);

    // The device: --device, else EPW_USE_CPU, else the GPU when one is usable.
    GpuMemory gpu;
    Device device = Device::kCpu;
    std::string device_reason;
    if (f->device == "cpu" || force_cpu) {
      device_reason = f->device == "cpu" ? "--device cpu" : "EPW_USE_CPU=true";
    } else {
      gpu = ProbeGpuMemory();
      if (gpu.usable) {
        device = Device::kCuda;
        device_reason = f->device == "cuda" ? "--device cuda" : "a CUDA GPU is usable";
      } else {
        Require(f->device != "cuda", "--device cuda: no usable GPU (" + gpu.reason + ")");
        device_reason = "no usable GPU (" + gpu.reason + ")";
      }
    }
    const HostMemory host = ProbeHostMemory();
    PlanContext pc;
    pc.device = device;
    pc.ctx = f->model.ctx > 0 ? f->model.ctx : DefaultPlanContext(config);
    pc.parallel = f->model.parallel;
    pc.batch_tokens = f->model.batch_tokens;
    ThreadPool pool(f->model.threads);
    pc.threads = pool.size();
    pc.int8_lm_head = f->model.int8_lm_head;
    pc.kv_cache = KvCacheType(f->model);
    pc.copy_weights = CopyWeightsRequested(f->model.no_mmap, [](const char* n) { return std::getenv(n); });
    pc.runtime_bytes = device == Device::kCpu ? CurrentRssBytes() : 0;
    pc.vector_bytes = weights.converted_bytes;
    uint64_t free_bytes = device == Device::kCuda ? gpu.free_bytes : host.free_bytes;
    std::string free_source = device == Device::kCuda ? "cudaMemGetInfo" : host.source;
    // On the host the plan's total includes what this process already holds.
    uint64_t budget = free_bytes + (device == Device::kCpu ? CurrentRssBytes() : 0);
    std::string budget_source = "free memory";
    if (f->model.mem_budget) {
      budget = ParseByteSize(*f->model.mem_budget, "--mem-budget");
      budget_source = "--mem-budget";
    }
    const PlanReport report = PlanAllLevels(config, slots, pc, budget);
    int64_t params = 0;
    for (const TensorInfo* t : store->All()) params += t->NumElements();

    // The requested level, when one was given, is judged on its own.
    int chosen = report.chosen;
    std::string verdict;
    if (request.level != QuantLevel::kAuto) {
      for (size_t i = 0; i < report.levels.size(); ++i)
        if (report.levels[i].level == request.level) {
          const bool fits = report.levels[i].RequiredBytes() <= budget;
          verdict = std::string(QuantLevelName(request.level)) + " (" + request.source + ") " +
                    (fits ? "fits" : "does not fit");
          chosen = fits ? static_cast<int>(i) : chosen;
        }
    }

    if (f->json) {
      json levels = json::array();
      for (const LevelPlan& p : report.levels) {
        json counts = json::object();
        for (const TensorPlan& t : p.tensors) counts[DTypeName(t.target)] = counts.value(DTypeName(t.target), 0) + 1;
        levels.push_back({{"level", QuantLevelName(p.level)},
                          {"weights_bytes", p.weights_bytes},
                          {"kv_cache_bytes", p.kv_bytes},
                          {"scratch_bytes", p.scratch_bytes},
                          {"load_transient_bytes", p.transient_bytes},
                          {"in_place_bytes", p.in_place_bytes},
                          {"runtime_bytes", p.runtime_bytes},
                          {"margin_bytes", p.margin_bytes},
                          {"expected_peak_bytes", p.ExpectedBytes()},
                          {"required_bytes", p.RequiredBytes()},
                          {"fits", p.RequiredBytes() <= budget},
                          {"matrices_by_format", counts},
                          {"raised_to_int8", p.raised_to_int8}});
      }
      json j{{"model_dir", dir},
             {"architecture", config.architecture},
             {"parameters", params},
             {"bytes_on_disk", store->TotalBytes()},
             {"device", DeviceName(device)},
             {"device_reason", device_reason},
             {"free_bytes", free_bytes},
             {"free_source", free_source},
             {"budget_bytes", budget},
             {"budget_source", budget_source},
             {"ctx", pc.ctx},
             {"parallel", pc.parallel},
             {"batch_tokens", PlannedBatchRows(pc)},
             {"threads", pc.threads},
             {"copy_weights", pc.copy_weights},
             {"kv_cache", KvCacheTypeName(pc.kv_cache)},
             {"requested", QuantLevelName(request.level)},
             {"requested_source", request.source},
             {"levels", levels},
             {"recommendation", chosen >= 0 ? json(QuantLevelName(report.levels[chosen].level)) : json(nullptr)},
             {"advice", report.advice}};
      if (device == Device::kCuda) j["gpu"] = {{"name", gpu.name}, {"total_bytes", gpu.total_bytes}};
      else if (host.cgroup_limit_bytes) j["cgroup_limit_bytes"] = *host.cgroup_limit_bytes;
      PrintJson(j);
      return chosen >= 0 ? 0 : 1;
    }

    std::printf("model   %s (%s): %.2fM parameters, %s on disk\n", dir.c_str(),
                config.architecture.c_str(), params / 1e6, FormatBytes(store->TotalBytes()).c_str());
    std::printf("device  %s (%s)\n", DeviceName(device), device_reason.c_str());
    std::printf("memory  free %s (%s), budget %s (%s)\n", FormatBytes(free_bytes).c_str(),
                free_source.c_str(), FormatBytes(budget).c_str(), budget_source.c_str());
    if (pc.parallel > 1)
      std::printf("plan    %d sequences of %lld tokens of context (a KV cache each), %lld rows per "
                  "forward pass, %d threads\n\n",
                  pc.parallel, static_cast<long long>(pc.ctx),
                  static_cast<long long>(PlannedBatchRows(pc)), pc.threads);
    else
      std::printf("plan    context %lld tokens, %d threads\n\n", static_cast<long long>(pc.ctx),
                  pc.threads);
    std::printf("%-6s %11s %11s %11s %11s %11s %11s %11s  %s\n", "level", "weights", "kv cache",
                "scratch", "transient", "runtime", "margin", "required", "fits");
    for (const LevelPlan& p : report.levels) {
      std::string note;
      if (p.level == QuantLevel::kMixed)
        note = " (" + std::to_string(p.raised_to_int8) + " matrices at int8)";
      std::printf("%-6s %11s %11s %11s %11s %11s %11s %11s  %s%s\n", QuantLevelName(p.level),
                  FormatBytes(p.weights_bytes).c_str(), FormatBytes(p.kv_bytes).c_str(),
                  FormatBytes(p.scratch_bytes).c_str(), FormatBytes(p.transient_bytes).c_str(),
                  FormatBytes(p.runtime_bytes).c_str(), FormatBytes(p.margin_bytes).c_str(),
                  FormatBytes(p.RequiredBytes()).c_str(), p.RequiredBytes() <= budget ? "yes" : "no",
                  note.c_str());
    }
    std::printf("\n");
    if (!verdict.empty()) std::printf("requested: %s\n", verdict.c_str());
    if (chosen >= 0)
      std::printf("recommendation: %s\n", QuantLevelName(report.levels[chosen].level));
    else
      std::printf("recommendation: none fits. %s\n", report.advice.c_str());
    return chosen >= 0 ? 0 : 1;
  };
}

}  // namespace epwa::cli
