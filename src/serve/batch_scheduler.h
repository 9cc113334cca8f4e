// The server's scheduler: one thread owns the model and runs the batch
// engine's steps (runtime/batch_engine.h), so every admitted generation
// advances by one token per step in a shared forward pass; HTTP handlers
// submit jobs and read their results through the job's own callbacks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <unordered_map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "model/routing.h"
#include "runtime/batch_engine.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace epwa::serve {

class Metrics;

// One generation request as the scheduler sees it. The callbacks run on the
// scheduler thread, in order: OnLogits then OnToken for every generated
// token, and OnFinish exactly once (also for a job cancelled while queued).
struct GenerationJob {
  virtual ~GenerationJob() = default;
  std::vector<int32_t> prompt;
  SamplerParams sampler;
  int32_t max_new_tokens = 16;
  // Tokens that end the job like an EOS (a chat template's end of turn).
  std::vector<int32_t> stop_token_ids;
  // Set from any thread; the scheduler stops the job within one step.
  std::atomic<bool> cancel{false};
  std::chrono::steady_clock::time_point submitted;

  // Before sampling: the next-token logits ([vocab], modifiable) and the
  // routing of the step that produced them.
  virtual void OnLogits(std::span<float> logits, const RoutingTrace& routing, std::span<const int32_t> context) = 0;
  // After sampling; false stops the job.
  virtual bool OnToken(int32_t token) = 0;
  // reason: "eos", "length", "context", "stop" (OnToken returned false),
  // "cancelled" or "error"; error: empty unless the model failed.
  virtual void OnFinish(const std::string& reason, const std::string& error) = 0;
};

class BatchScheduler {
 public:
  BatchScheduler(Engine& engine, int parallel, int max_queue, Metrics* metrics);
  ~BatchScheduler();

  // Thread-safe. False when `parallel` jobs run and `max_queue` wait already.
  bool Submit(std::shared_ptr<GenerationJob> job);
  // Context (prompt + generated tokens) one sequence may use.
  int64_t SequenceContext() const;
  // Held by the scheduler while the model runs a step; detection and other
  // one-off forward passes take it between steps.
  std::mutex& ModelMutex() { return model_mutex_; }

  void Start();
  // Refuses new jobs, lets running and queued ones finish for up to
  // `grace_ms`, cancels the rest and joins the thread. Idempotent.
  void Shutdown(int grace_ms);

 private:
  void Loop();

  Engine& engine_;
  const int parallel_;
  const int max_queue_;
  Metrics* metrics_;
  std::mutex model_mutex_;

  BatchEngine batch_;

  std::mutex mu_;
  std::condition_variable cv_;
  // Jobs submitted and not yet finished, by sequence id: the loop turns a
  // job's cancel flag into BatchEngine::Cancel.
  std::unordered_map<SequenceId, std::shared_ptr<GenerationJob>> live_;
  bool accepting_ = true;
  std::atomic<bool> exit_{false};
  std::thread thread_;
};

}  // namespace epwa::serve
