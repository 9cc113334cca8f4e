// Batching of the detection endpoint's forward passes.
//
// POST /v1/watermark/detect needs one forward pass per text (up to the
// router its scheme reads). Requests that arrive while the model is busy
// (with generation or another detection) wait here; whichever of them gets
// the model next takes every waiting input of its scheme (up to
// kMaxDetectBatch) into one batched pass (wm::ScoreInputs), so concurrent
// detections cost one pass instead of one each, and no request waits for a
// timer. Scores are exactly those of each input scored alone.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "watermark/green_list.h"
#include "watermark/key.h"
#include "watermark/pipeline.h"

namespace epwa {

// Inputs one batched pass takes at most.
inline constexpr size_t kMaxDetectBatch = 64;

class DetectBatcher {
 public:
  // `model_mutex` guards `engine` (the scheduler's); `key`, `router_hash`
  // and `gamma` make every scheme's green lists. `passes`, when given, counts
  // the batched passes run (a metrics counter).
  DetectBatcher(Engine& engine, std::mutex& model_mutex, const wm::SecretKey& key, std::string router_hash,
                double gamma, std::atomic<int64_t>* passes = nullptr);

  // The scores of `input` under `scheme` at router slot `slot`
  // (wm::ScoreInput's); blocks until its batch has run. Throws what scoring
  // it alone would throw.
  std::vector<wm::TokenScore> Score(wm::DetectInput input, wm::Scheme scheme, int slot);

  // Requests waiting now (tests), and totals: passes run and inputs scored.
  size_t Waiting() const;
  int64_t batches() const;
  int64_t inputs() const;

 private:
  struct Pending {
    wm::DetectInput input;
    wm::Scheme scheme;
    int slot;
    std::vector<wm::TokenScore> tokens;
    std::exception_ptr error;
    bool done = false;
  };
  void RunBatch(std::vector<Pending*>& batch);  // under model_mutex_
  wm::GreenLists& ListsFor(wm::Scheme scheme);   // under model_mutex_

  Engine& engine_;
  std::mutex& model_mutex_;
  const wm::SecretKey& key_;
  const std::string router_hash_;
  const double gamma_;
  std::atomic<int64_t>* passes_;
  // Green lists by scheme, built on first use and reused (their caches
  // persist); touched only under model_mutex_.
  std::map<wm::Scheme, std::unique_ptr<wm::GreenLists>> lists_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending*> waiting_;
  bool leading_ = false;  // a request is taking the model to run a batch
  int64_t batches_ = 0, inputs_ = 0;
};

}  // namespace epwa
