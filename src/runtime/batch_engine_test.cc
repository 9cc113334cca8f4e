// Continuous batching: batched rows against the same rows alone (logits,
// tokens, experts), chunked prefill against whole prefill, and the life of a
// sequence in the loop (queueing, cancellation, EOS, the context limit,
// threads).
#include "kernels/kernels.h"
#include "runtime/batch_engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <thread>

#include "base/error.h"
#include "io/test_temp_dir.h"
#include "plan/materialize.h"
#include "plan/memory_plan.h"
#include "runtime/batch_divergence.h"
#include "synth/synth.h"

namespace epwa {
namespace {

// Relative tolerance on logits, per step: max |batched - alone| over the
// vocabulary divided by max(1, max |alone|).
constexpr double kRelTolerance = 1e-4;


std::unique_ptr<Engine> LoadBundled(const std::string& name, int parallel, int64_t batch_tokens = 0,
                                    int64_t ctx = 0) {
  LoadOptions o("models/" + name, 2);
  o.parallel = parallel;
  o.batch_tokens = batch_tokens;
  o.plan_ctx = ctx;
  o.use_cache = false;
  return Engine::Load(o);
}

// Prompts of different lengths and kinds of text.
std::vector<std::vector<int32_t>> Prompts(const Engine& engine) {
  const char* texts[] = {
      "Once upon a time",
      "The clock in the square",
      "Python is a programming language that lets you work quickly and integrate systems",
      "To install a package, run",
      "A",
      "The Debian Reference is intended to provide a broad overview of system administration",
      "In the beginning",
      "Error: the file could not be opened because",
      "import os\nimport sys\n\ndef main():",
      "She opened the door and saw",
      "The following packages will be upgraded:",
      "Why is the sky blue? Because",
  };
  std::vector<std::vector<int32_t>> out;
  for (const char* t : texts) out.push_back(engine.EncodePrompt(t));
  return out;
}

GenerateOptions Greedy(int32_t n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampler.temperature = 0.0f;
  o.ignore_eos = true;
  return o;
}

void PrintReport(const std::string& what, const DivergenceReport& d) {
  std::string firsts;
  for (int64_t f : d.first_token_divergence) firsts += std::to_string(f) + " ";
  std::printf("%s: %lld/%lld sequences with other tokens (first divergence per sequence: %s), "
              "%lld/%lld expert choices differ, max |dlogit| %.3g (relative %.3g)\n",
              what.c_str(), (long long)d.token_diverged, (long long)d.sequences, firsts.c_str(),
              (long long)d.expert_choices_differ, (long long)d.expert_choices_compared,
              d.max_abs_logit_diff, d.max_rel_logit_diff);
  for (double m : d.flip_margins) std::printf("  flip at a top-2 logit margin of %.3g\n", m);
}

// Both bundled models: every prompt alone, then all together (one decode row
// each per step, expert rows gathered across sequences).
class BundledBatch : public ::testing::TestWithParam<const char*> {};

TEST_P(BundledBatch, BatchedLogitsMatchSingleSequenceLogits) {
  // 4 together keeps every matrix product on the kernels' decode path (at
  // most 8 rows); 12 moves the dense ones onto the packed GEMM.
  auto engine = LoadBundled(GetParam(), 12);
  const auto prompts = Prompts(*engine);
  const GenerateOptions o = Greedy(24);
  const auto alone = RecordGeneration(*engine, prompts, o, BatchOptions{.parallel = 1});
  for (int parallel : {4, 12}) {
    const auto together = RecordGeneration(*engine, prompts, o, BatchOptions{.parallel = parallel});
    const DivergenceReport d = CompareGenerations(alone, together);
    PrintReport(std::string(GetParam()) + ", " + std::to_string(parallel) + " together", d);
    EXPECT_LE(d.max_rel_logit_diff, kRelTolerance) << parallel;
    // Greedy tokens and expert choices are identical on these prompts: no
    // decision of either model is within the rounding of a batched pass.
    EXPECT_EQ(d.token_diverged, 0) << parallel;
    EXPECT_EQ(d.expert_choices_differ, 0) << parallel;
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(together[i].tokens.size(), 24u);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, BundledBatch, ::testing::Values("tiny-moe", "tiny-qwen3-moe"));

// ScoreBatch packs texts into shared forward passes, and each text's logits
// and routing are bit-identical to scoring it alone: its matrix products are
// row-invariant, so an expert's share of rows in the batch changes nothing.
// A small row budget forces several passes and a text scored on its own.
TEST(ScoreBatch, EachTextMatchesScoreAloneBitForBit) {
  for (const char* name : {"tiny-moe", "tiny-qwen3-moe"}) {
    for (int64_t budget : {0, 40}) {
      auto engine = LoadBundled(name, 1, budget);
      std::vector<std::vector<int32_t>> texts = Prompts(*engine);
      std::vector<int32_t> longer;
      for (const auto& t : texts) longer.insert(longer.end(), t.begin(), t.end());
      texts.push_back(longer);  // longer than a budget of 40 rows
      const std::vector<ScoreResult> batch = engine->ScoreBatch(texts);
      const std::vector<ScoreResult> routing_only = engine->ScoreBatch(texts, /*logits=*/false);
      ASSERT_EQ(batch.size(), texts.size());
      for (size_t i = 0; i < texts.size(); ++i) {
        const ScoreResult alone = engine->Score(texts[i]);
        const std::string what = std::string(name) + " budget " + std::to_string(budget) + " text " + std::to_string(i);
        EXPECT_EQ(batch[i].ids, texts[i]) << what;
        EXPECT_EQ(batch[i].logits, alone.logits) << what;
        EXPECT_TRUE(routing_only[i].logits.empty()) << what;
        ASSERT_EQ(batch[i].routing.num_tokens(), alone.routing.num_tokens()) << what;
        for (int64_t t = 0; t < alone.routing.num_tokens(); ++t)
          for (int64_t m = 0; m < alone.routing.num_moe_layers(); ++m) {
            for (const ScoreResult* r : {&batch[i], &routing_only[i]}) {
              EXPECT_TRUE(std::ranges::equal(r->routing.Experts(t, m), alone.routing.Experts(t, m))) << what;
              EXPECT_TRUE(std::ranges::equal(r->routing.Logits(t, m), alone.routing.Logits(t, m))) << what;
            }
          }
      }
      EXPECT_THROW(engine->ScoreBatch(std::vector<std::vector<int32_t>>{{}}), Error);
    }
  }
}

// A routing-only pass that stops at one MoE layer (detection reads one
// router) gives that layer and every earlier one exactly the whole pass's
// routing, and leaves the later ones empty; asking for logits runs the
// whole pass whatever the slot.
TEST(ScoreBatch, RoutingThroughASlotIsTheWholePassUpToIt) {
  for (const char* name : {"tiny-moe", "tiny-qwen3-moe"}) {
    for (int64_t budget : {0, 40}) {
      auto engine = LoadBundled(name, 2, budget);
      std::vector<std::vector<int32_t>> texts = Prompts(*engine);
      std::vector<int32_t> longer;
      for (const auto& t : texts) longer.insert(longer.end(), t.begin(), t.end());
      texts.push_back(longer);  // longer than a budget of 40 rows: scored whole
      const int64_t layers = engine->config().NumMoeLayers();
      ASSERT_GE(layers, 2) << name;
      std::vector<ScoreResult> alone;
      for (const auto& t : texts) alone.push_back(engine->Score(t));
      for (int64_t slot = 0; slot < layers; ++slot) {
        const std::vector<ScoreResult> partial = engine->ScoreBatch(texts, /*logits=*/false, slot);
        const std::vector<ScoreResult> whole = engine->ScoreBatch(texts, /*logits=*/true, slot);
        for (size_t i = 0; i < texts.size(); ++i) {
          const std::string what = std::string(name) + " budget " + std::to_string(budget) + " slot " +
                                   std::to_string(slot) + " text " + std::to_string(i);
          EXPECT_TRUE(partial[i].logits.empty()) << what;
          EXPECT_EQ(whole[i].logits, alone[i].logits) << what;
          const bool stopped = budget == 0 || i + 1 < texts.size();
          for (int64_t t = 0; t < alone[i].routing.num_tokens(); ++t)
            for (int64_t m = 0; m < layers; ++m) {
              EXPECT_TRUE(std::ranges::equal(whole[i].routing.Experts(t, m), alone[i].routing.Experts(t, m))) << what;
              if (m <= slot || !stopped) {
                EXPECT_TRUE(std::ranges::equal(partial[i].routing.Experts(t, m), alone[i].routing.Experts(t, m)))
                    << what << " layer " << m;
                EXPECT_TRUE(std::ranges::equal(partial[i].routing.Logits(t, m), alone[i].routing.Logits(t, m)))
                    << what << " layer " << m;
              } else {
                for (int32_t e : partial[i].routing.Experts(t, m)) EXPECT_EQ(e, -1) << what << " layer " << m;
                for (float v : partial[i].routing.Logits(t, m)) EXPECT_EQ(v, 0.f) << what << " layer " << m;
              }
            }
        }
      }
      EXPECT_THROW(engine->ScoreBatch(texts, /*logits=*/false, layers), Error);
    }
  }
}

TEST(BatchEngine, GenerateIsTheOneSequenceCase) {
  // Engine::Generate and a one-sequence batch give the same tokens and stats
  // shape at a sampling temperature (the sampler's PRNG is per sequence).
  auto engine = LoadBundled("tiny-moe", 4);
  const auto prompts = Prompts(*engine);
  GenerateOptions o;
  o.max_new_tokens = 20;
  o.sampler.seed = 11;
  std::vector<std::vector<int32_t>> generated;
  for (const auto& p : prompts) generated.push_back(engine->Generate(p, o).tokens);
  // The same prompts four at a time, with the same seed each.
  BatchEngine batch(*engine);
  std::vector<SequenceResult> results(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    batch.Submit(prompts[i], o, [&results, i](SequenceResult&& r) { results[i] = std::move(r); });
  batch.RunUntilIdle();
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(results[i].tokens, generated[i]) << "prompt " << i;
    EXPECT_EQ(results[i].prompt, prompts[i]);
    EXPECT_EQ(results[i].token_ms.size(), results[i].tokens.size());
  }
  EXPECT_EQ(batch.KvBytesInUse(), 0u);
  EXPECT_EQ(batch.running(), 0);
}

TEST(BatchEngine, StopTokensEndASequenceLikeEos) {
  // A chat's end-of-turn token is a stop token of its own: the sequence ends
  // right after it with reason "eos", and ignore_eos overrides it as it
  // overrides the model's EOS.
  auto engine = LoadBundled("tiny-moe", 1);
  const auto prompts = Prompts(*engine);
  GenerateOptions o;
  o.max_new_tokens = 12;
  o.ignore_eos = true;
  o.sampler.temperature = 0;
  const std::vector<int32_t> free_run = engine->Generate(prompts[0], o).tokens;
  ASSERT_EQ(free_run.size(), 12u);
  const int32_t stop = free_run[5];
  const size_t first = std::find(free_run.begin(), free_run.end(), stop) - free_run.begin();
  o.ignore_eos = false;
  o.stop_token_ids = {stop};
  const GenerateResult stopped = engine->Generate(prompts[0], o);
  EXPECT_EQ(stopped.stats.stop_reason, "eos");
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
  o.ignore_eos = true;
  EXPECT_EQ(engine->Generate(prompts[0], o).tokens, free_run);
}

TEST(BatchEngine, ChunkedPrefillMatchesWholePrefill) {
  auto engine = LoadBundled("tiny-moe", 2, /*batch_tokens=*/0, /*ctx=*/256);
  std::vector<int32_t> prompt = engine->EncodePrompt(
      "The Debian Reference is intended to provide a broad overview of system administration "
      "through shell-command examples for non-developers. Python is a programming language that "
      "lets you work quickly and integrate systems more effectively. Once upon a time there was a "
      "clock in the square that never told the right time.");
  ASSERT_GT(prompt.size(), 40u);
  const GenerateOptions o = Greedy(16);
  const auto whole = RecordGeneration(*engine, {prompt}, o, BatchOptions{.parallel = 1});
  for (int64_t chunk : {1, 7, 16}) {
    const auto chunked =
        RecordGeneration(*engine, {prompt}, o, BatchOptions{.parallel = 1, .batch_tokens = chunk});
    const DivergenceReport d = CompareGenerations(whole, chunked);
    EXPECT_LE(d.max_rel_logit_diff, kRelTolerance) << "chunks of " << chunk;
    EXPECT_EQ(d.token_diverged, 0) << "chunks of " << chunk;
    EXPECT_EQ(d.expert_choices_differ, 0) << "chunks of " << chunk;
  }
}

TEST(BatchEngine, LongPromptDoesNotStallDecoders) {
  // With a budget of 8 rows a step, a 60-token prompt arriving while another
  // sequence decodes is prefilled in chunks beside its decode row.
  auto engine = LoadBundled("tiny-moe", 2, /*batch_tokens=*/8, /*ctx=*/128);
  BatchEngine batch(*engine);
  std::vector<int32_t> long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt.push_back(100 + i);
  SequenceResult a, b;
  const std::vector<int32_t> short_prompt = engine->EncodePrompt("Once upon a time");
  batch.Submit(short_prompt, Greedy(30), [&](SequenceResult&& r) { a = std::move(r); });
  batch.Step();  // a's prompt
  batch.Submit(long_prompt, Greedy(4), [&](SequenceResult&& r) { b = std::move(r); });
  // 60 prompt rows at 7 per step beside a's decode row: 9 steps, each of
  // which also gives a a token.
  for (int s = 0; s < 9; ++s) {
    const int64_t decoded = batch.stats().decode_rows;
    batch.Step();
    EXPECT_EQ(batch.stats().decode_rows, decoded + 1) << "step " << s;
  }
  // a's prompt, then all of b's.
  EXPECT_EQ(batch.stats().prefill_rows, static_cast<int64_t>(short_prompt.size()) + 60);
  EXPECT_EQ(batch.stats().max_rows, 8);
  batch.RunUntilIdle();
  EXPECT_EQ(a.tokens.size(), 30u);
  EXPECT_EQ(b.tokens.size(), 4u);
  EXPECT_EQ(b.stats.stop_reason, "length");
}

TEST(BatchEngine, CancelFreesTheSequenceWithinOneStep) {
  auto engine = LoadBundled("tiny-moe", 3);
  BatchEngine batch(*engine);
  const auto prompts = Prompts(*engine);
  std::vector<SequenceResult> results(3);
  std::vector<int> finished_calls(3, 0);
  std::vector<SequenceId> ids;
  for (int i = 0; i < 3; ++i)
    ids.push_back(batch.Submit(prompts[i], Greedy(50), [&, i](SequenceResult&& r) {
      results[i] = std::move(r);
      ++finished_calls[i];
    }));
  for (int s = 0; s < 5; ++s) batch.Step();
  ASSERT_EQ(batch.running(), 3);
  const uint64_t kv_before = batch.KvBytesInUse();
  const size_t tokens_at_cancel = 5;  // one per step
  ASSERT_TRUE(batch.Cancel(ids[1]));
  batch.Step();
  EXPECT_EQ(finished_calls[1], 1);
  EXPECT_EQ(results[1].stats.stop_reason, "cancelled");
  EXPECT_EQ(results[1].finish, FinishReason::kCancelled);
  EXPECT_EQ(results[1].tokens.size(), tokens_at_cancel);  // no forward pass after the cancel
  EXPECT_EQ(batch.running(), 2);
  EXPECT_LT(batch.KvBytesInUse(), kv_before);
  EXPECT_FALSE(batch.Cancel(ids[1]));  // already gone
  // Cancelling from a token callback (the loop thread) works the same way.
  batch.CancelAll();
  batch.Step();
  EXPECT_TRUE(batch.Idle());
  EXPECT_EQ(batch.KvBytesInUse(), 0u);
  EXPECT_EQ(results[0].stats.stop_reason, "cancelled");
  EXPECT_EQ(results[2].stats.stop_reason, "cancelled");
  EXPECT_EQ(finished_calls, (std::vector<int>{1, 1, 1}));
}

TEST(BatchEngine, QueuedSequencesDifferentLengthsAndEos) {
  // Seven sequences through three slots: different prompt lengths and
  // max_new_tokens, one forced to EOS at its fourth token, one stopped by
  // its callback; every other one equals its run alone.
  auto engine = LoadBundled("tiny-moe", 3);
  const auto prompts = Prompts(*engine);
  const int32_t eos = engine->defaults().eos_token_ids.at(0);
  const std::vector<int32_t> lengths = {5, 17, 0, 9, 12, 3, 21};
  auto options_for = [&](size_t i) {
    GenerateOptions o = Greedy(lengths[i]);
    o.ignore_eos = false;
    o.sampler.repeat_penalty = 1.0f;
    if (i == 3) {
      auto step = std::make_shared<int>(0);
      o.logits_processor = [step, eos](std::span<float> logits, const RoutingTrace&, std::span<const int32_t>) {
        if (++*step == 4) logits[static_cast<size_t>(eos)] = 1e9f;
      };
    }
    if (i == 4) {
      auto count = std::make_shared<int>(0);
      o.on_token = [count](int32_t) { return ++*count < 6; };
    }
    return o;
  };
  BatchEngine batch(*engine);
  std::vector<SequenceResult> results(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i)
    batch.Submit(prompts[i % prompts.size()], options_for(i),
                 [&results, i](SequenceResult&& r) { results[i] = std::move(r); });
  int64_t max_running = 0;
  while (!batch.Idle()) {
    batch.Step();
    max_running = std::max(max_running, batch.running());
  }
  EXPECT_LE(max_running, 3);
  for (size_t i = 0; i < lengths.size(); ++i) {
    const GenerateResult alone = engine->Generate(prompts[i % prompts.size()], options_for(i));
    EXPECT_EQ(results[i].tokens, alone.tokens) << "sequence " << i;
    EXPECT_EQ(results[i].stats.stop_reason, alone.stats.stop_reason) << "sequence " << i;
  }
  EXPECT_EQ(results[2].tokens.size(), 0u);
  EXPECT_EQ(results[2].stats.stop_reason, "length");
  EXPECT_EQ(results[3].stats.stop_reason, "eos");
  EXPECT_EQ(results[3].tokens.size(), 4u);
  EXPECT_EQ(results[3].tokens.back(), eos);
  EXPECT_EQ(results[4].stats.stop_reason, "callback");
  EXPECT_EQ(results[4].tokens.size(), 6u);
  EXPECT_EQ(results[6].stats.stop_reason, "length");
  EXPECT_EQ(results[6].tokens.size(), 21u);
}

TEST(BatchEngine, SequenceAtTheContextLimit) {
  // A prompt 3 tokens short of the model's context (512) with 10 tokens
  // asked for stops after 3 with "context", as Engine::Generate does, while
  // the sequence beside it goes on.
  auto engine = LoadBundled("tiny-moe", 2, 0, /*ctx=*/512);
  ASSERT_EQ(engine->max_context(), 512);
  std::vector<int32_t> full;
  for (int i = 0; i < 509; ++i) full.push_back(100 + (i * 37) % 3000);
  BatchEngine batch(*engine);
  SequenceResult a, b;
  batch.Submit(full, Greedy(10), [&](SequenceResult&& r) { a = std::move(r); });
  batch.Submit(engine->EncodePrompt("Once upon a time"), Greedy(12), [&](SequenceResult&& r) { b = std::move(r); });
  batch.RunUntilIdle();
  EXPECT_EQ(a.stats.stop_reason, "context");
  EXPECT_EQ(a.tokens.size(), 3u);
  EXPECT_EQ(a.tokens, engine->Generate(full, Greedy(10)).tokens);
  EXPECT_EQ(b.stats.stop_reason, "length");
  EXPECT_EQ(b.tokens.size(), 12u);
  // Past the planned context the request is refused at Submit, on the
  // caller's thread, with the single-sequence message.
  auto small = LoadBundled("tiny-moe", 1, 0, /*ctx=*/64);
  BatchEngine refusing(*small);
  try {
    refusing.Submit(small->EncodePrompt("Once upon a time"), Greedy(100));
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("raise it with --ctx"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(refusing.Idle());
}

TEST(BatchEngine, RefusesMoreThanThePlan) {
  auto engine = LoadBundled("tiny-moe", 2, /*batch_tokens=*/32, /*ctx=*/64);
  EXPECT_THROW(BatchEngine(*engine, BatchOptions{.parallel = 3}), Error);
  EXPECT_THROW(BatchEngine(*engine, BatchOptions{.batch_tokens = 33}), Error);
  BatchEngine ok(*engine, BatchOptions{.parallel = 2, .batch_tokens = 16});
  EXPECT_EQ(ok.parallel(), 2);
  EXPECT_EQ(ok.batch_tokens(), 16);
  // Bad ids are refused at Submit, not in the middle of a shared forward pass.
  EXPECT_THROW(ok.Submit(std::vector<int32_t>{1, 999999}, Greedy(2)), Error);
  EXPECT_THROW(ok.Submit(std::vector<int32_t>{}, Greedy(2)), Error);
  EXPECT_TRUE(ok.Idle());
}

TEST(BatchEngine, ErrorsStayWithTheirSequence) {
  // A logits processor that throws ends its own sequence ("error", with the
  // exception kept for Generate to rethrow); the others finish normally.
  auto engine = LoadBundled("tiny-moe", 3);
  const auto prompts = Prompts(*engine);
  BatchEngine batch(*engine);
  std::vector<SequenceResult> results(3);
  for (int i = 0; i < 3; ++i) {
    GenerateOptions o = Greedy(8);
    if (i == 1)
      o.logits_processor = [](std::span<float>, const RoutingTrace&, std::span<const int32_t> context) {
        if (context.size() > 6) throw Error("processor failed");
      };
    batch.Submit(prompts[i], o, [&results, i](SequenceResult&& r) { results[i] = std::move(r); });
  }
  batch.RunUntilIdle();
  EXPECT_EQ(results[0].stats.stop_reason, "length");
  EXPECT_EQ(results[1].stats.stop_reason, "error");
  EXPECT_EQ(results[1].error_message, "processor failed");
  EXPECT_TRUE(results[1].error);
  EXPECT_EQ(results[2].tokens.size(), 8u);
  GenerateOptions o = Greedy(8);
  o.logits_processor = [](std::span<float>, const RoutingTrace&, std::span<const int32_t>) {
    throw Error("processor failed");
  };
  EXPECT_THROW(engine->Generate(prompts[0], o), Error);
}

TEST(BatchEngine, SubmitAndCancelFromOtherThreads) {
  // A loop thread runs the batch as a server would while four client
  // threads submit, stream and cancel; every request ends exactly once.
  auto engine = LoadBundled("tiny-moe", 4);
  const auto prompts = Prompts(*engine);
  BatchEngine batch(*engine);
  std::atomic<bool> stop{false};
  std::thread loop([&] {
    while (!stop.load())
      if (!batch.Step()) batch.WaitForWork(std::chrono::milliseconds(20));
  });
  std::mutex m;
  std::condition_variable cv;
  std::vector<std::string> reasons;
  std::vector<std::thread> clients;
  std::atomic<int> streamed{0};
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int r = 0; r < 3; ++r) {
        GenerateOptions o = Greedy(40);
        auto first = std::make_shared<std::atomic<bool>>(false);
        o.on_token = [&streamed, first](int32_t) {
          streamed.fetch_add(1);
          first->store(true);
          return true;
        };
        const SequenceId id = batch.Submit(prompts[(c + r) % prompts.size()], o, [&](SequenceResult&& res) {
          std::lock_guard<std::mutex> lock(m);
          reasons.push_back(res.stats.stop_reason);
          cv.notify_all();
        });
        if (r == 1) {
          // A client that disconnects after its first token.
          while (!first->load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
          batch.Cancel(id);
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait_for(lock, std::chrono::seconds(60), [&] { return reasons.size() == 12; });
  }
  stop.store(true);
  batch.Wake();
  loop.join();
  ASSERT_EQ(reasons.size(), 12u);
  int cancelled = 0, length = 0;
  for (const std::string& r : reasons) {
    cancelled += r == "cancelled";
    length += r == "length";
  }
  // A cancel may land after its sequence already finished (40 tokens are quick).
  EXPECT_EQ(cancelled + length, 12);
  EXPECT_GE(length, 8);
  EXPECT_TRUE(batch.Idle());
  EXPECT_GT(streamed.load(), 0);
}

// A synthetic fixture model (F32) written to a temporary folder, its weights
// bound and materialized as they are stored, and a transformer over them on
// two threads. The folder and the mapping live as long as the model.
struct FixtureModel {
  explicit FixtureModel(const char* preset) {
    SynthOptions so;
    so.preset = preset;
    so.out_dir = dir.path() + "/model";
    so.dtype = DType::kF32;
    WriteSynthModel(so);
    config = LoadModelConfig(so.out_dir);
    store = TensorStore::OpenDir(so.out_dir);
    ModelWeights weights = BindWeights(config, *store);
    std::vector<MatrixSlot> slots = ListMatrices(config, weights);
    MaterializeWeights(config, weights, PlanTensors(slots, QuantLevel::kNone, 64), pool, {});
    model = std::make_unique<Transformer>(config, std::move(weights), pool);
  }

  testing::TempDir dir;
  ModelConfig config;
  std::unique_ptr<TensorStore> store;
  ThreadPool pool{2};
  std::unique_ptr<Transformer> model;
};

// The forward pass itself, on synthetic fixtures of other layouts: segments
// of one ForwardBatch call against separate Forward calls. Dynamic NTK
// (fixture-qwen2-moe, max_position_embeddings 8) gives every sequence its own
// rotary frequencies, from its own length.
class ForwardBatchLayouts : public ::testing::TestWithParam<const char*> {};

TEST_P(ForwardBatchLayouts, SegmentsMatchSeparateCalls) {
  // MXFP4 experts (gpt-oss) take the int8-activation path below 9 rows and
  // the exact one above, which would differ by more than rounding between a
  // batched and a separate call; float activations make both exact.
  struct FloatActivations {
    FloatActivations() { kernels::SetFloatActivations(true); }
    ~FloatActivations() { kernels::SetFloatActivations(false); }
  } exact;
  FixtureModel fixture(GetParam());
  const ModelConfig& config = fixture.config;
  ThreadPool& pool = fixture.pool;
  Transformer& model = *fixture.model;
  const int64_t V = config.vocab_size;

  // Three sequences: prefilled alone, then one batched step with a decode
  // row of the first, a prompt chunk of the second, and a whole prompt of
  // the third (all logits), against the same rows run alone.
  auto ids = [&](int n, int salt) {
    std::vector<int32_t> v;
    for (int i = 0; i < n; ++i) v.push_back(static_cast<int32_t>(1 + (i * 7 + salt * 13) % (V - 1)));
    return v;
  };
  const std::vector<int32_t> a = ids(14, 1), b = ids(11, 2), c = ids(5, 3);
  std::vector<float> logits, ref;
  std::vector<std::vector<float>> alone;
  RoutingTrace ta, tb, tc;
  {
    KVCache ca(config, 32), cb(config, 32), cc(config, 32);
    model.Forward(std::span(a).first(13), 0, ca, false, &logits, nullptr);
    model.Forward(std::span(a).subspan(13), 13, ca, false, &ref, &ta);
    alone.push_back(ref);
    model.Forward(std::span(b).first(4), 0, cb, false, &logits, nullptr);
    model.Forward(std::span(b).subspan(4), 4, cb, false, &ref, &tb);
    alone.push_back(ref);
    model.Forward(c, 0, cc, true, &ref, &tc);
    alone.push_back(ref);
  }
  KVCache ca(config, 32), cb(config, 32), cc(config, 32);
  model.Forward(std::span(a).first(13), 0, ca, false, &logits, nullptr);
  model.Forward(std::span(b).first(4), 0, cb, false, &logits, nullptr);
  RoutingTrace ba, bb, bc;
  const BatchSegment segments[] = {
      {std::span(a).subspan(13), 13, &ca, LogitRows::kLast, &ba},
      {std::span(b).subspan(4), 4, &cb, LogitRows::kLast, &bb},
      {std::span<const int32_t>(c), 0, &cc, LogitRows::kAll, &bc},
  };
  model.ForwardBatch(segments, &logits);
  ASSERT_EQ(logits.size(), static_cast<size_t>((1 + 1 + 5) * V));
  const std::vector<float> got_a(logits.begin(), logits.begin() + V);
  const std::vector<float> got_b(logits.begin() + V, logits.begin() + 2 * V);
  const std::vector<float> got_c(logits.begin() + 2 * V, logits.end());
  auto expect_close = [](const std::vector<float>& x, const std::vector<float>& y, const char* what) {
    ASSERT_EQ(x.size(), y.size()) << what;
    double diff = 0, scale = 1;
    for (size_t i = 0; i < x.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(x[i] - y[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(y[i])));
    }
    EXPECT_LE(diff / scale, kRelTolerance) << what;
  };
  expect_close(got_a, alone[0], "decode row");
  expect_close(got_b, alone[1], "prompt chunk");
  expect_close(got_c, alone[2], "whole prompt");
  // Each segment's trace covers its own rows at its own positions.
  EXPECT_EQ(ba.num_tokens(), 1);
  EXPECT_EQ(ba.first_position(), 13);
  EXPECT_EQ(bb.num_tokens(), 7);
  EXPECT_EQ(bc.num_tokens(), 5);
  if (config.IsMoe())
    for (int64_t m = 0; m < ba.num_moe_layers(); ++m) {
      EXPECT_TRUE(std::ranges::equal(ba.Experts(0, m), ta.Experts(0, m)));
      EXPECT_TRUE(std::ranges::equal(bb.Experts(6, m), tb.Experts(6, m)));
      EXPECT_TRUE(std::ranges::equal(bc.Experts(4, m), tc.Experts(4, m)));
    }
  // The scratch this call grew stays within what the planner reserves for
  // it (BatchScratchBytes also counts the logits and traces, held outside).
  EXPECT_LE(model.ScratchBytesInUse(),
            Transformer::BatchScratchBytes(config, 32, 32, pool.size(), 7, 3) +
                Transformer::ScratchBytes(config, 13, 32, pool.size(), true));
  // A segment past its cache, or two segments on one cache, are refused.
  const BatchSegment too_long[] = {{std::span<const int32_t>(c), 30, &cc, LogitRows::kLast, nullptr}};
  EXPECT_THROW(model.ForwardBatch(too_long, &logits), Error);
  const BatchSegment shared[] = {{std::span(a).first(1), 0, &ca, LogitRows::kLast, nullptr},
                                 {std::span(b).first(1), 1, &ca, LogitRows::kLast, nullptr}};
  EXPECT_THROW(model.ForwardBatch(shared, &logits), Error);
}

// A detection-sized batch (33 texts of 250 tokens: 8,250 rows) makes each
// [rows, 64] array of the pass just over 2 MiB, so HugePageVector gives it
// two whole huge pages: the scratch the pass then holds, counted as its
// allocators hold it, stays within what the planner reserves for such a
// pass (BatchScratchBytes counts each large array in whole huge pages).
TEST(ForwardBatchScratch, HugePageArraysStayWithinThePlan) {
  FixtureModel fixture("fixture-olmoe");
  const ModelConfig& config = fixture.config;
  ASSERT_EQ(config.hidden_size, 64);
  Transformer& model = *fixture.model;
  constexpr int kTexts = 33, kTokens = 250;
  std::vector<std::vector<int32_t>> texts(kTexts);
  std::vector<std::unique_ptr<KVCache>> caches;
  std::vector<BatchSegment> segments;
  for (int i = 0; i < kTexts; ++i) {
    for (int j = 0; j < kTokens; ++j)
      texts[i].push_back(static_cast<int32_t>(1 + (i * 31 + j * 7) % (config.vocab_size - 1)));
    caches.push_back(std::make_unique<KVCache>(config, kTokens));
    segments.push_back({std::span<const int32_t>(texts[i]), 0, caches.back().get(), LogitRows::kLast, nullptr});
  }
  std::vector<float> logits;
  model.ForwardBatch(segments, &logits);
  const int64_t rows = int64_t{kTexts} * kTokens;
  // Each [rows, 64] array: past one huge page, well short of two.
  ASSERT_GT(static_cast<size_t>(rows * 64 * 4), kHugePageBytes);
  ASSERT_LT(static_cast<size_t>(rows * 64 * 4), 3 * kHugePageBytes / 2);
  EXPECT_LE(model.ScratchBytesInUse(),
            Transformer::BatchScratchBytes(config, rows, kTokens, fixture.pool.size(), kTexts, kTexts));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ForwardBatchLayouts,
                         ::testing::Values("fixture-qwen2-moe", "fixture-olmoe", "fixture-mistral-swa",
                                           "fixture-granite-moe", "fixture-qwen3-moe", "fixture-llama31",
                                           "fixture-gpt-oss", "fixture-phimoe", "fixture-deepseek-v2",
                                           "fixture-deepseek-v3", "fixture-qwen3-swa"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

}  // namespace
}  // namespace epwa
