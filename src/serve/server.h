// `epwa serve`: an OpenAI-compatible HTTP server over one loaded model.
//
// Threads: cpp-httplib's pool runs the request handlers; one scheduler thread
// owns the model and runs the batch engine's steps, so the forward pass
// never runs on two threads at once. A handler turns its request into a job
// (prompt ids, sampling, the operator's watermark), submits it and then waits
// on the job's channel for tokens, which the scheduler's callbacks fill in.
// Detection and tokenization take the model lock between steps.
//
// Watermark policy: when the operator gives a key, every completion is
// watermarked with the operator's scheme; a request's `"watermark": false`
// is honoured only if the operator started the server with
// --allow-watermark-opt-out, and refused with 403 otherwise, so that no
// client can obtain unmarked text from a marking deployment.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "serve/openai_api.h"
#include "watermark/key.h"
#include "watermark/processor.h"

namespace epwa::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see Server::port())
  int parallel = 4;            // sequences generated at once
  int max_queue = 64;          // waiting requests beyond `parallel` before 429
  int http_threads = 0;        // 0: parallel + max_queue, at most 256
  size_t max_body_bytes = 1 << 20;
  int read_timeout_s = 30;
  int write_timeout_s = 30;
  std::vector<std::string> api_keys;  // empty: no authentication
  std::string model_id;               // the name /v1/models reports
  RequestLimits limits;
  // The operator's watermark; absent: completions are not watermarked.
  std::optional<wm::WatermarkParams> watermark;
  std::optional<wm::SecretKey> key;   // needed for watermarking and detection
  bool allow_watermark_opt_out = false;
  std::string oracle_path;            // PEPI oracle for detection from logprobs
  bool quiet = false;                 // no request log on stderr
};

class Server {
 public:
  // Takes the engine; throws epwa::Error for inconsistent options (a
  // watermark without a key, an ewp/gsg watermark on a dense model, a port
  // that cannot be bound).
  Server(std::unique_ptr<Engine> engine, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port (useful with port 0).
  int port() const;
  // Serves until Stop() is called (from a signal handler thread or another
  // thread). Returns after in-flight requests were drained or cancelled.
  void Run();
  // Stops accepting, cancels generation still running after `grace_ms`, and
  // makes Run() return. Safe to call from any thread, more than once.
  void Stop(int grace_ms = 5000);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Constant-time comparison of a presented key with a configured one: the
// time taken does not depend on where the two first differ.
bool KeysEqual(const std::string& presented, const std::string& expected);

// Reads API keys from a file: one per line, blank lines and lines starting
// with '#' ignored. Throws epwa::Error for an unreadable file, a file with
// no key, or keys with whitespace or control characters inside.
std::vector<std::string> ReadApiKeys(const std::string& path);

}  // namespace epwa::serve
