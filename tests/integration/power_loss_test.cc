// Power loss (issue 15 part 2) on the real agent buffer and the real central
// SQLite store: kill -9 keeps the page cache, a power cut does not. Each trial
// runs a workload through the class with every file under SqliteFaultVfs, stops
// all I/O at a random operation (the machine died there), closes, rolls every
// file back to its last fsync (what the disk held), reopens and checks:
// integrity_check passes, every record the buffer answered as stored is there,
// every batch the store reported committed is in the ledger with its records.
//
// The same checker run with fsyncs that lie (report success, make nothing
// durable: what synchronous=OFF amounts to) finds the loss, so these tests can
// fail. Seeds: BRANCHLINE_TEST_SEED replays one.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "agent/buffer/durable_buffer.h"
#include "aggregator/store/sqlite_store.h"
#include "shared/core/testing/sqlite_fault_vfs.h"
#include "shared/core/testing/temp_dir.h"

namespace branchline {
namespace {

namespace fs = std::filesystem;
using branchline::testing::SqliteFaultVfs;

constexpr int kTrials = 200;

uint64_t seedFor(const char* what) {
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("BRANCHLINE_TEST_SEED"); env != nullptr && *env != '\0') {
    seed = std::stoull(env);
  }
  std::printf("[ seed ] power_loss %s %llu (replay: BRANCHLINE_TEST_SEED=%llu)\n", what,
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

using TempDir = branchline::testing::TempDir;

std::string integrityOf(const fs::path& db) {
  sqlite3* h = nullptr;
  std::string out = "cannot open";
  if (sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(h);
  return out;
}

// One kind of trial: `run` drives a workload in a folder from a seed and keeps
// what was answered; `check`, after the cut, says what the reopened files lack
// ("" for nothing) and adds to *checked what it looked at.
struct TrialKind {
  const char* name;
  std::function<void(const fs::path& dir, uint64_t seed)> run;
  std::function<std::string(const fs::path& dir, uint64_t* checked)> check;
};

// Runs the trials, each cut at a random operation; returns how many lost
// something answered (or broke the file). A failure is reported unless fsyncs lie.
int runTrials(const TrialKind& kind, uint64_t seed, bool lying_fsync, int trials) {
  SqliteFaultVfs vfs(std::string("bl-power-") + kind.name);
  std::mt19937_64 rng(seed);
  int bad = 0, cut = 0;
  uint64_t checked = 0, max_ops = 0;
  for (int t = 0; t < trials; ++t) {
    const uint64_t workload_seed = rng();
    // A dry run counts the workload's operations; the cut lands among them.
    uint64_t ops = 0;
    {
      TempDir dry;
      vfs.track();
      kind.run(dry.path(), workload_seed);
      ops = vfs.operations();
      vfs.powerCut();
    }
    max_ops = std::max(max_ops, ops);
    TempDir dir;
    vfs.track();
    vfs.lieAboutFsync(lying_fsync);
    vfs.crashAt(1 + rng() % std::max<uint64_t>(ops, 1));
    kind.run(dir.path(), workload_seed);
    cut += vfs.crashed() ? 1 : 0;
    // Every other trial the disk kept a random prefix of the unsynced writes.
    const uint64_t keep_seed = t % 2 == 1 ? (rng() | 1) : 0;
    const bool exact = vfs.powerCut(keep_seed);
    vfs.lieAboutFsync(false);
    if (!exact) {
      ADD_FAILURE() << kind.name << " trial " << t << ": the power cut could not be simulated";
      ++bad;
      continue;
    }
    const std::string problem = kind.check(dir.path(), &checked);
    if (problem.empty()) continue;
    ++bad;
    if (!lying_fsync) {
      ADD_FAILURE() << kind.name << " trial " << t << " (cut among " << ops
                    << " operations): " << problem;
    }
  }
  std::printf(
      "power_loss %s%s: %d trials, %d cut before the end (up to %llu operations), %llu "
      "answered records or batches checked, %d trials lost some or broke the file\n",
      kind.name, lying_fsync ? " (lying fsync)" : "", trials, cut,
      static_cast<unsigned long long>(max_ops), static_cast<unsigned long long>(checked), bad);
  return bad;
}

// ------------------------------------------------------------------ buffer

std::vector<protocol::WireRecord> recordsFrom(uint64_t first, size_t n) {
  std::vector<protocol::WireRecord> v;
  for (size_t i = 0; i < n; ++i) {
    const std::string id = std::to_string(first + i);
    v.push_back({"customer", "k-" + id, 1764000000000000 + int64_t(first + i),
                 R"({"external_id":")" + id + R"(","name":"Zoë","pad":")" +
                     std::string(200 + (first + i) % 97, 'p') + "\"}"});
  }
  return v;
}

struct BufferRun {
  std::set<uint64_t> answered;  // appends the buffer reported committed
  std::set<uint64_t> acked;     // records of batches acked (may be deleted)
};

// Appends, forms and acks as an agent does; stops at the first failure (the
// power went out). Returns what was answered.
BufferRun bufferWorkload(const agent::BufferOptions& options, std::mt19937_64& rng) {
  BufferRun run;
  auto opened = agent::DurableBuffer::open(options);
  if (!opened.isOk()) return run;
  auto buf = std::move(opened).value();
  uint64_t next = 1;
  std::vector<agent::PendingBatch> unacked;
  for (int step = 0; step < 24; ++step) {
    const size_t n = 1 + rng() % 20;
    if (!buf->append(recordsFrom(next, n), {}).isOk()) break;
    for (size_t i = 0; i < n; ++i) run.answered.insert(next + i);
    next += n;
    if (step % 3 == 2) {
      auto formed = buf->formBatch({.max_records = 25, .max_bytes = 512 << 10}, 1);
      if (!formed.isOk()) break;
      if (formed->has_value()) unacked.push_back(std::move(**formed));
    }
    if (step % 4 == 3 && !unacked.empty()) {
      const agent::PendingBatch b = unacked.front();
      unacked.erase(unacked.begin());
      // The central store has these records once it acked them, so they may
      // leave the buffer even when the delete's answer is cut short: its
      // transaction may have reached the disk unsynced (a kept prefix).
      for (const auto& r : b.records) run.acked.insert(std::stoull(r.key.substr(2)));
      if (!buf->ack(b.seq).isOk()) break;
    }
  }
  return run;  // the destructor checkpoints (or fails to, once the power is out)
}

// Every record id the reopened buffer still holds.
std::set<uint64_t> heldBy(const agent::BufferOptions& options, std::string* error) {
  std::set<uint64_t> held;
  auto opened = agent::DurableBuffer::open(options);
  if (!opened.isOk()) {
    *error = opened.status().toString();
    return held;
  }
  auto buf = std::move(opened).value();
  for (uint64_t seq = 1; seq < 200; ++seq) {  // the batches formed before the cut
    auto b = buf->loadBatch(seq);
    if (!b.isOk()) continue;
    for (const auto& r : b->records) held.insert(std::stoull(r.key.substr(2)));
  }
  for (;;) {
    auto formed = buf->formBatch({.max_records = 100000, .max_bytes = 64 << 20}, 2);
    if (!formed.isOk()) {
      *error = formed.status().toString();
      break;
    }
    if (!formed->has_value()) break;
    for (const auto& r : (**formed).records) held.insert(std::stoull(r.key.substr(2)));
  }
  return held;
}

// The buffer's trial: the workload in `dir`, then what the reopened buffer lacks.
TrialKind bufferTrial() {
  auto run = std::make_shared<BufferRun>();
  auto options = [](const fs::path& dir) {
    agent::BufferOptions o;
    o.path = dir / "buffer.db";
    o.checkpoint_interval = std::chrono::milliseconds(2);
    return o;
  };
  return {"buffer",
          [=](const fs::path& dir, uint64_t seed) {
            std::mt19937_64 w(seed);
            *run = bufferWorkload(options(dir), w);
          },
          [=](const fs::path& dir, uint64_t* checked) -> std::string {
            const std::string integrity = integrityOf(options(dir).path);
            if (integrity != "ok") return "integrity " + integrity;
            std::string error;
            const std::set<uint64_t> held = heldBy(options(dir), &error);
            if (!error.empty()) return "reopen: " + error;
            size_t lost = 0;
            *checked += run->answered.size();
            for (uint64_t id : run->answered) {
              if (!held.count(id) && !run->acked.count(id)) ++lost;
            }
            if (lost == 0) return "";
            return std::to_string(lost) + " of " + std::to_string(run->answered.size()) +
                   " answered records lost";
          }};
}

TEST(PowerLossTest, AgentBufferLosesNoAnsweredRecordAtAnyOf200Cuts) {
  const uint64_t seed = seedFor("buffer");
  EXPECT_EQ(runTrials(bufferTrial(), seed, false, kTrials), 0) << "seed " << seed;
}

TEST(PowerLossTest, AgentBufferCheckerFindsTheLossWhenFsyncLies) {
  const uint64_t seed = seedFor("buffer-lying-fsync");
  EXPECT_GT(runTrials(bufferTrial(), seed, true, 40), 0)
      << "with fsyncs that make nothing durable no trial lost anything: the checker is blind";
}

// ------------------------------------------------------------------ central store

protocol::WireBatch batchOf(uint64_t seq, size_t records) {
  protocol::WireBatch b;
  b.agent_id = "office-1";
  b.seq = seq;
  b.created_at_us = 1790000000000000 + int64_t(seq);
  for (size_t i = 0; i < records; ++i) {
    const std::string key = "s" + std::to_string(seq) + "-" + std::to_string(i);
    b.records.push_back({"customer", key, 1790000000000000 + int64_t(i),
                         R"({"external_id":")" + key + R"(","name":"Ada"})"});
  }
  return b;
}

// seq -> records of each batch the store reported committed.
std::map<uint64_t, size_t> storeWorkload(const fs::path& db, std::mt19937_64& rng) {
  std::map<uint64_t, size_t> committed;
  aggregator::SqliteStoreOptions options;
  options.path = db;
  options.checkpoint_interval = std::chrono::milliseconds(0);
  options.max_busy_wait = std::chrono::milliseconds(200);
  auto opened = aggregator::SqliteCentralStore::open(options);
  if (!opened.isOk()) return committed;
  auto store = std::move(opened).value();
  for (uint64_t seq = 1; seq <= 16; ++seq) {
    const size_t n = 1 + rng() % 40;
    if (!store->commit({batchOf(seq, n)}, "agg-a").isOk()) break;
    committed[seq] = n;
  }
  return committed;
}

int64_t countOf(sqlite3* h, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  int64_t n = -1;
  if (sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    n = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  return n;
}

// The central store's trial: batch commits in `dir`, then what the ledger lacks.
TrialKind storeTrial() {
  auto committed = std::make_shared<std::map<uint64_t, size_t>>();
  return {"central-sqlite",
          [=](const fs::path& dir, uint64_t seed) {
            std::mt19937_64 w(seed);
            *committed = storeWorkload(dir / "central.db", w);
          },
          [=](const fs::path& dir, uint64_t* checked) -> std::string {
            const fs::path db = dir / "central.db";
            if (committed->empty()) return "";
            const std::string integrity = integrityOf(db);
            if (integrity != "ok") return "integrity " + integrity;
            // Reopening through the store runs its own recovery and schema checks.
            aggregator::SqliteStoreOptions options;
            options.path = db;
            auto reopened = aggregator::SqliteCentralStore::open(options);
            if (!reopened.isOk()) return "reopen: " + reopened.status().toString();
            reopened.value().reset();
            *checked += committed->size();
            sqlite3* h = nullptr;
            sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr);
            std::string problem;
            for (const auto& [seq, n] : *committed) {
              const std::string q = std::to_string(seq);
              if (countOf(h, "SELECT count(*) FROM batch_ledger WHERE batch_seq = " + q) != 1 ||
                  countOf(h, "SELECT count(*) FROM records WHERE batch_seq = " + q) !=
                      static_cast<int64_t>(n)) {
                problem = "committed batch " + q + " missing or short";
                break;
              }
            }
            sqlite3_close(h);
            return problem;
          }};
}

TEST(PowerLossTest, CentralSqliteStoreLosesNoCommittedBatchAtAnyOf200Cuts) {
  const uint64_t seed = seedFor("central-sqlite");
  EXPECT_EQ(runTrials(storeTrial(), seed, false, kTrials), 0) << "seed " << seed;
}

TEST(PowerLossTest, CentralStoreCheckerFindsTheLossWhenFsyncLies) {
  const uint64_t seed = seedFor("central-sqlite-lying-fsync");
  EXPECT_GT(runTrials(storeTrial(), seed, true, 40), 0)
      << "with fsyncs that make nothing durable no trial lost anything: the checker is blind";
}

}  // namespace
}  // namespace branchline
