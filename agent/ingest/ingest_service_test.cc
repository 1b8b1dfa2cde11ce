#include "agent/ingest/ingest_service.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <boost/json.hpp>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "agent/health/agent_health.h"
#include "shared/http/http_test_client.h"
#include "shared/mqtt/broker_events.h"

namespace branchline::agent {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using http::testing::TestClient;

std::string customer(int i, std::string email = "") {
  if (email.empty()) email = "Person" + std::to_string(i) + "@Example.com";
  return R"({"external_id":"c-)" + std::to_string(i) + R"(","name":"Ada Lovelace","email":")" +
         email + R"(","channel":"Web","created_at":"2026-11-25T12:53:47+01:00",)" +
         R"("phone":"(415) 555-0132"})";
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/bl-ingest-test-XXXXXX";
    char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A real agent front end: rule engine, buffer on disk, service, server on port 0.
struct Agent {
  // The ingest tests below the auth ones post without credentials: unless a
  // test says otherwise, `customer` is an open source with no practical limit.
  static IngestOptions openByDefault(IngestOptions o) {
    if (o.sources.empty() && o.tokens == nullptr) {
      o.sources["customer"] = SourcePolicy{.open = true, .rate_limit_per_minute = 1000000};
    }
    return o;
  }
  explicit Agent(uint64_t max_buffer_bytes = 1ull << 30, IngestOptions options = {},
                 std::vector<rules::SourceSchema> schemas = {rules::defaultCustomerSchema()}) {
    options = openByDefault(std::move(options));
    auto engine = rules::RuleEngine::create(std::move(schemas));
    EXPECT_TRUE(engine.isOk()) << engine.status().toString();
    BufferOptions bo;
    bo.path = dir.path() / "buffer.db";
    bo.max_bytes = max_buffer_bytes;
    auto opened = DurableBuffer::open(bo);
    EXPECT_TRUE(opened.isOk()) << opened.status().toString();
    buffer = std::move(opened).value();
    service = std::make_unique<IngestService>(engine.value(), *buffer, metrics, options);
    http::ServerOptions so;
    so.max_body_bytes = 8 << 20;
    so.refused = &service->httpRefused();
    so.connections = &service->httpConnections();
    auto started = http::Server::start(so, [this](http::Request&& r, http::Respond respond) {
      service->handle(std::move(r), std::move(respond));
    });
    EXPECT_TRUE(started.isOk()) << started.status().toString();
    server = std::move(started).value();
  }
  ~Agent() {
    server.reset();
    service.reset();
    buffer.reset();
  }

  TempDir dir;
  MetricsRegistry metrics;
  std::unique_ptr<DurableBuffer> buffer;
  std::unique_ptr<IngestService> service;
  std::unique_ptr<http::Server> server;
};

struct Answer {
  int status = 0;
  json::value body;
  std::string text;
  std::string retry_after;
};

Answer post(Agent& agent, const std::string& body, const std::string& type = "application/json",
            const std::string& target = "/v1/records/customer") {
  TestClient client;
  Answer a;
  if (client.connect(agent.server->port())) return a;
  client.send("POST", target, body, type);  // a 413 may cut the upload short
  auto r = client.read();
  if (!r) return a;
  a.status = r->status;
  a.text = r->body;
  a.retry_after = r->header("Retry-After");
  json::error_code ec;
  a.body = json::parse(r->body, ec);
  return a;
}

bool healthy(Agent& agent) {
  TestClient client;
  if (client.connect(agent.server->port())) return false;
  auto r = client.request("GET", "/healthz");
  return r && r->status == 200 && r->body.find("\"status\":\"ok\"") != std::string::npos;
}

int64_t num(const json::value& v, const char* key) {
  if (!v.is_object() || !v.as_object().contains(key)) return -1;
  return v.at(key).as_int64();
}

std::string errorText(const Answer& a) {
  if (!a.body.is_object() || !a.body.as_object().contains("error")) return "";
  return std::string(a.body.at("error").as_string());
}

TEST(IngestServiceTest, AcceptsSingleObjectArrayAndNdjson) {
  Agent agent;
  Answer a = post(agent, customer(1));
  EXPECT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(a.text, R"({"accepted":1,"rejected":0,"errors":[]})");

  a = post(agent, "[" + customer(2) + "," + customer(3) + "," + customer(4) + "]",
           "application/json; charset=utf-8");
  EXPECT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 3);

  a = post(agent, customer(5) + "\n\n" + customer(6) + "\r\n", "application/x-ndjson");
  EXPECT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 2);

  a = post(agent, "[]");
  EXPECT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 0);

  EXPECT_EQ(agent.buffer->stats().records, 6u);
  auto batch = agent.buffer->formBatch({}, 0);
  ASSERT_TRUE(batch.isOk()) << batch.status().toString();
  ASSERT_TRUE(batch->has_value());
  ASSERT_EQ((*batch)->records.size(), 6u);
  std::set<std::string> keys;
  for (const auto& r : (*batch)->records) {
    EXPECT_EQ(r.source, "customer");
    EXPECT_GT(r.ingested_at_us, 0);
    keys.insert(r.key);
  }
  EXPECT_EQ(keys.size(), 6u);
  // The payload is the normalized record: lower-cased email, UTC time, E.164 phone.
  const std::string& payload = (*batch)->records[0].payload;
  EXPECT_NE(payload.find("person1@example.com"), std::string::npos) << payload;
  EXPECT_NE(payload.find("+14155550132"), std::string::npos) << payload;
}

struct BadInput {
  const char* name;
  std::string body;
  std::string content_type;
  std::string target;
  int status;
  std::string error_contains;
};

TEST(IngestServiceTest, BadInputGetsItsDocumentedAnswerAndHarmsNothing) {
  Agent agent;
  std::string deep(1000, '[');
  deep += std::string(1000, ']');
  std::string deep_object = "{\"a\":" + std::string(999, '[') + std::string(999, ']') + "}";
  const std::string path = "/v1/records/customer";
  std::vector<BadInput> table = {
      {"broken JSON", R"({"external_id": "x", )", "application/json", path, 400, "invalid JSON"},
      {"invalid UTF-8", "{\"external_id\":\"\xff\xfe\"}", "application/json", path, 400,
       "not valid UTF-8"},
      {"1,000-deep nesting", deep, "application/json", path, 400, "deeper than 32"},
      {"deep inside an object", deep_object, "application/json", path, 400, "deeper than 32"},
      {"20 MB body", "[" + std::string(20 << 20, ' ') + "]", "application/json", path, 413,
       "larger than"},
      {"wrong content type", customer(1), "text/plain", path, 415, "content type"},
      {"no content type", customer(1), "", path, 415, "content type"},
      {"unknown source", customer(1), "application/json", "/v1/records/nope", 404,
       "unknown source `nope`"},
      {"unknown path", customer(1), "application/json", "/v2/whatever", 404, "no such path"},
      {"empty body", "", "application/json", path, 400, "empty body"},
      {"blank body", " \n\r\n", "application/x-ndjson", path, 400, "empty body"},
      {"top-level scalar", "42", "application/json", path, 400, "object or an array"},
      {"trailing garbage", customer(1) + " x", "application/json", path, 400, "invalid JSON"},
      {"NDJSON where no line parses", "{\n[\n", "application/x-ndjson", path, 400,
       "no line of the NDJSON body"},
  };
  for (const auto& t : table) {
    SCOPED_TRACE(t.name);
    Answer a = post(agent, t.body, t.content_type, t.target);
    EXPECT_EQ(a.status, t.status) << a.text;
    EXPECT_NE(errorText(a).find(t.error_contains), std::string::npos) << a.text;
    EXPECT_TRUE(healthy(agent));
  }
  EXPECT_EQ(agent.buffer->stats().records, 0u);
  EXPECT_EQ(agent.buffer->stats().rejects, 0u);

  // NDJSON with one bad line: the rest is accepted, the bad line is a reject.
  // Indexes count non-blank lines: the bad line is the second record.
  Answer a = post(agent, customer(1) + "\n\n{\"external_id\": oops\n" + customer(2) + "\n",
                  "application/x-ndjson");
  EXPECT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 2);
  EXPECT_EQ(num(a.body, "rejected"), 1);
  ASSERT_EQ(a.body.at("errors").as_array().size(), 1u);
  const auto& err = a.body.at("errors").at(0);
  EXPECT_EQ(err.at("index").as_int64(), 1);
  EXPECT_EQ(err.at("field").as_string(), "");
  EXPECT_NE(std::string(err.at("reason").as_string()).find("invalid JSON"), std::string::npos);
  EXPECT_EQ(agent.buffer->stats().records, 2u);
  EXPECT_EQ(agent.buffer->stats().rejects, 1u);
  EXPECT_TRUE(healthy(agent));
}

TEST(IngestServiceTest, RejectsAreListedAndQuarantined) {
  Agent agent;
  std::string missing_email = R"({"external_id":"c-9","name":"N","channel":"web",)"
                              R"("created_at":"2026-01-01T00:00:00Z"})";
  Answer a = post(
      agent, "[" + customer(1) + "," + customer(2, "not-an-email") + ",7," + missing_email + "]");
  ASSERT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 1);
  EXPECT_EQ(num(a.body, "rejected"), 3);
  const auto& errors = a.body.at("errors").as_array();
  ASSERT_EQ(errors.size(), 3u);
  EXPECT_EQ(errors[0].at("index").as_int64(), 1);
  EXPECT_EQ(errors[0].at("field").as_string(), "email");
  EXPECT_EQ(errors[0].at("reason").as_string(), "not an email address");
  EXPECT_EQ(errors[1].at("index").as_int64(), 2);
  EXPECT_EQ(errors[1].at("reason").as_string(), "not a JSON object");
  EXPECT_EQ(errors[2].at("index").as_int64(), 3);
  EXPECT_EQ(errors[2].at("field").as_string(), "email");
  EXPECT_EQ(errors[2].at("reason").as_string(), "required field is missing");

  auto batch = agent.buffer->formBatch({}, 0);
  ASSERT_TRUE(batch.isOk()) << batch.status().toString();
  ASSERT_TRUE(batch->has_value());
  EXPECT_EQ((*batch)->records.size(), 1u);
  ASSERT_EQ((*batch)->rejects.size(), 3u);
  std::map<std::string, std::string> reasons_by_raw;
  for (const auto& r : (*batch)->rejects) {
    EXPECT_EQ(r.source, "customer");
    reasons_by_raw[r.raw] = r.reasons_json;
  }
  ASSERT_TRUE(reasons_by_raw.count("7"));
  EXPECT_EQ(reasons_by_raw["7"], R"([{"field":"","reason":"not a JSON object"}])");
  bool found_email = false;
  for (const auto& [raw, reasons] : reasons_by_raw) {
    if (raw.find("not-an-email") != std::string::npos) {
      found_email = true;
      EXPECT_EQ(reasons, R"([{"field":"email","reason":"not an email address"}])");
      EXPECT_TRUE(json::parse(raw).is_object());  // raw is the record as received
    }
  }
  EXPECT_TRUE(found_email);

  TestClient client;
  ASSERT_FALSE(client.connect(agent.server->port()));
  auto m = client.request("GET", "/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  EXPECT_EQ(m->content_type, "text/plain; version=0.0.4");
  EXPECT_NE(m->body.find("bl_agent_records_accepted_total 1\n"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("bl_agent_records_rejected_total{reason=\"invalid_email\"} 1\n"),
            std::string::npos);
  EXPECT_NE(m->body.find("bl_agent_records_rejected_total{reason=\"missing_field\"} 1\n"),
            std::string::npos);
  EXPECT_NE(m->body.find("bl_agent_records_rejected_total{reason=\"not_object\"} 1\n"),
            std::string::npos);
  EXPECT_NE(m->body.find("bl_agent_http_requests_total{status=\"200\"} 1\n"), std::string::npos);
}

TEST(IngestServiceTest, ErrorListIsCappedWithTruncatedFlag) {
  Agent agent;
  std::string body = "[";
  for (int i = 0; i < 1500; ++i) body += (i ? ",1" : "1");
  body += "]";
  Answer a = post(agent, body);
  ASSERT_EQ(a.status, 200) << a.text.substr(0, 200);
  EXPECT_EQ(num(a.body, "rejected"), 1500);
  EXPECT_EQ(a.body.at("errors").as_array().size(), 1000u);
  EXPECT_TRUE(a.body.at("truncated").as_bool());
  EXPECT_EQ(agent.buffer->stats().rejects, 1500u);
}

TEST(IngestServiceTest, TooManyRecordsIs413AndNothingAccepted) {
  IngestOptions options;
  options.max_records_per_request = 5;
  Agent agent(1ull << 30, options);
  std::string array = "[";
  std::string ndjson;
  for (int i = 0; i < 6; ++i) {
    array += (i ? "," : "") + customer(i);
    ndjson += customer(i) + "\n";
  }
  array += "]";
  Answer a = post(agent, array);
  EXPECT_EQ(a.status, 413) << a.text;
  EXPECT_NE(errorText(a).find("more than 5 records"), std::string::npos) << a.text;
  a = post(agent, ndjson, "application/x-ndjson");
  EXPECT_EQ(a.status, 413) << a.text;
  EXPECT_EQ(agent.buffer->stats().records, 0u);
}

TEST(IngestServiceTest, FullBufferAnswers503WithRetryAfterAndAcceptsNothing) {
  Agent agent(/*max_buffer_bytes=*/300);
  Answer a = post(agent, "[" + customer(1) + "," + customer(2) + "," + customer(3) + "]");
  EXPECT_EQ(a.status, 503) << a.text;
  EXPECT_EQ(a.retry_after, "1");
  EXPECT_NE(errorText(a).find("is full; nothing was accepted"), std::string::npos) << a.text;
  EXPECT_EQ(agent.buffer->stats().records, 0u);
  EXPECT_EQ(agent.buffer->stats().rejects, 0u);
  EXPECT_TRUE(healthy(agent));
}

TEST(IngestServiceTest, ConcurrentClientsAreAllCommitted) {
  Agent agent;
  constexpr int kClients = 8;
  constexpr int kRequests = 10;
  constexpr int kPerRequest = 50;
  std::atomic<int> accepted{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      TestClient client;
      if (client.connect(agent.server->port())) return;
      for (int r = 0; r < kRequests; ++r) {
        std::string body;
        for (int i = 0; i < kPerRequest; ++i) {
          body += customer((c * kRequests + r) * kPerRequest + i) + "\n";
        }
        auto resp = client.request("POST", "/v1/records/customer", body, "application/x-ndjson");
        if (resp && resp->status == 200) {
          accepted += static_cast<int>(json::parse(resp->body).at("accepted").as_int64());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(accepted.load(), kClients * kRequests * kPerRequest);
  EXPECT_EQ(agent.buffer->stats().records, uint64_t{kClients * kRequests * kPerRequest});
}

std::string metricsText(Agent& agent) {
  TestClient client;
  if (client.connect(agent.server->port())) return "";
  auto m = client.request("GET", "/metrics");
  return m ? m->body : "";
}

// A customer record whose `notes` field holds `notes_bytes` bytes.
std::string customerWithNotes(int i, size_t notes_bytes) {
  std::string c = customer(i);
  c.pop_back();
  return c + R"(,"notes":")" + std::string(notes_bytes, 'n') + "\"}";
}

TEST(IngestServiceTest, ARecordOverThePerRecordLimitIsRejectedAndTheOthersAccepted) {
  IngestOptions options;
  options.max_record_bytes = 2048;
  Agent agent(1ull << 30, options);
  // NDJSON: the big line is rejected unparsed; the lines around it are accepted.
  Answer a =
      post(agent, customer(1) + "\n" + customerWithNotes(2, 3000) + "\n" + customer(3) + "\n",
           "application/x-ndjson");
  ASSERT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 2);
  EXPECT_EQ(num(a.body, "rejected"), 1);
  ASSERT_EQ(a.body.at("errors").as_array().size(), 1u);
  const auto& err = a.body.at("errors").at(0);
  EXPECT_EQ(err.at("index").as_int64(), 1);
  EXPECT_EQ(err.at("field").as_string(), "");
  EXPECT_NE(std::string(err.at("reason").as_string()).find("over the limit of 2048 bytes"),
            std::string::npos)
      << a.text;

  // A JSON array: the same for its element; a single object alone is rejected too.
  a = post(agent, "[" + customer(4) + "," + customerWithNotes(5, 3000) + "]");
  ASSERT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 1);
  EXPECT_EQ(num(a.body, "rejected"), 1);
  EXPECT_EQ(a.body.at("errors").at(0).at("index").as_int64(), 1);
  a = post(agent, customerWithNotes(6, 3000));
  ASSERT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "rejected"), 1);
  // Just under the limit passes.
  a = post(agent, customerWithNotes(7, 1500));
  ASSERT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 1);

  EXPECT_EQ(agent.buffer->stats().records, 4u);
  EXPECT_EQ(agent.buffer->stats().rejects, 3u);  // quarantined with their reason
  EXPECT_NE(
      metricsText(agent).find("bl_agent_records_rejected_total{reason=\"record_too_large\"} 3\n"),
      std::string::npos);
}

TEST(IngestServiceTest, AStringOverThePerFieldLimitRejectsItsRecordNamingTheField) {
  IngestOptions options;
  options.max_field_bytes = 1024;  // the schema's own notes limit is 4,096 characters
  Agent agent(1ull << 30, options);
  std::string nested = customer(2);
  nested.pop_back();
  nested += R"(,"extra":{"deep":[")" + std::string(2000, 'x') + R"("]}})";
  Answer a = post(agent, "[" + customerWithNotes(1, 2000) + "," + nested + "," + customer(3) + "," +
                             customerWithNotes(4, 1000) + "]");
  ASSERT_EQ(a.status, 200) << a.text;
  EXPECT_EQ(num(a.body, "accepted"), 2);
  EXPECT_EQ(num(a.body, "rejected"), 2);
  const auto& errors = a.body.at("errors").as_array();
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].at("index").as_int64(), 0);
  EXPECT_EQ(errors[0].at("field").as_string(), "notes");
  EXPECT_EQ(errors[0].at("reason").as_string(),
            "value is 2000 bytes, over the limit of 1024 bytes per field");
  EXPECT_EQ(errors[1].at("index").as_int64(), 1);
  EXPECT_EQ(errors[1].at("field").as_string(), "extra");  // the top-level field holding it
  EXPECT_NE(
      metricsText(agent).find("bl_agent_records_rejected_total{reason=\"field_too_large\"} 2\n"),
      std::string::npos);
}

TEST(IngestServiceTest, RefusalsAreCountedByReason) {
  IngestOptions options;
  options.max_records_per_request = 2;
  Agent agent(1ull << 30, options);
  std::string deep(100, '[');
  deep += std::string(100, ']');
  EXPECT_EQ(post(agent, deep).status, 400);
  EXPECT_EQ(post(agent, "{oops").status, 400);
  EXPECT_EQ(post(agent, "[" + customer(1) + "," + customer(2) + "," + customer(3) + "]").status,
            413);
  EXPECT_EQ(post(agent, "[" + std::string(9 << 20, ' ') + "]").status, 413);
  {
    TestClient client;
    ASSERT_FALSE(client.connect(agent.server->port()));
    client.writeRaw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 << 10, 'a') +
                    "\r\n\r\n");
    auto r = client.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 431);
    EXPECT_NE(r->body.find("\"error\":"), std::string::npos);
  }
  EXPECT_EQ(agent.buffer->stats().records, 0u);
  // The server notices the 431 client's close asynchronously: wait (bounded)
  // until only the metrics request's own connection is open.
  std::string text = metricsText(agent);
  for (int i = 0; i < 100 && text.find("bl_agent_http_connections 1\n") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    text = metricsText(agent);
  }
  for (const char* line : {"bl_agent_http_refused_total{reason=\"too_deep\"} 1\n",
                           "bl_agent_http_refused_total{reason=\"invalid_json\"} 1\n",
                           "bl_agent_http_refused_total{reason=\"too_many_records\"} 1\n",
                           "bl_agent_http_refused_total{reason=\"body_too_large\"} 1\n",
                           "bl_agent_http_refused_total{reason=\"header_too_large\"} 1\n",
                           "bl_agent_http_connections 1\n"}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << text;
  }
}

TEST(IngestServiceTest, WrongMethodIs405) {
  Agent agent;
  TestClient client;
  ASSERT_FALSE(client.connect(agent.server->port()));
  auto r = client.request("GET", "/v1/records/customer");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->header("Allow"), "POST, OPTIONS");
}

// --- GET /health and GET /healthz (README "Health") -------------------------

struct HealthProbe {
  int status = 0;
  json::value body;
  std::string text;
};

HealthProbe get(Agent& agent, const std::string& path) {
  TestClient client;
  HealthProbe p;
  if (client.connect(agent.server->port())) return p;
  auto r = client.request("GET", path);
  if (!r) return p;
  p.status = r->status;
  p.text = r->body;
  json::error_code ec;
  p.body = json::parse(r->body, ec);
  return p;
}

std::set<std::string> reasonsOf(const HealthProbe& p) {
  std::set<std::string> out;
  if (!p.body.is_object() || !p.body.as_object().contains("reasons")) return out;
  for (const auto& r : p.body.at("reasons").as_array()) out.emplace(r.as_string());
  return out;
}

TEST(IngestHealthTest, WithoutAHealthCheckHealthIsOk) {
  Agent agent;
  const HealthProbe h = get(agent, "/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.text, R"({"status":"ok"})");
  TestClient client;
  ASSERT_FALSE(client.connect(agent.server->port()));
  auto posted = client.request("POST", "/health");
  ASSERT_TRUE(posted);
  EXPECT_EQ(posted->status, 405);
}

// The buffer's damaged count comes from DurableBuffer::stats(); here the
// stats the check reads are the real buffer's with damaged rows added, as a
// buffer that moved rows aside reports them.
TEST(IngestHealthTest, DamagedRowsAnswer503WhileHealthzStays200) {
  std::atomic<uint64_t> damaged{0};
  std::atomic<const DurableBuffer*> source{nullptr};
  IngestOptions options;
  options.health = [&] {
    HealthInputs in;
    in.forwarding.connected = true;
    in.buffer = source.load()->stats();
    in.buffer.damaged = damaged.load();
    in.buffer_max_bytes = 1ull << 30;
    const HealthVerdict v = judgeHealth(in, {});
    return HealthAnswer{!v.ok(), v.json()};
  };
  Agent agent(1ull << 30, options);
  source.store(agent.buffer.get());
  EXPECT_EQ(get(agent, "/health").text, R"({"status":"ok"})");

  damaged.store(2);
  const HealthProbe h = get(agent, "/health");
  EXPECT_EQ(h.status, 503) << h.text;
  EXPECT_EQ(h.text, R"({"status":"degraded","reasons":["buffer_damaged"]})");
  EXPECT_TRUE(healthy(agent)) << "liveness must not follow forwarding health";
  // Still taking records: degraded is about forwarding.
  EXPECT_EQ(post(agent, customer(1)).status, 200);
}

// The real check over the real buffer: bytes past buffer_full_ratio of max_bytes.
TEST(IngestHealthTest, BufferPastTheRatioIsNearlyFull) {
  MetricsRegistry health_metrics;
  mqtt::BrokerEvents broker(health_metrics, "bl_test", "health-test");
  std::atomic<const AgentHealth*> check{nullptr};
  IngestOptions options;
  options.health = [&] {
    const HealthVerdict v = check.load()->check();
    return HealthAnswer{!v.ok(), v.json()};
  };
  constexpr uint64_t kMaxBytes = 4000;
  Agent agent(kMaxBytes, options);
  HealthThresholds thresholds;
  thresholds.broker_unreachable = std::chrono::hours(1);  // no forwarder here
  thresholds.buffer_full_ratio = 0.5;
  AgentHealth health(*agent.buffer, kMaxBytes, broker, thresholds, health_metrics);
  check.store(&health);
  EXPECT_EQ(get(agent, "/health").status, 200);

  int i = 0;
  while (agent.buffer->stats().bytes <= kMaxBytes / 2) {
    ASSERT_EQ(post(agent, customer(i++)).status, 200) << "full before half full?";
    ASSERT_LT(i, 100);
  }
  const HealthProbe h = get(agent, "/health");
  EXPECT_EQ(h.status, 503) << h.text;
  EXPECT_EQ(reasonsOf(h), std::set<std::string>{"buffer_nearly_full"}) << h.text;
  EXPECT_TRUE(healthy(agent));
  EXPECT_NE(health_metrics.renderPrometheus().find("bl_agent_health_degraded 1"),
            std::string::npos);
}

// --- Authenticated ingest (README "Authenticated ingest") -------------------

// One raw request with extra header lines; the answer (nullopt: connection failed).
std::optional<http::testing::ClientResponse> rawPost(Agent& agent, const std::string& target,
                                                     const std::string& headers,
                                                     const std::string& body,
                                                     const std::string& method = "POST") {
  TestClient client;
  if (client.connect(agent.server->port())) return std::nullopt;
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: x\r\n" + headers;
  if (!body.empty()) {
    req +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  if (client.writeRaw(req)) return std::nullopt;
  return client.read();
}

std::string bearer(const std::string& token) { return "Authorization: Bearer " + token + "\r\n"; }

// Two token sources, customer and lead (the same rules), checked against a real token file.
struct AuthAgent {
  AuthAgent() : tokens(dir.path() / "ingest_tokens", std::chrono::milliseconds(0)) {
    std::string made;
    EXPECT_TRUE(updateIngestTokens(dir.path() / "ingest_tokens", [&](IngestTokens& t) {
                  auto a = t.add({"customer"}, 1700000000);
                  auto b = t.add({"lead"}, 1700000001);
                  if (!a.isOk() || !b.isOk()) return Status::internal("add");
                  customer_token = *a;
                  lead_token = *b;
                  return Status::ok();
                }).isOk());
    EXPECT_TRUE(tokens.loadNow().isOk());
  }
  TempDir dir;
  std::string customer_token, lead_token;
  IngestTokenFile tokens;
};

std::vector<rules::SourceSchema> customerAndLead() {
  rules::SourceSchema lead = rules::defaultCustomerSchema();
  lead.name = "lead";
  return {rules::defaultCustomerSchema(), lead};
}

TEST(IngestAuthTest, NoWrongOtherSourceOrRevokedTokenIsRefusedAndNothingIsStored) {
  AuthAgent auth;
  IngestOptions options;
  options.tokens = &auth.tokens;
  Agent agent(1ull << 30, options, customerAndLead());
  auto at = [&](const std::string& headers, const std::string& source = "customer") {
    TestClient client;
    EXPECT_FALSE(client.connect(agent.server->port()));
    const std::string body = customer(1);
    client.writeRaw("POST /v1/records/" + source + " HTTP/1.1\r\nHost: x\r\n" + headers +
                    "Content-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n" + body);
    auto r = client.read();
    EXPECT_TRUE(r);
    return r ? *r : http::testing::ClientResponse{};
  };
  auto none = at("");
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(none.header("WWW-Authenticate"), "Bearer realm=\"branchline\"");
  auto wrong_secret = auth.customer_token;
  wrong_secret.back() = wrong_secret.back() == '0' ? '1' : '0';
  auto wrong = at(bearer(wrong_secret));
  EXPECT_EQ(wrong.status, 401);
  EXPECT_NE(wrong.header("WWW-Authenticate").find("invalid_token"), std::string::npos);
  EXPECT_EQ(at(bearer("not-a-token")).status, 401);
  EXPECT_EQ(at("Authorization: Basic dXNlcjpwYXNz\r\n").status, 401);
  auto other = at(bearer(auth.lead_token));
  EXPECT_EQ(other.status, 403) << other.body;
  EXPECT_EQ(agent.buffer->stats().records, 0u) << "a refused request stored something";

  EXPECT_EQ(at(bearer(auth.customer_token)).status, 200);
  EXPECT_EQ(at(bearer(auth.lead_token), "lead").status, 200);
  EXPECT_EQ(at("authorization: bearer   " + auth.customer_token + "\r\n").status, 200)
      << "the scheme is case-insensitive";
  EXPECT_EQ(agent.buffer->stats().records, 3u);

  // Revoked: the file changes under the running service, which rereads it.
  ASSERT_TRUE(updateIngestTokens(auth.dir.path() / "ingest_tokens", [&](IngestTokens& t) {
                return t.revoke(tokenId(auth.customer_token)) ? Status::ok()
                                                              : Status::notFound("id");
              }).isOk());
  EXPECT_EQ(at(bearer(auth.customer_token)).status, 401);
  EXPECT_EQ(at(bearer(auth.lead_token), "lead").status, 200) << "the other token still works";
  EXPECT_EQ(agent.buffer->stats().records, 4u);

  TestClient client;
  ASSERT_FALSE(client.connect(agent.server->port()));
  auto m = client.request("GET", "/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("bl_agent_http_refused_total{reason=\"unauthenticated\"} 5\n"),
            std::string::npos)
      << m->body;
  EXPECT_NE(m->body.find("bl_agent_http_refused_total{reason=\"forbidden\"} 1\n"),
            std::string::npos);
}

TEST(IngestAuthTest, WithoutATokenFileEveryTokenSourceAnswers401) {
  IngestOptions options;
  options.sources["customer"] = SourcePolicy{};  // the default: auth = "token"
  Agent agent(1ull << 30, options);
  auto r = rawPost(agent, "/v1/records/customer", "", customer(1));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(agent.buffer->stats().records, 0u);
}

TEST(IngestAuthTest, OpenSourceIsRateLimitedPerClientAddress) {
  IngestOptions options;
  options.sources["customer"] = SourcePolicy{.open = true, .rate_limit_per_minute = 3};
  Agent agent(1ull << 30, options);
  for (int i = 0; i < 3; ++i) {
    auto r = rawPost(agent, "/v1/records/customer", "", customer(i));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << i << r->body;
  }
  auto limited = rawPost(agent, "/v1/records/customer", "", customer(9));
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429) << limited->body;
  EXPECT_GE(std::stoi(limited->header("Retry-After")), 1);
  EXPECT_EQ(agent.buffer->stats().records, 3u);
  EXPECT_NE(metricsText(agent).find("bl_agent_http_refused_total{reason=\"rate_limited\"} 1\n"),
            std::string::npos);
}

TEST(IngestAuthTest, MetricsNeedTheMetricsTokenWhenOneIsSetAndHealthNeverDoes) {
  IngestOptions options;
  options.metrics_token = "scrape-secret-123";
  Agent agent(1ull << 30, options);
  auto bare = rawPost(agent, "/metrics", "", "", "GET");
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->status, 401);
  EXPECT_EQ(bare->body.find("bl_agent_"), std::string::npos) << "metrics leaked";
  auto wrong = rawPost(agent, "/metrics", bearer("scrape-secret-124"), "", "GET");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  auto right = rawPost(agent, "/metrics", bearer("scrape-secret-123"), "", "GET");
  ASSERT_TRUE(right);
  EXPECT_EQ(right->status, 200);
  EXPECT_NE(right->body.find("bl_agent_http_refused_total"), std::string::npos);
  auto health = rawPost(agent, "/healthz", "", "", "GET");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST(IngestAuthTest, CorsPreflightAndOriginsAreCheckedPerSource) {
  IngestOptions options;
  options.sources["customer"] = SourcePolicy{
      .open = true, .rate_limit_per_minute = 1000, .cors_origins = {"https://forms.example.com"}};
  Agent agent(1ull << 30, options);
  auto pre = rawPost(agent, "/v1/records/customer",
                     "Origin: https://forms.example.com\r\nAccess-Control-Request-Method: "
                     "POST\r\nAccess-Control-Request-Headers: content-type\r\n",
                     "", "OPTIONS");
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->status, 204);
  EXPECT_EQ(pre->header("Access-Control-Allow-Origin"), "https://forms.example.com");
  EXPECT_EQ(pre->header("Access-Control-Allow-Methods"), "POST");
  EXPECT_NE(pre->header("Access-Control-Allow-Headers").find("Content-Type"), std::string::npos);

  auto evil = rawPost(agent, "/v1/records/customer",
                      "Origin: https://evil.example.net\r\nAccess-Control-Request-Method: POST\r\n",
                      "", "OPTIONS");
  ASSERT_TRUE(evil);
  EXPECT_EQ(evil->status, 403);
  EXPECT_EQ(evil->header("Access-Control-Allow-Origin"), "");

  auto allowed =
      rawPost(agent, "/v1/records/customer", "Origin: https://forms.example.com\r\n", customer(1));
  ASSERT_TRUE(allowed);
  EXPECT_EQ(allowed->status, 200);
  EXPECT_EQ(allowed->header("Access-Control-Allow-Origin"), "https://forms.example.com");
  auto refused =
      rawPost(agent, "/v1/records/customer", "Origin: https://evil.example.net\r\n", customer(2));
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 403);
  EXPECT_EQ(agent.buffer->stats().records, 1u) << "a post from a foreign origin was stored";
}

TEST(IngestTokensTest, ParseRenderAndCheck) {
  IngestTokens tokens;
  auto a = tokens.add({"customer", "lead"}, 1700000000);
  ASSERT_TRUE(a.isOk());
  EXPECT_EQ(a->size(), 77u);
  EXPECT_EQ(tokenId(*a).size(), 8u);
  const std::string text = tokens.render();
  EXPECT_EQ(text.find(*a), std::string::npos) << "the file must never hold the token";
  EXPECT_EQ(text.find(a->substr(14)), std::string::npos);
  auto back = IngestTokens::parse(text);
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(back->check("Bearer " + *a, "lead"), IngestTokens::Verdict::kOk);
  EXPECT_EQ(back->check("Bearer " + *a, "other"), IngestTokens::Verdict::kWrongSource);
  EXPECT_EQ(back->check("", "lead"), IngestTokens::Verdict::kMissing);
  EXPECT_EQ(back->check("Bearer " + *a + " x", "lead"), IngestTokens::Verdict::kUnknown);
  EXPECT_EQ(back->check("Bearer " + a->substr(0, 76), "lead"), IngestTokens::Verdict::kUnknown);
  std::string upper = *a;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(back->check("Bearer " + upper, "lead"), IngestTokens::Verdict::kUnknown);
  EXPECT_FALSE(IngestTokens::parse("abcd1234 1 customer " + std::string(64, 'g')).isOk());
  EXPECT_FALSE(IngestTokens::parse("abcd1234 1  " + std::string(64, 'a')).isOk());
  const std::string line = "abcd1234 1 customer " + std::string(64, 'a') + "\n";
  EXPECT_TRUE(IngestTokens::parse(line).isOk());
  EXPECT_FALSE(IngestTokens::parse(line + line).isOk()) << "duplicate id";
}

TEST(IngestTokensTest, TheFileIsPrivateAndAWiderModeIsRefused) {
  TempDir dir;
  const fs::path file = dir.path() / "ingest_tokens";
  ASSERT_TRUE(updateIngestTokens(file, [](IngestTokens& t) {
                return t.add({"customer"}, 1).status();
              }).isOk());
  EXPECT_EQ(fs::status(file).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  fs::permissions(file, fs::perms::group_read, fs::perm_options::add);
  auto read = readIngestTokens(file);
  EXPECT_EQ(read.status().code(), Code::kPermissionDenied) << read.status().toString();
}

TEST(IngestFormTest, AnAcceptedFormPostRedirectsAndARejectedOneAnswersJson) {
  IngestOptions options;
  options.sources["customer"] = SourcePolicy{
      .open = true, .rate_limit_per_minute = 1000, .form_redirect = "https://example.com/thanks"};
  Agent agent(1ull << 30, options);
  const std::string good =
      "external_id=f-1&name=Ada+Lovelace&email=ada%40example.com&channel=web"
      "&created_at=2026-11-25T10%3A00%3A00Z";
  auto r = post(agent, good, "application/x-www-form-urlencoded");
  EXPECT_EQ(r.status, 303) << r.text;
  {
    TestClient client;
    ASSERT_FALSE(client.connect(agent.server->port()));
    client.send("POST", "/v1/records/customer", good, "application/x-www-form-urlencoded");
    auto raw = client.read();
    ASSERT_TRUE(raw);
    EXPECT_EQ(raw->status, 303);
    EXPECT_EQ(raw->header("Location"), "https://example.com/thanks");
  }
  auto bad = post(agent, "external_id=f-2&email=nope", "application/x-www-form-urlencoded");
  EXPECT_EQ(bad.status, 200) << bad.text;
  EXPECT_EQ(num(bad.body, "rejected"), 1);
  auto broken = post(agent, "external_id=%zz", "application/x-www-form-urlencoded");
  EXPECT_EQ(broken.status, 400) << broken.text;
  auto twice = post(agent, "external_id=a&external_id=b", "application/x-www-form-urlencoded");
  EXPECT_EQ(twice.status, 400) << twice.text;
  const std::string upload =
      "--b\r\nContent-Disposition: form-data; name=\"external_id\"; filename=\"x.txt\"\r\n\r\n"
      "x\r\n--b--\r\n";
  auto file = post(agent, upload, "multipart/form-data; boundary=b");
  EXPECT_EQ(file.status, 400) << file.text;
  EXPECT_EQ(agent.buffer->stats().records, 2u)
      << "the accepted form (twice); the rest stored nothing";
  EXPECT_NE(metricsText(agent).find("bl_agent_http_refused_total{reason=\"invalid_form\"} 3\n"),
            std::string::npos);
}

}  // namespace
}  // namespace branchline::agent
