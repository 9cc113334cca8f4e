// epwa bench-load: how long loading takes at each level, part by part, with a
// cold and a warm quantized-weight cache, and the peak memory of each load.
// Every configuration runs in a fresh process (`epwa info --json`), so peak
// RSS and page-cache state are the load's own.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "base/error.h"
#include "base/timer.h"
#include "cli.h"
#include "io/safetensors.h"

namespace epwa::cli {
namespace {

namespace fs = std::filesystem;

std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Drops the model's files from the page cache (no root needed: advice on a
// file we can open), so a "cold" load reads from disk as the first load after
// a reboot would, as far as the storage allows.
void EvictFromPageCache(const std::vector<std::string>& files) {
  for (const std::string& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY);
    if (fd < 0) continue;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

json RunLoad(const std::string& model, const std::string& level, const std::string& cache_dir,
             int threads) {
  std::string cmd = "EPWA_CACHE_DIR=" + ShellQuote(cache_dir) + " " + ShellQuote(fs::read_symlink("/proc/self/exe").string()) +
                    " info --json -m " + ShellQuote(model) + " --quant " + level + " --ctx 256";
  if (threads > 0) cmd += " -t " + std::to_string(threads);
  cmd += " 2>&1";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  Require(p != nullptr, "cannot start a load process");
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  const size_t brace = out.find('{');
  Require(status == 0 && brace != std::string::npos,
          "loading at " + level + " failed: " + out.substr(0, 400));
  return json::parse(out.substr(brace))["load"];
}

// Milliseconds to read `path` sequentially with read(2): the floor a cached
// load is compared with.
double TimeFileRead(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return 0;
  std::vector<char> buf(8 << 20);
  Stopwatch clock;
  while (::read(fd, buf.data(), buf.size()) > 0) {
  }
  ::close(fd);
  return clock.Millis();
}

}  // namespace

Runner RegisterBenchLoad(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench-load", "load time by part and peak memory per level, cold and warm weight cache");
  struct Flags {
    std::string model_dir, levels = "none,fp16,int8,int4";
    int threads = 0;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("-m,--model", f->model_dir, "Hugging Face model folder")->envname("EPW_MODEL_PATH");
  cmd->add_option("-t,--threads", f->threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--levels", f->levels, "comma-separated levels");
  cmd->add_flag("--json", f->json, "print one JSON object");

  return [f]() {
    Require(!f->model_dir.empty(), "no model folder given (use -m MODEL_DIR or set EPW_MODEL_PATH)");
    std::vector<std::string> levels;
    std::stringstream ss(f->levels);
    for (std::string item; std::getline(ss, item, ',');) {
      const QuantLevel l = ParseQuantLevel(item);
      Require(l != QuantLevel::kAuto, "--levels: name concrete levels, not auto");
      levels.push_back(QuantLevelName(l));
    }
    auto store = TensorStore::OpenDir(f->model_dir);
    const uint64_t disk_bytes = store->TotalBytes();
    // A private cache folder: "cold" starts without a cache file, "warm" finds
    // the one the cold load wrote (and a warm page cache).
    char pattern[] = "/tmp/epwa-bench-load-XXXXXX";
    Require(::mkdtemp(pattern) != nullptr, "cannot create a temporary folder");
    const std::string cache_dir = pattern;
    json rows = json::array();
    try {
      for (const std::string& level : levels) {
        fs::remove_all(cache_dir + "/");
        fs::create_directories(cache_dir);
        for (const char* state : {"cold", "warm"}) {
          if (std::string(state) == "cold") EvictFromPageCache(store->files());
          json load = RunLoad(f->model_dir, level, cache_dir, f->threads);
          if (load["cache"] == "hit")
            load["cache_file_read_ms"] = TimeFileRead(load["cache_path"].get<std::string>());
          load["level"] = level;
          load["cache_state"] = state;
          rows.push_back(load);
        }
      }
    } catch (...) {
      fs::remove_all(cache_dir);
      throw;
    }
    fs::remove_all(cache_dir);
    if (f->json) {
      PrintJson(json{{"model_dir", f->model_dir}, {"bytes_on_disk", disk_bytes}, {"loads", rows}});
      return 0;
    }
    std::printf("%s: %s on disk; each row is a fresh process (cold: model evicted from the page "
                "cache, no weight cache)\n\n",
                f->model_dir.c_str(), FormatBytes(disk_bytes).c_str());
    std::printf("%-6s %-5s %10s %10s %10s %10s %12s %10s %11s  %s\n", "level", "cache",
                "tokenizer", "weights", "quantize", "cache", "router hash", "total", "peak RSS",
                "cache file");
    for (const json& r : rows)
      std::printf("%-6s %-5s %8.1fms %8.1fms %8.1fms %8.1fms %10.1fms %8.1fms %11s  %s\n",
                  r["level"].get<std::string>().c_str(), r["cache_state"].get<std::string>().c_str(),
                  r["tokenizer_ms"].get<double>(), r["weights_ms"].get<double>(),
                  r["quantize_ms"].get<double>(), r["cache_ms"].get<double>(),
                  r["router_hash_ms"].get<double>(), r["total_ms"].get<double>(),
                  FormatBytes(r["peak_rss_bytes"].get<uint64_t>()).c_str(),
                  (r["cache"].get<std::string>() +
                   (r.contains("cache_file_read_ms")
                        ? " (reading the file alone: " +
                              std::to_string(r["cache_file_read_ms"].get<double>()).substr(0, 5) + " ms)"
                        : std::string()))
                      .c_str());
    return 0;
  };
}

}  // namespace epwa::cli
