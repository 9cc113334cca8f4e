#include "serve/batch_scheduler.h"

#include "base/error.h"
#include "serve/metrics.h"

namespace epwa::serve {

BatchScheduler::BatchScheduler(Engine& engine, int parallel, int max_queue, Metrics* metrics)
    : engine_(engine),
      parallel_(parallel),
      max_queue_(max_queue),
      metrics_(metrics),
      batch_(engine, BatchOptions{parallel, 0}) {}

BatchScheduler::~BatchScheduler() { Shutdown(0); }

int64_t BatchScheduler::SequenceContext() const {
  return std::min<int64_t>(engine_.load_stats().plan_ctx, engine_.max_context());
}

bool BatchScheduler::Submit(std::shared_ptr<GenerationJob> job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_ || static_cast<int64_t>(live_.size()) >= parallel_ + max_queue_) return false;
  job->submitted = std::chrono::steady_clock::now();
  GenerateOptions o;
  o.max_new_tokens = job->max_new_tokens;
  o.sampler = job->sampler;
  o.stop_token_ids = job->stop_token_ids;
  GenerationJob* raw = job.get();
  o.logits_processor = [raw](std::span<float> logits, const RoutingTrace& routing, std::span<const int32_t> context) {
    raw->OnLogits(logits, routing, context);
  };
  o.on_token = [raw](int32_t token) { return raw->OnToken(token) && !raw->cancel; };
  // The job stays alive in live_ until on_finish has run; on_finish erases it.
  auto on_finish = [this](SequenceResult&& r) {
    std::shared_ptr<GenerationJob> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(r.id);
      if (it == live_.end()) return;
      done = std::move(it->second);
      live_.erase(it);
    }
    std::string reason = FinishReasonName(r.finish);
    if (r.finish == FinishReason::kCallback) reason = done->cancel ? "cancelled" : "stop";
    if (reason == "cancelled") metrics_->Cancelled();
    done->OnFinish(reason, r.error_message);
    cv_.notify_all();
  };
  // Validation (ids, context) throws epwa::Error here, on the handler's thread.
  const SequenceId id = batch_.Submit(job->prompt, std::move(o), std::move(on_finish));
  live_.emplace(id, std::move(job));
  return true;
}

void BatchScheduler::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!thread_.joinable() && !exit_) thread_ = std::thread([this] { Loop(); });
}

void BatchScheduler::Shutdown(int grace_ms) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    accepting_ = false;
    if (thread_.joinable())
      cv_.wait_for(lock, std::chrono::milliseconds(grace_ms), [&] { return live_.empty(); });
  }
  batch_.CancelAll();
  if (!thread_.joinable()) {
    // No loop ever ran: finish what was submitted here, so that every job
    // gets its OnFinish.
    std::lock_guard<std::mutex> model(model_mutex_);
    batch_.RunUntilIdle();
  }
  exit_ = true;
  batch_.Wake();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void BatchScheduler::Loop() {
  // The loop drains cancelled work before it exits, so every handler waiting
  // on a job gets its answer.
  while (!exit_ || !batch_.Idle()) {
    {
      // A job whose client went away is cancelled before the next forward.
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, job] : live_)
        if (job->cancel) batch_.Cancel(id);
    }
    bool progressed = false;
    {
      std::lock_guard<std::mutex> model(model_mutex_);
      progressed = batch_.Step();
    }
    metrics_->active_sequences = batch_.running();
    metrics_->queue_depth = batch_.pending() - batch_.running();
    if (!progressed) batch_.WaitForWork(std::chrono::milliseconds(50));
  }
}

}  // namespace epwa::serve
