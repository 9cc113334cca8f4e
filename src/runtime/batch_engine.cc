#include "runtime/batch_engine.h"

#include <algorithm>

#include "base/error.h"

namespace epwa {
namespace {

double MillisBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos: return "eos";
    case FinishReason::kLength: return "length";
    case FinishReason::kContext: return "context";
    case FinishReason::kCallback: return "callback";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "?";
}

Sequence::Sequence(SequenceId seq_id, std::span<const int32_t> prompt, GenerateOptions opts,
                   FinishCallback finish, int64_t cache_capacity)
    : id(seq_id),
      options(std::move(opts)),
      on_finish(std::move(finish)),
      sampler(options.sampler),
      prompt_tokens(static_cast<int64_t>(prompt.size())),
      capacity(cache_capacity),
      context(prompt.begin(), prompt.end()),
      submitted(Clock::now()) {
  result.id = seq_id;
  result.stats.prompt_tokens = prompt_tokens;
}

BatchEngine::BatchEngine(Engine& engine, BatchOptions options)
    : engine_(engine), model_(*engine.model_) {
  const LoadStats& plan = engine.load_stats();
  parallel_ = options.parallel > 0 ? options.parallel : plan.plan_parallel;
  batch_tokens_ = options.batch_tokens > 0 ? options.batch_tokens : plan.plan_batch_tokens;
  Require(parallel_ <= plan.plan_parallel,
          std::to_string(parallel_) + " sequences at once were asked for, but memory was planned for " +
              std::to_string(plan.plan_parallel) + " (raise it with --parallel " +
              std::to_string(parallel_) + ")");
  Require(batch_tokens_ <= plan.plan_batch_tokens,
          "a batch of " + std::to_string(batch_tokens_) + " tokens per step was asked for, but memory " +
              "was planned for " + std::to_string(plan.plan_batch_tokens) +
              " (raise it with --batch-tokens " + std::to_string(batch_tokens_) + ")");
  Require(batch_tokens_ >= 1, "the batch must hold at least one token per step");
}

BatchEngine::~BatchEngine() = default;

SequenceId BatchEngine::Submit(std::span<const int32_t> prompt, GenerateOptions options,
                               FinishCallback on_finish) {
  // The checks and messages of a single-sequence run, made before anything
  // is queued so that a bad request fails on the thread that sent it.
  engine_.ValidatePrompt(prompt);
  Require(options.max_new_tokens >= 0, "the number of tokens to generate must not be negative");
  const int64_t needed = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  const int64_t capacity = std::min<int64_t>(needed, engine_.max_context());
  const int64_t plan_ctx = engine_.load_stats().plan_ctx;
  Require(capacity <= plan_ctx,
          "the prompt (" + std::to_string(prompt.size()) + " tokens) plus " +
              std::to_string(options.max_new_tokens) + " new tokens needs a context of " +
              std::to_string(capacity) + " tokens, but memory was planned for " +
              std::to_string(plan_ctx) + " (raise it with --ctx " + std::to_string(capacity) + ")");
  // A bad id would otherwise fail the whole batch's forward pass.
  const int64_t vocab = engine_.config().vocab_size;
  for (int32_t id : prompt)
    Require(id >= 0 && id < vocab, "token id " + std::to_string(id) +
                                       " is outside the vocabulary (vocab_size " +
                                       std::to_string(vocab) + ")");
  std::lock_guard<std::mutex> lock(mutex_);
  const SequenceId id = next_id_++;
  auto seq = std::make_unique<Sequence>(id, prompt, std::move(options), std::move(on_finish), capacity);
  live_[id] = seq->cancel;
  inbox_.push_back(std::move(seq));
  pending_.fetch_add(1);
  work_.notify_all();
  return id;
}

bool BatchEngine::Cancel(SequenceId id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = live_.find(id);
  if (it == live_.end()) return false;
  it->second->store(true);
  woken_ = true;
  work_.notify_all();
  return true;
}

void BatchEngine::CancelAll() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [id, flag] : live_) flag->store(true);
  woken_ = true;
  work_.notify_all();
}

void BatchEngine::Wake() {
  std::lock_guard<std::mutex> lock(mutex_);
  woken_ = true;
  work_.notify_all();
}

bool BatchEngine::WaitForWork(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  work_.wait_for(lock, timeout, [&] { return woken_ || !inbox_.empty() || pending_.load() > 0; });
  woken_ = false;
  return pending_.load() > 0;
}

uint64_t BatchEngine::KvBytesInUse() const {
  uint64_t bytes = 0;
  for (const auto& seq : running_)
    if (seq->cache) bytes += seq->cache->Bytes();
  return bytes;
}

void BatchEngine::TakeInbox() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& seq : inbox_) waiting_.push_back(std::move(seq));
  inbox_.clear();
}

void BatchEngine::MarkFinished(Sequence& seq, FinishReason reason, std::exception_ptr error) {
  if (seq.done) return;
  seq.done = true;
  SequenceResult& r = seq.result;
  r.finish = reason;
  r.stats.stop_reason = FinishReasonName(reason);
  if (error) {
    r.error = error;
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      r.error_message = e.what();
    } catch (...) {
      r.error_message = "unknown error";
    }
  }
  // Statistics as a single-sequence run reports them: prefill from its first
  // scheduled chunk to its first logits, decode from there to the end.
  const auto now = Clock::now();
  GenerateStats& st = r.stats;
  st.generated_tokens = seq.Generated();
  if (seq.computed > 0) {
    const bool prefilled = !seq.Prefilling();
    st.prefill_ms = MillisBetween(seq.prefill_started, prefilled ? seq.prefill_done : now);
    st.decode_ms = prefilled ? MillisBetween(seq.prefill_done, now) : 0.0;
  }
  st.prefill_tokens_per_s = st.prefill_ms > 0 ? st.prompt_tokens / std::max(st.prefill_ms / 1e3, 1e-9) : 0.0;
  // Decode speed counts the forward passes that decode ran: one per
  // generated token after the first (the first token's logits came from prefill).
  const int64_t decode_passes = std::max<int64_t>(st.generated_tokens - 1, 0);
  st.decode_tokens_per_s = decode_passes > 0 ? decode_passes / std::max(st.decode_ms / 1e3, 1e-9) : 0.0;
}

void BatchEngine::Retire(std::unique_ptr<Sequence> seq) {
  seq->cache.reset();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    live_.erase(seq->id);
  }
  SequenceResult result = std::move(seq->result);
  result.prompt.assign(seq->context.begin(), seq->context.begin() + seq->prompt_tokens);
  result.tokens.assign(seq->context.begin() + seq->prompt_tokens, seq->context.end());
  FinishCallback on_finish = std::move(seq->on_finish);
  seq.reset();  // the sampler, trace and options go before the callback runs
  if (on_finish) on_finish(std::move(result));
  pending_.fetch_sub(1);
}

void BatchEngine::OnLogits(Sequence& seq, std::span<float> logits) {
  try {
    // Throws epwa::Error naming the damaged tensor for NaN or infinity.
    engine_.CheckLogits(logits, seq.context);
  } catch (...) {
    MarkFinished(seq, FinishReason::kError, std::current_exception());
    return;
  }
  // The order of Engine::Generate's loop: the length limit (which only
  // max_new_tokens == 0 reaches here), the context, then one token.
  if (seq.Generated() >= seq.options.max_new_tokens) {
    MarkFinished(seq, FinishReason::kLength);
    return;
  }
  if (static_cast<int64_t>(seq.context.size()) >= seq.capacity) {
    MarkFinished(seq, FinishReason::kContext);
    return;
  }
  try {
    if (seq.options.logits_processor) seq.options.logits_processor(logits, seq.trace, seq.context);
    const int32_t token = seq.sampler.Sample(logits, seq.context);
    seq.context.push_back(token);
    seq.result.token_ms.push_back(MillisBetween(seq.submitted, Clock::now()));
    const std::vector<int32_t>& eos = engine_.defaults().eos_token_ids;
    const std::vector<int32_t>& stops = seq.options.stop_token_ids;
    const bool is_eos = !seq.options.ignore_eos && (std::find(eos.begin(), eos.end(), token) != eos.end() ||
                                                    std::find(stops.begin(), stops.end(), token) != stops.end());
    if (seq.options.on_token && !seq.options.on_token(token)) {
      MarkFinished(seq, FinishReason::kCallback);
    } else if (is_eos) {
      MarkFinished(seq, FinishReason::kEos);
    } else if (seq.Generated() >= seq.options.max_new_tokens) {
      // No forward pass for a token nobody will sample from.
      MarkFinished(seq, FinishReason::kLength);
    }
  } catch (...) {
    MarkFinished(seq, FinishReason::kError, std::current_exception());
  }
}

bool BatchEngine::Step() {
  TakeInbox();
  bool worked = false;

  // Cancelled sequences go first, so that they cost no further forward pass.
  for (auto& seq : running_)
    if (seq->cancel->load()) MarkFinished(*seq, FinishReason::kCancelled);
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (!(*it)->cancel->load()) {
      ++it;
      continue;
    }
    std::unique_ptr<Sequence> seq = std::move(*it);
    it = waiting_.erase(it);
    MarkFinished(*seq, FinishReason::kCancelled);
    Retire(std::move(seq));
    worked = true;
  }
  auto retire_done = [&] {
    for (size_t i = 0; i < running_.size();) {
      if (!running_[i]->done) {
        ++i;
        continue;
      }
      std::unique_ptr<Sequence> seq = std::move(running_[i]);
      running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
      Retire(std::move(seq));
      worked = true;
    }
  };
  retire_done();

  // Admission: first come, first served, up to `parallel` at once. The cache
  // is sized to the sequence's own prompt + max_new_tokens (within the plan).
  while (static_cast<int>(running_.size()) < parallel_ && !waiting_.empty()) {
    std::unique_ptr<Sequence> seq = std::move(waiting_.front());
    waiting_.pop_front();
    seq->admitted = Clock::now();
    seq->result.queued_ms = MillisBetween(seq->submitted, seq->admitted);
    try {
      seq->cache = std::make_unique<KVCache>(engine_.config(), seq->capacity, engine_.kv_cache_dtype());
    } catch (...) {
      MarkFinished(*seq, FinishReason::kError, std::current_exception());
      Retire(std::move(seq));
      worked = true;
      continue;
    }
    running_.push_back(std::move(seq));
  }
  if (running_.empty()) return worked;

  // The rows of this step: one decode row from every generating sequence,
  // then prompt chunks (oldest first) while the row budget lasts. Decoders
  // always go in, so they advance every step whatever the prompts.
  std::vector<BatchSegment> segments;
  std::vector<Sequence*> owners;
  int64_t rows = 0, decode_rows = 0;
  const auto now = Clock::now();
  for (auto& seq : running_) {
    if (seq->Prefilling()) continue;
    BatchSegment s;
    s.tokens = std::span<const int32_t>(seq->context).subspan(static_cast<size_t>(seq->computed), 1);
    s.start_pos = seq->computed;
    s.cache = seq->cache.get();
    s.logits = LogitRows::kLast;
    s.trace = &seq->trace;
    segments.push_back(s);
    owners.push_back(seq.get());
    ++rows;
    ++decode_rows;
  }
  for (auto& seq : running_) {
    if (!seq->Prefilling() || rows >= batch_tokens_) continue;
    const int64_t take = std::min(seq->prompt_tokens - seq->computed, batch_tokens_ - rows);
    const bool last_chunk = seq->computed + take == seq->prompt_tokens;
    if (seq->computed == 0) seq->prefill_started = now;
    BatchSegment s;
    s.tokens = std::span<const int32_t>(seq->context).subspan(static_cast<size_t>(seq->computed),
                                                             static_cast<size_t>(take));
    s.start_pos = seq->computed;
    s.cache = seq->cache.get();
    // Only the chunk that completes the prompt predicts a token; the routing
    // handed to the logits processor is that chunk's.
    s.logits = last_chunk ? LogitRows::kLast : LogitRows::kNone;
    s.trace = last_chunk ? &seq->trace : nullptr;
    segments.push_back(s);
    owners.push_back(seq.get());
    rows += take;
  }

  Clock::time_point start = Clock::now();
  try {
    model_.ForwardBatch(segments, &logits_);
  } catch (...) {
    // Inputs are validated at Submit, so this is an allocation failure or an
    // internal error: every sequence of the batch ends with it.
    for (Sequence* seq : owners) MarkFinished(*seq, FinishReason::kError, std::current_exception());
    retire_done();
    return true;
  }
  const auto forward_done = Clock::now();
  ++stats_.steps;
  stats_.decode_rows += decode_rows;
  stats_.prefill_rows += rows - decode_rows;
  stats_.max_rows = std::max(stats_.max_rows, rows);
  stats_.forward_ms += MillisBetween(start, forward_done);

  const int64_t V = engine_.config().vocab_size;
  int64_t logit_row = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    Sequence& seq = *owners[i];
    const bool was_prefilling = seq.Prefilling();
    seq.computed += static_cast<int64_t>(segments[i].tokens.size());
    if (LogitRowCount(segments[i]) == 0) continue;
    if (was_prefilling) seq.prefill_done = forward_done;
    OnLogits(seq, std::span<float>(logits_.data() + logit_row * V, static_cast<size_t>(V)));
    ++logit_row;
    // A prompt's routing trace ([prompt rows, MoE layers, experts]) has done
    // its job; decode steps need one row.
    if (seq.trace.num_tokens() > 1) seq.trace = RoutingTrace();
  }
  retire_done();
  return true;
}

void BatchEngine::RunUntilIdle() {
  while (!Idle()) Step();
}

std::vector<GenerateResult> GenerateAll(Engine& engine, std::span<const std::vector<int32_t>> prompts,
                                        std::vector<GenerateOptions> options) {
  Require(options.size() == prompts.size(), "GenerateAll needs one set of options per prompt");
  std::vector<GenerateResult> out(prompts.size());
  if (engine.load_stats().plan_parallel <= 1) {
    for (size_t i = 0; i < prompts.size(); ++i) out[i] = engine.Generate(prompts[i], options[i]);
    return out;
  }
  BatchEngine batch(engine);
  std::vector<std::string> errors(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    batch.Submit(prompts[i], std::move(options[i]), [&out, &errors, i](SequenceResult&& r) {
      if (r.finish == FinishReason::kError) errors[i] = r.error_message.empty() ? "generation failed" : r.error_message;
      out[i].tokens = std::move(r.tokens);
      out[i].stats = std::move(r.stats);
    });
  batch.RunUntilIdle();
  for (const std::string& e : errors) Require(e.empty(), e);
  return out;
}

}  // namespace epwa
