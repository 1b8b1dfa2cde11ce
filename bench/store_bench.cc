// Central store commit throughput: 10 transactions x 10 batches x 1,000 records
// with random keys and 400-byte payloads, on SQLite and (with --postgres) on a
// private PostgreSQL server, the same load in the same run. Compare with
// LIMITS.md (~38k rows/s at one batch per transaction, 58-78k at ~10).
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "aggregator/store/postgres_store.h"
#include "aggregator/store/sqlite_store.h"
#include "aggregator/store/testing/postgres_server.h"
#include "bench/microbench.h"

namespace branchline::bench {
namespace {

using aggregator::CentralStore;
using protocol::WireBatch;

constexpr int kTransactions = 10, kBatches = 10, kRecords = 1000;

std::vector<std::vector<WireBatch>> load() {
  std::vector<std::vector<WireBatch>> groups;
  uint64_t seq = 0;
  std::minstd_rand rng(42);
  for (int t = 0; t < kTransactions; ++t) {
    std::vector<WireBatch> group;
    for (int b = 0; b < kBatches; ++b) {
      WireBatch batch;
      batch.agent_id = "office-1";
      batch.seq = ++seq;
      batch.created_at_us = 1'790'000'000'000'000 + static_cast<int64_t>(seq);
      batch.records.reserve(kRecords);
      for (int r = 0; r < kRecords; ++r) {
        char key[40];
        std::snprintf(key, sizeof key, "%08x%08x%08x", static_cast<unsigned>(rng()),
                      static_cast<unsigned>(rng()), static_cast<unsigned>(rng()));
        batch.records.push_back(
            {"customer", key, 1'790'000'000'000'000 + r, std::string(400, 'p')});
      }
      group.push_back(std::move(batch));
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

// Commits every group; records/s, or the first failure (also when a record the
// load holds was not stored: the keys are unique, so every one must be).
Result<double> measure(CentralStore& store, const std::vector<std::vector<WireBatch>>& groups) {
  auto start = std::chrono::steady_clock::now();
  uint64_t stored = 0;
  for (const auto& group : groups) {
    auto out = store.commit(group, "agg-a");
    if (!out.isOk()) return out.status();
    for (const auto& o : *out) stored += o.stored_records;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const uint64_t expected = uint64_t(kTransactions) * kBatches * kRecords;
  if (stored != expected) {
    return Status::internal("stored " + std::to_string(stored) + " of " + std::to_string(expected) +
                            " records");
  }
  return static_cast<double>(stored) / secs;
}

Result<double> measureSqlite(const std::vector<std::vector<WireBatch>>& groups) {
  ScratchDir dir;
  if (dir.path().empty()) return Status::internal("cannot create a temp dir");
  aggregator::SqliteStoreOptions options;
  options.path = dir.path() / "central.db";
  auto store = aggregator::SqliteCentralStore::open(options);
  if (!store.isOk()) return store.status();
  return measure(**store, groups);
}

Result<double> measurePostgres(const std::vector<std::vector<WireBatch>>& groups) {
  auto server = testing::PostgresServer::create();
  if (!server.isOk()) return server.status();
  if (Status s = (*server)->createDatabase("microbench"); !s.isOk()) return s;
  aggregator::PostgresStoreOptions options;
  options.url = (*server)->url("microbench");
  auto store = aggregator::PostgresCentralStore::open(options);
  if (!store.isOk()) return store.status();
  return measure(**store, groups);
}

}  // namespace

int runCentralStoreBench(bool postgres) {
  const auto groups = load();
  auto sqlite_rate = measureSqlite(groups);
  if (!sqlite_rate.isOk()) return failed("central-store", sqlite_rate.status());
  std::printf(
      "[ throughput ] central store commit: %.0f records/s (%d batches x %d records "
      "per transaction, random keys, synchronous=FULL)\n",
      *sqlite_rate, kBatches, kRecords);
  if (!postgres) return 0;
  auto pg_rate = measurePostgres(groups);
  if (!pg_rate.isOk()) return failed("central-store --postgres", pg_rate.status());
  std::printf(
      "[ throughput ] central store commit (10 batches x 1000 records per transaction, random "
      "keys, 400-byte payloads): PostgreSQL %.0f records/s, SQLite %.0f records/s (ratio %.2f)\n",
      *pg_rate, *sqlite_rate, *pg_rate / *sqlite_rate);
  return 0;
}

}  // namespace branchline::bench
