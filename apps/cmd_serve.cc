// epwa serve: the OpenAI-compatible HTTP server (src/serve/server.h).
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <thread>

#include "base/error.h"
#include "cli.h"
#include "serve/server.h"

namespace epwa::cli {

Runner RegisterServe(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "serve", "serve the model over HTTP: OpenAI chat/completions with the operator's watermark, and detection");
  struct Flags {
    ModelFlags model;
    WatermarkFlags wm;
    serve::ServerOptions server;
    std::string api_key_file;
    int64_t max_body_kib = 1024;
    int grace_s = 10;
  };
  auto f = std::make_shared<Flags>();
  AddModelFlags(cmd, &f->model);
  AddWatermarkFlags(cmd, &f->wm, /*generation=*/true);
  serve::ServerOptions& s = f->server;
  cmd->add_option("--host", s.host, "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)");
  cmd->add_option("--port", s.port, "port (default 8080; 0 picks a free one and prints it)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--parallel", s.parallel, "sequences generated at once, batched in one forward pass (default 4)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--max-queue", s.max_queue, "requests that may wait for a slot before 429 (default 64)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--api-key-file", f->api_key_file,
                  "file of API keys, one per line: requests need Authorization: Bearer KEY (/health stays open)");
  cmd->add_flag("--allow-watermark-opt-out", s.allow_watermark_opt_out,
                "honour a request's \"watermark\": false (by default every completion is watermarked)");
  cmd->add_option("--oracle", s.oracle_path, "PEPI oracle: lets /v1/watermark/detect read logprobs");
  cmd->add_option("--model-id", s.model_id, "the model name /v1/models reports (default: the folder)");
  cmd->add_option("--max-tokens-cap", s.limits.max_tokens_cap, "largest max_tokens a request may ask (default 4096)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  cmd->add_option("--default-max-tokens", s.limits.default_max_tokens,
                  "max_tokens of a chat request that gives none (default 256)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  cmd->add_option("--max-body", f->max_body_kib, "largest request body in KiB; larger ones get 413 (default 1024)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--timeout", s.read_timeout_s, "seconds a client may take to send or read (default 30)")
      ->check(CLI::Range(1, 3600));
  cmd->add_option("--grace", f->grace_s, "on SIGTERM/SIGINT, seconds in-flight requests may finish (default 10)")
      ->check(CLI::Range(0, 3600));
  cmd->add_flag("--quiet", s.quiet, "no request log on stderr");

  return [f]() {
    serve::ServerOptions& s = f->server;
    s.write_timeout_s = s.read_timeout_s;
    s.max_body_bytes = static_cast<size_t>(f->max_body_kib) << 10;
    if (!f->api_key_file.empty()) s.api_keys = serve::ReadApiKeys(f->api_key_file);
    // SIGINT/SIGTERM are taken by a thread of their own (sigwait), so that
    // stopping is ordinary code, not a signal handler. They are blocked
    // before any other thread starts (the engine's pool included), so every
    // thread inherits the mask.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::atomic<serve::Server*> running{nullptr};
    std::atomic<bool> exiting{false};
    const int grace_ms = f->grace_s * 1000;
    std::thread waiter([&running, &exiting, signals, grace_ms] {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0 || exiting) return;
      serve::Server* server = running.load();
      if (!server) {
        // Still loading: the usual behaviour of a signal (the temporary-file
        // handler cleans up, then the default action ends the process).
        pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
        raise(sig);
        return;
      }
      std::fprintf(stderr, "epwa serve: %s: finishing in-flight requests (up to %d ms), then exiting\n",
                   sig == SIGTERM ? "SIGTERM" : "SIGINT", grace_ms);
      server->Stop(grace_ms);
    });
    // Wakes the waiter if no signal came (a failed load or listen, or after
    // Run) and joins it: before the server is destroyed, since the waiter
    // may still be inside Server::Stop.
    auto stop_waiter = [&] {
      if (!waiter.joinable()) return;
      exiting = true;
      pthread_kill(waiter.native_handle(), SIGTERM);
      waiter.join();
    };
    struct OnExit {
      std::function<void()> f;
      ~OnExit() { f(); }
    } join_waiter{stop_waiter};

    // The memory plan holds --parallel sequences of --ctx each.
    f->model.parallel = s.parallel;
    auto engine = LoadEngine(f->model, /*quiet=*/false);
    std::unique_ptr<wm::WatermarkProcessor> probe = MakeWatermark(f->wm, *engine);
    if (probe) {
      s.watermark = probe->params();
      s.key = LoadKey(f->wm);
    } else if (!s.oracle_path.empty() || !f->wm.key_file.empty() || std::getenv("EPWA_KEY_FILE")) {
      // Detection without marking: the key still serves /v1/watermark/detect.
      s.key = LoadKey(f->wm);
    }
    serve::Server server(std::move(engine), s);
    std::fprintf(stderr, "epwa serve: listening on http://%s:%d (%d parallel sequences%s%s)\n", s.host.c_str(),
                 server.port(), s.parallel, s.watermark ? ", watermark " : "",
                 s.watermark ? wm::SchemeName(s.watermark->scheme) : "");
    std::fflush(stderr);
    running = &server;
    server.Run();
    stop_waiter();
    std::fprintf(stderr, "epwa serve: stopped\n");
    return 0;
  };
}

}  // namespace epwa::cli
