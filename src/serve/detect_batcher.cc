#include "serve/detect_batcher.h"

#include <utility>

namespace epwa {

DetectBatcher::DetectBatcher(Engine& engine, std::mutex& model_mutex, const wm::SecretKey& key,
                             std::string router_hash, double gamma, std::atomic<int64_t>* passes)
    : engine_(engine),
      model_mutex_(model_mutex),
      key_(key),
      router_hash_(std::move(router_hash)),
      gamma_(gamma),
      passes_(passes) {}

std::vector<wm::TokenScore> DetectBatcher::Score(wm::DetectInput input, wm::Scheme scheme, int slot) {
  Pending me{std::move(input), scheme, slot, {}, nullptr, false};
  std::unique_lock<std::mutex> lock(mu_);
  waiting_.push_back(&me);
  cv_.notify_all();  // Waiting() observers
  while (!me.done) {
    if (leading_) {
      cv_.wait(lock);
      continue;
    }
    // Lead: take the model first, then everything that queued meanwhile
    // (requests keep arriving while generation or the previous batch holds
    // it), so a busy model batches more. The batch may not contain this
    // request when another scheme is first in line; the loop goes on then.
    leading_ = true;
    lock.unlock();
    std::vector<Pending*> batch;
    {
      std::lock_guard<std::mutex> model(model_mutex_);
      lock.lock();
      const wm::Scheme first = waiting_.front()->scheme;
      const int first_slot = waiting_.front()->slot;
      for (auto it = waiting_.begin(); it != waiting_.end() && batch.size() < kMaxDetectBatch;) {
        if ((*it)->scheme == first && (*it)->slot == first_slot) {
          batch.push_back(*it);
          it = waiting_.erase(it);
        } else {
          ++it;
        }
      }
      lock.unlock();
      RunBatch(batch);
    }
    lock.lock();
    for (Pending* p : batch) p->done = true;
    ++batches_;
    if (passes_ != nullptr) *passes_ += 1;
    inputs_ += static_cast<int64_t>(batch.size());
    leading_ = false;
    cv_.notify_all();
  }
  if (me.error) std::rethrow_exception(me.error);
  return std::move(me.tokens);
}

void DetectBatcher::RunBatch(std::vector<Pending*>& batch) {
  wm::GreenLists* lists_or_null = nullptr;
  try {
    lists_or_null = &ListsFor(batch.front()->scheme);
  } catch (...) {
    for (Pending* p : batch) p->error = std::current_exception();
    return;
  }
  wm::GreenLists& lists = *lists_or_null;
  const int slot = batch.front()->slot;
  std::vector<wm::DetectInput> inputs;
  inputs.reserve(batch.size());
  for (const Pending* p : batch) inputs.push_back(p->input);
  try {
    std::vector<std::vector<wm::TokenScore>> scores = wm::ScoreInputs(engine_, inputs, lists, slot);
    for (size_t i = 0; i < batch.size(); ++i) batch[i]->tokens = std::move(scores[i]);
    return;
  } catch (...) {
    // One bad input fails the whole pass: score them one by one, so each
    // request gets its own result or its own error.
  }
  for (Pending* p : batch) {
    try {
      p->tokens = wm::ScoreInput(engine_, p->input, lists, slot);
    } catch (...) {
      p->error = std::current_exception();
    }
  }
}

wm::GreenLists& DetectBatcher::ListsFor(wm::Scheme scheme) {
  std::unique_ptr<wm::GreenLists>& lists = lists_[scheme];
  if (!lists)
    lists = std::make_unique<wm::GreenLists>(key_, wm::KeyedByOf(scheme), router_hash_,
                                             engine_.config().vocab_size, gamma_);
  return *lists;
}

size_t DetectBatcher::Waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_.size();
}
int64_t DetectBatcher::batches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return batches_;
}
int64_t DetectBatcher::inputs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return inputs_;
}

}  // namespace epwa
