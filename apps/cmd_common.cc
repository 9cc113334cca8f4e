#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "base/error.h"
#include "cli.h"

namespace epwa::cli {

void AddModelFlags(CLI::App* cmd, ModelFlags* flags) {
  cmd->add_option("-m,--model", flags->model_dir,
                  "Hugging Face model folder (default: $EPW_MODEL_PATH)")
      ->envname("EPW_MODEL_PATH");
  cmd->add_option("-t,--threads", flags->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
}

std::unique_ptr<Engine> LoadEngine(const ModelFlags& flags, bool quiet) {
  LoadOptions o;
  o.model_dir = flags.model_dir;
  o.threads = flags.threads;
  auto engine = Engine::Load(o);
  if (!quiet) PrintLoadStats(engine->load_stats());
  return engine;
}

std::vector<int32_t> ParseIdList(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    while (used < item.size() && std::isspace(static_cast<unsigned char>(item[used]))) ++used;
    Require(used == item.size() && !item.empty() && v >= 0 && v < (1ll << 31),
            flag + " expects comma-separated non-negative token ids, got '" + item + "'");
    ids.push_back(static_cast<int32_t>(v));
  }
  Require(!ids.empty(), flag + " expects at least one token id");
  return ids;
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  Require(in.good(), "cannot open file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json LoadStatsJson(const LoadStats& s) {
  return json{{"config_ms", s.config_ms},       {"tokenizer_ms", s.tokenizer_ms},
              {"weights_ms", s.weights_ms},     {"router_hash_ms", s.router_hash_ms},
              {"total_ms", s.total_ms},         {"weight_bytes", s.weight_bytes},
              {"mapped_bytes", s.mapped_bytes}, {"converted_bytes", s.converted_bytes},
              {"peak_rss_bytes", s.peak_rss_bytes}};
}

void PrintLoadStats(const LoadStats& s) {
  std::fprintf(stderr,
               "load: tokenizer %.1f ms, config %.1f ms, weights %.1f ms (%.1f MB mapped in place, "
               "%.2f MB converted), router hash %.1f ms, total %.1f ms, peak RSS %.1f MB\n",
               s.tokenizer_ms, s.config_ms, s.weights_ms, s.mapped_bytes / 1e6,
               s.converted_bytes / 1e6, s.router_hash_ms, s.total_ms, s.peak_rss_bytes / 1e6);
}

void PrintJson(const json& j) {
  std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
  std::cout.flush();
}

}  // namespace epwa::cli
