// IngestService: the agent's HTTP API (README "The ingest API"). It parses a
// request's records, runs them through the source's rules and appends the
// accepted records and the rejects to the DurableBuffer in one append.
//
// Guarantee: a 200 is sent only after the buffer's group commit of that
// append has been fsync'd, so an answered record survives a crash. Any other
// answer means nothing of the request was stored (400, 404, 413, 415, 503,
// 500): a client may retry the whole request. A request is never half-accepted.
// A request without a valid credential for its source (401, 403), from an
// origin the source does not allow (403) or past an open source's rate limit
// (429) is refused before its body is looked at: nothing of it is stored.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/buffer/durable_buffer.h"
#include "agent/ingest/ingest_tokens.h"
#include "shared/core/metrics.h"
#include "shared/http/http_server.h"
#include "shared/rules/rule_engine.h"

namespace branchline::agent {

// The answer to GET /health: whether the agent can forward (agent/health).
struct HealthAnswer {
  bool degraded = false;  // 503 when set, else 200
  std::string body;       // JSON
};

// Who may post to one source, and from which web pages (README "Authenticated
// ingest", "Web forms and browsers").
struct SourcePolicy {
  // auth = "none": no credential, but at most `rate_limit_per_minute` requests
  // per client address (then 429). Otherwise a bearer token of the source.
  bool open = false;
  uint64_t rate_limit_per_minute = 60;
  // Origins a browser may post from (CORS, preflight answered). A request
  // carrying any other Origin is refused (403), so a page elsewhere cannot
  // make a visitor's browser post.
  std::vector<std::string> cors_origins;
  std::string form_redirect;  // after an accepted form post: 303 to it
};

struct IngestOptions {
  size_t max_depth = 32;                   // JSON nesting past it: 400
  size_t max_records_per_request = 10000;  // past it: 413
  size_t max_record_bytes = 256 << 10;     // past it: that record is rejected (200)
  size_t max_field_bytes = 64 << 10;       // a string value past it: its record is rejected
  // Called for every GET /health, on the network thread; must not block.
  // Unset: /health answers 200 {"status":"ok"} (nothing to judge by).
  std::function<HealthAnswer()> health;
  // Per source; a source not listed needs a token and allows no origin.
  std::map<std::string, SourcePolicy, std::less<>> sources;
  // The tokens sources are checked against; must outlive the service. nullptr:
  // no token is valid (every token source answers 401).
  IngestTokenFile* tokens = nullptr;
  // When not empty, GET /metrics needs `Authorization: Bearer <metrics_token>`.
  std::string metrics_token;
};

class IngestService {
 public:
  // Registers its metrics in `metrics`. `buffer` and `metrics` must outlive the
  // service and every answer still pending in the buffer.
  IngestService(std::shared_ptr<const rules::RuleEngine> engine, DurableBuffer& buffer,
                MetricsRegistry& metrics, IngestOptions options = {});
  ~IngestService();

  // bl_agent_http_refused_total{reason} and bl_agent_http_connections, for
  // the http::Server's ServerOptions (refused, connections): transport and
  // request refusals share one counter. Valid for the service's life.
  LabeledCounter& httpRefused();
  Gauge& httpConnections();

  // The http::Handler: POST /v1/records/<source>, GET /healthz (liveness:
  // always 200 while serving), GET /health (can it forward: 200 or 503), GET /metrics.
  // Parses on the calling (network) thread; answers from the buffer's committer
  // thread once the append committed. Thread-safe.
  void handle(http::Request&& request, http::Respond respond);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace branchline::agent
