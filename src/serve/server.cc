// Why cpp-httplib: Debian 12 ships it (libcpp-httplib-dev, compiled, with
// OpenSSL), it is what llama-server is built on, and it gives chunked
// responses for server-sent events, a thread pool, payload limits and
// read/write timeouts. Boost.Beast would need an event loop written by hand
// for the same result. Its gaps in 0.11.4 are handled here: it cannot tell a
// handler that a non-streaming client has gone (the handler finds its socket
// and watches it, FindConnectionSocket), and its default limits are
// unbounded (every one is set explicitly below).
#include "serve/server.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "base/error.h"
#include "serve/batch_scheduler.h"
#include "serve/detect_batcher.h"
#include "serve/metrics.h"
#include "serve/chat_session.h"
#include "template/chat_template.h"
#include "tokenizer/text_stream.h"
#include "watermark/detector.h"
#include "watermark/logprobs.h"
#include "watermark/oracle.h"
#include "watermark/pipeline.h"

namespace epwa::serve {

using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t UnixTime() { return static_cast<int64_t>(std::time(nullptr)); }

// The longest suffix of `text` that is a proper prefix of a stop sequence:
// text that must be held back because the next token may complete a stop.
size_t HeldBack(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n) {
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

std::string Sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void SendError(httplib::Response& res, const ApiError& e) {
  SendJson(res, e.status(), e.Body());
  if (e.status() == 429) res.set_header("Retry-After", "1");
  if (e.status() == 401) res.set_header("WWW-Authenticate", "Bearer");
}

}  // namespace

bool KeysEqual(const std::string& presented, const std::string& expected) {
  // Every byte of the expected key is compared whatever the input, and the
  // length difference is folded in at the end, so timing reveals neither
  // where a guess goes wrong nor (beyond the loop bound) how long it is.
  unsigned char diff = presented.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    diff |= p ^ static_cast<unsigned char>(expected[i]);
  }
  return diff == 0;
}

std::vector<std::string> ReadApiKeys(const std::string& path) {
  std::ifstream in(path);
  Require(in.good(), "cannot read the API key file '" + path + "'");
  std::vector<std::string> keys;
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    for (const char c : line)
      Require(static_cast<unsigned char>(c) > 0x20 && c != 0x7f,
              "the API key file '" + path + "' line " + std::to_string(n) +
                  ": a key may not contain spaces or control characters");
    Require(line.size() >= 8, "the API key file '" + path + "' line " + std::to_string(n) +
                                   ": keys must be at least 8 characters");
    keys.push_back(line);
  }
  Require(!keys.empty(), "the API key file '" + path + "' holds no key");
  return keys;
}

// The descriptor of the connection a request came on, found by its two
// addresses: cpp-httplib 0.11 gives a handler the addresses of both ends but
// not the socket. -1 when no open socket matches (the client already left).
std::string NumericAddress(const sockaddr_storage& a, socklen_t len, int* port) {
  char host[NI_MAXHOST], service[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, service, sizeof service,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return {};
  *port = std::atoi(service);
  return host;
}

int FindConnectionSocket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_len = sizeof local, peer_len = sizeof peer;
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    int local_port = -1, peer_port = -1;
    if (NumericAddress(local, local_len, &local_port) != req.local_addr || local_port != req.local_port) continue;
    if (NumericAddress(peer, peer_len, &peer_port) != req.remote_addr || peer_port != req.remote_port) continue;
    found = static_cast<int>(fd);
    break;
  }
  closedir(dir);
  return found;
}

// True once the peer has shut its side of the connection (or it failed).
// Data the client sent ahead (a pipelined request) does not count.
bool PeerHasClosed(int socket) {
  pollfd p{socket, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// ---------------------------------------------------------------------------
// One request's generation: filled by the scheduler's callbacks on the loop
// thread, read by the HTTP handler thread.
struct Job : public GenerationJob {
  // Set by the handler before submission.
  int32_t top_logprobs = -1;
  std::vector<std::string> stop;
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::unique_ptr<wm::WatermarkProcessor> watermark;
  const Tokenizer* tokenizer = nullptr;
  Metrics* metrics = nullptr;

  // Loop-thread state.
  std::unique_ptr<TextStream> text_stream;
  std::vector<float> raw_logits;  // [vocab] of the step in progress, when logprobs are wanted
  float raw_lse = 0;
  wm::TopLogprobs raw_top;
  Clock::time_point last_token;

  // Shared with the handler (under mu).
  std::mutex mu;
  std::condition_variable cv;
  std::string text;   // generated text, cut at a stop sequence
  size_t safe = 0;    // bytes of `text` that can be released
  std::vector<int32_t> tokens;
  std::vector<TokenLogprob> logprobs;
  bool done = false;
  std::string finish_reason;
  std::string error;
  bool stopped_by_sequence = false;

  std::string Piece(int32_t id) const {
    const int32_t one[1] = {id};
    return tokenizer->Decode(one);
  }

  // The scheduler's hook before sampling: the raw distribution (what the
  // logprobs report, like vLLM's default and llama-server), then the
  // watermark's bias.
  void OnLogits(std::span<float> logits, const RoutingTrace& routing, std::span<const int32_t> context) override {
    if (top_logprobs >= 0) {
      raw_logits.assign(logits.begin(), logits.end());
      float mx = -INFINITY;
      for (float v : logits) mx = std::max(mx, v);
      double sum = 0;
      for (float v : logits) sum += std::exp(static_cast<double>(v - mx));
      raw_lse = mx + static_cast<float>(std::log(sum));
      if (top_logprobs > 0) raw_top = wm::TopKFromLogits(logits, top_logprobs);
    }
    for (const auto& [id, bias] : logit_bias) logits[id] += bias;
    if (watermark) watermark->Apply(logits, routing, context);
  }

  bool OnToken(int32_t token) override {
    const Clock::time_point now = Clock::now();
    if (tokens.empty()) metrics->TimeToFirstToken(Seconds(submitted, now));
    else metrics->InterTokenLatency(Seconds(last_token, now));
    last_token = now;
    metrics->GeneratedTokens(1);
    TokenLogprob lp;
    if (top_logprobs >= 0) {
      lp.id = token;
      lp.text = Piece(token);
      lp.logprob = raw_logits[token] - raw_lse;
      for (size_t i = 0; i < raw_top.ids.size(); ++i) {
        lp.top.emplace_back(raw_top.ids[i], Piece(raw_top.ids[i]));
        lp.top_logprobs.push_back(raw_top.logprobs[i]);
      }
    }
    const std::string delta = text_stream->Push(token);
    bool keep_going = !cancel.load();
    {
      std::lock_guard<std::mutex> lock(mu);
      tokens.push_back(token);
      if (top_logprobs >= 0) logprobs.push_back(std::move(lp));
      keep_going &= !Append(delta);
    }
    cv.notify_all();
    return keep_going;
  }

  // Appends generated text (under mu); true when a stop sequence ended it.
  bool Append(const std::string& delta) {
    if (stopped_by_sequence) return true;
    const size_t before = text.size();
    text += delta;
    for (const std::string& s : stop) {
      const size_t from = before >= s.size() ? before - s.size() + 1 : 0;
      const size_t at = text.find(s, from);
      if (at != std::string::npos) {
        text.resize(at);
        stopped_by_sequence = true;
      }
    }
    safe = stopped_by_sequence ? text.size() : text.size() - HeldBack(text, stop);
    return stopped_by_sequence;
  }

  void OnFinish(const std::string& reason, const std::string& failure) override {
    const std::string rest = failure.empty() && text_stream ? text_stream->Flush() : std::string();
    {
      std::lock_guard<std::mutex> lock(mu);
      Append(rest);
      safe = text.size();
      error = failure;
      if (stopped_by_sequence) finish_reason = "stop";
      else if (reason == "eos") finish_reason = "stop";
      else if (reason == "length" || reason == "context") finish_reason = "length";
      else finish_reason = reason;  // "cancelled"
      done = true;
    }
    cv.notify_all();
  }
};

// ---------------------------------------------------------------------------
struct Server::Impl {
  std::unique_ptr<Engine> engine;
  ServerOptions options;
  httplib::Server http;
  Metrics metrics;
  std::unique_ptr<BatchScheduler> scheduler;
  // Detection passes batched across concurrent requests (only with a key).
  std::unique_ptr<DetectBatcher> detect_batcher;
  std::optional<ChatTemplate> chat_template;
  std::string chat_template_error;
  // The template's end-of-turn token, when it is not an EOS already.
  std::vector<int32_t> chat_stop_ids;
  std::optional<wm::ExpertOracle> oracle;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::string router_hash;

  Impl(std::unique_ptr<Engine> e, ServerOptions o) : engine(std::move(e)), options(std::move(o)) {}

  void Authenticate(const httplib::Request& req) const {
    if (options.api_keys.empty() || req.path == "/health") return;
    const std::string header = req.get_header_value("Authorization");
    static const std::string kBearer = "Bearer ";
    bool ok = false;
    if (header.size() > kBearer.size() && header.compare(0, kBearer.size(), kBearer) == 0) {
      const std::string presented = header.substr(kBearer.size());
      // Every configured key is compared, so the time does not tell which matched.
      for (const std::string& k : options.api_keys) ok |= KeysEqual(presented, k);
    }
    if (!ok) throw ApiError(401, "authentication_error", "missing or invalid API key (send Authorization: Bearer KEY)");
  }

  json WatermarkInfo(const wm::WatermarkProcessor* w) const {
    if (!w) return nullptr;
    const wm::WatermarkParams& p = w->params();
    json j{{"scheme", wm::SchemeName(p.scheme)}, {"version", wm::SchemeVersion(p.scheme)}, {"gamma", p.gamma},
           {"delta", p.delta}};
    if (p.scheme != wm::Scheme::kKgw) {
      j["router_layer"] = w->router_slot();
      j["router_hash"] = router_hash;
    }
    return j;
  }

  // The watermark this request gets under the operator's policy.
  std::unique_ptr<wm::WatermarkProcessor> PolicyWatermark(const SamplingRequest& s) const {
    if (!options.watermark) {
      if (s.watermark.value_or(false))
        throw ApiError(400, "invalid_request_error", "this server has no watermark key; start it with --watermark",
                       "watermark");
      return nullptr;
    }
    if (s.watermark.has_value() && !*s.watermark) {
      if (!options.allow_watermark_opt_out)
        throw ApiError(403, "permission_error",
                       "the operator watermarks every completion; \"watermark\": false is not allowed here",
                       "watermark");
      return nullptr;
    }
    return std::make_unique<wm::WatermarkProcessor>(*options.key, *options.watermark, engine->config(),
                                                    router_hash);
  }

  std::vector<int32_t> Encode(const std::string& text, bool add_special) const {
    try {
      return add_special ? engine->EncodePrompt(text) : engine->tokenizer().Encode(text, false);
    } catch (const Error& e) {
      throw ApiError(400, "invalid_request_error", e.what(), "prompt");
    }
  }

  std::string RenderChat(const ChatRequest& r) const {
    if (!chat_template)
      throw ApiError(400, "invalid_request_error",
                     "this model has no usable chat template (" + chat_template_error + "); use /v1/completions");
    ChatRenderOptions o;
    o.add_generation_prompt = r.add_generation_prompt;
    o.tools = r.tools;
    o.kwargs = r.template_kwargs;
    try {
      return chat_template->Render(r.messages, o);
    } catch (const jinja::TemplateError& e) {
      // raise_exception() in a template: the conversation is not one the
      // model accepts (Mixtral's alternating roles, for instance).
      throw ApiError(400, "invalid_request_error", std::string("the chat template refused the messages: ") + e.what(),
                     "messages");
    } catch (const Error& e) {
      throw ApiError(400, "invalid_request_error", std::string("the chat template refused the messages: ") + e.what(),
                     "messages");
    }
  }

  std::shared_ptr<Job> MakeJob(std::vector<int32_t> prompt, const SamplingRequest& s) {
    Require(!prompt.empty(), "empty prompt");
    const int64_t ctx = scheduler->SequenceContext();
    const int64_t need = static_cast<int64_t>(prompt.size()) + s.max_tokens;
    if (need > ctx)
      throw ApiError(400, "invalid_request_error",
                     "the prompt (" + std::to_string(prompt.size()) + " tokens) plus max_tokens (" +
                         std::to_string(s.max_tokens) + ") needs " + std::to_string(need) +
                         " tokens of context, but each sequence has " + std::to_string(ctx),
                     "max_tokens");
    auto job = std::make_shared<Job>();
    job->prompt = std::move(prompt);
    job->sampler = s.sampler;
    job->max_new_tokens = static_cast<int32_t>(s.max_tokens);
    job->stop = s.stop;
    for (const auto& [id, bias] : s.logit_bias)
      if (id >= engine->config().vocab_size)
        throw ApiError(400, "invalid_request_error",
                       "logit_bias names token " + std::to_string(id) + ", outside the vocabulary of " +
                           std::to_string(engine->config().vocab_size),
                       "logit_bias");
    job->logit_bias = s.logit_bias;
    job->top_logprobs = s.top_logprobs;
    job->watermark = PolicyWatermark(s);
    job->tokenizer = &engine->tokenizer();
    job->metrics = &metrics;
    job->text_stream = std::make_unique<TextStream>(engine->tokenizer(), job->prompt);
    return job;
  }

  void Submit(const std::shared_ptr<Job>& job) {
    if (stopping) throw ApiError(503, "unavailable_error", "the server is shutting down");
    if (!scheduler->Submit(job)) {
      metrics.Rejected();
      throw ApiError(429, "rate_limit_error", "all sequence slots and the queue are full; retry shortly");
    }
    metrics.PromptTokens(static_cast<int64_t>(job->prompt.size()));
    if (job->watermark) metrics.watermarked_completions += 1;
  }

  static void Wait(Job& job) {
    std::unique_lock<std::mutex> lock(job.mu);
    job.cv.wait(lock, [&] { return job.done; });
  }

  // A non-streaming request writes nothing until its generation ends, so a
  // client that leaves is seen on its socket instead: the wait polls the
  // connection for the peer's shutdown every kDisconnectPoll and cancels the
  // generation when it comes, which frees the sequence at the next step.
  static constexpr std::chrono::milliseconds kDisconnectPoll{20};
  static void WaitWhileConnected(Job& job, int socket) {
    std::unique_lock<std::mutex> lock(job.mu);
    while (!job.done) {
      job.cv.wait_for(lock, kDisconnectPoll);
      if (!job.done && socket >= 0 && PeerHasClosed(socket)) job.cancel = true;
    }
  }

  json Usage(const Job& job) const {
    const int64_t p = static_cast<int64_t>(job.prompt.size()), c = static_cast<int64_t>(job.tokens.size());
    return {{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}};
  }

  json Vendor(const Job& job) const { return {{"watermark", WatermarkInfo(job.watermark.get())}}; }

  json ChatLogprobs(const Job& job, size_t from, size_t to) const {
    if (job.top_logprobs < 0) return nullptr;
    json content = json::array();
    for (size_t i = from; i < to; ++i) content.push_back(ChatLogprobJson(job.logprobs[i]));
    return {{"content", std::move(content)}};
  }

  json LegacyLogprobs(const Job& job, size_t from, size_t to) const {
    if (job.top_logprobs < 0) return nullptr;
    json tokens = json::array(), lps = json::array(), tops = json::array(), ids = json::array();
    json offsets = json::array();
    size_t offset = 0;
    for (size_t i = from; i < to; ++i) {
      const TokenLogprob& t = job.logprobs[i];
      tokens.push_back(ValidUtf8(t.text));
      ids.push_back(t.id);
      lps.push_back(std::isfinite(t.logprob) ? t.logprob : std::numeric_limits<float>::lowest());
      json top = json::object();
      for (size_t k = 0; k < t.top.size(); ++k) top[ValidUtf8(t.top[k].second)] = t.top_logprobs[k];
      tops.push_back(std::move(top));
      offsets.push_back(offset);
      offset += t.text.size();
    }
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets},
            {"token_ids", ids}};
  }

  // Non-streaming and streaming answers for both routes.
  void Respond(const httplib::Request& req, httplib::Response& res, std::shared_ptr<Job> job, bool chat,
               const SamplingRequest& s) {
    const std::string id = NewResponseId(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = UnixTime();
    const std::string model = s.model.empty() ? options.model_id : s.model;
    if (job->watermark) {
      res.set_header("X-Epwa-Watermark", std::string(wm::SchemeName(job->watermark->params().scheme)) +
                                             (router_hash.empty() ? "" : "; irsh=" + router_hash));
    }
    const int socket = s.stream ? -1 : FindConnectionSocket(req);
    Submit(job);
    if (!s.stream) {
      WaitWhileConnected(*job, socket);
      if (!job->error.empty()) throw ApiError(500, "server_error", "generation failed: " + job->error);
      json choice{{"index", 0}};
      if (chat) {
        choice["message"] = {{"role", "assistant"}, {"content", ValidUtf8(job->text)}};
        choice["logprobs"] = ChatLogprobs(*job, 0, job->logprobs.size());
      } else {
        choice["text"] = ValidUtf8(job->text);
        choice["logprobs"] = LegacyLogprobs(*job, 0, job->logprobs.size());
      }
      choice["finish_reason"] = job->finish_reason;
      json body{{"id", id},
                {"object", chat ? "chat.completion" : "text_completion"},
                {"created", created},
                {"model", model},
                {"system_fingerprint", "epwa-" + router_hash.substr(0, 16)},
                {"choices", json::array({choice})},
                {"usage", Usage(*job)},
                {"epwa", Vendor(*job)}};
      SendJson(res, 200, body);
      return;
    }

    // Server-sent events: one chunk per wake-up with the text released since
    // the last one; a stream that cannot be written cancels its generation.
    struct StreamState {
      size_t text_sent = 0, logprobs_sent = 0;
      bool role_sent = false, finished = false;
    };
    auto state = std::make_shared<StreamState>();
    auto chunk = [=, this](json delta_or_text, json logprobs, json finish) {
      json choice{{"index", 0}};
      if (chat) choice["delta"] = std::move(delta_or_text);
      else choice["text"] = std::move(delta_or_text);
      choice["logprobs"] = std::move(logprobs);
      choice["finish_reason"] = std::move(finish);
      return json{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created}, {"model", model},
                  {"system_fingerprint", "epwa-" + router_hash.substr(0, 16)},
                  {"choices", json::array({choice})}};
    };
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, state, chunk, chat, s](size_t, httplib::DataSink& sink) -> bool {
          auto write = [&](const std::string& data) {
            if (!sink.write(data.data(), data.size())) {
              job->cancel = true;
              return false;
            }
            return true;
          };
          if (chat && !state->role_sent) {
            state->role_sent = true;
            if (!write(Sse(chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr)))) return false;
          }
          std::string text;
          json lps;
          bool done = false;
          std::string error, finish;
          {
            std::unique_lock<std::mutex> lock(job->mu);
            job->cv.wait_for(lock, std::chrono::milliseconds(100), [&] {
              return job->done || job->safe > state->text_sent || job->logprobs.size() > state->logprobs_sent;
            });
            text = job->text.substr(state->text_sent, job->safe - std::min(job->safe, state->text_sent));
            // Text held back at a UTF-8 boundary is released with the next chunk.
            state->text_sent = std::max(state->text_sent, job->safe);
            if (job->top_logprobs >= 0 && job->logprobs.size() > state->logprobs_sent) {
              lps = chat ? ChatLogprobs(*job, state->logprobs_sent, job->logprobs.size())
                         : LegacyLogprobs(*job, state->logprobs_sent, job->logprobs.size());
              state->logprobs_sent = job->logprobs.size();
            }
            done = job->done;
            error = job->error;
            finish = job->finish_reason;
          }
          if (!text.empty() || !lps.is_null()) {
            json delta = chat ? json{{"content", ValidUtf8(text)}} : json(ValidUtf8(text));
            if (!write(Sse(chunk(delta, lps, nullptr)))) return false;
          }
          if (!sink.is_writable()) {
            job->cancel = true;
            return false;
          }
          if (!done) return true;
          if (!error.empty()) {
            write(Sse(ApiError(500, "server_error", "generation failed: " + error).Body()));
          } else {
            json last = chunk(chat ? json::object() : json(""), nullptr, finish);
            last["epwa"] = Vendor(*job);
            if (!write(Sse(last))) return false;
            if (s.include_usage) {
              json usage = chunk(json::object(), nullptr, nullptr);
              usage["choices"] = json::array();
              usage["usage"] = Usage(*job);
              if (!write(Sse(usage))) return false;
            }
          }
          write("data: [DONE]\n\n");
          state->finished = true;
          sink.done();
          return true;
        },
        [job](bool) {
          // The response is gone (finished, or the client disconnected):
          // a generation still running has nobody to read it.
          job->cancel = true;
        });
    (void)req;
  }

  void ChatCompletions(const httplib::Request& req, httplib::Response& res) {
    const ChatRequest r = ParseChatRequest(req.body, engine_defaults(), options.limits);
    const std::string prompt = RenderChat(r);
    auto job = MakeJob(Encode(prompt, /*add_special=*/false), r.sampling);
    job->stop_token_ids = chat_stop_ids;
    Respond(req, res, job, /*chat=*/true, r.sampling);
  }

  void Completions(const httplib::Request& req, httplib::Response& res) {
    const CompletionRequest r = ParseCompletionRequest(req.body, engine_defaults(), options.limits);
    std::vector<int32_t> ids = r.prompt_text ? Encode(*r.prompt_text, /*add_special=*/true) : r.prompt_ids;
    for (int32_t id : ids)
      if (id >= engine->config().vocab_size)
        throw ApiError(400, "invalid_request_error",
                       "token id " + std::to_string(id) + " is outside the vocabulary of " +
                           std::to_string(engine->config().vocab_size),
                       "prompt");
    auto job = MakeJob(std::move(ids), r.sampling);
    Respond(req, res, job, /*chat=*/false, r.sampling);
  }

  SamplerParams engine_defaults() const {
    SamplerParams p;
    const GenerationDefaults& d = engine->defaults();
    if (d.temperature) p.temperature = *d.temperature;
    if (d.top_p) p.top_p = *d.top_p;
    if (d.top_k) p.top_k = *d.top_k;
    if (d.min_p) p.min_p = *d.min_p;
    if (d.repetition_penalty) p.repeat_penalty = *d.repetition_penalty;
    if (d.do_sample && !*d.do_sample) p.temperature = 0;
    return p;
  }

  static json ParseObject(const std::string& body) { return ParseRequestObject(body); }

  void Tokenize(const httplib::Request& req, httplib::Response& res) {
    const json b = ParseObject(req.body);
    for (auto it = b.begin(); it != b.end(); ++it)
      if (it.key() != "content" && it.key() != "add_special" && it.key() != "with_pieces")
        throw ApiError(400, "invalid_request_error", "unknown field '" + it.key() + "'", it.key());
    if (!b.contains("content") || !b["content"].is_string())
      throw ApiError(400, "invalid_request_error", "'content' must be a string", "content");
    const bool add_special = b.value("add_special", false);
    const std::vector<int32_t> ids = Encode(b["content"].get<std::string>(), add_special);
    json tokens = json::array();
    if (b.value("with_pieces", false)) {
      for (int32_t id : ids) {
        const int32_t one[1] = {id};
        tokens.push_back({{"id", id}, {"piece", ValidUtf8(engine->tokenizer().Decode(one))}});
      }
    } else {
      tokens = ids;
    }
    SendJson(res, 200, {{"tokens", tokens}});
  }

  void Detokenize(const httplib::Request& req, httplib::Response& res) {
    const json b = ParseObject(req.body);
    if (!b.contains("tokens") || !b["tokens"].is_array())
      throw ApiError(400, "invalid_request_error", "'tokens' must be an array of ids", "tokens");
    std::vector<int32_t> ids;
    for (const json& v : b["tokens"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= engine->tokenizer().VocabSize())
        throw ApiError(400, "invalid_request_error", "'tokens' must hold ids of this model's vocabulary", "tokens");
      ids.push_back(v.get<int32_t>());
    }
    SendJson(res, 200, {{"content", ValidUtf8(engine->tokenizer().Decode(ids))}});
  }

  // POST /v1/watermark/detect.
  void Detect(const httplib::Request& req, httplib::Response& res) {
    const json b = ParseObject(req.body);
    static const std::set<std::string> known = {"text", "ids", "prompt", "messages", "method", "scheme",
                                                "logprobs", "z_threshold", "min_tokens", "sample", "seed"};
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!known.count(it.key()))
        throw ApiError(400, "invalid_request_error", "unknown field '" + it.key() + "'", it.key());
    if (!options.key) throw ApiError(400, "invalid_request_error", "this server has no watermark key to detect with");
    auto bad = [](const std::string& m, const std::string& p) { return ApiError(400, "invalid_request_error", m, p); };
    const std::string scheme_name =
        b.contains("scheme") ? b["scheme"].is_string() ? b["scheme"].get<std::string>() : "?"
                             : wm::SchemeName(options.watermark ? options.watermark->scheme : wm::kDefaultScheme);
    wm::Scheme scheme;
    try {
      scheme = wm::ParseScheme(scheme_name);
    } catch (const Error& e) {
      throw bad(e.what(), "scheme");
    }
    const std::string method = b.contains("method") && b["method"].is_string() ? b["method"].get<std::string>()
                                                                               : b.contains("logprobs") ? "pepi" : "full";
    if (method != "full" && method != "cspv" && method != "pepi") throw bad("'method' must be full, cspv or pepi", "method");
    wm::DetectOptions d;
    if (b.contains("z_threshold")) {
      if (!b["z_threshold"].is_number() || !std::isfinite(b["z_threshold"].get<double>()))
        throw bad("'z_threshold' must be a finite number", "z_threshold");
      d.z_threshold = b["z_threshold"].get<double>();
    }
    if (b.contains("min_tokens")) {
      if (!b["min_tokens"].is_number_integer() || b["min_tokens"].get<int64_t>() < 1)
        throw bad("'min_tokens' must be a positive integer", "min_tokens");
      d.min_tokens = b["min_tokens"].get<int64_t>();
    }
    const ModelConfig& config = engine->config();
    if (scheme != wm::Scheme::kKgw && !config.IsMoe()) throw bad("this model is dense: only kgw can be detected", "scheme");
    const int slot = scheme == wm::Scheme::kKgw
                         ? -1
                         : wm::ResolveRouterLayer(scheme, options.watermark ? options.watermark->router_layer : wm::kSchemeDefaultLayer,
                                                  config.NumMoeLayers());
    const double gamma = options.watermark ? options.watermark->gamma : 0.25;
    wm::GreenLists lists(*options.key, wm::KeyedByOf(scheme), router_hash, config.vocab_size, gamma);
    json out{{"method", method}, {"scheme", wm::SchemeName(scheme)}, {"z_threshold", d.z_threshold}};
    if (scheme != wm::Scheme::kKgw) {
      out["router_hash"] = router_hash;
      out["router_layer"] = slot;
    }
    std::vector<wm::TokenScore> tokens;
    std::optional<wm::CspvResult> cspv;
    try {
      if (method == "pepi") {
        if (!oracle) throw bad("this server has no PEPI oracle (start it with --oracle FILE)", "method");
        if (wm::KeyedByOf(scheme) != wm::KeyedBy::kExpert)
          throw bad("pepi detects gsg and ewp only (it predicts one router's expert)", "method");
        if (!b.contains("logprobs")) throw bad("pepi reads OpenAI-format 'logprobs' (with token ids)", "logprobs");
        wm::LogprobsFile file;
        try {
          file = wm::LogprobsFromOpenAi(b["logprobs"], config.vocab_size);
        } catch (const Error& e) {
          throw bad(e.what(), "logprobs");
        }
        tokens = wm::ScoreLogprobs(file, *oracle, lists);
        out["tokens"] = static_cast<int64_t>(file.tokens.size());
      } else {
        if (b.contains("text") == b.contains("ids")) throw bad("give either 'text' or 'ids'", "text");
        std::optional<std::string> prompt;
        if (b.contains("prompt")) {
          if (!b["prompt"].is_string()) throw bad("'prompt' must be a string", "prompt");
          prompt = b["prompt"].get<std::string>();
        }
        std::optional<std::vector<int32_t>> prompt_ids;
        if (b.contains("messages")) {
          if (prompt) throw bad("give 'prompt' or 'messages', not both", "messages");
          ChatRequest cr;
          cr.messages = ValidateMessages(&b["messages"], options.limits);
          cr.add_generation_prompt = true;
          prompt_ids = Encode(RenderChat(cr), false);
        }
        wm::DetectInput in;
        {
          std::lock_guard<std::mutex> lock(scheduler->ModelMutex());
          if (b.contains("text")) {
            if (!b["text"].is_string()) throw bad("'text' must be a string", "text");
            const std::string text = b["text"].get<std::string>();
            if (prompt_ids) {
              in.ids = *prompt_ids;
              in.first = static_cast<int64_t>(in.ids.size());
              const std::vector<int32_t> t = Encode(text, false);
              in.ids.insert(in.ids.end(), t.begin(), t.end());
              in.prompt_given = true;
            } else {
              in = wm::InputFromText(*engine, prompt, text);
            }
          } else {
            std::vector<int32_t> ids;
            if (!b["ids"].is_array()) throw bad("'ids' must be an array of token ids", "ids");
            for (const json& v : b["ids"]) {
              if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= config.vocab_size)
                throw bad("'ids' must hold ids of this model's vocabulary", "ids");
              ids.push_back(v.get<int32_t>());
            }
            if (prompt_ids) {
              in.ids = *prompt_ids;
              in.first = static_cast<int64_t>(in.ids.size());
              in.ids.insert(in.ids.end(), ids.begin(), ids.end());
              in.prompt_given = true;
            } else {
              in = wm::InputFromIds(*engine, prompt, ids);
            }
          }
          if (static_cast<int64_t>(in.ids.size()) > scheduler->SequenceContext())
            throw bad("the text has " + std::to_string(in.ids.size()) + " tokens, more than the " +
                          std::to_string(scheduler->SequenceContext()) + " a sequence may hold",
                      "text");
        }
        // The pass itself joins whatever detections are waiting for the model.
        tokens = detect_batcher->Score(in, scheme, slot);
        out["tokens"] = static_cast<int64_t>(in.ids.size()) - in.first;
        out["prompt_given"] = in.prompt_given;
        if (method == "cspv") {
          const int64_t sample = b.contains("sample") && b["sample"].is_number_integer() ? b["sample"].get<int64_t>() : 48;
          if (sample < 3) throw bad("'sample' must be at least 3", "sample");
          const uint64_t seed = b.contains("seed") && b["seed"].is_number_unsigned() ? b["seed"].get<uint64_t>() : 0;
          cspv = wm::Cspv(tokens, lists.p0(), d, sample, seed);
          if (cspv->population < d.min_tokens)
            throw bad("only " + std::to_string(cspv->population) + " tokens could be scored; detection needs " +
                          std::to_string(d.min_tokens),
                      "text");
        }
      }
      const wm::Summary s = cspv ? cspv->sample : wm::SummarizeChecked(tokens, lists.p0(), d);
      // The names transformers' WatermarkDetector returns, then epwa's.
      out["num_tokens_scored"] = s.scored;
      out["num_green_tokens"] = s.green;
      out["green_fraction"] = s.green_fraction;
      out["z_score"] = s.z;
      out["p_value"] = s.p_value;
      out["log10_p_value"] = s.log10_p;
      out["prediction"] = s.detected;
      out["gamma"] = s.p0;
      out["skipped_repeats"] = s.skipped_repeats;
      if (cspv) out["population"] = cspv->population;
    } catch (const Error& e) {
      throw bad(e.what(), "text");
    }
    metrics.detections += 1;
    SendJson(res, 200, out);
  }

  void Models(httplib::Response& res) const {
    const ModelConfig& c = engine->config();
    SendJson(res, 200,
             {{"object", "list"},
              {"data", json::array({{{"id", options.model_id},
                                     {"object", "model"},
                                     {"created", 0},
                                     {"owned_by", "epwa"},
                                     {"meta",
                                      {{"architecture", c.architecture},
                                       {"vocab_size", c.vocab_size},
                                       {"context", scheduler->SequenceContext()},
                                       {"parallel", options.parallel},
                                       {"quant", engine->load_stats().quant_level},
                                       {"router_hash", router_hash},
                                       {"watermark", options.watermark ? json(wm::SchemeName(options.watermark->scheme))
                                                                       : json(nullptr)}}}}})}});
  }
};

Server::Server(std::unique_ptr<Engine> engine, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(engine), std::move(options))) {
  Impl& s = *impl_;
  ServerOptions& o = s.options;
  Require(o.parallel >= 1 && o.parallel <= 256, "--parallel must be between 1 and 256");
  Require(o.max_queue >= 0, "--max-queue must not be negative");
  Require(!o.watermark || o.key, "a watermark needs a key (--key-file)");
  s.router_hash = s.engine->load_stats().router_hash;
  if (o.watermark) {
    // Fails here, at start-up, for a scheme the model cannot carry.
    wm::WatermarkProcessor probe(*o.key, *o.watermark, s.engine->config(), s.router_hash);
  }
  if (!o.oracle_path.empty()) {
    Require(o.key.has_value(), "--oracle needs --key-file");
    s.oracle = wm::ExpertOracle::Load(o.oracle_path);
    Require(s.oracle->info().router_hash == s.router_hash, "the oracle '" + o.oracle_path + "' belongs to another model");
  }
  try {
    s.chat_template = ChatTemplate::FromModelDir(s.engine->model_dir());
    s.chat_stop_ids = ChatStopTokenIds(*s.chat_template, *s.engine);
  } catch (const std::exception& e) {
    // A base model without a template still serves /v1/completions.
    s.chat_template_error = e.what();
  }
  if (o.model_id.empty()) o.model_id = s.engine->model_dir();
  s.scheduler = std::make_unique<BatchScheduler>(*s.engine, o.parallel, o.max_queue, &s.metrics);
  if (o.key)
    s.detect_batcher = std::make_unique<DetectBatcher>(*s.engine, s.scheduler->ModelMutex(), *o.key, s.router_hash,
                                                       o.watermark ? o.watermark->gamma : 0.25,
                                                       &s.metrics.detection_batches);

  httplib::Server& http = s.http;
  const int threads = o.http_threads > 0 ? o.http_threads : std::min(256, o.parallel + o.max_queue + 4);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http.set_payload_max_length(o.max_body_bytes);
  http.set_read_timeout(o.read_timeout_s, 0);
  http.set_write_timeout(o.write_timeout_s, 0);
  http.set_keep_alive_max_count(100);
  http.set_keep_alive_timeout(5);
  http.set_tcp_nodelay(true);

  // Every route goes through one wrapper: authentication, ApiError to an
  // OpenAI error body, metrics and the request log.
  auto route = [this](const std::string& name, auto handler) {
    return [this, name, handler](const httplib::Request& req, httplib::Response& res) {
      const Clock::time_point start = Clock::now();
      try {
        impl_->Authenticate(req);
        handler(req, res);
      } catch (const ApiError& e) {
        SendError(res, e);
      } catch (const Error& e) {
        SendError(res, ApiError(400, "invalid_request_error", e.what()));
      } catch (const std::exception& e) {
        SendError(res, ApiError(500, "server_error", std::string("internal error: ") + e.what()));
      }
      impl_->metrics.Request(name, res.status, Seconds(start, Clock::now()));
      if (!impl_->options.quiet)
        std::fprintf(stderr, "epwa serve: %s %s -> %d (%.0f ms)\n", req.method.c_str(), req.path.c_str(), res.status,
                     1e3 * Seconds(start, Clock::now()));
    };
  };
  http.Get("/health", route("/health", [](const httplib::Request&, httplib::Response& res) {
             SendJson(res, 200, {{"status", "ok"}});
           }));
  http.Get("/v1/models", route("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
             impl_->Models(res);
           }));
  http.Get("/metrics", route("/metrics", [this](const httplib::Request&, httplib::Response& res) {
             res.set_content(impl_->metrics.Text(), "text/plain; version=0.0.4");
           }));
  http.Post("/v1/chat/completions",
            route("/v1/chat/completions",
                  [this](const httplib::Request& q, httplib::Response& r) { impl_->ChatCompletions(q, r); }));
  http.Post("/v1/completions", route("/v1/completions", [this](const httplib::Request& q, httplib::Response& r) {
              impl_->Completions(q, r);
            }));
  http.Post("/tokenize",
            route("/tokenize", [this](const httplib::Request& q, httplib::Response& r) { impl_->Tokenize(q, r); }));
  http.Post("/detokenize", route("/detokenize",
                                 [this](const httplib::Request& q, httplib::Response& r) { impl_->Detokenize(q, r); }));
  http.Post("/v1/watermark/detect",
            route("/v1/watermark/detect", [this](const httplib::Request& q, httplib::Response& r) { impl_->Detect(q, r); }));
  // Errors raised by the library itself (404, 413 for a body over the
  // limit, 400 for a malformed request line) get an OpenAI-shaped body too.
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string message = "error";
    std::string type = "invalid_request_error";
    if (res.status == 404) message = "no route " + req.method + " " + req.path;
    else if (res.status == 413) message = "the request body is larger than the server accepts";
    else if (res.status == 405) message = "method not allowed";
    else if (res.status >= 500) type = "server_error";
    SendJson(res, res.status, ApiError(res.status, type, message).Body());
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    SendJson(res, 500, ApiError(500, "server_error", "internal error").Body());
  });

  if (o.port == 0) {
    s.port = http.bind_to_any_port(o.host);
    Require(s.port > 0, "cannot listen on " + o.host + " (any port)");
  } else {
    Require(http.bind_to_port(o.host, o.port), "cannot listen on " + o.host + ":" + std::to_string(o.port) +
                                                   " (in use, or not an address of this machine)");
    s.port = o.port;
  }
}

Server::~Server() { Stop(0); }

int Server::port() const { return impl_->port; }

void Server::Run() {
  impl_->scheduler->Start();
  impl_->http.listen_after_bind();
  impl_->scheduler->Shutdown(/*grace_ms=*/0);
}

void Server::Stop(int grace_ms) {
  Impl& s = *impl_;
  if (s.stopping.exchange(true)) return;
  // In-flight generations get `grace_ms` to finish, then are cancelled, so
  // that their handlers answer (with what they have) before the listener
  // closes; new requests are refused with 503 meanwhile.
  s.scheduler->Shutdown(grace_ms);
  s.http.stop();
}

}  // namespace epwa::serve
