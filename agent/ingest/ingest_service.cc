#include "agent/ingest/ingest_service.h"

#include <map>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include "agent/ingest/record_intake.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::agent {
namespace {

constexpr std::string_view kRecordsPrefix = "/v1/records/";
constexpr size_t kMaxErrorsListed = 1000;
// Distinct reject codes past this share one label, so a schema with many
// fields (or a rule engine bug) cannot blow up the metric's cardinality.
constexpr size_t kMaxReasonLabels = 64;
constexpr int kStatuses[] = {200, 400, 404, 405, 413, 415, 500, 503};

enum class BodyFormat { kJson, kNdjson };

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

  if (path == "/healthz" || path == "/metrics") {
    if (request.method != "GET") {
      http::Response r = http::jsonError(405, "use GET");
      r.headers.emplace_back("Allow", "GET");
      return counted(std::move(r));
    }
    if (path == "/metrics") {
      http::Response r;
      r.content_type = "text/plain; version=0.0.4";
      r.body = impl_->metrics.renderPrometheus();
      return counted(std::move(r));
    }
    BufferStats stats = impl_->buffer.stats();
    HealthFields more;
    if (impl_->options.health_fields) more = impl_->options.health_fields();
    return counted(jsonResponse(
        200, std::string("{\"status\":\"") + (more.degraded ? "degraded" : "ok") +
                 "\",\"buffer_records\":" + std::to_string(stats.records) +
                 ",\"buffer_bytes\":" + std::to_string(stats.bytes) + more.json + "}"));
  }
  if (path.substr(0, kRecordsPrefix.size()) == kRecordsPrefix) {
    std::string_view source = path.substr(kRecordsPrefix.size());
    if (!source.empty() && source.find('/') == std::string_view::npos) {
      if (request.method != "POST") {
        http::Response r = http::jsonError(405, "use POST to send records");
        r.headers.emplace_back("Allow", "POST");
        return counted(std::move(r));
      }
      return impl_->ingest(source, request, counted, impl_);
    }
  }
  counted(
      http::jsonError(404, "no such path " + backquoted(path) +
                               "; use POST /v1/records/<source>, GET /healthz or GET /metrics"));
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
  } else {
    return respond(http::jsonError(
        415, "content type " + backquoted(type.empty() ? "(none)" : type) +
                 " is not accepted; send application/json or application/x-ndjson"));
  }
  if (request.body.find_first_not_of(" \t\r\n") == std::string::npos) {
    return respond(http::jsonError(
        400, "empty body: send a JSON object, a JSON array of objects, or NDJSON lines"));
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
  buffer.appendAsync(
      intake.takeRecords(), intake.takeRejects(),
      [self, respond, answer = std::move(answer), n_accepted,
       codes = std::move(codes)](Status status) mutable {
        // Runs on the buffer's committer thread: count and hand off, never block.
        if (status.isOk()) {
          self->accepted.inc(n_accepted);
          self->countRejects(codes);
          return respond(jsonResponse(200, std::move(answer)));
        }
        if (status.code() == Code::kResourceExhausted) {
          http::Response r = http::jsonError(
              503, "the agent's buffer is full; nothing was accepted; retry later (" +
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
