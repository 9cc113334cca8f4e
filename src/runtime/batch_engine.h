// Continuous batching: many sequences generated together over one loaded
// model.
//
// The model (weights, thread pool, scratch) is shared; everything that
// belongs to one request lives in its Sequence: the KV cache, the position,
// the context tokens, the sampler, the logits processor (the watermark) and
// token callback, a cancellation flag, statistics and the finish reason.
// Each Step() is one forward pass over one decode row from every generating
// sequence plus chunks of waiting prompts, up to a per-step row budget
// (batch_tokens), so a long prompt is prefilled across several steps while
// decoders keep producing a token every step. MoE rows are grouped by expert
// across sequences inside the forward (Transformer::ForwardBatch), so each
// expert touched in a step streams its weights once.
//
// Threads: Submit, Cancel, CancelAll, Wake, WaitForWork and the counters may
// be called from any thread (an HTTP server's request threads); Step and
// RunUntilIdle from one loop thread only. Every user callback (logits
// processor, on_token, on_finish) runs on the loop thread, inside Step.
// Engine::Generate is the one-sequence case of this code. The model's
// scratch is shared too, so while a BatchEngine runs, no other thread may use
// the same Engine's Generate or Score (a server routes those through the
// loop thread as well).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/routing.h"
#include "model/transformer.h"
#include "runtime/engine.h"
#include "runtime/sampler.h"

namespace epwa {

using SequenceId = uint64_t;

// Why a sequence ended.
enum class FinishReason {
  kEos,        // it produced an end-of-sequence token
  kLength,     // max_new_tokens reached
  kContext,    // its KV cache (the model's context) is full
  kCallback,   // on_token returned false
  kCancelled,  // Cancel() or CancelAll()
  kError,      // a callback threw, or the model produced non-finite logits
};
// "eos", "length", "context", "callback", "cancelled", "error" (GenerateStats::stop_reason).
const char* FinishReasonName(FinishReason reason);

// What a finished sequence hands to its on_finish callback.
struct SequenceResult {
  SequenceId id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;  // generated ids only (EOS included if produced)
  GenerateStats stats;          // stop_reason is FinishReasonName(finish)
  FinishReason finish = FinishReason::kLength;
  // kError: the exception (Engine::Generate rethrows it) and its message.
  std::exception_ptr error;
  std::string error_message;
  // Milliseconds since Submit on the steady clock: time spent waiting for a
  // free slot, and the moment each generated token was sampled (the first
  // is the time to first token).
  double queued_ms = 0;
  std::vector<double> token_ms;
};

using FinishCallback = std::function<void(SequenceResult&& result)>;

// Per-sequence state, owned by the BatchEngine and touched only by its loop
// thread (apart from `cancel`, which any thread may set).
struct Sequence {
  using Clock = std::chrono::steady_clock;

  Sequence(SequenceId id, std::span<const int32_t> prompt, GenerateOptions options,
           FinishCallback on_finish, int64_t capacity);

  SequenceId id;
  GenerateOptions options;
  FinishCallback on_finish;
  Sampler sampler;
  int64_t prompt_tokens;
  int64_t capacity;                // KV positions: prompt + max_new_tokens, within the context
  std::vector<int32_t> context;    // prompt + generated tokens
  int64_t computed = 0;            // leading tokens of `context` whose keys/values are cached
  std::unique_ptr<KVCache> cache;  // allocated on admission, freed when the sequence finishes
  RoutingTrace trace;              // routing of the rows this sequence fed in its last step
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  SequenceResult result;
  Clock::time_point submitted, admitted, prefill_started, prefill_done;
  bool done = false;  // finished during this step; retired at its end

  bool Prefilling() const { return computed < prompt_tokens; }
  int64_t Generated() const { return static_cast<int64_t>(context.size()) - prompt_tokens; }
};

struct BatchOptions {
  // Sequences running at once; the rest wait in a queue. 0: the --parallel
  // the engine's memory plan was made for (it may not be exceeded).
  int parallel = 0;
  // Rows per forward pass (decode rows first, then prompt chunks). 0: the
  // engine's planned budget (by default its whole context, so a prompt is
  // prefilled in one pass, as a single-sequence run always did).
  int64_t batch_tokens = 0;
};

// Counters of the loop, for benchmarks and a server's metrics.
struct BatchStats {
  int64_t steps = 0;          // forward passes
  int64_t decode_rows = 0;    // rows that fed a sampled token back
  int64_t prefill_rows = 0;   // prompt rows
  int64_t max_rows = 0;       // largest forward pass
  double forward_ms = 0;      // time inside the forward passes
};

class BatchEngine {
 public:
  // Throws epwa::Error when options ask for more sequences or rows than the
  // engine's memory plan covers.
  explicit BatchEngine(Engine& engine, BatchOptions options = {});
  // Drops whatever is still queued or running without calling its callbacks;
  // call CancelAll() and RunUntilIdle() first to have them called.
  ~BatchEngine();
  BatchEngine(const BatchEngine&) = delete;
  BatchEngine& operator=(const BatchEngine&) = delete;

  // Queues a request and returns its id. Validates it first, on the caller's
  // thread, and throws epwa::Error as Engine::Generate does (empty prompt,
  // ids outside the vocabulary, prompt + max_new_tokens beyond the planned
  // context). `on_finish` runs once, on the loop thread, when it ends for any
  // reason; it must not throw.
  SequenceId Submit(std::span<const int32_t> prompt, GenerateOptions options,
                    FinishCallback on_finish = {});
  // Asks a queued or running sequence to stop. It is finished ("cancelled")
  // and its KV cache freed at the start of the next Step, before that step's
  // forward pass. Returns false if the id is unknown or already finished.
  bool Cancel(SequenceId id);
  void CancelAll();

  // Loop thread. One forward pass over every running sequence's next rows;
  // then samples, calls the callbacks and retires finished sequences.
  // Returns false when there was nothing to do (no sequence queued or running).
  bool Step();
  // Loop thread. Steps until nothing is queued or running.
  void RunUntilIdle();
  // Blocks until work is submitted or cancelled, Wake() is called or
  // `timeout` passes; returns whether work is pending. For a loop thread:
  //   while (!stopping) if (!batch.Step()) batch.WaitForWork(100ms);
  bool WaitForWork(std::chrono::milliseconds timeout);
  void Wake();

  // Any thread: sequences submitted and not yet finished (queued or running).
  int64_t pending() const { return pending_.load(); }
  bool Idle() const { return pending() == 0; }
  // Loop thread: sequences running, and the bytes their KV caches hold.
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  uint64_t KvBytesInUse() const;
  const BatchStats& stats() const { return stats_; }
  int parallel() const { return parallel_; }
  int64_t batch_tokens() const { return batch_tokens_; }

 private:
  using Clock = Sequence::Clock;
  void TakeInbox();
  // Samples the next token of `seq` from the logits of its last row.
  void OnLogits(Sequence& seq, std::span<float> logits);
  // Sets the finish reason; the sequence is retired at the end of the step.
  void MarkFinished(Sequence& seq, FinishReason reason, std::exception_ptr error = nullptr);
  // Frees the cache, forgets the id and calls on_finish.
  void Retire(std::unique_ptr<Sequence> seq);

  Engine& engine_;
  Transformer& model_;
  int parallel_;
  int64_t batch_tokens_;

  // Shared with other threads, under mutex_.
  mutable std::mutex mutex_;
  std::condition_variable work_;
  std::vector<std::unique_ptr<Sequence>> inbox_;
  std::unordered_map<SequenceId, std::shared_ptr<std::atomic<bool>>> live_;  // cancel flags
  SequenceId next_id_ = 1;
  bool woken_ = false;
  std::atomic<int64_t> pending_{0};

  // Loop thread only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // in admission order
  std::vector<float> logits_;                       // [logit rows, vocab] of the last step
  BatchStats stats_;
};

// Generates prompts[i] with options[i] for every i: in one BatchEngine when
// the engine's plan holds several sequences (`--parallel`), which shares each
// step's weight reads among them, else one after another with
// Engine::Generate. Batched logits equal single-sequence ones within
// rounding (batch_engine_test's BundledBatch), so a sampled token can differ
// only where two candidates are that close. Each result's stats are its
// sequence's; a batched sequence's decode time is that of the shared steps.
// Throws epwa::Error with the first failed generation's message.
std::vector<GenerateResult> GenerateAll(Engine& engine, std::span<const std::vector<int32_t>> prompts,
                                        std::vector<GenerateOptions> options);

}  // namespace epwa
