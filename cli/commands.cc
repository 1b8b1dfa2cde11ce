#include "cli/commands.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "cli/net/http_client.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::cli {
namespace {

// SIGINT and SIGTERM are blocked in every thread (children get them unblocked
// by Process) and collected with sigtimedwait, so the shutdown path is ordinary
// code rather than a signal handler.
sigset_t blockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

// 0 on timeout, else the signal number.
int waitForStopSignal(const sigset_t& set, std::chrono::milliseconds timeout) {
  timespec ts{static_cast<time_t>(timeout.count() / 1000),
              static_cast<long>(timeout.count() % 1000) * 1'000'000};
  int sig = ::sigtimedwait(&set, nullptr, &ts);
  return sig > 0 ? sig : 0;
}

void reportExits(LocalPipeline& pipeline) {
  for (const auto& [name, status] : pipeline.pollExits()) {
    log::error("process_exited", {{"name", name}, {"status", status}});
    std::cerr << "branchline: " << name << " " << status << "; left down, the others carry on\n";
  }
}

// A read-only view of the central SQLite store for the demo's summary.
class CentralStore {
 public:
  static Result<CentralStore> open(const std::string& path) {
    sqlite3* db = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
    CentralStore store(db);
    if (rc != SQLITE_OK) {
      return Status::unavailable("open central store " + path + ": " +
                                 (db ? sqlite3_errmsg(db) : "out of memory"));
    }
    sqlite3_busy_timeout(db, 5000);
    return store;
  }
  CentralStore(CentralStore&& o) noexcept : db_(std::exchange(o.db_, nullptr)) {}
  CentralStore(const CentralStore&) = delete;
  ~CentralStore() {
    if (db_ != nullptr) sqlite3_close(db_);
  }

  Result<int64_t> count(const char* table) {
    std::string sql = std::string("SELECT COUNT(*) FROM ") + table;
    int64_t n = 0;
    BL_RETURN_IF_ERROR(
        query(sql.c_str(), [&n](sqlite3_stmt* s) { n = sqlite3_column_int64(s, 0); }));
    return n;
  }

  template <typename F>
  Status query(const char* sql, F&& row) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db_, sql, -1, &stmt, nullptr) != SQLITE_OK) {
      return Status::unavailable(std::string("central store: ") + sqlite3_errmsg(db_) + " (" + sql +
                                 ")");
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) row(stmt);
    Status s = rc == SQLITE_DONE
                   ? Status::ok()
                   : Status::unavailable(std::string("central store: ") + sqlite3_errmsg(db_));
    sqlite3_finalize(stmt);
    return s;
  }

 private:
  explicit CentralStore(sqlite3* db) : db_(db) {}
  sqlite3* db_;
};

// Sum of a metric's samples in Prometheus text; nullopt if it is absent.
std::optional<double> metricValue(const std::string& text, const std::string& name) {
  std::optional<double> sum;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    if (line.size() > name.size() && line[name.size()] != ' ' && line[name.size()] != '{') continue;
    size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    sum = sum.value_or(0) + std::strtod(line.c_str() + sp + 1, nullptr);
  }
  return sum;
}

struct DrainResult {
  bool drained = false;
  std::string how;
};

// Waits until every agent's buffer is empty, or the central record count has
// not moved for 5 s, at most `bound`.
DrainResult waitForDrain(LocalPipeline& pipeline, std::chrono::seconds bound,
                         const std::atomic<bool>& cancel) {
  const int64_t deadline = steadyMicros() + bound.count() * 1'000'000;
  int64_t last_count = -1;
  int64_t stable_since = steadyMicros();
  while (steadyMicros() < deadline && !cancel.load()) {
    bool all_empty = true, all_reported = true;
    for (const auto& url : pipeline.agentUrls()) {
      auto res = httpGet(url + "/metrics", std::chrono::milliseconds(2000));
      std::optional<double> v;
      if (res.isOk() && res->status == 200) v = metricValue(res->body, "bl_agent_buffer_records");
      if (!v) all_reported = false;
      if (!v || *v > 0) all_empty = false;
    }
    if (all_reported && all_empty) return {true, "every agent buffer is empty"};
    int64_t count = -1;
    if (auto store = CentralStore::open(pipeline.storePath()); store.isOk()) {
      if (auto n = store->count("records"); n.isOk()) count = *n;
    }
    if (count != last_count) {
      last_count = count;
      stable_since = steadyMicros();
    } else if (count >= 0 && steadyMicros() - stable_since >= 5'000'000) {
      return {true, "central record count unchanged for 5 s"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return {false, cancel.load() ? "interrupted" : "not drained after 120 s"};
}

double percentile(std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[std::clamp<size_t>(i, 1, sorted.size()) - 1]);
}

}  // namespace

int runUp(PipelineOptions options) {
  const sigset_t stop_set = blockStopSignals();
  LocalPipeline pipeline(std::move(options));
  if (Status s = pipeline.start(); !s.isOk()) {
    std::cerr << "branchline up: " << s.toString() << "\n";
    return 1;
  }
  std::cout << pipeline.topologyPath() << std::endl;
  int sig = 0;
  while ((sig = waitForStopSignal(stop_set, std::chrono::milliseconds(200))) == 0) {
    reportExits(pipeline);
  }
  log::info("stopping", {{"signal", strsignal(sig)}});
  pipeline.stop();
  return 0;
}

int runLoadgen(const loadgen::LoadOptions& options) {
  auto stats = loadgen::runLoad(options);
  if (!stats.isOk()) {
    std::cerr << "branchline loadgen: " << stats.status().toString() << "\n";
    return 2;
  }
  std::cout << stats->toJson() << std::endl;
  return stats->failed_records == 0 ? 0 : 1;
}

int runDemo(const DemoOptions& options) {
  const sigset_t stop_set = blockStopSignals();
  std::atomic<bool> cancel{false};
  std::atomic<bool> finished{false};
  // Ctrl-C during the demo stops the load and the drain early, then cleans up.
  std::jthread watcher([&] {
    while (!finished.load()) {
      if (waitForStopSignal(stop_set, std::chrono::milliseconds(200)) != 0) cancel = true;
    }
  });
  struct Finish {
    std::atomic<bool>& f;
    ~Finish() { f = true; }
  } finish{finished};

  PipelineOptions popts;
  popts.dir = options.dir.empty() ? makePipelineTempDir("branchline-demo") : options.dir;
  popts.agents = options.agents;
  popts.aggregators = options.aggregators;
  popts.base_port = options.base_port;
  popts.bin_dir = options.bin_dir;
  popts.secure = options.secure;
  LocalPipeline pipeline(popts);
  std::cout << "branchline demo: starting Mosquitto, " << options.aggregators << " aggregators, "
            << options.agents << " agents in " << popts.dir
            << (options.secure ? " (mutual TLS, per-agent ACLs; PKI in " + popts.dir + "/pki)"
                               : " (INSECURE: plain TCP, anonymous broker)")
            << std::endl;
  if (Status s = pipeline.start(); !s.isOk()) {
    std::cerr << "branchline demo: " << s.toString() << "\n";
    return 1;
  }

  loadgen::LoadOptions load;
  load.urls = pipeline.agentUrls();
  load.tokens = pipeline.agentTokens();
  load.seconds = options.seconds;
  load.concurrency = 4 * options.agents;
  load.batch = 100;
  load.generator.duplicate_share = 0.05;
  load.generator.invalid_share = 0.02;
  load.cancel = &cancel;
  std::cout << "branchline demo: sending records for " << options.seconds << " s to "
            << load.urls.size() << " agents (" << load.concurrency << " connections)" << std::endl;
  auto stats = loadgen::runLoad(load);
  if (!stats.isOk()) {
    std::cerr << "branchline demo: " << stats.status().toString() << "\n";
    return 1;
  }
  std::cout << "branchline demo: load done; waiting for the pipeline to drain" << std::endl;
  DrainResult drain = waitForDrain(pipeline, std::chrono::seconds(120), cancel);
  std::vector<std::string> died;
  for (const auto& [name, status] : pipeline.pollExits()) died.push_back(name + " " + status);
  pipeline.stop();

  int64_t stored = 0, rejects = 0;
  std::vector<int64_t> latencies_us;
  int64_t first_ingested = INT64_MAX, last_stored = INT64_MIN;
  Status store_status = [&]() -> Status {
    auto store = CentralStore::open(pipeline.storePath());
    if (!store.isOk()) return store.status();
    auto n = store->count("records");
    if (!n.isOk()) return n.status();
    stored = *n;
    auto r = store->count("rejects");
    if (!r.isOk()) return r.status();
    rejects = *r;
    latencies_us.reserve(static_cast<size_t>(stored));
    return store->query("SELECT ingested_at, stored_at FROM records", [&](sqlite3_stmt* s) {
      auto text = [s](int col) {
        const unsigned char* t = sqlite3_column_text(s, col);
        return t == nullptr ? std::string_view()
                            : std::string_view(reinterpret_cast<const char*>(t));
      };
      auto in = parseRfc3339Micros(text(0));
      auto st = parseRfc3339Micros(text(1));
      if (!in || !st) return;
      first_ingested = std::min(first_ingested, *in);
      last_stored = std::max(last_stored, *st);
      latencies_us.push_back(*st - *in);
    });
  }();
  std::sort(latencies_us.begin(), latencies_us.end());
  const double span_s = last_stored > first_ingested ? (last_stored - first_ingested) / 1e6 : 0;
  const double throughput = span_s > 0 ? static_cast<double>(stored) / span_s : 0;
  const double p50_ms = percentile(latencies_us, 0.50) / 1000.0;
  const double p99_ms = percentile(latencies_us, 0.99) / 1000.0;
  const int64_t expected = static_cast<int64_t>(stats->accepted_unique.size());
  const int64_t missing = std::max<int64_t>(0, expected - stored);

  const loadgen::LoadStats& ls = *stats;
  std::printf("\nBranchline demo summary (%s)\n", popts.dir.c_str());
  std::printf("  records sent       %10llu  in %.1f s (%.0f records/s over HTTP)\n",
              static_cast<unsigned long long>(ls.records_sent), ls.seconds, ls.recordsPerSecond());
  std::printf("  accepted           %10llu\n", static_cast<unsigned long long>(ls.accepted));
  std::printf("  rejected           %10llu\n", static_cast<unsigned long long>(ls.rejected));
  for (const auto& [reason, n] : ls.rejected_by_reason) {
    std::printf("      %8llu  %s\n", static_cast<unsigned long long>(n), reason.c_str());
  }
  if (ls.failed_records > 0) {
    std::printf("  failed (HTTP)      %10llu\n",
                static_cast<unsigned long long>(ls.failed_records));
  }
  std::printf("  stored centrally   %10lld  (expected %lld distinct accepted; missing %lld)\n",
              static_cast<long long>(stored), static_cast<long long>(expected),
              static_cast<long long>(missing));
  std::printf("  rejects stored     %10lld\n", static_cast<long long>(rejects));
  std::printf("  duplicates removed %10lld\n",
              static_cast<long long>(static_cast<int64_t>(ls.accepted) - stored));
  std::printf("  end-to-end         %10.0f records/s (first ingest to last store)\n", throughput);
  std::printf("  ingest->store      p50 %.1f ms, p99 %.1f ms\n", p50_ms, p99_ms);
  std::printf("  HTTP request       p50 %.1f ms, p99 %.1f ms\n", ls.latency_p50_ms,
              ls.latency_p99_ms);
  std::printf("  drain              %s\n", drain.how.c_str());
  for (const auto& d : died) std::printf("  process died       %s\n", d.c_str());
  if (!store_status.isOk())
    std::printf("  store error        %s\n", store_status.toString().c_str());
  std::string security = "off (--insecure)";
  if (options.secure) {
    security = pipeline.sealsBatches() ? "mutual TLS + per-agent ACLs + sealed batches"
                                       : "mutual TLS + per-agent ACLs";
  }
  std::printf("  security           %s\n", security.c_str());
  std::printf("  central store      %s\n\n", pipeline.storePath().c_str());

  std::string json = "{\"records_sent\":" + std::to_string(ls.records_sent) +
                     ",\"accepted\":" + std::to_string(ls.accepted) +
                     ",\"rejected\":" + std::to_string(ls.rejected) + ",\"rejected_by_reason\":{";
  bool first = true;
  for (const auto& [reason, n] : ls.rejected_by_reason) {
    if (!first) json += ",";
    first = false;
    log::appendJsonString(json, reason);
    json += ":" + std::to_string(n);
  }
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "},\"failed_records\":%llu,\"stored\":%lld,\"expected_unique\":%lld,"
                "\"missing\":%lld,\"rejects_stored\":%lld,\"duplicates_removed\":%lld,"
                "\"throughput_rps\":%.1f,\"latency_p50_ms\":%.3f,\"latency_p99_ms\":%.3f,",
                static_cast<unsigned long long>(ls.failed_records), static_cast<long long>(stored),
                static_cast<long long>(expected), static_cast<long long>(missing),
                static_cast<long long>(rejects),
                static_cast<long long>(static_cast<int64_t>(ls.accepted) - stored), throughput,
                p50_ms, p99_ms);
  json += buf;
  json += "\"drained\":";
  json += drain.drained ? "true" : "false";
  json += ",\"processes_died\":" + std::to_string(died.size()) + ",\"store\":";
  log::appendJsonString(json, pipeline.storePath());
  json += "}";
  std::cout << json << std::endl;

  const bool ok = store_status.isOk() && missing == 0 && died.empty() && !cancel.load();
  return ok ? 0 : 1;
}

int runChaosCommand(ChaosOptions options) {
  const sigset_t stop_set = blockStopSignals();
  std::atomic<bool> cancel{false};
  std::atomic<bool> finished{false};
  std::jthread watcher([&] {
    while (!finished.load()) {
      if (waitForStopSignal(stop_set, std::chrono::milliseconds(200)) != 0) cancel = true;
    }
  });
  if (options.pipeline.dir.empty()) options.pipeline.dir = makePipelineTempDir("branchline-demo");
  options.cancel = &cancel;
  std::cerr << "branchline chaos: " << options.seconds << " s of faults under " << options.rate
            << " records/s in " << options.pipeline.dir << std::endl;
  auto verdict = runChaos(options);
  finished = true;
  if (!verdict.isOk()) {
    std::cerr << "branchline chaos: " << verdict.status().toString() << "\n";
    return 2;
  }
  std::cout << verdict->toJson() << std::endl;
  return verdict->passed() && !cancel.load() ? 0 : 1;
}

namespace {

void printPkiReport(const char* what, const PkiReport& report) {
  std::cout << "branchline pki " << what << ": wrote " << report.files.size() << " files\n";
  for (const auto& f : report.files) std::cout << "  " << f << "\n";
}

}  // namespace

int runPkiInit(const PkiInitOptions& options) {
  auto report = initPki(options);
  if (!report.isOk()) {
    std::cerr << "branchline pki init: " << report.status().toString() << "\n";
    return 1;
  }
  printPkiReport("init", *report);
  const PkiLayout layout{std::filesystem::absolute(options.dir)};
  std::cout << "aggregators' sealing key id: " << report->seal_key_id << "\n"
            << "Keep " << layout.caKey().string()
            << " on this machine only (it signs every identity).\n"
            << "Broker: include " << layout.brokerConf().string() << " from mosquitto.conf.\n"
            << "Agents: `branchline pki enroll --dir " << options.dir << " <agent-id>`.\n";
  return 0;
}

int runPkiEnroll(const std::string& dir, const std::string& name, IdentityRole role, int days,
                 const std::string& topic_prefix) {
  auto report = role == IdentityRole::kAggregator ? enrollAggregator(dir, name, days, topic_prefix)
                : role == IdentityRole::kBridge   ? enrollBridge(dir, name, days, topic_prefix)
                                                  : enrollAgent(dir, name, days, topic_prefix);
  if (!report.isOk()) {
    std::cerr << "branchline pki enroll: " << report.status().toString() << "\n";
    return 1;
  }
  printPkiReport("enroll", *report);
  const PkiLayout layout{std::filesystem::absolute(dir)};
  // Mosquitto 2.0 reads the dynamic-security file only at start (SIGHUP does not reload plugins).
  const std::string restart = "; restart Mosquitto (a SIGHUP does not reload it).\n";
  if (role == IdentityRole::kAggregator) {
    std::cout << "Broker: " << layout.brokerPolicy().string() << " now names aggregator." << name
              << restart;
  } else if (role == IdentityRole::kBridge) {
    std::cout << "Broker " << name << ": bridge_certfile " << layout.bridgeCert(name).string()
              << ", bridge_keyfile " << layout.bridgeKey(name).string() << ", bridge_cafile "
              << layout.caCert().string()
              << ".\nThe other broker: " << layout.brokerPolicy().string() << " now names bridge."
              << name << restart;
  } else {
    std::cout << "Broker: " << layout.brokerPolicy().string() << " now names agent " << name
              << restart;
    std::cout << "Copy to the agent's host: " << layout.caCert().string() << ", "
              << (layout.agentsDir() / (name + ".{crt,key,seal.key}")).string() << " and "
              << layout.currentSealPublicKey().string() << ".\n"
              << "The aggregators read " << layout.agentSealPublic(name).string()
              << " (security.agents_dir).\n";
  }
  return 0;
}

namespace {

// Certificate times are whole seconds: RFC 3339 without the fraction.
std::string rfc3339Seconds(int64_t unix_seconds) {
  std::string text = formatRfc3339Micros(unix_seconds * 1000000);
  const size_t dot = text.find('.');
  if (dot != std::string::npos) text.replace(dot, text.size() - dot, "Z");
  return text;
}

void printFiles(const char* what, const std::vector<std::string>& files) {
  std::cout << "branchline pki " << what << ": wrote " << files.size() << " files\n";
  for (const auto& f : files) std::cout << "  " << f << "\n";
}

}  // namespace

int runPkiRenew(const std::string& dir, const std::string& name, IdentityRole role, int days) {
  auto report = renewIdentity(dir, name, role, days);
  if (!report.isOk()) {
    std::cerr << "branchline pki renew: " << report.status().toString() << "\n";
    return 1;
  }
  printFiles("renew", report->files);
  std::cout << report->common_name << ": new certificate serial " << report->new_serial
            << ", valid until " << rfc3339Seconds(report->new_not_after) << ".\n"
            << "The old certificate (serial " << report->old_serial << ") stays valid until "
            << rfc3339Seconds(report->old_not_after)
            << " unless revoked; it was replaced, not revoked.\n"
            << "Copy the new .crt and .key to its host and restart it (certificates are read "
               "at startup).\n";
  return 0;
}

int runPkiRevoke(const std::string& dir, const std::string& name, IdentityRole role) {
  auto report = revokeIdentity(dir, name, role);
  if (!report.isOk()) {
    std::cerr << "branchline pki revoke: " << report.status().toString() << "\n";
    return 1;
  }
  printFiles("revoke", report->files);
  const PkiLayout layout{std::filesystem::absolute(dir)};
  std::cout << report->common_name << ": certificate serial " << report->old_serial << " revoked.\n"
            << "Broker: copy " << layout.revocationList().string()
            << " to its crlfile and reload Mosquitto (SIGHUP): new connections with this "
               "certificate are then refused; a connection already open stays until it "
               "drops (restart the broker to cut it now).\n";
  if (role == IdentityRole::kAgent) {
    std::cout << "Aggregators: " << layout.agentSealRevoked(name).string()
              << " marks its sealing key revoked; copy it to every aggregator's agents_dir "
                 "(and remove "
              << layout.agentSealPublic(name).filename().string()
              << " there): its batches are refused (`revoked`) and audited.\n";
  }
  return 0;
}

int runPkiRotateSealKey(const std::string& dir, int grace_days) {
  auto report = rotateSealKey(dir);
  if (!report.isOk()) {
    std::cerr << "branchline pki rotate-seal-key: " << report.status().toString() << "\n";
    return 1;
  }
  printFiles("rotate-seal-key", report->files);
  const PkiLayout layout{std::filesystem::absolute(dir)};
  const int64_t until = nowMicros() / 1000000 + int64_t{grace_days} * 86400;
  std::cout << "aggregators' sealing key: " << report->old_key_id << " -> " << report->new_key_id
            << "\n"
            << "1. Every aggregator, [security] in its config, then restart it:\n"
            << "     seal_keys = [\"" << report->new_private_key.string() << "\"]\n"
            << "     retired_seal_keys = [{ file = \"" << report->old_private_key.string()
            << "\", until = \"" << rfc3339Seconds(until) << "\" }]\n"
            << "   (until = now + " << grace_days
            << " days: longer than any agent may hold unsent batches).\n"
            << "2. Then every agent: copy " << layout.currentSealPublicKey().string()
            << " to its security.aggregator_key_file and restart it; it seals to "
            << report->new_key_id << " from then on.\n"
            << "3. After " << rfc3339Seconds(until) << ": remove "
            << report->old_private_key.string() << " and its .pub.\n";
  return 0;
}

int runPkiList(const std::string& dir) {
  auto rows = listIdentities(dir);
  if (!rows.isOk()) {
    std::cerr << "branchline pki list: " << rows.status().toString() << "\n";
    return 1;
  }
  std::printf("%-10s %-20s %-24s %-32s %-20s %9s %s\n", "ROLE", "NAME", "CN", "SERIAL", "NOT_AFTER",
              "DAYS_LEFT", "REVOKED");
  for (const auto& r : *rows) {
    std::printf("%-10s %-20s %-24s %-32s %-20s %9.1f %s\n", r.role.c_str(), r.name.c_str(),
                r.common_name.c_str(), r.serial.c_str(), rfc3339Seconds(r.not_after).c_str(),
                r.days_left, r.revoked ? "yes" : "no");
  }
  return 0;
}

}  // namespace branchline::cli
