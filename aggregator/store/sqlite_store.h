// SqliteCentralStore: the CentralStore on one SQLite file (WAL,
// synchronous=FULL), for `store.url = "sqlite:///abs/path.db"`. Several
// processes may share the file (the local aggregator pair does): every write
// transaction is BEGIN IMMEDIATE, and a writer that finds the file locked
// backs off and retries within `max_busy_wait` before answering kUnavailable.
// The schema (README "The central store") is created on first open.
//
// One object is one connection; its methods are thread-safe (serialized).
// The WAL is checkpointed on a timer from the commit path and bounded by
// journal_size_limit, so a long-running aggregator does not grow it forever.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>

#include "aggregator/store/central_store.h"

namespace branchline::aggregator {

struct SqliteStoreOptions {
  std::filesystem::path path;                           // created if missing
  std::chrono::milliseconds busy_timeout{2000};         // SQLite's own wait per lock attempt
  std::chrono::milliseconds max_busy_wait{15000};       // total retry budget per transaction
  std::chrono::milliseconds checkpoint_interval{1000};  // passive WAL checkpoint timer
  int64_t journal_size_limit = 64 << 20;                // WAL bytes kept after a checkpoint
};

// "sqlite:///abs/path.db" -> "/abs/path.db". kInvalidArgument for any other
// scheme, a relative path, or a query string.
Result<std::filesystem::path> parseSqliteUrl(const std::string& url);

class SqliteCentralStore final : public CentralStore {
 public:
  // Opens (creating the file and the schema if needed). kUnavailable when the
  // file cannot be opened, kDataLoss when it is not a database or carries a
  // newer schema than this build knows.
  static Result<std::unique_ptr<SqliteCentralStore>> open(SqliteStoreOptions options);
  ~SqliteCentralStore() override;  // checkpoints (best effort) and closes

  Result<std::vector<BatchOutcome>> commit(const std::vector<protocol::WireBatch>& batches,
                                           const std::string& aggregator) override;
  Status audit(const AuditEntry& entry) override;
  Status health() override;

  // The schema version this build writes (PRAGMA user_version).
  // 2: batch_ledger.digest and batch_conflicts; a version-1 file is upgraded
  // in place when opened.
  static constexpr int kSchemaVersion = 2;

 private:
  struct Impl;
  explicit SqliteCentralStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::aggregator
