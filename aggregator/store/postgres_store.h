// PostgresCentralStore: the CentralStore on a PostgreSQL server, for
// `store.url = "postgresql://user@host:port/db"` (also `postgres://`). Same
// tables, columns and RFC 3339 text times as the SQLite store, so a query
// reads the same on both. Any number of aggregators may share the database.
//
// One commit() is one transaction of a fixed number of round trips whatever
// the batch count: array-valued parameters (binary, never escaped text) feed
// one INSERT for the ledger, one for the records and one for the rejects.
// Within a commit, ledger rows and records are inserted in key order, so two
// aggregators committing overlapping batches take their row locks in the same
// order and cannot deadlock; the losing one waits and then sees duplicates.
//
// When commit() returns OK the transaction is durable (synchronous_commit=on
// is set on every connection). When the server is away or the connection
// drops, calls answer kUnavailable and the next call reconnects by itself
// (re-running the schema check and preparing statements again); a commit
// whose outcome was unknown is simply retried by the caller, and the ledger
// makes the retry harmless. The URL's password never appears in logs or
// errors.
//
// One object is one connection; its methods are thread-safe (serialized).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "aggregator/store/central_store.h"

namespace branchline::aggregator {

struct PostgresStoreOptions {
  std::string url;                                     // postgresql://... (libpq URI syntax)
  std::chrono::seconds connect_timeout{5};             // unless the URL sets connect_timeout
  std::chrono::milliseconds max_conflict_wait{15000};  // retry budget for deadlock/serialization
};

// True when `url` names the PostgreSQL backend (postgresql:// or postgres://).
bool isPostgresUrl(const std::string& url);

// `url` with the password (userinfo or `password=` parameter) replaced by
// "***": the only form of a store URL that may be logged or put in an error.
std::string redactPostgresUrl(const std::string& url);

// kInvalidArgument (naming the redacted URL and the accepted form) unless
// libpq can parse `url` as a postgresql:// or postgres:// URI. Connects to
// nothing.
Status checkPostgresUrl(const std::string& url);

class PostgresCentralStore final : public CentralStore {
 public:
  // Connects and migrates: creates the schema if missing and records it in
  // schema_version. kInvalidArgument for a bad URL, kUnavailable when the
  // server cannot be reached, kDataLoss when the database carries a newer
  // schema than this build knows.
  static Result<std::unique_ptr<PostgresCentralStore>> open(PostgresStoreOptions options);
  ~PostgresCentralStore() override;

  Result<std::vector<BatchOutcome>> commit(const std::vector<protocol::WireBatch>& batches,
                                           const std::string& aggregator) override;
  Status audit(const AuditEntry& entry) override;
  // Reconnects first if the connection was lost; kUnavailable if that fails.
  Status health() override;

  // The schema version this build writes (max(version) in schema_version).
  // 2: batch_ledger.digest and batch_conflicts; a version-1 database is
  // upgraded in place (under the migration lock) when an aggregator connects.
  static constexpr int kSchemaVersion = 2;

 private:
  struct Impl;
  explicit PostgresCentralStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::aggregator
