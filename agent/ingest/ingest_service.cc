#include "agent/ingest/ingest_service.h"

#include <algorithm>
#include <atomic>
#include <boost/json/object.hpp>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "agent/ingest/form_body.h"
#include "agent/ingest/record_intake.h"
#include "shared/core/clock.h"
#include "shared/core/failpoint.h"
#include "shared/core/log.h"
#include "shared/crypto/hash.h"
#include "shared/crypto/secret.h"

namespace branchline::agent {
namespace {

constexpr std::string_view kRecordsPrefix = "/v1/records/";
constexpr size_t kMaxErrorsListed = 1000;
// Distinct reject codes past this share one label, so a schema with many
// fields (or a rule engine bug) cannot blow up the metric's cardinality.
constexpr size_t kMaxReasonLabels = 64;
constexpr int kStatuses[] = {200, 204, 303, 400, 401, 403, 404, 405, 413, 415, 429, 500, 503};
// Client addresses an open source's rate limiter remembers; past it, the
// addresses whose allowance is full again are forgotten (they owe nothing).
constexpr size_t kMaxRateLimitedClients = 100000;
// Refusal log lines per second; the rest are counted in the next line that is
// written, so a flood of bad requests cannot fill the disk with logs.
constexpr int64_t kMaxRefusalLogsPerSecond = 20;

enum class BodyFormat { kJson, kNdjson, kUrlEncodedForm, kMultipartForm };

http::Response jsonResponse(int status, std::string body) {
  http::Response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

// A short printable rendering of a client-supplied name for error messages.
std::string backquoted(std::string_view name) {
  return "`" + sanitizeUtf8(name.substr(0, 64), 256) + "`";
}

http::Response unauthorized(bool offered) {
  http::Response r = http::jsonError(
      401, offered ? "the ingest token is not valid (unknown, revoked or malformed); nothing was "
                     "accepted"
                   : "this source needs a credential: send `Authorization: Bearer <ingest token>` "
                     "(see `branchline-agent token add`); nothing was accepted");
  r.headers.emplace_back("WWW-Authenticate", offered ? "Bearer realm=\"branchline\", "
                                                       "error=\"invalid_token\""
                                                     : "Bearer realm=\"branchline\"");
  return r;
}

// Token buckets per client address for the open (auth = "none") sources.
class RateLimiter {
 public:
  explicit RateLimiter(uint64_t per_minute) : per_minute_(static_cast<double>(per_minute)) {}

  // False when `peer` has used up its allowance; *retry_after_s says when one
  // more request will be allowed.
  bool allow(const std::string& peer, int64_t now_us, int64_t* retry_after_s) {
    std::lock_guard lock(mutex_);
    if (buckets_.size() >= kMaxRateLimitedClients && buckets_.find(peer) == buckets_.end()) {
      forgetRefilled(now_us);
    }
    Bucket& b = buckets_.try_emplace(peer, Bucket{per_minute_, now_us}).first->second;
    refill(b, now_us);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return true;
    }
    const double seconds = (1 - b.tokens) * 60.0 / per_minute_;
    *retry_after_s = std::max<int64_t>(1, static_cast<int64_t>(seconds + 0.999));
    return false;
  }

 private:
  struct Bucket {
    double tokens;
    int64_t at_us;
  };
  void refill(Bucket& b, int64_t now_us) {
    const double earned = static_cast<double>(now_us - b.at_us) / 60e6 * per_minute_;
    b.tokens = std::min(per_minute_, b.tokens + std::max(0.0, earned));
    b.at_us = now_us;
  }
  void forgetRefilled(int64_t now_us) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      refill(it->second, now_us);
      it = it->second.tokens >= per_minute_ ? buckets_.erase(it) : std::next(it);
    }
  }

  double per_minute_;
  std::mutex mutex_;
  std::unordered_map<std::string, Bucket> buckets_;
};

bool hasOrigin(const SourcePolicy* policy, std::string_view origin) {
  if (policy == nullptr) return false;
  return std::find(policy->cors_origins.begin(), policy->cors_origins.end(), origin) !=
         policy->cors_origins.end();
}

}  // namespace

struct IngestService::Impl {
  std::shared_ptr<const rules::RuleEngine> engine;
  DurableBuffer& buffer;
  MetricsRegistry& metrics;
  IngestOptions options;
  std::string source_list;  // for the 404 message

  Counter& accepted;
  LabeledCounter& rejected;
  LabeledCounter& requests;
  LabeledCounter& refused;
  Gauge& connections;
  std::map<int, Counter*> status_counters;  // fixed after construction: read without a lock
  std::mutex reason_mutex;
  std::unordered_map<std::string, Counter*> reason_counters;
  std::map<std::string, std::unique_ptr<RateLimiter>, std::less<>> limiters;  // open sources
  std::optional<crypto::Sha256Digest> metrics_token_hash;
  std::atomic<int64_t> log_second{0};
  std::atomic<int64_t> logs_this_second{0};
  std::atomic<uint64_t> logs_suppressed{0};

  Impl(std::shared_ptr<const rules::RuleEngine> e, DurableBuffer& b, MetricsRegistry& m,
       IngestOptions o)
      : engine(std::move(e)),
        buffer(b),
        metrics(m),
        options(o),
        accepted(m.counter("bl_agent_records_accepted_total",
                           "Records accepted by the ingest API, committed to the buffer")),
        rejected(m.labeledCounter("bl_agent_records_rejected_total",
                                  "Records rejected and quarantined, by first reason", "reason")),
        requests(m.labeledCounter("bl_agent_http_requests_total",
                                  "Ingest API requests answered, by HTTP status", "status")),
        refused(m.labeledCounter("bl_agent_http_refused_total",
                                 "HTTP requests and connections refused by an input limit, by "
                                 "reason (README \"Input limits\")",
                                 "reason")),
        connections(m.gauge("bl_agent_http_connections", "HTTP connections open now")) {
    for (int s : kStatuses) status_counters[s] = &requests.with(std::to_string(s));
    for (const auto& name : engine->sourceNames()) {
      if (!source_list.empty()) source_list += ", ";
      source_list += name;
    }
    for (const auto& [name, policy] : options.sources) {
      if (policy.open) {
        limiters.emplace(name, std::make_unique<RateLimiter>(policy.rate_limit_per_minute));
      }
    }
    if (!options.metrics_token.empty()) metrics_token_hash = crypto::sha256(options.metrics_token);
  }

  const SourcePolicy* policy(std::string_view source) const {
    auto it = options.sources.find(source);
    return it == options.sources.end() ? nullptr : &it->second;
  }

  // Counts a refused request and logs who sent it (the address, the token's
  // id when it had a well-formed one; never the credential or the body).
  void refuse(const char* reason, const http::Request& request, std::string_view source,
              const std::string& token_id = {}) {
    refused.with(reason).inc();
    const int64_t second = steadyMicros() / 1000000;
    int64_t seen = log_second.load(std::memory_order_relaxed);
    if (seen != second && log_second.compare_exchange_strong(seen, second)) {
      logs_this_second.store(0, std::memory_order_relaxed);
    }
    if (logs_this_second.fetch_add(1, std::memory_order_relaxed) >= kMaxRefusalLogsPerSecond) {
      logs_suppressed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const std::string source_text = log::printableExcerpt(source, 64);
    const std::string path_text = log::printableExcerpt(request.target, 128);
    log::warn("ingest_refused", {{"reason", reason},
                                 {"client", request.peer},
                                 {"source", source_text},
                                 {"path", path_text},
                                 {"token_id", token_id},
                                 {"suppressed", logs_suppressed.exchange(0)}});
  }

  // The source's access rule for this request; nullopt when it may go on.
  std::optional<http::Response> authorize(const http::Request& request, std::string_view source,
                                          const SourcePolicy* p) {
    if (!request.origin.empty() && !hasOrigin(p, request.origin)) {
      refuse("origin_not_allowed", request, source);
      return http::jsonError(403, "origin " + backquoted(request.origin) +
                                      " may not post to this source (sources." +
                                      std::string(source) + ".cors_origins)");
    }
    if (p != nullptr && p->open) {
      int64_t retry_after = 1;
      auto it = limiters.find(source);
      if (it != limiters.end() && !it->second->allow(request.peer, steadyMicros(), &retry_after)) {
        refuse("rate_limited", request, source);
        http::Response r = http::jsonError(
            429, "more than " + std::to_string(p->rate_limit_per_minute) +
                     " requests per minute from this address; nothing was accepted; retry later");
        r.headers.emplace_back("Retry-After", std::to_string(retry_after));
        return r;
      }
      return std::nullopt;
    }
    std::string token_id;
    IngestTokens::Verdict verdict =
        options.tokens == nullptr
            ? (request.authorization.empty() ? IngestTokens::Verdict::kMissing
                                             : IngestTokens::Verdict::kUnknown)
            : options.tokens->check(request.authorization, source, &token_id);
    switch (verdict) {
      case IngestTokens::Verdict::kOk:
        return std::nullopt;
      case IngestTokens::Verdict::kMissing:
        refuse("unauthenticated", request, source);
        return unauthorized(false);
      case IngestTokens::Verdict::kUnknown:
        refuse("unauthenticated", request, source, token_id);
        return unauthorized(true);
      case IngestTokens::Verdict::kWrongSource:
        refuse("forbidden", request, source, token_id);
        return http::jsonError(403, "this ingest token may not post to source " +
                                        backquoted(source) + "; nothing was accepted");
    }
    return unauthorized(true);
  }

  bool metricsAllowed(const http::Request& request) {
    if (!metrics_token_hash) return true;
    std::string_view token = bearerCredential(request.authorization);
    return !token.empty() && crypto::equalConstantTime(crypto::sha256(token), *metrics_token_hash);
  }

  // OPTIONS /v1/records/<source>: a browser asking whether it may post.
  http::Response preflight(const http::Request& request, std::string_view source,
                           const SourcePolicy* p) {
    const bool method_ok = request.access_control_request_method == "POST";
    if (request.origin.empty() || !hasOrigin(p, request.origin) || !method_ok) {
      refuse("origin_not_allowed", request, source);
      return http::jsonError(403, request.origin.empty()
                                      ? "a CORS preflight needs an Origin header"
                                      : (method_ok ? "origin " + backquoted(request.origin) +
                                                         " may not post to this source"
                                                   : "only POST may be requested"));
    }
    http::Response r;
    r.status = 204;
    r.content_type.clear();
    r.headers = {{"Access-Control-Allow-Origin", request.origin},
                 {"Access-Control-Allow-Methods", "POST"},
                 {"Access-Control-Allow-Headers", "Authorization, Content-Type"},
                 {"Access-Control-Max-Age", "600"},
                 {"Vary", "Origin"}};
    return r;
  }

  void countStatus(int status) {
    auto it = status_counters.find(status);
    if (it != status_counters.end()) {
      it->second->inc();
    } else {
      requests.with(std::to_string(status)).inc();
    }
  }

  void countRejects(const std::vector<std::string>& codes) {
    if (codes.empty()) return;
    std::map<std::string_view, uint64_t> per_code;
    for (const auto& c : codes) ++per_code[c];
    std::lock_guard lock(reason_mutex);
    for (const auto& [code, n] : per_code) {
      std::string key(code);
      auto it = reason_counters.find(key);
      if (it == reason_counters.end()) {
        if (reason_counters.size() >= kMaxReasonLabels) key = "other";
        it = reason_counters.emplace(key, &rejected.with(key)).first;
      }
      it->second->inc(n);
    }
  }

  void ingest(std::string_view source, http::Request& request, const http::Respond& respond,
              const std::shared_ptr<Impl>& self);
};

IngestService::IngestService(std::shared_ptr<const rules::RuleEngine> engine, DurableBuffer& buffer,
                             MetricsRegistry& metrics, IngestOptions options)
    : impl_(std::make_shared<Impl>(std::move(engine), buffer, metrics, options)) {}

IngestService::~IngestService() = default;

LabeledCounter& IngestService::httpRefused() { return impl_->refused; }
Gauge& IngestService::httpConnections() { return impl_->connections; }

void IngestService::handle(http::Request&& request, http::Respond respond) {
  http::Respond counted = [impl = impl_, respond = std::move(respond)](http::Response r) {
    impl->countStatus(r.status);
    respond(std::move(r));
  };
  std::string_view path = request.target;
  path = path.substr(0, path.find('?'));

  if (path == "/healthz" || path == "/health" || path == "/metrics") {
    if (request.method != "GET") {
      http::Response r = http::jsonError(405, "use GET");
      r.headers.emplace_back("Allow", "GET");
      return counted(std::move(r));
    }
    if (path == "/metrics") {
      if (!impl_->metricsAllowed(request)) {
        impl_->refuse("unauthenticated", request, "");
        http::Response r = http::jsonError(
            401, "GET /metrics needs `Authorization: Bearer <token>` (http.metrics_token_file)");
        r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"branchline-metrics\"");
        return counted(std::move(r));
      }
      http::Response r;
      r.content_type = "text/plain; version=0.0.4";
      r.body = impl_->metrics.renderPrometheus();
      return counted(std::move(r));
    }
    if (path == "/health") {
      if (!impl_->options.health) return counted(jsonResponse(200, R"({"status":"ok"})"));
      HealthAnswer health = impl_->options.health();
      return counted(jsonResponse(health.degraded ? 503 : 200, std::move(health.body)));
    }
    // Liveness only: whether the agent can forward is GET /health's question.
    BufferStats stats = impl_->buffer.stats();
    return counted(
        jsonResponse(200, "{\"status\":\"ok\",\"buffer_records\":" + std::to_string(stats.records) +
                              ",\"buffer_bytes\":" + std::to_string(stats.bytes) + "}"));
  }
  if (path.substr(0, kRecordsPrefix.size()) == kRecordsPrefix) {
    std::string_view source = path.substr(kRecordsPrefix.size());
    if (!source.empty() && source.find('/') == std::string_view::npos) {
      if (impl_->engine->find(source) == nullptr) {
        return counted(http::jsonError(404, "unknown source " + backquoted(source) +
                                                "; configured sources: " + impl_->source_list));
      }
      const SourcePolicy* p = impl_->policy(source);
      if (request.method == "OPTIONS") return counted(impl_->preflight(request, source, p));
      if (request.method != "POST") {
        http::Response r = http::jsonError(405, "use POST to send records");
        r.headers.emplace_back("Allow", "POST, OPTIONS");
        return counted(std::move(r));
      }
      if (auto refusal = impl_->authorize(request, source, p)) return counted(std::move(*refusal));
      if (request.origin.empty()) return impl_->ingest(source, request, counted, impl_);
      // An allowed origin: the browser may read the answer.
      http::Respond with_cors = [counted, origin = request.origin](http::Response r) {
        r.headers.emplace_back("Access-Control-Allow-Origin", origin);
        r.headers.emplace_back("Vary", "Origin");
        counted(std::move(r));
      };
      return impl_->ingest(source, request, with_cors, impl_);
    }
  }
  counted(http::jsonError(
      404, "no such path " + backquoted(path) +
               "; use POST /v1/records/<source>, GET /healthz, GET /health or GET /metrics"));
}

void IngestService::Impl::ingest(std::string_view source, http::Request& request,
                                 const http::Respond& respond, const std::shared_ptr<Impl>& self) {
  const rules::CompiledSchema* schema = engine->find(source);
  if (!schema) {
    return respond(http::jsonError(
        404, "unknown source " + backquoted(source) + "; configured sources: " + source_list));
  }
  BodyFormat format;
  const std::string& type = request.content_type;
  if (type == "application/json") {
    format = BodyFormat::kJson;
  } else if (type == "application/x-ndjson" || type == "application/ndjson" ||
             type == "application/jsonl") {
    format = BodyFormat::kNdjson;
  } else if (type == "application/x-www-form-urlencoded") {
    format = BodyFormat::kUrlEncodedForm;
  } else if (type == "multipart/form-data") {
    format = BodyFormat::kMultipartForm;
  } else {
    return respond(
        http::jsonError(415, "content type " + backquoted(type.empty() ? "(none)" : type) +
                                 " is not accepted; send application/json, application/x-ndjson, "
                                 "application/x-www-form-urlencoded or multipart/form-data"));
  }
  const bool form = format == BodyFormat::kUrlEncodedForm || format == BodyFormat::kMultipartForm;
  if (request.body.find_first_not_of(" \t\r\n") == std::string::npos) {
    return respond(http::jsonError(
        400, form ? "empty form: nothing was accepted"
                  : "empty body: send a JSON object, a JSON array of objects, or NDJSON lines"));
  }

  const std::string_view body = request.body;
  RecordIntake intake(*engine, *schema, source, nowMicros(),
                      IntakeLimits{options.max_record_bytes, options.max_field_bytes});
  auto tooMany = [&] {
    refused.with("too_many_records").inc();
    return http::jsonError(413, "more than " + std::to_string(options.max_records_per_request) +
                                    " records in one request; split it into smaller requests");
  };
  if (format == BodyFormat::kJson) {
    bool too_deep = false;
    Status parsed = addJsonDocument(intake, body, options.max_depth,
                                    options.max_records_per_request, &too_deep);
    if (parsed.code() == Code::kResourceExhausted) return respond(tooMany());
    if (!parsed.isOk()) {
      refused.with(too_deep ? "too_deep" : "invalid_json").inc();
      return respond(http::jsonError(400, "body: " + parsed.message() + "; nothing was accepted"));
    }
  } else if (form) {
    // One form post is one record, under the same rules as a JSON object.
    boost::json::object fields;
    const FormLimits limits{.max_value_bytes = options.max_field_bytes};
    Status parsed = format == BodyFormat::kUrlEncodedForm
                        ? parseUrlEncodedForm(body, limits, fields)
                        : parseMultipartForm(request.content_type_header, body, limits, fields);
    if (parsed.code() == Code::kResourceExhausted) {
      refused.with("form_too_large").inc();
      return respond(http::jsonError(413, "form: " + parsed.message() + "; nothing was accepted"));
    }
    if (!parsed.isOk()) {
      refused.with("invalid_form").inc();
      return respond(http::jsonError(400, "form: " + parsed.message() + "; nothing was accepted"));
    }
    intake.addObject(0, fields);
  } else {
    NdjsonSummary summary =
        addNdjson(intake, body, options.max_depth, options.max_records_per_request);
    if (summary.too_many) return respond(tooMany());
    if (summary.parsed == 0 && summary.oversized == 0) {
      refused.with("invalid_json").inc();
      return respond(http::jsonError(400, "no line of the NDJSON body is valid JSON (" +
                                              summary.first_error + "); nothing was accepted"));
    }
  }

  const size_t n_accepted = intake.accepted();
  std::string answer = "{\"accepted\":" + std::to_string(n_accepted) +
                       ",\"rejected\":" + std::to_string(intake.rejected()) + ",";
  appendErrorsJson(answer, intake.errors(), kMaxErrorsListed);
  answer += '}';
  if (intake.inputs() == 0) return respond(jsonResponse(200, std::move(answer)));

  std::vector<std::string> codes = intake.rejectCodes();
  // An accepted form post goes on to the source's page; a rejected one gets
  // the JSON answer, which says what to fix.
  std::string redirect;
  if (const SourcePolicy* p = policy(source); form && p != nullptr && n_accepted == 1) {
    redirect = p->form_redirect;
  }
  buffer.appendAsync(
      intake.takeRecords(), intake.takeRejects(),
      [self, respond, answer = std::move(answer), n_accepted, codes = std::move(codes),
       redirect = std::move(redirect)](Status status) mutable {
        // Runs on the buffer's committer thread: count and hand off, never block.
        if (status.isOk()) {
          BL_FAILPOINT("agent.after_commit_before_reply");
          self->accepted.inc(n_accepted);
          self->countRejects(codes);
          if (!redirect.empty()) {
            http::Response r = jsonResponse(303, std::move(answer));
            r.headers.emplace_back("Location", redirect);
            return respond(std::move(r));
          }
          return respond(jsonResponse(200, std::move(answer)));
        }
        if (status.code() == Code::kResourceExhausted) {
          http::Response r = http::jsonError(
              503, "the agent's buffer (or its disk) is full; nothing was accepted; retry later (" +
                       status.message() + ")");
          r.headers.emplace_back("Retry-After", "1");
          return respond(std::move(r));
        }
        log::error("ingest_append_failed", {{"error", status.toString()}});
        respond(http::jsonError(
            500,
            "the agent could not store the records; nothing was accepted: " + status.toString()));
      });
}

}  // namespace branchline::agent
