#include "aggregator/store/sqlite_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cstring>
#include <mutex>
#include <random>
#include <string_view>
#include <thread>
#include <utility>

#include "aggregator/store/seq_reuse.h"
#include "protocol/batch_digest.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/private_path.h"

namespace branchline::aggregator {
namespace {

constexpr std::string_view kSqlitePrefix = "sqlite://";

// The documented tables (README "The central store"). Users query them
// directly, so columns are only ever added, never renamed.
constexpr const char* kSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS records (
  id          INTEGER PRIMARY KEY,
  source      TEXT NOT NULL,
  record_key  TEXT NOT NULL,
  agent_id    TEXT NOT NULL,
  batch_seq   INTEGER NOT NULL,
  payload     TEXT NOT NULL,
  ingested_at TEXT NOT NULL,
  stored_at   TEXT NOT NULL,
  UNIQUE (source, record_key)
);
CREATE TABLE IF NOT EXISTS rejects (
  id          INTEGER PRIMARY KEY,
  agent_id    TEXT NOT NULL,
  batch_seq   INTEGER NOT NULL,
  source      TEXT NOT NULL,
  raw         TEXT NOT NULL,
  reasons     TEXT NOT NULL,
  ingested_at TEXT NOT NULL,
  stored_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_ledger (
  agent_id       TEXT NOT NULL,
  batch_seq      INTEGER NOT NULL,
  created_at     TEXT NOT NULL,
  stored_at      TEXT NOT NULL,
  aggregator     TEXT NOT NULL,
  records        INTEGER NOT NULL,
  stored_records INTEGER NOT NULL,
  rejects        INTEGER NOT NULL,
  PRIMARY KEY (agent_id, batch_seq)
);
CREATE TABLE IF NOT EXISTS audit (
  id        INTEGER PRIMARY KEY,
  at        TEXT NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  agent_id  TEXT NOT NULL,
  batch_seq INTEGER,
  detail    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schema_version (
  version    INTEGER NOT NULL,
  applied_at TEXT NOT NULL
);
)sql";

// Version 2: content digests, so a reused batch sequence with other content
// is stored (and recorded) instead of being taken for a duplicate. Ledger rows
// written before the upgrade keep a NULL digest.
constexpr const char* kSchemaV2Sql = R"sql(
ALTER TABLE batch_ledger ADD COLUMN digest TEXT;
CREATE TABLE IF NOT EXISTS batch_conflicts (
  agent_id       TEXT NOT NULL,
  batch_seq      INTEGER NOT NULL,
  digest         TEXT NOT NULL,
  created_at     TEXT NOT NULL,
  stored_at      TEXT NOT NULL,
  aggregator     TEXT NOT NULL,
  records        INTEGER NOT NULL,
  stored_records INTEGER NOT NULL,
  rejects        INTEGER NOT NULL,
  PRIMARY KEY (agent_id, batch_seq, digest)
);
)sql";

// Each step brings a store from version i to i + 1 (index 0: empty to 1).
constexpr const char* kMigrations[] = {kSchemaSql, kSchemaV2Sql};

bool isBusy(int rc) {
  int primary = rc & 0xff;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
}

// Maps a SQLite failure to the caller's retry decision.
Status sqliteStatus(int rc, sqlite3* db, std::string_view what) {
  std::string msg = std::string(what) + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PROTOCOL:
    case SQLITE_NOMEM:
      return Status::unavailable(std::move(msg));
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Status::dataLoss(std::move(msg));
    default:
      return Status::internal(std::move(msg));
  }
}

// A failure that is worth retrying the whole transaction for.
struct TxnError {
  int rc = SQLITE_OK;
  Status status;
};

class Statement {
 public:
  Statement() = default;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  Status prepare(sqlite3* db, const char* sql) {
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
    if (rc != SQLITE_OK) return sqliteStatus(rc, db, std::string("prepare `") + sql + "`");
    return Status::ok();
  }
  sqlite3_stmt* get() const { return stmt_; }

  void text(int i, std::string_view v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  void integer(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  void null(int i) { sqlite3_bind_null(stmt_, i); }
  // Steps a statement that returns no rows and resets it for reuse.
  int run() {
    int rc = sqlite3_step(stmt_);
    sqlite3_reset(stmt_);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

int64_t toSqlInt(uint64_t v) { return static_cast<int64_t>(v); }

// Creates `path` empty at 0600 when missing (SQLite takes an empty file as a
// new database) and narrows it and its -wal and -shm to 0600 when wider.
Status makeStoreFilesPrivate(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
  } else if (errno != EEXIST) {
    return Status::unavailable("cannot create: " + std::string(std::strerror(errno)));
  }
  for (const std::string& file : {path, path + "-wal", path + "-shm"}) {
    auto narrowed = narrowToPrivateFile(file);
    if (!narrowed.isOk()) return narrowed.status();
    if (*narrowed) log::warn("central_store_mode_narrowed", {{"path", file}, {"mode", "0600"}});
  }
  return Status::ok();
}

}  // namespace

Result<std::filesystem::path> parseSqliteUrl(const std::string& url) {
  auto bad = [&url](const std::string& why) {
    return Status::invalid("store.url `" + url + "`: " + why +
                           " (supported: sqlite:///absolute/path.db)");
  };
  if (url.rfind(kSqlitePrefix, 0) != 0) {
    return bad("unsupported scheme");
  }
  std::string path = url.substr(kSqlitePrefix.size());
  if (path.empty() || path[0] != '/') return bad("the path must be absolute (three slashes)");
  if (path.find('?') != std::string::npos || path.find('#') != std::string::npos) {
    return bad("query strings and fragments are not supported");
  }
  if (path.back() == '/') return bad("the path names a directory");
  return std::filesystem::path(path);
}

// Owns the connection. Declared before the statements in Impl so that they
// are finalized (destroyed) first and the close is clean.
struct Connection {
  sqlite3* db = nullptr;
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() {
    if (!db) return;
    // Fold the WAL back into the main file so a stopped store is one file;
    // PASSIVE, so another process still using the file is never waited for.
    sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    sqlite3_close_v2(db);
  }
};

struct SqliteCentralStore::Impl {
  SqliteStoreOptions options;
  Connection conn;
  sqlite3*& db = conn.db;
  std::mutex mutex;  // one connection: serialize every use of it
  Statement begin, commit_txn, rollback, ledger_insert, ledger_update, ledger_digest,
      conflict_insert, conflict_update, record_insert, reject_insert, audit_insert, health_probe;
  Rfc3339Formatter ingested_text;
  int64_t last_checkpoint_us = 0;
  std::minstd_rand jitter{std::random_device{}()};

  Status exec(const char* sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql, nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      std::string msg = err ? err : sqlite3_errstr(rc);
      sqlite3_free(err);
      Status s = sqliteStatus(rc, nullptr, msg);
      return s.withContext(std::string("`") + std::string(sql).substr(0, 60) + "`");
    }
    return Status::ok();
  }

  // Runs `body` inside BEGIN IMMEDIATE ... COMMIT, retrying the whole
  // transaction with jittered exponential backoff while another connection
  // holds the write lock. `body` returns SQLITE_OK or the failing rc (having
  // left the transaction open); `what` names the operation in errors.
  template <typename Body>
  Status writeTransaction(const char* what, Body&& body) {
    const int64_t deadline =
        steadyMicros() +
        std::chrono::duration_cast<std::chrono::microseconds>(options.max_busy_wait).count();
    int64_t backoff_us = 1000;
    for (int attempt = 1;; ++attempt) {
      int rc = begin.run();
      if (rc == SQLITE_OK) {
        rc = body();
        if (rc == SQLITE_OK) rc = commit_txn.run();
        if (rc != SQLITE_OK) {
          // Keep the failing message; ROLLBACK would overwrite it.
          Status failed = sqliteStatus(rc, db, what);
          if (!sqlite3_get_autocommit(db)) rollback.run();
          if (!isBusy(rc)) return failed;
        } else {
          return Status::ok();
        }
      } else if (!isBusy(rc)) {
        return sqliteStatus(rc, db, std::string(what) + ": BEGIN IMMEDIATE");
      }
      if (steadyMicros() + backoff_us > deadline) {
        return Status::unavailable(std::string(what) + ": the store stayed locked for " +
                                   std::to_string(options.max_busy_wait.count()) + " ms (" +
                                   std::to_string(attempt) + " attempts)");
      }
      std::uniform_int_distribution<int64_t> spread(backoff_us / 2, backoff_us);
      std::this_thread::sleep_for(std::chrono::microseconds(spread(jitter)));
      backoff_us = std::min<int64_t>(backoff_us * 2, 100000);
    }
  }

  void maybeCheckpoint() {
    int64_t now = steadyMicros();
    if (now - last_checkpoint_us <
        std::chrono::duration_cast<std::chrono::microseconds>(options.checkpoint_interval)
            .count()) {
      return;
    }
    last_checkpoint_us = now;
    // PASSIVE never waits for readers or the other writer; a long-lived
    // reader can still hold it back, which the next tick retries.
    int rc = sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    if (rc != SQLITE_OK && !isBusy(rc)) {
      log::warn("central_store_checkpoint_failed", {{"error", sqlite3_errmsg(db)}});
    }
  }

  // Writes one batch inside the open transaction; fills `out`.
  int writeBatch(const protocol::WireBatch& batch, const std::string& digest,
                 const std::string& aggregator, std::string_view stored_at, BatchOutcome& out) {
    out.agent_id = batch.agent_id;
    out.batch_seq = batch.seq;
    out.digest = digest;
    out.records = static_cast<uint32_t>(batch.records.size());
    std::string created_at = formatRfc3339Micros(batch.created_at_us);

    Statement& l = ledger_insert;
    l.text(1, batch.agent_id);
    l.integer(2, toSqlInt(batch.seq));
    l.text(3, created_at);
    l.text(4, stored_at);
    l.text(5, aggregator);
    l.integer(6, static_cast<int64_t>(batch.records.size()));
    l.integer(7, static_cast<int64_t>(batch.rejects.size()));
    l.text(8, digest);
    int rc = l.run();
    if (rc != SQLITE_OK) return rc;
    if (sqlite3_changes(db) == 0)
      return writeLedgerHit(batch, digest, aggregator, created_at, stored_at, out);

    uint32_t stored = 0;
    rc = writeContents(batch, aggregator, stored_at, stored);
    if (rc != SQLITE_OK) return rc;
    Statement& u = ledger_update;
    u.integer(1, stored);
    u.text(2, batch.agent_id);
    u.integer(3, toSqlInt(batch.seq));
    rc = u.run();
    if (rc != SQLITE_OK) return rc;
    out.stored_records = stored;
    out.duplicate_records = out.records - stored;
    out.rejects = static_cast<uint32_t>(batch.rejects.size());
    return SQLITE_OK;
  }

  // (agent_id, batch_seq) is already in the ledger: a redelivery (same digest,
  // or a row from before digests: nothing is written), or a reused sequence
  // with other content, whose records and rejects are stored and recorded.
  int writeLedgerHit(const protocol::WireBatch& batch, const std::string& digest,
                     const std::string& aggregator, const std::string& created_at,
                     std::string_view stored_at, BatchOutcome& out) {
    out.duplicate = true;
    out.duplicate_records = out.records;
    Statement& q = ledger_digest;
    q.text(1, batch.agent_id);
    q.integer(2, toSqlInt(batch.seq));
    int rc = sqlite3_step(q.get());
    std::string ledger_digest_text;
    bool has_digest = false;
    if (rc == SQLITE_ROW && sqlite3_column_type(q.get(), 0) != SQLITE_NULL) {
      has_digest = true;
      ledger_digest_text = reinterpret_cast<const char*>(sqlite3_column_text(q.get(), 0));
    }
    sqlite3_reset(q.get());
    if (rc != SQLITE_ROW) return rc == SQLITE_DONE ? SQLITE_INTERNAL : rc;
    if (!has_digest || ledger_digest_text == digest) return SQLITE_OK;

    Statement& c = conflict_insert;
    c.text(1, batch.agent_id);
    c.integer(2, toSqlInt(batch.seq));
    c.text(3, digest);
    c.text(4, created_at);
    c.text(5, stored_at);
    c.text(6, aggregator);
    c.integer(7, static_cast<int64_t>(batch.records.size()));
    c.integer(8, static_cast<int64_t>(batch.rejects.size()));
    rc = c.run();
    if (rc != SQLITE_OK) return rc;
    if (sqlite3_changes(db) == 0) return SQLITE_OK;  // this content was stored before

    uint32_t stored = 0;
    rc = writeContents(batch, aggregator, stored_at, stored);
    if (rc != SQLITE_OK) return rc;
    Statement& u = conflict_update;
    u.integer(1, stored);
    u.text(2, batch.agent_id);
    u.integer(3, toSqlInt(batch.seq));
    u.text(4, digest);
    rc = u.run();
    if (rc != SQLITE_OK) return rc;
    out.duplicate = false;
    out.seq_reused = true;
    out.stored_records = stored;
    out.duplicate_records = out.records - stored;
    out.rejects = static_cast<uint32_t>(batch.rejects.size());

    const std::string detail =
        seqReusedDetail(batch.seq, ledger_digest_text, digest, out.stored_records,
                        out.duplicate_records, out.rejects);
    Statement& a = audit_insert;
    a.text(1, stored_at);
    a.text(2, aggregator);
    a.text(3, "batch_seq_reused");
    a.text(4, batch.agent_id);
    a.integer(5, toSqlInt(batch.seq));
    a.text(6, detail);
    return a.run();
  }

  // Inserts the batch's records (new ones only), its rejects, and an audit row
  // for each buffer row it reports damaged.
  int writeContents(const protocol::WireBatch& batch, const std::string& aggregator,
                    std::string_view stored_at, uint32_t& stored) {
    // Bindings survive sqlite3_reset: bind the per-batch columns once.
    Statement& r = record_insert;
    r.text(3, batch.agent_id);
    r.integer(4, toSqlInt(batch.seq));
    r.text(7, stored_at);
    stored = 0;
    for (const protocol::WireRecord& rec : batch.records) {
      r.text(1, rec.source);
      r.text(2, rec.key);
      r.text(5, rec.payload);
      r.text(6, ingested_text.format(rec.ingested_at_us));
      int rc = r.run();
      if (rc != SQLITE_OK) return rc;
      stored += static_cast<uint32_t>(sqlite3_changes(db));
    }

    Statement& j = reject_insert;
    j.text(1, batch.agent_id);
    j.integer(2, toSqlInt(batch.seq));
    j.text(7, stored_at);
    for (const protocol::WireReject& rej : batch.rejects) {
      j.text(3, rej.source);
      j.text(4, rej.raw);
      j.text(5, rej.reasons_json);
      j.text(6, ingested_text.format(rej.ingested_at_us));
      int rc = j.run();
      if (rc != SQLITE_OK) return rc;
    }
    for (const protocol::WireDamaged& d : batch.damaged) {
      const std::string detail = bufferDamagedDetail(d);  // bound, not copied: outlives run()
      Statement& a = audit_insert;
      a.text(1, stored_at);
      a.text(2, aggregator);
      a.text(3, kBufferDamagedAction);
      a.text(4, batch.agent_id);
      a.integer(5, toSqlInt(batch.seq));
      a.text(6, detail);
      int rc = a.run();
      if (rc != SQLITE_OK) return rc;
    }
    return SQLITE_OK;
  }

  Status createSchema() {
    BL_RETURN_IF_ERROR(begin.prepare(db, "BEGIN IMMEDIATE"));
    BL_RETURN_IF_ERROR(commit_txn.prepare(db, "COMMIT"));
    BL_RETURN_IF_ERROR(rollback.prepare(db, "ROLLBACK"));
    int found_version = 0;
    Status s = writeTransaction("create schema", [&]() -> int {
      sqlite3_stmt* v = nullptr;
      int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &v, nullptr);
      if (rc != SQLITE_OK) return rc;
      rc = sqlite3_step(v);
      found_version = rc == SQLITE_ROW ? sqlite3_column_int(v, 0) : 0;
      sqlite3_finalize(v);
      if (rc != SQLITE_ROW) return rc;
      if (found_version >= kSchemaVersion) return SQLITE_OK;  // newer: refused below
      // Upgrades in place, one step at a time, all in this one transaction.
      const std::string at = formatRfc3339Micros(nowMicros());
      for (int v = found_version; v < kSchemaVersion; ++v) {
        rc = sqlite3_exec(db, kMigrations[v], nullptr, nullptr, nullptr);
        if (rc != SQLITE_OK) return rc;
      }
      // One row per start that created or upgraded the schema.
      std::string stamp = "INSERT INTO schema_version(version, applied_at) VALUES(" +
                          std::to_string(kSchemaVersion) + ", '" + at +
                          "'); PRAGMA user_version = " + std::to_string(kSchemaVersion) + ";";
      return sqlite3_exec(db, stamp.c_str(), nullptr, nullptr, nullptr);
    });
    BL_RETURN_IF_ERROR(s);
    if (found_version > kSchemaVersion) {
      return Status::dataLoss("schema version " + std::to_string(found_version) +
                              " is newer than this build's " + std::to_string(kSchemaVersion) +
                              "; upgrade the aggregator");
    }
    BL_RETURN_IF_ERROR(ledger_insert.prepare(
        db,
        "INSERT OR IGNORE INTO batch_ledger(agent_id, batch_seq, created_at, stored_at, "
        "aggregator, records, stored_records, rejects, digest) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8)"));
    BL_RETURN_IF_ERROR(ledger_digest.prepare(
        db, "SELECT digest FROM batch_ledger WHERE agent_id = ?1 AND batch_seq = ?2"));
    BL_RETURN_IF_ERROR(conflict_insert.prepare(
        db,
        "INSERT OR IGNORE INTO batch_conflicts(agent_id, batch_seq, digest, created_at, "
        "stored_at, aggregator, records, stored_records, rejects) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)"));
    BL_RETURN_IF_ERROR(conflict_update.prepare(
        db,
        "UPDATE batch_conflicts SET stored_records = ?1 WHERE agent_id = ?2 AND batch_seq = ?3 "
        "AND digest = ?4"));
    BL_RETURN_IF_ERROR(ledger_update.prepare(
        db, "UPDATE batch_ledger SET stored_records = ?1 WHERE agent_id = ?2 AND batch_seq = ?3"));
    BL_RETURN_IF_ERROR(record_insert.prepare(
        db,
        "INSERT OR IGNORE INTO records(source, record_key, agent_id, batch_seq, payload, "
        "ingested_at, stored_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"));
    BL_RETURN_IF_ERROR(reject_insert.prepare(
        db,
        "INSERT INTO rejects(agent_id, batch_seq, source, raw, reasons, ingested_at, stored_at) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"));
    BL_RETURN_IF_ERROR(
        audit_insert.prepare(db,
                             "INSERT INTO audit(at, actor, action, agent_id, batch_seq, detail) "
                             "VALUES(?1, ?2, ?3, ?4, ?5, ?6)"));
    BL_RETURN_IF_ERROR(health_probe.prepare(db, "SELECT count(*) FROM sqlite_master"));
    return Status::ok();
  }
};

SqliteCentralStore::SqliteCentralStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SqliteCentralStore::~SqliteCentralStore() = default;

Result<std::unique_ptr<SqliteCentralStore>> SqliteCentralStore::open(SqliteStoreOptions options) {
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  const std::string path = impl->options.path.string();
  const std::string ctx = "central store " + path;
  // Customer data at rest (README "Private files"): the file is created 0600
  // before SQLite sees it, so SQLite creates -wal and -shm with that mode too
  // (it copies the database file's mode); files left wider by an older
  // version are narrowed, with a warning.
  if (Status s = makeStoreFilesPrivate(path); !s) return s.withContext(ctx);
  int rc =
      sqlite3_open_v2(path.c_str(), &impl->db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    Status s = Status::unavailable(
        ctx + ": cannot open: " + (impl->db ? sqlite3_errmsg(impl->db) : sqlite3_errstr(rc)));
    return s;
  }
  sqlite3_extended_result_codes(impl->db, 1);
  sqlite3_busy_timeout(impl->db, static_cast<int>(impl->options.busy_timeout.count()));

  // journal_mode answers with the mode in effect; anything but WAL means the
  // file cannot be shared safely by the aggregator pair.
  {
    sqlite3_stmt* st = nullptr;
    rc = sqlite3_prepare_v2(impl->db, "PRAGMA journal_mode=WAL", -1, &st, nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    std::string mode =
        rc == SQLITE_ROW ? reinterpret_cast<const char*>(sqlite3_column_text(st, 0)) : "";
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return sqliteStatus(rc, impl->db, ctx + ": PRAGMA journal_mode");
    if (mode != "wal") return Status::unavailable(ctx + ": cannot use WAL (mode " + mode + ")");
  }
  std::string pragmas =
      "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; "
      "PRAGMA journal_size_limit=" +
      std::to_string(impl->options.journal_size_limit) + ";";
  Status s = impl->exec(pragmas.c_str());
  if (!s) return s.withContext(ctx);
  s = impl->createSchema();
  if (!s) return s.withContext(ctx);
  // -wal and -shm exist now (WAL mode opened them); check them again in case
  // another process created them.
  if (Status s = makeStoreFilesPrivate(path); !s) return s.withContext(ctx);
  impl->last_checkpoint_us = steadyMicros();
  log::info("central_store_open", {{"path", path}, {"schema_version", kSchemaVersion}});
  return std::unique_ptr<SqliteCentralStore>(new SqliteCentralStore(std::move(impl)));
}

Result<std::vector<BatchOutcome>> SqliteCentralStore::commit(
    const std::vector<protocol::WireBatch>& batches, const std::string& aggregator) {
  std::vector<BatchOutcome> outcomes;
  if (batches.empty()) return outcomes;
  // Outside the lock and the transaction: hashing is the costly part.
  std::vector<std::string> digests;
  digests.reserve(batches.size());
  for (const auto& b : batches) digests.push_back(protocol::batchDigest(b));
  std::lock_guard lock(impl_->mutex);
  Status s = impl_->writeTransaction("commit batches", [&]() -> int {
    outcomes.assign(batches.size(), BatchOutcome{});  // a retried attempt starts clean
    const std::string stored_at = formatRfc3339Micros(nowMicros());
    for (size_t i = 0; i < batches.size(); ++i) {
      int rc = impl_->writeBatch(batches[i], digests[i], aggregator, stored_at, outcomes[i]);
      if (rc != SQLITE_OK) return rc;
    }
    return SQLITE_OK;
  });
  if (!s) {
    return s.withContext("committing " + std::to_string(batches.size()) +
                         " batches (first: agent `" + batches.front().agent_id + "` batch " +
                         std::to_string(batches.front().seq) + ")");
  }
  impl_->maybeCheckpoint();
  return outcomes;
}

Status SqliteCentralStore::audit(const AuditEntry& entry) {
  std::lock_guard lock(impl_->mutex);
  const std::string at = formatRfc3339Micros(entry.at_us ? entry.at_us : nowMicros());
  Statement& a = impl_->audit_insert;
  Status s = impl_->writeTransaction("audit", [&]() -> int {
    a.text(1, at);
    a.text(2, entry.actor);
    a.text(3, entry.action);
    a.text(4, entry.agent_id);
    if (entry.batch_seq) {
      a.integer(5, toSqlInt(*entry.batch_seq));
    } else {
      a.null(5);
    }
    a.text(6, entry.detail);
    return a.run();
  });
  if (!s) return s.withContext("audit `" + entry.action + "` for agent `" + entry.agent_id + "`");
  return Status::ok();
}

Status SqliteCentralStore::health() {
  std::lock_guard lock(impl_->mutex);
  sqlite3_stmt* st = impl_->health_probe.get();
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_ROW) return sqliteStatus(rc, impl_->db, "central store health probe");
  return Status::ok();
}

}  // namespace branchline::aggregator
