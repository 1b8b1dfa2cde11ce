// DurableBuffer on SQLite (WAL, synchronous=FULL, one connection).
//
// Schema (version 2; version 1 held the sealed columns in clear and is upgraded
// in place on open):
//
//   records(id INTEGER PRIMARY KEY, source TEXT, record_key BLOB,  -- sealed
//           ingested_at INTEGER  -- Unix µs
//           payload BLOB)                                          -- sealed
//   quarantine(id INTEGER PRIMARY KEY, source TEXT, raw BLOB,       -- sealed
//              reasons BLOB, ingested_at INTEGER)                   -- sealed
//       Sealed values are RecordCipher envelopes (version || nonce || ciphertext ||
//       tag) bound to "table.column" and the row id, which the committer assigns
//       before the insert. Sources are configuration, not customer data, and stay
//       in clear; no index covers a sealed column, so none needs a keyed hash.
//       `id` is assigned by the committer in arrival order, so every insert lands at
//       the right edge of the B-tree (LIMITS.md: 3-5x faster than random keys) and the
//       entries of one batch are one contiguous id range. Ids are never reused: the
//       next id is max(highest id, last batched id) + 1, so even when every row has
//       been acked and deleted a new row cannot fall into an already batched range.
//       Byte accounting counts plaintext sizes: length() of a sealed BLOB minus the
//       fixed envelope overhead, so max_bytes means what it meant before sealing.
//   batches(seq INTEGER PRIMARY KEY, created_at INTEGER,
//           first_record, last_record, first_reject, last_reject,  -- inclusive id
//           record_count, reject_count, bytes)                     -- ranges; empty
//       A batch is its two id ranges; loading it reads them back in id order, so a
//       retransmission carries the same records. ack deletes the ranges and the row.
//   meta(id = 1, schema_version, next_batch_seq, last_batched_record,
//        last_batched_reject)
//       One row. next_batch_seq is only ever incremented (seqs are never reused, even
//       after every batch is acked and the process restarts); the two markers are the
//       highest ids already in a batch, everything above them is unbatched.
//   key_check(id = 1, sealed BLOB)
//       A constant sealed under the data key: opening with another key fails here,
//       before any record is read. An empty BLOB marks a buffer written in clear
//       (agent/buffer/testing/plaintext_buffer.h: benchmarks and tests only).
//   tokens(token TEXT PRIMARY KEY, committed_at INTEGER) WITHOUT ROWID
//       Idempotency tokens of appends (spool files), written in the append's
//       transaction and pruned after 30 days.
//
// Threads: appendAsync() only queues; one committer thread takes everything queued
// (up to max_group_records) into one transaction and one fsync, then runs the
// callbacks in order. The forwarder's calls (formBatch, loadBatch, ack) use the same
// connection under `db_mu`, so there is exactly one writer and no SQLITE_BUSY.
// Counters for stats() live under their own mutex and never wait for SQL.
//
// WAL: automatic checkpoints are off on the hot path; the committer runs a PASSIVE
// checkpoint every checkpoint_interval (TRUNCATE when the buffer is empty), so the
// WAL stays bounded and deleted rows do not linger in it. secure_delete=ON zeroes
// freed pages. locking_mode=EXCLUSIVE: one agent owns the file (a second process
// opening it gets kUnavailable) and no shared-memory wal-index is needed.
#include "agent/buffer/durable_buffer.h"

#include <sqlite3.h>

#include <algorithm>
#include <cassert>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string_view>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "agent/buffer/record_cipher.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::agent {
namespace {

constexpr int64_t kSchemaVersion = 2;
constexpr int64_t kPlaintextSchemaVersion = 1;  // upgraded in place by sealing its rows
constexpr std::string_view kKeyCheckColumn = "key_check.sealed";
constexpr std::string_view kKeyCheckPlain = "branchline buffer data key check v1";
constexpr std::string_view kRecordKeyColumn = "records.record_key";
constexpr std::string_view kPayloadColumn = "records.payload";
constexpr std::string_view kRawColumn = "quarantine.raw";
constexpr std::string_view kReasonsColumn = "quarantine.reasons";
constexpr int64_t kTokenRetentionUs = int64_t{30} * 24 * 3600 * 1000000;
constexpr int64_t kTokenPruneEveryUs = int64_t{3600} * 1000000;
// Damaged rows stay this long after their batch's report was acked.
constexpr int64_t kDamagedRetentionUs = int64_t{30} * 24 * 3600 * 1000000;
// Per-entry and per-append bookkeeping counted against max_queued_bytes, so a flood
// of empty appends is bounded too.
constexpr size_t kEntryOverhead = sizeof(WireRecord);
constexpr size_t kAppendOverhead = 256;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

// Resets a statement on scope exit: releases its read cursor and forgets the
// SQLITE_STATIC pointers bound to it before the bound data goes away.
class StmtUse {
 public:
  explicit StmtUse(sqlite3_stmt* s) : s_(s) {}
  ~StmtUse() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  StmtUse(const StmtUse&) = delete;
  StmtUse& operator=(const StmtUse&) = delete;
  sqlite3_stmt* get() const { return s_; }

 private:
  sqlite3_stmt* s_;
};

// The bound data outlives the statement's use (StmtUse clears bindings), so SQLite
// need not copy it.
int bindText(sqlite3_stmt* s, int i, std::string_view v) {
  return sqlite3_bind_text64(s, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8);
}
int bindBlob(sqlite3_stmt* s, int i, std::string_view v) {
  return sqlite3_bind_blob64(s, i, v.data(), v.size(), SQLITE_STATIC);
}
std::string columnString(sqlite3_stmt* s, int i) {
  const void* p = sqlite3_column_blob(s, i);
  int n = sqlite3_column_bytes(s, i);
  return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), size_t(n));
}

uint64_t appendBytes(const std::vector<WireRecord>& records,
                     const std::vector<WireReject>& rejects) {
  uint64_t n = 0;
  for (const auto& r : records) n += r.payload.size();
  for (const auto& r : rejects) n += r.raw.size();
  return n;
}

struct PendingAppend {
  std::vector<WireRecord> records;
  std::vector<WireReject> rejects;
  DurableBuffer::AppendDone done;
  std::string token;
  uint64_t bytes = 0;  // counted against max_bytes
  size_t cost = 0;     // counted against max_queued_bytes
  Status status;
};

}  // namespace

struct DurableBuffer::Impl {
  BufferOptions options;
  std::string path;  // for error messages

  // --- the cipher shares the connection's lock (db_mu): one GCM context, key set once ---
  bool in_clear = false;                 // values unsealed: benchmarks and tests only
  std::unique_ptr<RecordCipher> cipher;  // null only in_clear
  size_t seal_overhead = 0;              // bytes a sealed value adds to its plaintext
  std::string sealed_a, sealed_b;        // reused per insert: no allocation per value

  // --- guarded by db_mu: the connection, its statements, the id markers ---
  std::mutex db_mu;
  Db db;
  Stmt begin, commit, rollback;
  Stmt insert_record, insert_reject, insert_token, has_token, prune_tokens;
  Stmt select_unbatched_records, select_unbatched_rejects;
  Stmt first_unbatched_record_time, first_unbatched_reject_time;
  Stmt insert_batch, update_meta, select_batch;
  Stmt select_records_range, select_rejects_range;
  Stmt delete_records_range, delete_rejects_range, delete_batch;
  Stmt damage_record, damage_reject, delete_record, delete_reject, shrink_batch;
  Stmt select_damaged, damaged_acked, prune_damaged;
  int64_t next_record_id = 1;
  int64_t next_reject_id = 1;
  int64_t last_batched_record = 0;
  int64_t last_batched_reject = 0;
  uint64_t next_batch_seq = 1;
  bool wal_dirty = false;  // written since the last checkpoint
  int64_t last_token_prune_us = 0;

  // --- guarded by stats_mu: what stats() reports, without SQL ---
  mutable std::mutex stats_mu;
  BufferStats counters;  // unbatched_records / oldest_* are derived in stats()
  uint64_t unbatched_records = 0;
  uint64_t unbatched_rejects = 0;
  int64_t oldest_unbatched_record_us = 0;
  int64_t oldest_unbatched_reject_us = 0;
  std::map<uint64_t, int64_t> unacked;  // seq -> created_at

  // --- guarded by q_mu: the append queue ---
  std::mutex q_mu;
  std::condition_variable q_cv;
  std::deque<PendingAppend> queue;
  size_t queued_cost = 0;
  bool stopping = false;

  std::thread committer;
  bool committer_started = false;  // open() succeeded

  // ---------------------------------------------------------------- errors
  // Set once by the first I/O error and never cleared while open (see
  // BufferStats::io_failed): a failed fsync is not retried as if it had worked.
  mutable std::atomic<bool> io_failed{false};
  mutable std::mutex io_mu;
  mutable std::string io_failure;  // the first one's message; under io_mu

  void noteIoFailure(const std::string& msg) const {
    {
      std::lock_guard lock(io_mu);
      if (io_failed.load()) return;
      io_failure = msg;
      io_failed.store(true);
    }
    log::error("buffer_io_failed",
               {{"path", path},
                {"error", msg},
                {"action", "appends refused until the agent is restarted; check the disk"}});
  }

  Status ioFailedStatus() const {
    std::lock_guard lock(io_mu);
    return Status::unavailable(
        "buffer " + path + " stopped taking records after an I/O error (" + io_failure +
        "): writes it reported done may be lost, so nothing more is answered as stored; "
        "check the disk and restart the agent");
  }

  Status sqlError(int rc, std::string_view op) const {
    std::string msg = "buffer ";
    msg += path;
    msg += ": ";
    msg += op;
    msg += ": ";
    msg += db ? sqlite3_errmsg(db.get()) : sqlite3_errstr(rc);
    msg += " (sqlite code " + std::to_string(rc) + ")";
    // Out of memory is not the disk's fault.
    if ((rc & 0xff) == SQLITE_IOERR && rc != SQLITE_IOERR_NOMEM) noteIoFailure(msg);
    switch (rc & 0xff) {
      case SQLITE_FULL:
        return Status::exhausted(msg + "; free disk space");
      case SQLITE_CORRUPT:
      case SQLITE_NOTADB:
        return Status::dataLoss(msg);
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return Status::unavailable(msg + "; is another agent using this buffer?");
      default:
        return Status::internal(msg);
    }
  }

  Status exec(const char* sql, std::string_view op) {
    char* err = nullptr;
    int rc = sqlite3_exec(db.get(), sql, nullptr, nullptr, &err);
    sqlite3_free(err);
    return rc == SQLITE_OK ? Status::ok() : sqlError(rc, op);
  }

  Status prepare(Stmt& out, const char* sql) {
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_prepare_v3(db.get(), sql, -1, SQLITE_PREPARE_PERSISTENT, &s, nullptr);
    if (rc != SQLITE_OK) return sqlError(rc, std::string("prepare `") + sql + "`");
    out.reset(s);
    return Status::ok();
  }

  // Runs a statement that returns no rows.
  Status run(sqlite3_stmt* s, std::string_view op) {
    int rc = sqlite3_step(s);
    return rc == SQLITE_DONE ? Status::ok() : sqlError(rc, op);
  }
  Status runOnce(const Stmt& s, std::string_view op) {
    StmtUse use(s.get());
    return run(s.get(), op);
  }

  void rollbackQuietly() {
    if (sqlite3_get_autocommit(db.get()) == 0) {
      StmtUse use(rollback.get());
      sqlite3_step(rollback.get());
    }
  }

  // ---------------------------------------------------------------- sealing
  // The plaintext size of a (sealed) column value: what the byte bound counts.
  size_t plainSize(sqlite3_stmt* q, int col) const {
    size_t n = size_t(sqlite3_column_bytes(q, col));
    return n >= seal_overhead ? n - seal_overhead : 0;  // a short value fails to open
  }

  // Reads a sealed column of the current row into `out`, opening it: kDataLoss
  // (naming the column and row, not the file) when the value fails to open.
  Status openSealed(sqlite3_stmt* q, int col, std::string_view column, int64_t rowid,
                    std::string& out) {
    if (!cipher) {
      out = columnString(q, col);
      return Status::ok();
    }
    const void* p = sqlite3_column_blob(q, col);
    std::string_view v(p == nullptr ? "" : static_cast<const char*>(p),
                       size_t(sqlite3_column_bytes(q, col)));
    return cipher->open(column, rowid, v, out);
  }

  // A row whose sealed value did not open, on its way to the `damaged` table.
  struct DamagedRow {
    bool reject = false;  // quarantine (else records)
    int64_t id = 0;
    std::string source;
    int64_t ingested_at_us = 0;
    std::string reason;
    uint64_t bytes = 0;  // what the row counted against max_bytes
  };

  // Opens a record row's (or a reject row's) two sealed values. A value that
  // fails authentication lands in `damaged` (false returned), anything else is
  // an error for the caller.
  Result<bool> openRow(sqlite3_stmt* q, bool reject, int64_t id, std::string& a, std::string& b,
                       std::vector<DamagedRow>& damaged) {
    Status s =
        reject ? openSealed(q, 2, kRawColumn, id, a) : openSealed(q, 2, kRecordKeyColumn, id, a);
    if (s.isOk()) {
      s = reject ? openSealed(q, 3, kReasonsColumn, id, b)
                 : openSealed(q, 4, kPayloadColumn, id, b);
    }
    if (s.isOk()) return true;
    if (s.code() != Code::kDataLoss) return s.withContext("buffer " + path);
    DamagedRow& d = damaged.emplace_back();
    d.reject = reject;
    d.id = id;
    d.source = columnString(q, 1);
    d.ingested_at_us = sqlite3_column_int64(q, reject ? 4 : 3);
    d.reason = s.message();
    d.bytes = plainSize(q, reject ? 2 : 4);
    log::error("buffer_row_damaged", {{"path", path},
                                      {"table", reject ? "quarantine" : "records"},
                                      {"row", id},
                                      {"error", s.message()}});
    return false;
  }

  // Inside the caller's transaction: moves the rows, bytes unchanged, to
  // `damaged` as part of batch `seq`.
  Status moveToDamaged(const std::vector<DamagedRow>& rows, uint64_t seq, int64_t now_us) {
    for (const DamagedRow& d : rows) {
      sqlite3_stmt* c = d.reject ? damage_reject.get() : damage_record.get();
      {
        StmtUse use(c);
        sqlite3_bind_int64(c, 1, d.id);
        sqlite3_bind_int64(c, 2, int64_t(seq));
        sqlite3_bind_int64(c, 3, now_us);
        bindText(c, 4, d.reason);
        BL_RETURN_IF_ERROR(run(c, "keep damaged row"));
      }
      sqlite3_stmt* del = d.reject ? delete_reject.get() : delete_record.get();
      StmtUse use(del);
      sqlite3_bind_int64(del, 1, d.id);
      BL_RETURN_IF_ERROR(run(del, "remove damaged row"));
    }
    return Status::ok();
  }

  // The damage reports of batch `seq`, oldest first.
  Status loadDamaged(uint64_t seq, std::vector<protocol::WireDamaged>& out) {
    sqlite3_stmt* q = select_damaged.get();
    StmtUse use(q);
    sqlite3_bind_int64(q, 1, int64_t(seq));
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
      protocol::WireDamaged& d = out.emplace_back();
      d.table = columnString(q, 0);
      d.row = uint64_t(sqlite3_column_int64(q, 1));
      d.source = columnString(q, 2);
      d.ingested_at_us = sqlite3_column_int64(q, 3);
      d.reason = columnString(q, 4);
    }
    return rc == SQLITE_DONE ? Status::ok()
                             : sqlError(rc, "read damage reports of batch " + std::to_string(seq));
  }

  // Counts rows that left records/quarantine for `damaged`.
  void countDamaged(const std::vector<DamagedRow>& rows) {
    std::lock_guard lock(stats_mu);
    for (const DamagedRow& d : rows) {
      (d.reject ? counters.rejects : counters.records) -= 1;
      counters.bytes -= d.bytes;
    }
    counters.damaged += rows.size();
    counters.damaged_found += rows.size();
  }

  // Proves the data key is the one the buffer was written with (or seals the
  // check value into a new buffer), and upgrades a version-1 buffer by sealing
  // every row in one transaction. Runs before the statements are prepared.
  Status checkKeyAndUpgrade() {
    BL_RETURN_IF_ERROR(exec("BEGIN IMMEDIATE", "begin key check"));
    Status s = checkKeyInTransaction();
    if (s.isOk()) s = exec("COMMIT", "commit key check");
    if (!s.isOk()) {
      (void)exec("ROLLBACK", "rollback key check");
      return s;
    }
    return Status::ok();
  }

  Status checkKeyInTransaction() {
    int64_t version = 0, rows = 0, has_check = 0;
    BL_RETURN_IF_ERROR(
        queryInts("SELECT (SELECT schema_version FROM meta WHERE id = 1),"
                  " (SELECT count(*) FROM records) + (SELECT count(*) FROM quarantine),"
                  " (SELECT count(*) FROM key_check)",
                  {&version, &rows, &has_check}, "read key check"));
    const bool plaintext = cipher == nullptr;
    if (has_check == 0) {
      if (version == kPlaintextSchemaVersion && !plaintext) {
        BL_RETURN_IF_ERROR(sealVersion1Rows());
      } else if (version == kPlaintextSchemaVersion || rows > 0) {
        return Status::dataLoss("buffer " + path + ": holds " + std::to_string(rows) +
                                " rows (schema version " + std::to_string(version) +
                                ") but no key check; cannot tell how they were written");
      }
      Stmt ins;
      BL_RETURN_IF_ERROR(prepare(ins, "INSERT INTO key_check(id, sealed) VALUES (1, ?)"));
      std::string sealed;
      if (!plaintext) BL_RETURN_IF_ERROR(cipher->seal(kKeyCheckColumn, 1, kKeyCheckPlain, sealed));
      bindBlob(ins.get(), 1, sealed);
      return run(ins.get(), "store key check");
    }
    Stmt q;
    BL_RETURN_IF_ERROR(prepare(q, "SELECT sealed FROM key_check WHERE id = 1"));
    int rc = sqlite3_step(q.get());
    if (rc != SQLITE_ROW) return sqlError(rc, "read key check");
    const std::string sealed = columnString(q.get(), 0);
    if (plaintext != sealed.empty()) {
      return Status::invalid(
          "buffer " + path +
          (plaintext ? " is encrypted; a buffer in clear (a benchmark's) cannot open it"
                     : " was written in clear by a benchmark or test (agent/buffer/testing); "
                       "delete it or open it the same way"));
    }
    if (plaintext) return Status::ok();
    if (opensKeyCheck(*cipher, sealed)) return discardUnfinishedRotation();
    auto finished = finishCommittedRotation(sealed);
    if (!finished.isOk()) return finished.status();
    if (*finished) return Status::ok();
    return Status(Code::kPermissionDenied,
                  "buffer " + path + " was encrypted with a different data key than key file " +
                      keyFile().string() +
                      "; restore the agent's original key file (a lost key means the buffered "
                      "records cannot be read)");
  }

  static bool opensKeyCheck(RecordCipher& c, const std::string& sealed) {
    std::string opened;
    return c.open(kKeyCheckColumn, 1, sealed, opened).isOk() && opened == kKeyCheckPlain;
  }

  // A rotation's new key waits in this side file until the re-sealing has committed.
  std::filesystem::path nextKeyFile() const {
    std::filesystem::path p = keyFile();
    p += ".next";
    return p;
  }

  // The key file opens the buffer, so a leftover side file is from a rotation that
  // did not commit: nothing committed is sealed under it.
  Status discardUnfinishedRotation() {
    const std::filesystem::path next = nextKeyFile();
    std::error_code ec;
    if (!std::filesystem::remove(next, ec)) {
      if (ec) {
        return Status::internal("buffer " + path + ": remove the unfinished rotation's key " +
                                next.string() + ": " + ec.message());
      }
      return Status::ok();
    }
    log::warn("buffer_key_rotation_discarded", {{"path", path}, {"key_file", next.string()}});
    return Status::ok();
  }

  // The key file does not open the buffer: when the side file does, a rotation
  // committed and stopped before installing its key. Installs it; false when the
  // side file is missing or does not open the buffer either.
  Result<bool> finishCommittedRotation(const std::string& sealed) {
    const std::filesystem::path next = nextKeyFile();
    auto key = readDataKeyFile(next);
    if (!key.isOk()) {
      if (key.status().code() == Code::kNotFound) return false;
      return key.status().withContext("buffer " + path);
    }
    auto next_cipher = RecordCipher::create(*key);
    if (!next_cipher.isOk()) return next_cipher.status().withContext("buffer " + path);
    if (!opensKeyCheck(**next_cipher, sealed)) return false;
    BL_RETURN_IF_ERROR(installNextKey({}));
    cipher = std::move(next_cipher).value();
    log::warn("buffer_key_rotation_finished", {{"path", path}, {"key_file", keyFile().string()}});
    return true;
  }

  // Destroys the old key file's bytes and renames the side file over it. Either step
  // may be cut short by a crash; open() then finds the side file and repeats this.
  Status installNextKey(const RotationStep& after_step) {
    const std::filesystem::path file = keyFile(), next = nextKeyFile();
    std::error_code ec;
    if (std::filesystem::exists(file, ec)) {
      Status z = zeroDataKeyFile(file);
      // The rename below still replaces it; an unwritable old file only keeps its
      // bytes in blocks the file system frees.
      if (!z.isOk()) log::warn("buffer_old_key_not_zeroed", {{"error", z.toString()}});
    }
    if (after_step && !after_step("old_key_zeroed")) return stoppedAt("old_key_zeroed");
    Status s = replaceDataKeyFile(next, file);
    return s.isOk() ? s : s.withContext("buffer " + path + ": install the rotated data key");
  }

  static Status stoppedAt(std::string_view step) {
    return Status::internal("data key rotation stopped by the test seam after " +
                            std::string(step));
  }

  // Turns a stored value (in place) into its plaintext before it is sealed again.
  using Reveal = std::function<Status(std::string_view column, int64_t rowid, std::string& value)>;

  // Rewrites every sealed column value of records and quarantine: `reveal` gives the
  // plaintext, `sealer` seals it again. Chunk by chunk (a statement must not update
  // the rows it is scanning); each chunk is in memory before its nonce run begins.
  // Runs inside the caller's transaction.
  Status resealRows(const Reveal& reveal, RecordCipher& sealer, uint64_t* records,
                    uint64_t* rejects) {
    struct Table {
      const char* select;
      const char* update;
      std::string_view first, second;
      uint64_t* rows;
    };
    // 256 rows of at most max_record_bytes each bound the memory a chunk takes.
    const Table tables[] = {
        {"SELECT id, record_key, payload FROM records WHERE id > ? ORDER BY id LIMIT 256",
         "UPDATE records SET record_key = ?, payload = ? WHERE id = ?", kRecordKeyColumn,
         kPayloadColumn, records},
        {"SELECT id, raw, reasons FROM quarantine WHERE id > ? ORDER BY id LIMIT 256",
         "UPDATE quarantine SET raw = ?, reasons = ? WHERE id = ?", kRawColumn, kReasonsColumn,
         rejects},
    };
    for (const Table& t : tables) {
      Stmt sel, upd;
      BL_RETURN_IF_ERROR(prepare(sel, t.select));
      BL_RETURN_IF_ERROR(prepare(upd, t.update));
      int64_t after = 0;
      std::vector<std::tuple<int64_t, std::string, std::string>> chunk;
      do {
        chunk.clear();
        {
          StmtUse use(sel.get());
          sqlite3_bind_int64(sel.get(), 1, after);
          int rc;
          while ((rc = sqlite3_step(sel.get())) == SQLITE_ROW) {
            chunk.emplace_back(sqlite3_column_int64(sel.get(), 0), columnString(sel.get(), 1),
                               columnString(sel.get(), 2));
          }
          if (rc != SQLITE_DONE) return sqlError(rc, "read rows to re-seal");
        }
        for (auto& [id, a, b] : chunk) {
          BL_RETURN_IF_ERROR(reveal(t.first, id, a));
          BL_RETURN_IF_ERROR(reveal(t.second, id, b));
        }
        BL_RETURN_IF_ERROR(sealer.beginRun());
        for (auto& [id, a, b] : chunk) {
          BL_RETURN_IF_ERROR(sealer.seal(t.first, id, a, sealed_a));
          BL_RETURN_IF_ERROR(sealer.seal(t.second, id, b, sealed_b));
          StmtUse use(upd.get());
          bindBlob(upd.get(), 1, sealed_a);
          bindBlob(upd.get(), 2, sealed_b);
          sqlite3_bind_int64(upd.get(), 3, id);
          BL_RETURN_IF_ERROR(run(upd.get(), "store re-sealed row"));
          after = id;
          ++*t.rows;
        }
        sealer.endRun();
      } while (!chunk.empty());
    }
    return Status::ok();
  }

  // Version 1 kept record keys, payloads and quarantine in clear: seals them in place.
  Status sealVersion1Rows() {
    uint64_t records = 0, rejects = 0;
    BL_RETURN_IF_ERROR(
        resealRows([](std::string_view, int64_t, std::string&) { return Status::ok(); }, *cipher,
                   &records, &rejects));
    BL_RETURN_IF_ERROR(exec("UPDATE meta SET schema_version = 2 WHERE id = 1", "set schema 2"));
    upgraded_rows = records + rejects;
    return Status::ok();
  }
  uint64_t upgraded_rows = 0;  // rows sealed by a version-1 upgrade at open

  std::filesystem::path keyFile() const {
    return options.key_file.empty() ? options.path.parent_path() / "buffer.key" : options.key_file;
  }

  Status loadCipher() {
    if (in_clear) return Status::ok();
    auto key = loadOrCreateDataKey(keyFile());
    if (!key.isOk()) return key.status().withContext("buffer " + path);
    auto c = RecordCipher::create(*key);
    if (!c.isOk()) return c.status().withContext("buffer " + path);
    cipher = std::move(c).value();
    seal_overhead = RecordCipher::kOverhead;
    return Status::ok();
  }

  // ---------------------------------------------------------------- open
  Status openDb() {
    std::error_code ec;
    auto parent = options.path.parent_path();
    if (!parent.empty()) {
      std::filesystem::create_directories(parent, ec);
      if (ec) {
        return Status::internal("buffer " + path + ": cannot create directory " + parent.string() +
                                ": " + ec.message());
      }
    }
    sqlite3* raw = nullptr;
    int rc =
        sqlite3_open_v2(path.c_str(), &raw,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    db.reset(raw);  // closes it even when open failed
    if (rc != SQLITE_OK) return sqlError(rc, "open");
    sqlite3_extended_result_codes(db.get(), 1);
    sqlite3_busy_timeout(db.get(), 1000);

    // Exclusive locking before the first WAL access: no shm file, one owner.
    BL_RETURN_IF_ERROR(exec("PRAGMA locking_mode=EXCLUSIVE", "set locking_mode"));
    {
      Stmt s;
      BL_RETURN_IF_ERROR(prepare(s, "PRAGMA journal_mode=WAL"));
      rc = sqlite3_step(s.get());
      if (rc != SQLITE_ROW) return sqlError(rc, "set journal_mode=WAL");
      std::string mode = columnString(s.get(), 0);
      if (mode != "wal") {
        return Status::internal("buffer " + path + ": journal_mode is `" + mode +
                                "`, WAL is required");
      }
    }
    BL_RETURN_IF_ERROR(exec("PRAGMA synchronous=FULL", "set synchronous"));
    BL_RETURN_IF_ERROR(exec("PRAGMA secure_delete=ON", "set secure_delete"));
    // A WAL file left large by a burst is cut back to this size when it restarts.
    BL_RETURN_IF_ERROR(exec("PRAGMA journal_size_limit=67108864", "set journal_size_limit"));
    // Checkpoints run on our timer, never inside an append's commit.
    rc = sqlite3_wal_autocheckpoint(db.get(), 0);
    if (rc != SQLITE_OK) return sqlError(rc, "disable wal_autocheckpoint");

    BL_RETURN_IF_ERROR(exec("BEGIN IMMEDIATE", "begin schema transaction"));
    Status s = exec(
        "CREATE TABLE IF NOT EXISTS records("
        " id INTEGER PRIMARY KEY, source TEXT NOT NULL, record_key BLOB NOT NULL,"
        " ingested_at INTEGER NOT NULL, payload BLOB NOT NULL);"
        "CREATE TABLE IF NOT EXISTS quarantine("
        " id INTEGER PRIMARY KEY, source TEXT NOT NULL, raw BLOB NOT NULL,"
        " reasons BLOB NOT NULL, ingested_at INTEGER NOT NULL);"
        "CREATE TABLE IF NOT EXISTS batches("
        " seq INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
        " first_record INTEGER NOT NULL, last_record INTEGER NOT NULL,"
        " first_reject INTEGER NOT NULL, last_reject INTEGER NOT NULL,"
        " record_count INTEGER NOT NULL, reject_count INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL);"
        "CREATE TABLE IF NOT EXISTS meta("
        " id INTEGER PRIMARY KEY CHECK (id = 1), schema_version INTEGER NOT NULL,"
        " next_batch_seq INTEGER NOT NULL, last_batched_record INTEGER NOT NULL,"
        " last_batched_reject INTEGER NOT NULL);"
        "CREATE TABLE IF NOT EXISTS key_check("
        " id INTEGER PRIMARY KEY CHECK (id = 1), sealed BLOB NOT NULL);"
        "CREATE TABLE IF NOT EXISTS tokens("
        " token TEXT PRIMARY KEY, committed_at INTEGER NOT NULL) WITHOUT ROWID;"
        // Rows whose sealed values failed to open, bytes as found (value_a/value_b:
        // record_key/payload or raw/reasons); acked_at once their report is acked.
        "CREATE TABLE IF NOT EXISTS damaged("
        " id INTEGER PRIMARY KEY, from_table TEXT NOT NULL, row_id INTEGER NOT NULL,"
        " batch_seq INTEGER NOT NULL, found_at INTEGER NOT NULL, source TEXT NOT NULL,"
        " ingested_at INTEGER NOT NULL, reason TEXT NOT NULL, value_a BLOB, value_b BLOB,"
        " acked_at INTEGER);"
        "CREATE INDEX IF NOT EXISTS damaged_by_batch ON damaged(batch_seq);"
        "INSERT OR IGNORE INTO meta VALUES (1, 2, 1, 0, 0);",
        "create schema");
    if (s.isOk()) s = exec("COMMIT", "commit schema");
    if (!s.isOk()) {
      (void)exec("ROLLBACK", "rollback schema");
      return s;
    }
    return Status::ok();
  }

  Status prepareAll() {
    BL_RETURN_IF_ERROR(prepare(begin, "BEGIN IMMEDIATE"));
    BL_RETURN_IF_ERROR(prepare(commit, "COMMIT"));
    BL_RETURN_IF_ERROR(prepare(rollback, "ROLLBACK"));
    BL_RETURN_IF_ERROR(prepare(
        insert_record,
        "INSERT INTO records(id, source, record_key, ingested_at, payload) VALUES (?,?,?,?,?)"));
    BL_RETURN_IF_ERROR(prepare(
        insert_reject,
        "INSERT INTO quarantine(id, source, raw, reasons, ingested_at) VALUES (?,?,?,?,?)"));
    BL_RETURN_IF_ERROR(
        prepare(insert_token, "INSERT OR REPLACE INTO tokens(token, committed_at) VALUES (?,?)"));
    BL_RETURN_IF_ERROR(prepare(has_token, "SELECT 1 FROM tokens WHERE token = ?"));
    BL_RETURN_IF_ERROR(prepare(prune_tokens, "DELETE FROM tokens WHERE committed_at < ?"));
    BL_RETURN_IF_ERROR(prepare(select_unbatched_records,
                               "SELECT id, source, record_key, ingested_at, payload FROM records"
                               " WHERE id > ? ORDER BY id LIMIT ?"));
    BL_RETURN_IF_ERROR(prepare(select_unbatched_rejects,
                               "SELECT id, source, raw, reasons, ingested_at FROM quarantine"
                               " WHERE id > ? ORDER BY id LIMIT ?"));
    BL_RETURN_IF_ERROR(prepare(first_unbatched_record_time,
                               "SELECT ingested_at FROM records WHERE id > ? ORDER BY id LIMIT 1"));
    BL_RETURN_IF_ERROR(
        prepare(first_unbatched_reject_time,
                "SELECT ingested_at FROM quarantine WHERE id > ? ORDER BY id LIMIT 1"));
    BL_RETURN_IF_ERROR(prepare(insert_batch, "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?)"));
    BL_RETURN_IF_ERROR(prepare(update_meta,
                               "UPDATE meta SET next_batch_seq = ?, last_batched_record = ?,"
                               " last_batched_reject = ? WHERE id = 1"));
    BL_RETURN_IF_ERROR(prepare(select_batch,
                               "SELECT created_at, first_record, last_record, first_reject,"
                               " last_reject, record_count, reject_count, bytes"
                               " FROM batches WHERE seq = ?"));
    BL_RETURN_IF_ERROR(prepare(select_records_range,
                               "SELECT id, source, record_key, ingested_at, payload FROM records"
                               " WHERE id BETWEEN ? AND ? ORDER BY id"));
    BL_RETURN_IF_ERROR(prepare(select_rejects_range,
                               "SELECT id, source, raw, reasons, ingested_at FROM quarantine"
                               " WHERE id BETWEEN ? AND ? ORDER BY id"));
    BL_RETURN_IF_ERROR(
        prepare(delete_records_range, "DELETE FROM records WHERE id BETWEEN ? AND ?"));
    BL_RETURN_IF_ERROR(
        prepare(delete_rejects_range, "DELETE FROM quarantine WHERE id BETWEEN ? AND ?"));
    BL_RETURN_IF_ERROR(prepare(delete_batch, "DELETE FROM batches WHERE seq = ?"));
    BL_RETURN_IF_ERROR(
        prepare(damage_record,
                "INSERT INTO damaged(from_table, row_id, batch_seq, found_at, source, ingested_at,"
                " reason, value_a, value_b) SELECT 'records', id, ?2, ?3, source, ingested_at, ?4,"
                " record_key, payload FROM records WHERE id = ?1"));
    BL_RETURN_IF_ERROR(prepare(
        damage_reject,
        "INSERT INTO damaged(from_table, row_id, batch_seq, found_at, source, ingested_at,"
        " reason, value_a, value_b) SELECT 'quarantine', id, ?2, ?3, source, ingested_at, ?4,"
        " raw, reasons FROM quarantine WHERE id = ?1"));
    BL_RETURN_IF_ERROR(prepare(delete_record, "DELETE FROM records WHERE id = ?"));
    BL_RETURN_IF_ERROR(prepare(delete_reject, "DELETE FROM quarantine WHERE id = ?"));
    BL_RETURN_IF_ERROR(
        prepare(shrink_batch,
                "UPDATE batches SET record_count = record_count - ?,"
                " reject_count = reject_count - ?, bytes = bytes - ? WHERE seq = ?"));
    BL_RETURN_IF_ERROR(prepare(select_damaged,
                               "SELECT from_table, row_id, source, ingested_at, reason FROM damaged"
                               " WHERE batch_seq = ? ORDER BY id"));
    BL_RETURN_IF_ERROR(prepare(
        damaged_acked, "UPDATE damaged SET acked_at = ? WHERE batch_seq = ? AND acked_at IS NULL"));
    BL_RETURN_IF_ERROR(prepare(prune_damaged, "DELETE FROM damaged WHERE acked_at < ?"));
    return Status::ok();
  }

  // Runs a query whose one row holds only integers, into `out`.
  Status queryInts(const char* sql, std::initializer_list<int64_t*> out, std::string_view op) {
    Stmt s;
    BL_RETURN_IF_ERROR(prepare(s, sql));
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) {
      return Status::dataLoss("buffer " + path + ": " + std::string(op) + ": no row");
    }
    if (rc != SQLITE_ROW) return sqlError(rc, op);
    int i = 0;
    for (int64_t* p : out) *p = sqlite3_column_int64(s.get(), i++);
    rc = sqlite3_step(s.get());
    return rc == SQLITE_DONE ? Status::ok() : sqlError(rc, op);
  }

  // Rebuilds the in-memory counters from the file. Scans every row's header (not
  // the payloads: length() of a BLOB reads only its size), which also surfaces a
  // corrupt B-tree as kDataLoss here rather than on the first batch.
  Status recover() {
    int64_t version = 0, next_seq = 0;
    BL_RETURN_IF_ERROR(
        queryInts("SELECT schema_version, next_batch_seq, last_batched_record, last_batched_reject"
                  " FROM meta WHERE id = 1",
                  {&version, &next_seq, &last_batched_record, &last_batched_reject}, "read meta"));
    if (version != kSchemaVersion) {
      return Status::dataLoss("buffer " + path + ": schema version " + std::to_string(version) +
                              " is not " + std::to_string(kSchemaVersion) +
                              "; written by another Branchline version?");
    }
    if (next_seq < 1) return Status::dataLoss("buffer " + path + ": meta.next_batch_seq < 1");
    next_batch_seq = uint64_t(next_seq);

    int64_t rec_count = 0, rec_bytes = 0, rec_max = 0;
    int64_t rej_count = 0, rej_bytes = 0, rej_max = 0;
    BL_RETURN_IF_ERROR(queryInts(
        "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(max(id), 0) FROM records",
        {&rec_count, &rec_bytes, &rec_max}, "scan records"));
    BL_RETURN_IF_ERROR(queryInts(
        "SELECT count(*), coalesce(sum(length(raw)), 0), coalesce(max(id), 0) FROM quarantine",
        {&rej_count, &rej_bytes, &rej_max}, "scan quarantine"));
    int64_t damaged_rows = 0;
    BL_RETURN_IF_ERROR(queryInts("SELECT count(*) FROM damaged", {&damaged_rows}, "count damaged"));
    int64_t unb_rec = 0, unb_rej = 0;
    {
      Stmt s;
      BL_RETURN_IF_ERROR(prepare(s, "SELECT count(*) FROM records WHERE id > ?"));
      sqlite3_bind_int64(s.get(), 1, last_batched_record);
      int rc = sqlite3_step(s.get());
      if (rc != SQLITE_ROW) return sqlError(rc, "count unbatched records");
      unb_rec = sqlite3_column_int64(s.get(), 0);
      BL_RETURN_IF_ERROR(prepare(s, "SELECT count(*) FROM quarantine WHERE id > ?"));
      sqlite3_bind_int64(s.get(), 1, last_batched_reject);
      rc = sqlite3_step(s.get());
      if (rc != SQLITE_ROW) return sqlError(rc, "count unbatched rejects");
      unb_rej = sqlite3_column_int64(s.get(), 0);
    }
    // Sealing adds a fixed envelope to every value; the bound counts plaintext.
    rec_bytes -= rec_count * int64_t(seal_overhead);
    rej_bytes -= rej_count * int64_t(seal_overhead);
    next_record_id = std::max(rec_max, last_batched_record) + 1;
    next_reject_id = std::max(rej_max, last_batched_reject) + 1;

    std::map<uint64_t, int64_t> batches;
    {
      Stmt s;
      BL_RETURN_IF_ERROR(prepare(s, "SELECT seq, created_at FROM batches ORDER BY seq"));
      int rc;
      while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
        batches.emplace(uint64_t(sqlite3_column_int64(s.get(), 0)),
                        sqlite3_column_int64(s.get(), 1));
      }
      if (rc != SQLITE_DONE) return sqlError(rc, "scan batches");
    }
    if (!batches.empty() && batches.rbegin()->first >= next_batch_seq) {
      return Status::dataLoss("buffer " + path + ": batch " +
                              std::to_string(batches.rbegin()->first) +
                              " is not below meta.next_batch_seq " + std::to_string(next_seq));
    }

    int64_t oldest_rec = 0, oldest_rej = 0;
    BL_RETURN_IF_ERROR(firstUnbatchedTimes(&oldest_rec, &oldest_rej));

    std::lock_guard lock(stats_mu);
    counters.records = uint64_t(rec_count);
    counters.rejects = uint64_t(rej_count);
    counters.bytes = uint64_t(rec_bytes + rej_bytes);
    counters.batches = batches.size();
    counters.damaged = uint64_t(damaged_rows);
    unbatched_records = uint64_t(unb_rec);
    unbatched_rejects = uint64_t(unb_rej);
    oldest_unbatched_record_us = oldest_rec;
    oldest_unbatched_reject_us = oldest_rej;
    unacked = std::move(batches);
    return Status::ok();
  }

  Status firstUnbatchedTimes(int64_t* rec, int64_t* rej) {
    for (auto [stmt, marker, out] :
         {std::tuple{first_unbatched_record_time.get(), last_batched_record, rec},
          std::tuple{first_unbatched_reject_time.get(), last_batched_reject, rej}}) {
      StmtUse use(stmt);
      sqlite3_bind_int64(stmt, 1, marker);
      int rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(stmt, 0);
      } else if (rc == SQLITE_DONE) {
        *out = 0;
      } else {
        return sqlError(rc, "read oldest unbatched entry");
      }
    }
    return Status::ok();
  }

  Status pruneTokens(int64_t now_us) {
    StmtUse use(prune_tokens.get());
    sqlite3_bind_int64(prune_tokens.get(), 1, now_us - kTokenRetentionUs);
    BL_RETURN_IF_ERROR(run(prune_tokens.get(), "prune tokens"));
    last_token_prune_us = now_us;
    if (sqlite3_changes(db.get()) > 0) wal_dirty = true;
    StmtUse use_damaged(prune_damaged.get());
    sqlite3_bind_int64(prune_damaged.get(), 1, now_us - kDamagedRetentionUs);
    BL_RETURN_IF_ERROR(run(prune_damaged.get(), "prune damaged rows"));
    if (const int n = sqlite3_changes(db.get()); n > 0) {
      wal_dirty = true;
      std::lock_guard lock(stats_mu);
      counters.damaged -= std::min<uint64_t>(counters.damaged, uint64_t(n));
    }
    return Status::ok();
  }

  // ---------------------------------------------------------------- committer
  void committerLoop() {
    std::vector<PendingAppend> group;
    auto next_checkpoint = std::chrono::steady_clock::now() + options.checkpoint_interval;
    std::unique_lock lock(q_mu);
    while (true) {
      q_cv.wait_until(lock, next_checkpoint, [&] { return stopping || !queue.empty(); });
      if (!queue.empty()) {
        size_t entries = 0;
        while (!queue.empty()) {
          const PendingAppend& front = queue.front();
          size_t n = front.records.size() + front.rejects.size();
          if (!group.empty() && entries + n > options.max_group_records) break;
          entries += n;
          queued_cost -= front.cost;
          group.push_back(std::move(queue.front()));
          queue.pop_front();
        }
        lock.unlock();
        commitGroup(group);
        for (PendingAppend& a : group) a.done(std::move(a.status));
        group.clear();
        lock.lock();
      } else if (stopping) {
        break;
      }
      if (std::chrono::steady_clock::now() >= next_checkpoint) {
        lock.unlock();
        checkpoint();
        lock.lock();
        next_checkpoint = std::chrono::steady_clock::now() + options.checkpoint_interval;
      }
    }
  }

  // Writes the appends that fit into one transaction; sets each one's status.
  void commitGroup(std::vector<PendingAppend>& group) {
    std::lock_guard db_lock(db_mu);
    uint64_t held;
    bool records_were_unbatched, rejects_were_unbatched;
    {
      std::lock_guard lock(stats_mu);
      held = counters.bytes;
      records_were_unbatched = unbatched_records > 0;
      rejects_were_unbatched = unbatched_rejects > 0;
    }
    const int64_t first_record_id = next_record_id;
    const int64_t first_reject_id = next_reject_id;
    uint64_t added_bytes = 0, added_records = 0, added_rejects = 0;
    int64_t first_record_time = 0, first_reject_time = 0;
    bool any = false;

    auto fail_all = [&](const Status& s) {
      rollbackQuietly();
      next_record_id = first_record_id;
      next_reject_id = first_reject_id;
      log::error("buffer_commit_failed",
                 {{"path", path}, {"appends", group.size()}, {"error", s.toString()}});
      for (PendingAppend& a : group) {
        if (a.status.isOk()) a.status = s;
      }
    };

    if (io_failed.load()) {  // queued before the error: refused like later ones
      const Status refused = ioFailedStatus();
      for (PendingAppend& a : group) a.status = refused;
      return;
    }
    Status s = runOnce(begin, "begin append transaction");
    if (!s.isOk()) return fail_all(s);
    // Every value this run seals is in `group` already (RecordCipher: nonce runs).
    if (cipher) {
      s = cipher->beginRun();
      if (!s.isOk()) return fail_all(s);
    }
    struct EndRun {
      RecordCipher* c;
      ~EndRun() {
        if (c) c->endRun();
      }
    } end_run{cipher.get()};
    const int64_t now_us = nowMicros();
    for (PendingAppend& a : group) {
      if (held + added_bytes + a.bytes > options.max_bytes) {
        a.status = Status::exhausted("buffer full: " + std::to_string(held + added_bytes) + " of " +
                                     std::to_string(options.max_bytes) + " bytes used, append of " +
                                     std::to_string(a.bytes) +
                                     " bytes refused; retry after batches are acknowledged");
        continue;
      }
      s = insertAppend(a, now_us);
      if (!s.isOk()) return fail_all(s);
      if (!a.records.empty() && added_records == 0) {
        first_record_time = a.records.front().ingested_at_us;
      }
      if (!a.rejects.empty() && added_rejects == 0) {
        first_reject_time = a.rejects.front().ingested_at_us;
      }
      added_bytes += a.bytes;
      added_records += a.records.size();
      added_rejects += a.rejects.size();
      any = true;
    }
    if (!any) {
      rollbackQuietly();
      return;
    }
    s = runOnce(commit, "commit append transaction");
    if (!s.isOk()) return fail_all(s);
    wal_dirty = true;

    std::lock_guard lock(stats_mu);
    counters.records += added_records;
    counters.rejects += added_rejects;
    counters.bytes += added_bytes;
    counters.commits += 1;
    unbatched_records += added_records;
    unbatched_rejects += added_rejects;
    if (!records_were_unbatched && added_records > 0)
      oldest_unbatched_record_us = first_record_time;
    if (!rejects_were_unbatched && added_rejects > 0)
      oldest_unbatched_reject_us = first_reject_time;
  }

  Status insertAppend(const PendingAppend& a, int64_t now_us) {
    sqlite3_stmt* ins = insert_record.get();
    for (const WireRecord& r : a.records) {
      StmtUse use(ins);
      sqlite3_bind_int64(ins, 1, next_record_id);
      bindText(ins, 2, r.source);
      sqlite3_bind_int64(ins, 4, r.ingested_at_us);
      if (cipher) {
        BL_RETURN_IF_ERROR(cipher->seal(kRecordKeyColumn, next_record_id, r.key, sealed_a));
        BL_RETURN_IF_ERROR(cipher->seal(kPayloadColumn, next_record_id, r.payload, sealed_b));
        bindBlob(ins, 3, sealed_a);
        bindBlob(ins, 5, sealed_b);
      } else {
        bindText(ins, 3, r.key);
        bindBlob(ins, 5, r.payload);
      }
      BL_RETURN_IF_ERROR(run(ins, "insert record"));
      ++next_record_id;
    }
    ins = insert_reject.get();
    for (const WireReject& r : a.rejects) {
      StmtUse use(ins);
      sqlite3_bind_int64(ins, 1, next_reject_id);
      bindText(ins, 2, r.source);
      sqlite3_bind_int64(ins, 5, r.ingested_at_us);
      if (cipher) {
        BL_RETURN_IF_ERROR(cipher->seal(kRawColumn, next_reject_id, r.raw, sealed_a));
        BL_RETURN_IF_ERROR(cipher->seal(kReasonsColumn, next_reject_id, r.reasons_json, sealed_b));
        bindBlob(ins, 3, sealed_a);
        bindBlob(ins, 4, sealed_b);
      } else {
        bindBlob(ins, 3, r.raw);
        bindText(ins, 4, r.reasons_json);
      }
      BL_RETURN_IF_ERROR(run(ins, "insert reject"));
      ++next_reject_id;
    }
    if (!a.token.empty()) {
      ins = insert_token.get();
      StmtUse use(ins);
      bindText(ins, 1, a.token);
      sqlite3_bind_int64(ins, 2, now_us);
      BL_RETURN_IF_ERROR(run(ins, "insert token"));
    }
    return Status::ok();
  }

  void checkpoint() {
    std::lock_guard db_lock(db_mu);
    const int64_t now_us = nowMicros();
    if (now_us - last_token_prune_us >= kTokenPruneEveryUs) {
      Status s = pruneTokens(now_us);
      if (!s.isOk()) log::warn("buffer_token_prune_failed", {{"error", s.toString()}});
    }
    if (!wal_dirty) return;
    bool empty;
    {
      std::lock_guard lock(stats_mu);
      empty = counters.records == 0 && counters.rejects == 0;
    }
    int wal_frames = 0, checkpointed = 0;
    int rc = sqlite3_wal_checkpoint_v2(
        db.get(), nullptr, empty ? SQLITE_CHECKPOINT_TRUNCATE : SQLITE_CHECKPOINT_PASSIVE,
        &wal_frames, &checkpointed);
    if (rc != SQLITE_OK) {
      log::warn("buffer_checkpoint_failed", {{"error", sqlError(rc, "checkpoint").toString()}});
      return;
    }
    // Only a complete checkpoint lets the next write restart the WAL from its start.
    wal_dirty = checkpointed < wal_frames;
  }

  // ---------------------------------------------------------------- batches
  Result<std::optional<PendingBatch>> formBatch(const BatchLimits& limits, int64_t now_us) {
    std::lock_guard db_lock(db_mu);
    uint64_t records_waiting, rejects_waiting;
    {
      std::lock_guard lock(stats_mu);
      records_waiting = unbatched_records;
      rejects_waiting = unbatched_rejects;
    }
    if (records_waiting == 0 && rejects_waiting == 0) return std::optional<PendingBatch>();

    const size_t max_entries = std::max<size_t>(1, limits.max_records);
    // Rejects are few but must not starve behind a steady stream of records, nor
    // crowd records out: while records wait, rejects get at most half the room.
    const size_t reject_entries =
        records_waiting > 0 ? std::max<size_t>(1, max_entries / 2) : max_entries;
    const size_t reject_bytes = records_waiting > 0 ? limits.max_bytes / 2 : limits.max_bytes;

    Status s = runOnce(begin, "begin batch transaction");
    if (!s.isOk()) return s.withContext("form batch");

    PendingBatch batch;
    batch.seq = next_batch_seq;
    batch.created_at_us = now_us;
    uint64_t bytes = 0;
    int64_t last_reject = last_batched_reject, last_record = last_batched_record;
    std::vector<DamagedRow> damaged;
    {
      sqlite3_stmt* q = select_unbatched_rejects.get();
      StmtUse use(q);
      sqlite3_bind_int64(q, 1, last_batched_reject);
      sqlite3_bind_int64(q, 2, int64_t(reject_entries));
      int rc;
      while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        size_t n = plainSize(q, 2);
        if (!batch.rejects.empty() && bytes + n > reject_bytes) break;
        const int64_t id = sqlite3_column_int64(q, 0);
        WireReject r;
        auto opened = openRow(q, true, id, r.raw, r.reasons_json, damaged);
        if (!opened.isOk()) {
          rollbackQuietly();
          return opened.status().withContext("form batch " + std::to_string(batch.seq));
        }
        last_reject = id;
        if (!*opened) continue;
        r.source = columnString(q, 1);
        r.ingested_at_us = sqlite3_column_int64(q, 4);
        batch.rejects.push_back(std::move(r));
        bytes += n;
      }
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        rollbackQuietly();
        return sqlError(rc, "read unbatched rejects")
            .withContext("form batch " + std::to_string(batch.seq));
      }
    }
    if (records_waiting > 0) {
      sqlite3_stmt* q = select_unbatched_records.get();
      StmtUse use(q);
      sqlite3_bind_int64(q, 1, last_batched_record);
      const size_t taken = batch.rejects.size() + damaged.size();
      sqlite3_bind_int64(q, 2, int64_t(max_entries > taken ? max_entries - taken : 1));
      int rc;
      while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        size_t n = plainSize(q, 4);
        if (!batch.records.empty() && bytes + n > limits.max_bytes) break;
        const int64_t id = sqlite3_column_int64(q, 0);
        WireRecord r;
        auto opened = openRow(q, false, id, r.key, r.payload, damaged);
        if (!opened.isOk()) {
          rollbackQuietly();
          return opened.status().withContext("form batch " + std::to_string(batch.seq));
        }
        last_record = id;
        if (!*opened) continue;
        r.source = columnString(q, 1);
        r.ingested_at_us = sqlite3_column_int64(q, 3);
        batch.records.push_back(std::move(r));
        bytes += n;
      }
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        rollbackQuietly();
        return sqlError(rc, "read unbatched records")
            .withContext("form batch " + std::to_string(batch.seq));
      }
    }
    if (batch.records.empty() && batch.rejects.empty() && damaged.empty()) {
      rollbackQuietly();
      return Status::dataLoss("buffer " + path + ": " + std::to_string(records_waiting) +
                              " records and " + std::to_string(rejects_waiting) +
                              " rejects counted as unbatched but none found");
    }

    // A batch of damaged rows only is formed too: it carries their reports.
    s = moveToDamaged(damaged, batch.seq, now_us);
    if (s.isOk()) {
      sqlite3_stmt* ins = insert_batch.get();
      StmtUse use(ins);
      sqlite3_bind_int64(ins, 1, int64_t(batch.seq));
      sqlite3_bind_int64(ins, 2, now_us);
      sqlite3_bind_int64(ins, 3, last_batched_record + 1);
      sqlite3_bind_int64(ins, 4, last_record);
      sqlite3_bind_int64(ins, 5, last_batched_reject + 1);
      sqlite3_bind_int64(ins, 6, last_reject);
      sqlite3_bind_int64(ins, 7, int64_t(batch.records.size()));
      sqlite3_bind_int64(ins, 8, int64_t(batch.rejects.size()));
      sqlite3_bind_int64(ins, 9, int64_t(bytes));
      s = run(ins, "insert batch");
    }
    if (s.isOk()) {
      sqlite3_stmt* up = update_meta.get();
      StmtUse use(up);
      sqlite3_bind_int64(up, 1, int64_t(batch.seq + 1));
      sqlite3_bind_int64(up, 2, last_record);
      sqlite3_bind_int64(up, 3, last_reject);
      s = run(up, "advance batch markers");
    }
    const int64_t prev_record = last_batched_record, prev_reject = last_batched_reject;
    int64_t oldest_rec = 0, oldest_rej = 0;
    if (s.isOk()) {
      last_batched_record = last_record;
      last_batched_reject = last_reject;
      s = firstUnbatchedTimes(&oldest_rec, &oldest_rej);
    }
    if (s.isOk()) s = runOnce(commit, "commit batch");
    if (!s.isOk()) {
      rollbackQuietly();
      last_batched_record = prev_record;
      last_batched_reject = prev_reject;
      return s.withContext("form batch " + std::to_string(batch.seq));
    }
    ++next_batch_seq;
    wal_dirty = true;
    uint64_t damaged_records = 0;
    for (const DamagedRow& d : damaged) {
      batch.damaged.push_back({d.reject ? "quarantine" : "records", uint64_t(d.id), d.source,
                               d.ingested_at_us, d.reason});
      if (!d.reject) ++damaged_records;
    }
    countDamaged(damaged);

    std::lock_guard lock(stats_mu);
    unbatched_records -= batch.records.size() + damaged_records;
    unbatched_rejects -= batch.rejects.size() + (damaged.size() - damaged_records);
    oldest_unbatched_record_us = oldest_rec;
    oldest_unbatched_reject_us = oldest_rej;
    counters.batches += 1;
    unacked.emplace(batch.seq, batch.created_at_us);
    return std::optional<PendingBatch>(std::move(batch));
  }

  struct BatchRow {
    int64_t created_at, first_record, last_record, first_reject, last_reject;
    int64_t record_count, reject_count, bytes;
  };

  // Reads the batch row; nullopt when there is none.
  Result<std::optional<BatchRow>> readBatchRow(uint64_t seq) {
    sqlite3_stmt* q = select_batch.get();
    StmtUse use(q);
    sqlite3_bind_int64(q, 1, int64_t(seq));
    int rc = sqlite3_step(q);
    if (rc == SQLITE_DONE) return std::optional<BatchRow>();
    if (rc != SQLITE_ROW) return sqlError(rc, "read batch " + std::to_string(seq));
    BatchRow b;
    int64_t* cols[] = {&b.created_at,  &b.first_record, &b.last_record,  &b.first_reject,
                       &b.last_reject, &b.record_count, &b.reject_count, &b.bytes};
    for (int i = 0; i < 8; ++i) *cols[i] = sqlite3_column_int64(q, i);
    return std::optional<BatchRow>(b);
  }

  Result<PendingBatch> loadBatch(uint64_t seq) {
    std::lock_guard db_lock(db_mu);
    const std::string what = "batch " + std::to_string(seq);
    auto row = readBatchRow(seq);
    if (!row.isOk()) return row.status();
    if (!row->has_value()) {
      return Status::notFound("buffer " + path + ": " + what + " not found (already acked?)");
    }
    const BatchRow& b = **row;
    PendingBatch batch;
    batch.seq = seq;
    batch.created_at_us = b.created_at;
    batch.records.reserve(size_t(b.record_count));
    batch.rejects.reserve(size_t(b.reject_count));
    std::vector<DamagedRow> damaged;
    {
      sqlite3_stmt* q = select_records_range.get();
      StmtUse use(q);
      sqlite3_bind_int64(q, 1, b.first_record);
      sqlite3_bind_int64(q, 2, b.last_record);
      int rc;
      while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const int64_t id = sqlite3_column_int64(q, 0);
        WireRecord r;
        auto opened = openRow(q, false, id, r.key, r.payload, damaged);
        if (!opened.isOk()) return opened.status().withContext(what);
        if (!*opened) continue;
        r.source = columnString(q, 1);
        r.ingested_at_us = sqlite3_column_int64(q, 3);
        batch.records.push_back(std::move(r));
      }
      if (rc != SQLITE_DONE) return sqlError(rc, "read records of " + what);
    }
    {
      sqlite3_stmt* q = select_rejects_range.get();
      StmtUse use(q);
      sqlite3_bind_int64(q, 1, b.first_reject);
      sqlite3_bind_int64(q, 2, b.last_reject);
      int rc;
      while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const int64_t id = sqlite3_column_int64(q, 0);
        WireReject r;
        auto opened = openRow(q, true, id, r.raw, r.reasons_json, damaged);
        if (!opened.isOk()) return opened.status().withContext(what);
        if (!*opened) continue;
        r.source = columnString(q, 1);
        r.ingested_at_us = sqlite3_column_int64(q, 4);
        batch.rejects.push_back(std::move(r));
      }
      if (rc != SQLITE_DONE) return sqlError(rc, "read rejects of " + what);
    }
    int64_t record_count = b.record_count, reject_count = b.reject_count;
    if (!damaged.empty()) {
      BL_RETURN_IF_ERROR(shrinkBatch(seq, damaged).withContext(what));
      for (const DamagedRow& d : damaged) --(d.reject ? reject_count : record_count);
    }
    BL_RETURN_IF_ERROR(loadDamaged(seq, batch.damaged));
    if (batch.records.size() != size_t(record_count) ||
        batch.rejects.size() != size_t(reject_count)) {
      return Status::dataLoss(
          "buffer " + path + ": " + what + " should hold " + std::to_string(b.record_count) +
          " records and " + std::to_string(b.reject_count) + " rejects, found " +
          std::to_string(batch.records.size()) + " and " + std::to_string(batch.rejects.size()));
    }
    return batch;
  }

  // Moves a formed batch's damaged rows to `damaged`, shrinking its counts.
  Status shrinkBatch(uint64_t seq, const std::vector<DamagedRow>& damaged) {
    int64_t records = 0, rejects = 0, bytes = 0;
    for (const DamagedRow& d : damaged) {
      ++(d.reject ? rejects : records);
      bytes += int64_t(d.bytes);
    }
    Status s = runOnce(begin, "begin");
    if (s.isOk()) s = moveToDamaged(damaged, seq, nowMicros());
    if (s.isOk()) {
      sqlite3_stmt* up = shrink_batch.get();
      StmtUse use(up);
      sqlite3_bind_int64(up, 1, records);
      sqlite3_bind_int64(up, 2, rejects);
      sqlite3_bind_int64(up, 3, bytes);
      sqlite3_bind_int64(up, 4, int64_t(seq));
      s = run(up, "shrink batch");
    }
    if (s.isOk()) s = runOnce(commit, "commit damaged rows");
    if (!s.isOk()) {
      rollbackQuietly();
      return s;
    }
    wal_dirty = true;
    countDamaged(damaged);
    return Status::ok();
  }

  Status ack(uint64_t seq) {
    std::lock_guard db_lock(db_mu);
    const std::string what = "ack batch " + std::to_string(seq);
    auto row = readBatchRow(seq);
    if (!row.isOk()) return row.status().withContext(what);
    if (!row->has_value()) return Status::ok();  // acked before: acks are idempotent
    const BatchRow& b = **row;

    Status s = runOnce(begin, "begin");
    if (s.isOk()) {
      sqlite3_stmt* d = delete_records_range.get();
      StmtUse use(d);
      sqlite3_bind_int64(d, 1, b.first_record);
      sqlite3_bind_int64(d, 2, b.last_record);
      s = run(d, "delete records");
    }
    if (s.isOk()) {
      sqlite3_stmt* d = delete_rejects_range.get();
      StmtUse use(d);
      sqlite3_bind_int64(d, 1, b.first_reject);
      sqlite3_bind_int64(d, 2, b.last_reject);
      s = run(d, "delete rejects");
    }
    if (s.isOk()) {
      sqlite3_stmt* d = delete_batch.get();
      StmtUse use(d);
      sqlite3_bind_int64(d, 1, int64_t(seq));
      s = run(d, "delete batch row");
    }
    if (s.isOk()) {
      sqlite3_stmt* d = damaged_acked.get();
      StmtUse use(d);
      sqlite3_bind_int64(d, 1, nowMicros());
      sqlite3_bind_int64(d, 2, int64_t(seq));
      s = run(d, "mark damage reports acked");
    }
    if (s.isOk()) s = runOnce(commit, "commit");
    if (!s.isOk()) {
      rollbackQuietly();
      return s.withContext(what);
    }
    wal_dirty = true;

    std::lock_guard lock(stats_mu);
    counters.records -= uint64_t(b.record_count);
    counters.rejects -= uint64_t(b.reject_count);
    counters.bytes -= uint64_t(b.bytes);
    counters.batches -= 1;
    unacked.erase(seq);
    return Status::ok();
  }

  Result<DataKeyRotation> rotateDataKey(const RotationStep& after_step) {
    std::lock_guard db_lock(db_mu);
    if (!cipher) {
      return Status::invalid("buffer " + path +
                             " is written in clear (a benchmark's or test's buffer): it has no "
                             "data key to rotate");
    }
    auto stop = [&](std::string_view step) { return after_step && !after_step(step); };
    const std::filesystem::path next_file = nextKeyFile();
    auto key = generateDataKey();
    if (!key.isOk()) return key.status().withContext("buffer " + path + ": rotate data key");
    auto next = RecordCipher::create(*key);
    if (!next.isOk()) return next.status().withContext("buffer " + path + ": rotate data key");
    Status s = writeDataKeyFile(next_file, *key);
    if (!s.isOk()) return s.withContext("buffer " + path + ": rotate data key");
    if (stop("new_key_written")) return stoppedAt("new_key_written");

    DataKeyRotation done;
    bool first = true;
    s = runOnce(begin, "begin data key rotation");
    if (s.isOk()) {
      s = resealRows(
          [&](std::string_view column, int64_t rowid, std::string& value) {
            if (first && stop("resealing")) return stoppedAt("resealing");
            first = false;
            std::string plain;
            Status o = cipher->open(column, rowid, value, plain);
            value = std::move(plain);
            return o;
          },
          **next, &done.records, &done.rejects);
    }
    std::string sealed_check;
    if (s.isOk()) s = (*next)->seal(kKeyCheckColumn, 1, kKeyCheckPlain, sealed_check);
    if (s.isOk()) {
      Stmt up;
      s = prepare(up, "UPDATE key_check SET sealed = ? WHERE id = 1");
      if (s.isOk()) {
        bindBlob(up.get(), 1, sealed_check);
        s = run(up.get(), "store the new key check");
      }
    }
    if (s.isOk()) s = runOnce(commit, "commit data key rotation");
    if (!s.isOk()) {
      rollbackQuietly();
      std::error_code ec;
      std::filesystem::remove(next_file, ec);
      return s.withContext("buffer " + path + ": rotate data key (nothing changed: the buffer " +
                           "keeps its current key)");
    }
    wal_dirty = true;
    cipher = std::move(next).value();
    if (stop("resealed")) return stoppedAt("resealed");

    s = installNextKey(after_step);
    if (!s.isOk()) {
      return s.withContext("the buffer is re-sealed under the new key in " + next_file.string() +
                           "; the next start of the agent installs it");
    }
    if (stop("key_installed")) return stoppedAt("key_installed");
    int rc =
        sqlite3_wal_checkpoint_v2(db.get(), nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      return sqlError(rc,
                      "checkpoint after rotating the data key (the old ciphertext stays in "
                      "the WAL until the next checkpoint)");
    }
    wal_dirty = false;
    log::info("buffer_data_key_rotated", {{"path", path},
                                          {"key_file", keyFile().string()},
                                          {"records", done.records},
                                          {"rejects", done.rejects}});
    return done;
  }

  Result<bool> hasToken(const std::string& token) {
    std::lock_guard db_lock(db_mu);
    sqlite3_stmt* q = has_token.get();
    StmtUse use(q);
    bindText(q, 1, token);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return sqlError(rc, "look up token");
  }
};

DurableBuffer::DurableBuffer() : impl_(std::make_unique<Impl>()) {}

Result<std::unique_ptr<DurableBuffer>> DurableBuffer::open(BufferOptions options) {
  return open(std::move(options), /*in_clear=*/false);
}

Result<std::unique_ptr<DurableBuffer>> DurableBuffer::open(BufferOptions options, bool in_clear) {
  if (options.path.empty()) return Status::invalid("buffer: options.path is empty");
  std::unique_ptr<DurableBuffer> buffer(new DurableBuffer());
  Impl& impl = *buffer->impl_;
  impl.in_clear = in_clear;
  impl.options = std::move(options);
  impl.options.max_group_records = std::max<size_t>(1, impl.options.max_group_records);
  impl.path = impl.options.path.string();
  {
    std::lock_guard lock(impl.db_mu);
    Status s = impl.loadCipher();
    if (s.isOk()) s = impl.openDb();
    if (s.isOk()) s = impl.checkKeyAndUpgrade();
    if (s.isOk() && impl.upgraded_rows > 0) {
      // The clear version-1 values may still sit in WAL frames: move the sealed
      // pages into the main file (secure_delete zeroed the old cells) and cut the WAL.
      int rc = sqlite3_wal_checkpoint_v2(impl.db.get(), nullptr, SQLITE_CHECKPOINT_TRUNCATE,
                                         nullptr, nullptr);
      if (rc != SQLITE_OK) s = impl.sqlError(rc, "checkpoint after sealing version-1 rows");
    }
    if (s.isOk()) s = impl.prepareAll();
    if (s.isOk()) s = impl.recover();
    if (s.isOk()) s = impl.pruneTokens(nowMicros());
    if (!s.isOk()) {
      log::error("buffer_open_failed", {{"path", impl.path}, {"error", s.toString()}});
      return s;
    }
  }
  BufferStats st = buffer->stats();
  log::info("buffer_opened", {{"path", impl.path},
                              {"records", st.records},
                              {"rejects", st.rejects},
                              {"bytes", st.bytes},
                              {"batches", st.batches},
                              {"next_batch_seq", impl.next_batch_seq},
                              {"encrypted", impl.cipher != nullptr},
                              {"upgraded_rows", impl.upgraded_rows}});
  impl.committer = std::thread([&impl] { impl.committerLoop(); });
  impl.committer_started = true;
  return buffer;
}

DurableBuffer::~DurableBuffer() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->q_mu);
    impl_->stopping = true;
  }
  impl_->q_cv.notify_all();
  if (impl_->committer.joinable()) impl_->committer.join();  // drains the queue first
  if (impl_->committer_started) {
    impl_->wal_dirty = true;
    impl_->checkpoint();
  }
}

void DurableBuffer::appendAsync(std::vector<WireRecord> records, std::vector<WireReject> rejects,
                                AppendDone done, std::string token) {
  assert(done && "appendAsync needs a callback; use append() to wait instead");
  PendingAppend a;
  a.bytes = appendBytes(records, rejects);
  a.cost = size_t(a.bytes) + (records.size() + rejects.size()) * kEntryOverhead + kAppendOverhead +
           token.size();
  a.records = std::move(records);
  a.rejects = std::move(rejects);
  a.token = std::move(token);
  a.done = std::move(done);
  Impl& impl = *impl_;
  if (impl.io_failed.load()) {
    a.done(impl.ioFailedStatus());
    return;
  }
  std::unique_lock lock(impl.q_mu);
  if (impl.stopping) {
    lock.unlock();
    a.done(Status::unavailable("buffer " + impl.path + " is closing"));
    return;
  }
  // An append alone larger than the queue bound is still taken when the queue is
  // empty; max_bytes decides about it.
  if (!impl.queue.empty() && impl.queued_cost + a.cost > impl.options.max_queued_bytes) {
    size_t queued = impl.queued_cost;
    lock.unlock();
    a.done(Status::exhausted("buffer commit queue full: " + std::to_string(queued) + " of " +
                             std::to_string(impl.options.max_queued_bytes) +
                             " bytes waiting; retry shortly"));
    return;
  }
  impl.queued_cost += a.cost;
  impl.queue.push_back(std::move(a));
  lock.unlock();
  impl.q_cv.notify_one();
}

Status DurableBuffer::append(std::vector<WireRecord> records, std::vector<WireReject> rejects,
                             std::string token) {
  std::mutex m;
  std::condition_variable cv;
  bool finished = false;
  Status result;
  appendAsync(
      std::move(records), std::move(rejects),
      [&](Status s) {
        // Notify under the lock: the waiter may destroy `cv` as soon as it sees `finished`.
        std::lock_guard lock(m);
        result = std::move(s);
        finished = true;
        cv.notify_one();
      },
      std::move(token));
  std::unique_lock lock(m);
  cv.wait(lock, [&] { return finished; });
  return result;
}

Result<bool> DurableBuffer::hasToken(const std::string& token) { return impl_->hasToken(token); }

Result<std::optional<PendingBatch>> DurableBuffer::formBatch(const BatchLimits& limits,
                                                             int64_t now_us) {
  return impl_->formBatch(limits, now_us);
}

Result<std::vector<uint64_t>> DurableBuffer::unackedBatches() {
  std::lock_guard lock(impl_->stats_mu);
  std::vector<uint64_t> seqs;
  seqs.reserve(impl_->unacked.size());
  for (const auto& [seq, created] : impl_->unacked) seqs.push_back(seq);
  return seqs;
}

Result<PendingBatch> DurableBuffer::loadBatch(uint64_t seq) { return impl_->loadBatch(seq); }

Status DurableBuffer::ack(uint64_t seq) { return impl_->ack(seq); }

Result<DataKeyRotation> DurableBuffer::rotateDataKey(const RotationStep& after_step) {
  return impl_->rotateDataKey(after_step);
}

Result<DataKeyRotation> rotateBufferDataKey(BufferOptions options) {
  std::error_code ec;
  if (!std::filesystem::exists(options.path, ec)) {
    return Status::notFound("buffer " + options.path.string() +
                            " does not exist: nothing to rotate (is agent.data_dir right?)");
  }
  auto buffer = DurableBuffer::open(std::move(options));
  if (!buffer.isOk()) {
    if (buffer.status().code() == Code::kUnavailable) {
      return Status::unavailable(buffer.status().message() +
                                 "; rotate-data-key runs offline: stop the agent first");
    }
    return buffer.status();
  }
  return (*buffer)->rotateDataKey();
}

BufferStats DurableBuffer::stats() const {
  const Impl& impl = *impl_;
  std::lock_guard lock(impl.stats_mu);
  BufferStats s = impl.counters;
  s.unbatched_records = impl.unbatched_records + impl.unbatched_rejects;
  int64_t a = impl.oldest_unbatched_record_us, b = impl.oldest_unbatched_reject_us;
  s.oldest_unbatched_us = a == 0 ? b : (b == 0 ? a : std::min(a, b));
  s.oldest_unacked_us = impl.unacked.empty() ? 0 : impl.unacked.begin()->second;
  s.io_failed = impl.io_failed.load();
  return s;
}

}  // namespace branchline::agent
