// branchline-bench: measures the local pipeline on this machine and, in the same
// run, the raw limits of its stages (SQLite batched insert, zstd), so every
// figure is reported next to a reference measured under the same noise.
//
// Figures: records/s accepted by one agent (durable, HTTP in, forwarding on),
// records/s end to end into the central store with security on and off (and
// their ratio), the cost of sealing and opening one batch, p50/p99 latency
// from ingest to central commit, peak RSS, and recovery: how long until the
// survivor carries the load after an aggregator dies, and how fast a backlog
// drains once the central side returns.
#include <sqlite3.h>
#include <unistd.h>
#include <zstd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli/loadgen/load_client.h"
#include "cli/loadgen/record_generator.h"
#include "cli/net/http_client.h"
#include "cli/pipeline/local_pipeline.h"
#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/core/clock.h"

namespace {

using namespace branchline;

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Peak resident set (VmHWM) of a process, in MiB; -1 if unreadable.
double peakRssMiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

// SQLite reference: INSERT OR IGNORE of random 16-byte-ish text keys, 1,000 rows
// per transaction, synchronous=FULL, WAL: the central writer's raw limit.
double sqliteInsertLimit(const std::string& dir, int rows) {
  std::string path = dir + "/limit.db";
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", nullptr, nullptr, nullptr);
  sqlite3_exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, payload TEXT, UNIQUE(k));",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO t(k, payload) VALUES(?, ?)", -1, &stmt, nullptr);
  std::mt19937_64 rng(7);
  std::string payload(410, 'x');
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < rows; i += 1000) {
    sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    for (int j = 0; j < 1000; ++j) {
      std::string key = std::to_string(rng());
      sqlite3_bind_text(stmt, 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
      sqlite3_bind_text(stmt, 2, payload.data(), static_cast<int>(payload.size()), SQLITE_STATIC);
      sqlite3_step(stmt);
      sqlite3_reset(stmt);
    }
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  double rate = rows / seconds(std::chrono::steady_clock::now() - start);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  std::filesystem::remove(path);
  return rate;
}

// zstd level 1 on generated records: MB/s.
double zstdLimit() {
  loadgen::CustomerGenerator gen({});
  std::string batch;
  for (int i = 0; i < 2000; ++i) batch += gen.generate(static_cast<uint64_t>(i)).json;
  std::string out(ZSTD_compressBound(batch.size()), '\0');
  auto start = std::chrono::steady_clock::now();
  int rounds = 0;
  while (seconds(std::chrono::steady_clock::now() - start) < 1.0) {
    ZSTD_compress(out.data(), out.size(), batch.data(), batch.size(), 1);
    ++rounds;
  }
  return batch.size() * rounds / 1e6 / seconds(std::chrono::steady_clock::now() - start);
}

struct Latency {
  double p50_ms = 0, p99_ms = 0, rate = 0;
  int64_t count = 0;
};

// From the central table: ingest (agent) -> stored (aggregator) per record.
Latency centralLatency(const std::string& db_path) {
  Latency out;
  sqlite3* db = nullptr;
  sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr);
  sqlite3_stmt* stmt = nullptr;
  sqlite3_prepare_v2(db, "SELECT ingested_at, stored_at FROM records", -1, &stmt, nullptr);
  std::vector<double> lat;
  int64_t first_ingest = INT64_MAX, last_store = 0;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    auto in = parseRfc3339Micros(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)));
    auto st = parseRfc3339Micros(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 1)));
    if (!in || !st) continue;
    lat.push_back((*st - *in) / 1000.0);
    first_ingest = std::min(first_ingest, *in);
    last_store = std::max(last_store, *st);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  out.count = static_cast<int64_t>(lat.size());
  if (lat.empty()) return out;
  std::sort(lat.begin(), lat.end());
  out.p50_ms = lat[lat.size() / 2];
  out.p99_ms = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  out.rate = out.count / ((last_store - first_ingest) / 1e6);
  return out;
}

int64_t countRecords(const std::string& db_path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    return 0;
  }
  sqlite3_busy_timeout(db, 2000);
  sqlite3_stmt* stmt = nullptr;
  int64_t n = 0;
  if (sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM records", -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    n = sqlite3_column_int64(stmt, 0);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return n;
}

struct E2e {
  bool ok = false;
  Latency lat;
  double wall = 0, rate = 0, rss_agent = 0, rss_aggregator = 0;
};

E2e e2eRun(const std::string& dir, const std::string& bin, bool secure, uint64_t records,
           int concurrency, int batch) {
  E2e out;
  cli::PipelineOptions opt;
  opt.dir = dir;
  opt.bin_dir = bin;
  opt.secure = secure;
  cli::LocalPipeline p(opt);
  if (Status s = p.start(); !s.isOk()) {
    std::fprintf(stderr, "bench: %s\n", s.toString().c_str());
    return out;
  }
  loadgen::LoadOptions load;
  load.urls = p.agentUrls();
  load.tokens = p.agentTokens();
  load.records = records;
  load.concurrency = concurrency;
  load.batch = batch;
  auto start = std::chrono::steady_clock::now();
  auto stats = loadgen::runLoad(load);
  if (!stats.isOk()) return out;
  const int64_t want = static_cast<int64_t>(stats->accepted_unique.size());
  while (countRecords(p.storePath()) < want &&
         seconds(std::chrono::steady_clock::now() - start) < 600) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  out.wall = seconds(std::chrono::steady_clock::now() - start);
  out.rss_agent = peakRssMiB(p.process("agent-1")->pid());
  out.rss_aggregator = peakRssMiB(p.process("agg-1")->pid());
  p.stop();
  out.lat = centralLatency(p.storePath());
  out.rate = out.lat.count / out.wall;
  out.ok = true;
  return out;
}

// Sealing and opening one 2,000-record batch (the agent's default batch size).
void sealCost() {
  auto agent = protocol::generateSealKeyPair();
  auto aggregator = protocol::generateSealKeyPair();
  if (!agent.isOk() || !aggregator.isOk()) return;
  loadgen::CustomerGenerator gen({});
  protocol::WireBatch wb;
  wb.agent_id = "agent-1";
  wb.seq = 1;
  size_t raw = 0;
  for (uint64_t i = 0; i < 2000; ++i) {
    std::string json = gen.generate(i).json;
    raw += json.size();
    wb.records.push_back({"customer", "k" + std::to_string(i), 1'790'000'000'000'000, json});
  }
  protocol::SealerKeys keys{*agent, aggregator->public_key};
  protocol::AggregatorKeyRing ring;
  ring.by_key_id[protocol::sealKeyId(aggregator->public_key)] = {*aggregator, INT64_MAX};
  protocol::OpenOptions open;
  open.ring = &ring;
  const protocol::X25519Key agent_pub = agent->public_key;
  open.agent_public_key = [agent_pub](const std::string&) -> Result<protocol::X25519Key> {
    return agent_pub;
  };
  constexpr int kRounds = 50;
  std::string sealed, plain;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) plain = protocol::encodeBatch(wb, 1);
  const double encode_ms = seconds(std::chrono::steady_clock::now() - t0) * 1000 / kRounds;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) sealed = protocol::sealBatch(wb, keys, 1).value();
  const double seal_ms = seconds(std::chrono::steady_clock::now() - t0) * 1000 / kRounds;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) (void)protocol::decodeBatch(plain);
  const double decode_ms = seconds(std::chrono::steady_clock::now() - t0) * 1000 / kRounds;
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) (void)protocol::openBatch(sealed, {}, open);
  const double open_ms = seconds(std::chrono::steady_clock::now() - t0) * 1000 / kRounds;
  std::printf(
      "seal   one batch of 2000 records (%.0f KB raw, %.0f KB on the wire): encode %.2f ms, "
      "encode+seal %.2f ms (+%.2f ms); decode %.2f ms, open %.2f ms (+%.2f ms)\n",
      raw / 1024.0, sealed.size() / 1024.0, encode_ms, seal_ms, seal_ms - encode_ms, decode_ms,
      open_ms, open_ms - decode_ms);
}

// Largest bl_agent_oldest_unacked_age_seconds over the agents; -1 if unreadable.
double oldestUnackedSeconds(cli::LocalPipeline& p) {
  double worst = 0;
  for (const auto& url : p.agentUrls()) {
    auto m = cli::httpGet(url + "/metrics", std::chrono::milliseconds(2000));
    if (!m.isOk() || m->status != 200) return -1;
    const std::string name = "bl_agent_oldest_unacked_age_seconds ";
    const size_t at = m->body.find("\n" + name);
    if (at == std::string::npos) return -1;
    worst = std::max(worst, std::strtod(m->body.c_str() + at + 1 + name.size(), nullptr));
  }
  return worst;
}

void failover(const std::string& dir, const std::string& bin, double rate) {
  cli::PipelineOptions opt;
  opt.dir = dir;
  opt.bin_dir = bin;
  cli::LocalPipeline p(opt);
  if (Status s = p.start(); !s.isOk()) {
    std::fprintf(stderr, "bench: %s\n", s.toString().c_str());
    return;
  }
  loadgen::LoadOptions load;
  load.urls = p.agentUrls();
  load.tokens = p.agentTokens();
  load.seconds = 40;
  load.rate = rate;
  load.concurrency = 4;
  load.batch = 100;
  auto running = std::async(std::launch::async, [load] { return loadgen::runLoad(load); });
  std::this_thread::sleep_for(std::chrono::seconds(10));
  (void)p.kill9("agg-1");
  const auto killed = std::chrono::steady_clock::now();
  // Recovered: the first moment after which no agent held a batch unacked for
  // 1 s or more until the end of the 28 s window.
  double recovered_s = 0, peak_s = 0;
  while (seconds(std::chrono::steady_clock::now() - killed) < 28) {
    const double oldest = oldestUnackedSeconds(p);
    const double now_s = seconds(std::chrono::steady_clock::now() - killed);
    peak_s = std::max(peak_s, oldest);
    if (oldest < 0 || oldest >= 1.0) recovered_s = now_s;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  (void)running.get();
  p.stop();
  std::printf(
      "recover aggregator killed under %.0f records/s: survivor carries the full load after "
      "%.1f s (oldest unacked batch peaked at %.1f s; agents resend on the dead one's will, "
      "else after batch.ack_timeout_ms = 10000)\n",
      rate, recovered_s, peak_s);
}

void backlogDrain(const std::string& dir, const std::string& bin, uint64_t backlog, int concurrency,
                  int batch, double steady_rate) {
  cli::PipelineOptions opt;
  opt.dir = dir;
  opt.bin_dir = bin;
  cli::LocalPipeline p(opt);
  if (Status s = p.start(); !s.isOk()) {
    std::fprintf(stderr, "bench: %s\n", s.toString().c_str());
    return;
  }
  (void)p.kill9("agg-1");
  (void)p.kill9("agg-2");
  loadgen::LoadOptions load;
  load.urls = p.agentUrls();
  load.tokens = p.agentTokens();
  load.records = backlog;
  load.concurrency = concurrency;
  load.batch = batch;
  auto stats = loadgen::runLoad(load);
  if (!stats.isOk()) return;
  const int64_t want = static_cast<int64_t>(stats->accepted_unique.size());
  const auto back = std::chrono::steady_clock::now();
  (void)p.restart("agg-1");
  (void)p.restart("agg-2");
  while (countRecords(p.storePath()) < want &&
         seconds(std::chrono::steady_clock::now() - back) < 1200) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const double drain = seconds(std::chrono::steady_clock::now() - back);
  p.stop();
  std::printf(
      "recover backlog of %lld records (ingested at %.0f records/s with the central side down): "
      "drained in %.1f s = %.0f records/s (%.2fx the steady e2e rate)\n",
      static_cast<long long>(want), stats->accepted / stats->seconds, drain, want / drain,
      want / drain / steady_rate);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"branchline-bench: pipeline throughput, latency and memory on this machine"};
  uint64_t records = 200000;
  int concurrency = 8;
  int batch = 200;
  uint64_t backlog = 1000000;
  std::string dir;
  app.add_option("--records", records, "records to send end to end");
  app.add_option("--concurrency", concurrency, "HTTP connections");
  app.add_option("--batch", batch, "records per request");
  app.add_option("--backlog", backlog, "records in the backlog drained in stage 3");
  app.add_option("--dir", dir, "working directory (default: a temp dir)");
  CLI11_PARSE(app, argc, argv);
  if (dir.empty()) {
    dir = branchline::cli::makePipelineTempDir("branchline-bench");
    if (dir.empty()) return 1;
  }
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe").parent_path();

  std::printf("branchline-bench: %llu records, dir %s\n", static_cast<unsigned long long>(records),
              dir.c_str());
  const double sqlite_limit = sqliteInsertLimit(dir, 100000);
  const double zstd_limit = zstdLimit();
  std::printf("limit  sqlite INSERT OR IGNORE random keys, 1000/txn, FULL: %.0f rows/s\n",
              sqlite_limit);
  std::printf("limit  zstd level 1 on customer records: %.0f MB/s\n", zstd_limit);

  // Stage 1: one agent alone (its broker is up, no aggregator draining): the
  // durable ingest rate, HTTP -> validate -> SQLite fsync'd group commit.
  {
    cli::PipelineOptions opt;
    opt.dir = dir + "/agent-only";
    opt.agents = 1;
    opt.aggregators = 1;
    opt.bin_dir = self.string();
    cli::LocalPipeline p(opt);
    if (Status s = p.start(); !s.isOk()) {
      std::fprintf(stderr, "bench: %s\n", s.toString().c_str());
      return 1;
    }
    (void)p.kill9("agg-1");  // no draining: measure the agent's durable ingest alone
    loadgen::LoadOptions load;
    load.urls = p.agentUrls();
    load.tokens = p.agentTokens();
    load.records = records / 2;
    load.concurrency = concurrency;
    load.batch = batch;
    auto stats = loadgen::runLoad(load);
    if (!stats.isOk()) return 1;
    double rate = stats->accepted / stats->seconds;
    std::printf(
        "agent  durable ingest, 1 agent: %.0f records/s (%.2fx sqlite limit), "
        "request p50 %.1f ms p99 %.1f ms, peak RSS %.1f MiB\n",
        rate, rate / sqlite_limit, stats->latency_p50_ms, stats->latency_p99_ms,
        peakRssMiB(p.process("agent-1")->pid()));
    p.stop();
  }

  // Stage 2: the whole pipeline, 2 agents, 2 aggregators, one central store,
  // secured (TLS + client certificates + sealed batches, as `branchline up`
  // runs) and then without security, in the same run.
  E2e secure = e2eRun(dir + "/pipeline-secure", self.string(), true, records, concurrency, batch);
  E2e plain = e2eRun(dir + "/pipeline-plain", self.string(), false, records, concurrency, batch);
  if (!secure.ok || !plain.ok) return 1;
  for (const E2e* e : {&secure, &plain}) {
    std::printf(
        "e2e    %s, 2 agents -> 2 aggregators: %lld records in %.1f s wall = %.0f records/s "
        "(%.2fx sqlite limit); store-side rate %.0f records/s\n",
        e == &secure ? "secured" : "no security", static_cast<long long>(e->lat.count), e->wall,
        e->rate, e->rate / sqlite_limit, e->lat.rate);
    std::printf("e2e    %s latency ingest -> central commit: p50 %.1f ms, p99 %.1f ms\n",
                e == &secure ? "secured" : "no security", e->lat.p50_ms, e->lat.p99_ms);
  }
  std::printf("e2e    security on / off: %.2f\n", secure.rate / plain.rate);
  std::printf("memory peak RSS (secured): agent %.1f MiB, aggregator %.1f MiB\n", secure.rss_agent,
              secure.rss_aggregator);
  sealCost();

  // Stage 3: recovery. Failover: one aggregator killed under a steady load of
  // half the secured e2e rate; time until no agent holds a batch unacked for
  // more than 1 s (dominated by batch.ack_timeout_ms, after which agents resend
  // to the survivor). Backlog: the whole central side down while `backlog`
  // records are ingested, then back; the drain rate against the steady rate.
  failover(dir + "/failover", self.string(), secure.rate / 2);
  backlogDrain(dir + "/backlog", self.string(), backlog, concurrency, batch, secure.rate);
  std::filesystem::remove_all(dir);
  return 0;
}
