#include "tests/integration/pipeline_fixture.h"

#include <libpq-fe.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>
#include <thread>

#include "cli/loadgen/record_generator.h"
#include "cli/net/http_client.h"
#include "shared/rules/rule_engine.h"

namespace branchline::testing {
namespace {

struct Db {
  sqlite3* db = nullptr;
  explicit Db(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
      sqlite3_close(db);
      db = nullptr;
    } else {
      sqlite3_busy_timeout(db, 5000);
    }
  }
  ~Db() { sqlite3_close(db); }
};

// CI keeps no pipeline directory: on a failure, each process log's warnings
// and errors (counted by event, then the last few) go to stderr instead.
void reportLogsOnFailure(const std::string& dir) {
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) return;
    if (!it->is_regular_file() || it->path().extension() != ".log") continue;
    std::ifstream in(it->path());
    std::map<std::string, int> by_event;
    std::deque<std::string> last;
    std::string line;
    while (std::getline(in, line)) {
      const bool notable = line.find("\"level\":\"warn") != std::string::npos ||
                           line.find("\"level\":\"error") != std::string::npos ||
                           line.find("Error") != std::string::npos ||
                           line.find("Warning") != std::string::npos;
      if (!notable) continue;
      const size_t at = line.find("\"event\":\"");
      const std::string event = at == std::string::npos
                                    ? "(other)"
                                    : line.substr(at + 9, line.find('"', at + 9) - (at + 9));
      ++by_event[event];
      last.push_back(line.substr(0, 400));
      if (last.size() > 12) last.pop_front();
    }
    if (by_event.empty()) continue;
    std::fprintf(stderr, "--- %s: warnings and errors by event:", it->path().filename().c_str());
    for (const auto& [event, n] : by_event) std::fprintf(stderr, " %s=%d", event.c_str(), n);
    std::fprintf(stderr, "\n");
    for (const auto& l : last) std::fprintf(stderr, "    %s\n", l.c_str());
  }
}

}  // namespace

double metricValue(const std::string& text, const std::string& name) {
  size_t pos = 0;
  while ((pos = text.find(name, pos)) != std::string::npos) {
    bool line_start = pos == 0 || text[pos - 1] == '\n';
    size_t after = pos + name.size();
    if (line_start && after < text.size() && text[after] == ' ') {
      return std::stod(text.substr(after + 1, text.find('\n', after) - after - 1));
    }
    pos = after;
  }
  return -1;
}

double scrapeMetric(const std::string& base_url, const std::string& name) {
  auto m = cli::httpGet(base_url + "/metrics", std::chrono::milliseconds(5000));
  if (!m.isOk() || m->status != 200) return -1;
  return metricValue(m->body, name);
}

std::string customerNdjson(const std::string& prefix, int n, const std::string& notes) {
  std::string body;
  for (int i = 0; i < n; ++i) {
    body += R"({"external_id":")" + prefix + "-" + std::to_string(i) +
            R"(","name":"Ada","email":"ada@example.com","channel":"web",)"
            R"("created_at":"2026-11-25T10:00:00Z")";
    if (!notes.empty()) body += R"(,"notes":")" + notes + "\"";
    body += "}\n";
  }
  return body;
}

void postCustomerRecords(const std::string& agent_url, const std::string& token,
                         const std::string& prefix, int n) {
  const std::string body = customerNdjson(prefix, n);
  auto url = cli::parseUrl(agent_url);
  ASSERT_TRUE(url.isOk()) << agent_url;
  cli::HttpConnection conn(url->host, url->port, cli::HttpClientOptions{.bearer_token = token});
  auto r = conn.request("POST", "/v1/records/customer", "application/x-ndjson", body,
                        std::chrono::seconds(30));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  ASSERT_EQ(r->status, 200) << r->body;
}

bool isPostgres(const std::string& store) { return store.rfind("postgresql://", 0) == 0; }

// Runs `sql` on PostgreSQL; each row's values as text. Empty on failure.
std::vector<std::vector<std::string>> pgRows(const std::string& url, const std::string& sql) {
  std::vector<std::vector<std::string>> rows;
  PGconn* conn = PQconnectdb(url.c_str());
  if (PQstatus(conn) == CONNECTION_OK) {
    PGresult* res = PQexec(conn, sql.c_str());
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
      for (int r = 0; r < PQntuples(res); ++r) {
        std::vector<std::string> row;
        for (int c = 0; c < PQnfields(res); ++c) {
          row.emplace_back(PQgetvalue(res, r, c), static_cast<size_t>(PQgetlength(res, r, c)));
        }
        rows.push_back(std::move(row));
      }
    }
    PQclear(res);
  }
  PQfinish(conn);
  return rows;
}

int64_t queryInt(const std::string& db_path, const std::string& sql) {
  if (isPostgres(db_path)) {
    auto rows = pgRows(db_path, sql);
    if (rows.empty() || rows[0].empty() || rows[0][0].empty()) return -1;
    return std::stoll(rows[0][0]);
  }
  if (!std::filesystem::exists(db_path)) return -1;
  Db db(db_path);
  if (!db.db) return -1;
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db.db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) return -1;
  int64_t v = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) v = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  return v;
}

std::map<std::string, StoredRecord> readRecords(const std::string& db_path) {
  std::map<std::string, StoredRecord> out;
  if (isPostgres(db_path)) {
    for (auto& row : pgRows(db_path,
                            "SELECT record_key, payload, agent_id FROM records "
                            "WHERE source = 'customer'")) {
      out[row[0]] = {std::move(row[1]), std::move(row[2])};
    }
    return out;
  }
  Db db(db_path);
  if (!db.db) return out;
  sqlite3_stmt* stmt = nullptr;
  const char* sql = "SELECT record_key, payload, agent_id FROM records WHERE source = 'customer'";
  if (sqlite3_prepare_v2(db.db, sql, -1, &stmt, nullptr) != SQLITE_OK) return out;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    auto text = [&](int i) {
      const unsigned char* p = sqlite3_column_text(stmt, i);
      return std::string(p ? reinterpret_cast<const char*>(p) : "",
                         static_cast<size_t>(sqlite3_column_bytes(stmt, i)));
    };
    out[text(0)] = {text(1), text(2)};
  }
  sqlite3_finalize(stmt);
  return out;
}

// On a failure, what each live process says about itself: /healthz (and an
// agent's /health, which names why it cannot forward) and the metrics that
// tell a stall from a loss (connection, window, refusals).
void PipelineTest::reportProcessStates() const {
  if (!pipeline_) return;
  const auto agents = pipeline_->agentUrls();
  auto urls = agents;
  for (const auto& u : pipeline_->aggregatorUrls()) urls.push_back(u);
  for (const auto& url : urls) {
    const bool agent = std::find(agents.begin(), agents.end(), url) != agents.end();
    for (const char* path : {"/healthz", "/health"}) {
      if (!agent && std::string_view(path) == "/health") continue;
      auto h = cli::httpGet(url + path, std::chrono::milliseconds(2000));
      std::fprintf(stderr, "--- %s%s: %s\n", url.c_str(), path,
                   h.isOk() ? h->body.substr(0, 600).c_str() : h.status().toString().c_str());
    }
    auto m = cli::httpGet(url + "/metrics", std::chrono::milliseconds(2000));
    if (!m.isOk()) continue;
    std::istringstream lines(m->body);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.empty() || line[0] == '#') continue;
      for (const char* key : {"connected", "in_flight", "buffer_records", "refused", "dropped",
                              "resent", "published", "acks", "stored_total", "queue_bytes"}) {
        if (line.find(key) != std::string::npos) {
          std::fprintf(stderr, "    %s\n", line.c_str());
          break;
        }
      }
    }
  }
}

void PipelineTest::TearDown() {
  if (HasFailure()) reportProcessStates();
  if (pipeline_) pipeline_->stop();
  pipeline_.reset();
  postgres_.reset();
  const bool keep = HasFailure() || std::getenv("BRANCHLINE_KEEP_TEST_DIR") != nullptr;
  if (!dir_.empty() && !keep) std::filesystem::remove_all(dir_);
  if (HasFailure() && !dir_.empty()) {
    reportLogsOnFailure(dir_);
    std::fprintf(stderr, "pipeline dir kept for inspection: %s\n", dir_.c_str());
  }
}

void PipelineTest::startPipeline(int agents, int aggregators,
                                 std::map<std::string, std::string> agent_overrides) {
  dir_ = cli::makePipelineTempDir("branchline-it");
  ASSERT_FALSE(dir_.empty());
  cli::PipelineOptions options;
  options.dir = dir_ + "/pipeline";
  options.agents = agents;
  options.aggregators = aggregators;
  const char* bin = std::getenv("BRANCHLINE_BIN_DIR");
  ASSERT_NE(bin, nullptr) << "BRANCHLINE_BIN_DIR must point at build/bin";
  options.bin_dir = std::filesystem::absolute(bin).string();
  options.agent_overrides = std::move(agent_overrides);
  store_ = options.dir + "/central.db";
  if (const char* backend = std::getenv("BRANCHLINE_TEST_STORE");
      backend != nullptr && std::string(backend) == "postgresql") {
    auto server = PostgresServer::create();
    ASSERT_TRUE(server.isOk()) << server.status().toString();
    postgres_ = std::move(server).value();
    ASSERT_TRUE(postgres_->createDatabase("branchline").isOk());
    options.store_url = postgres_->url("branchline");
    store_ = options.store_url;
  }
  pipeline_ = std::make_unique<cli::LocalPipeline>(options);
  Status s = pipeline_->start();
  ASSERT_TRUE(s.isOk()) << s.toString();
  if (postgres_) {
    // The aggregators write to PostgreSQL, not to a SQLite file beside them.
    ASSERT_FALSE(std::filesystem::exists(options.dir + "/central.db"));
    ASSERT_GE(queryInt(store_, "SELECT COUNT(*) FROM schema_version"), 1);
  }
}

bool PipelineTest::waitForDrain(int64_t records, int64_t rejects, int timeout_s) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  const std::string db = store_;
  while (std::chrono::steady_clock::now() < deadline) {
    int64_t r = queryInt(db, "SELECT COUNT(*) FROM records");
    int64_t j = queryInt(db, "SELECT COUNT(*) FROM rejects");
    if (r >= records && j >= rejects) {
      bool buffers_empty = true;
      for (const auto& url : pipeline_->agentUrls()) {
        auto m = cli::httpGet(url + "/metrics", std::chrono::milliseconds(5000));
        if (!m.isOk() || m->status != 200 || metricValue(m->body, "bl_agent_buffer_records") != 0) {
          buffers_empty = false;
        }
      }
      if (buffers_empty) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return false;
}

int64_t PipelineTest::agentBufferRecords() const {
  int64_t total = 0;
  for (const auto& url : pipeline_->agentUrls()) {
    auto m = cli::httpGet(url + "/metrics", std::chrono::milliseconds(5000));
    if (!m.isOk() || m->status != 200) return -1;
    const double v = metricValue(m->body, "bl_agent_buffer_records");
    if (v < 0) return -1;
    total += static_cast<int64_t>(v);
  }
  return total;
}

double PipelineTest::agentMetric(size_t index, const std::string& series) const {
  const auto urls = pipeline_->agentUrls();
  return index < urls.size() ? scrapeMetric(urls[index], series) : -1;
}

loadgen::LoadOptions PipelineTest::loadOptions(uint64_t records,
                                               const loadgen::GeneratorOptions& gen) const {
  loadgen::LoadOptions o;
  o.urls = pipeline_->agentUrls();
  o.tokens = pipeline_->agentTokens();
  o.records = records;
  o.concurrency = 2 * static_cast<int>(o.urls.size());
  o.batch = 250;
  o.generator = gen;
  return o;
}

void PipelineTest::expectExactlyAccepted(const loadgen::LoadStats& stats,
                                         const loadgen::GeneratorOptions& gen) {
  auto engine = rules::RuleEngine::create({rules::defaultCustomerSchema()});
  ASSERT_TRUE(engine.isOk()) << engine.status().toString();
  const rules::CompiledSchema* schema = (*engine)->find("customer");
  ASSERT_NE(schema, nullptr);

  std::map<std::string, StoredRecord> stored = readRecords(store_);
  EXPECT_EQ(stored.size(), stats.accepted_unique.size());

  loadgen::CustomerGenerator generator(gen);
  loadgen::GeneratedRecord rec;
  size_t mismatches = 0, missing = 0;
  for (uint64_t index : stats.accepted_unique) {
    generator.generate(index, rec);
    boost::json::value v = boost::json::parse(rec.json);
    rules::Outcome outcome = (*engine)->apply(*schema, v.as_object());
    ASSERT_TRUE(outcome.ok()) << "generated valid record " << index << " does not normalize";
    auto it = stored.find(outcome.record->key);
    if (it == stored.end()) {
      if (++missing <= 5) ADD_FAILURE() << "record " << outcome.record->key << " not stored";
      continue;
    }
    if (it->second.payload != outcome.record->payload && ++mismatches <= 5) {
      ADD_FAILURE() << "record " << outcome.record->key << " stored as " << it->second.payload
                    << " but normalizes to " << outcome.record->payload;
    }
  }
  EXPECT_EQ(missing, 0u);
  EXPECT_EQ(mismatches, 0u);
}

}  // namespace branchline::testing
