// DurableBuffer: the agent's SQLite (WAL) store of accepted records, the
// quarantine of rejected ones, and the batches formed from them.
//
// Crash semantics: append() returns (or calls back) only after the records are
// committed and fsync'd (synchronous=FULL): a crash or power cut after that
// loses nothing. A batch, once formed, keeps its sequence number and exactly
// its records across restarts until ack() deletes them; sequence numbers are
// never reused. Concurrent appends share one transaction and one fsync (group
// commit). The buffer is bounded in bytes: an append that would pass the bound
// is refused whole (kResourceExhausted) and nothing of it is stored.
//
// At rest, every value that may carry customer data (records.record_key,
// records.payload, quarantine.raw, quarantine.reasons) is sealed with AES-256-GCM
// under the agent's data key (record_cipher.h), bound to its table, column and row:
// the buffer's files alone reveal no record content. Opening a buffer with another
// key fails (kPermissionDenied) instead of returning garbage; a changed sealed value
// makes that one row damaged (see below); the rest of its batch goes on.
//
// Damage costs only the damaged row: a sealed value that fails to open in
// formBatch or loadBatch moves its row, bytes unchanged, to the `damaged` table
// (kept for forensics, 30 days after its batch is acked), and the batch it
// belonged to carries a report of it (PendingBatch::damaged) instead of the
// record, so the central audit trail names it (`buffer_damaged`).
//
// Data-key rotation (rotateDataKey) re-seals everything under a new key. A crash at
// any point of it leaves a buffer that opens: under the old key (the rotation did not
// commit) or the new one (it did; open() then finishes installing the new key file).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/batch_codec.h"
#include "shared/core/status.h"

namespace branchline::agent {

using protocol::WireRecord;  // source, key, ingested_at_us, payload
using protocol::WireReject;  // source, raw, reasons_json, ingested_at_us

struct BufferOptions {
  std::filesystem::path path;                           // the SQLite file; created if missing
  uint64_t max_bytes = 1ull << 30;                      // payload + raw bytes held, all states
                                                        // (plaintext sizes, before sealing)
  std::chrono::milliseconds checkpoint_interval{1000};  // WAL checkpoint timer
  size_t max_group_records = 50000;                     // most records one group commit takes
  // Memory held by appends waiting for the committer (payload + raw + per-entry
  // overhead). Past it appendAsync refuses at once with kResourceExhausted.
  size_t max_queued_bytes = 64 << 20;
  // The data key; created (0600) when missing. Empty: `buffer.key` in path's folder.
  std::filesystem::path key_file;
};

struct BatchLimits {
  size_t max_records = 2000;
  size_t max_bytes = 512 << 10;  // payload bytes (pre-compression)
};

// A formed batch as stored: the same seq, created_at and records every time it is loaded.
struct PendingBatch {
  uint64_t seq = 0;
  int64_t created_at_us = 0;
  std::vector<WireRecord> records;
  std::vector<WireReject> rejects;
  std::vector<protocol::WireDamaged> damaged;  // its rows moved to `damaged`, by row id
};

struct BufferStats {
  uint64_t records = 0;             // accepted records held (batched or not)
  uint64_t rejects = 0;             // quarantined records not yet reported upstream
  uint64_t bytes = 0;               // bytes counted against max_bytes
  uint64_t unbatched_records = 0;   // records + rejects not yet in a batch
  uint64_t batches = 0;             // formed, unacked batches
  int64_t oldest_unbatched_us = 0;  // ingested_at of the oldest unbatched entry, 0 if none
  int64_t oldest_unacked_us = 0;    // created_at of the oldest unacked batch, 0 if none
  uint64_t commits = 0;             // group-commit transactions since open (one fsync each)
  uint64_t damaged = 0;             // rows moved aside as damaged (kept for forensics)
  uint64_t damaged_found = 0;       // rows found damaged since open
  // An I/O error (SQLite's SQLITE_IOERR: EIO from write, fsync, read) stopped
  // the buffer taking records: after a failed fsync the kernel may have dropped
  // the unwritten pages and a later fsync would still succeed, so no later
  // commit could be trusted (PostgreSQL's "fsyncgate"). Appends fail until the
  // agent is restarted; what was committed before the error is still forwarded.
  bool io_failed = false;
};

struct DataKeyRotation {
  uint64_t records = 0;  // record rows re-sealed (batched or not)
  uint64_t rejects = 0;  // quarantine rows re-sealed
};

namespace testing {
struct PlaintextBufferAccess;  // agent/buffer/testing/plaintext_buffer.h
}  // namespace testing

// Test seam for crash tests: called after each step of a rotation ("new_key_written",
// "resealing" (inside the transaction), "resealed", "old_key_zeroed",
// "key_installed"); returning false stops there, as if the process died.
using RotationStep = std::function<bool(std::string_view step)>;

class DurableBuffer {
 public:
  // Opens or creates the file, recovers counters and the next batch seq.
  static Result<std::unique_ptr<DurableBuffer>> open(BufferOptions options);
  ~DurableBuffer();  // finishes pending appends, checkpoints, closes

  using AppendDone = std::function<void(Status)>;
  // Queues the entries for the next group commit and returns at once; `done` runs on
  // the committer thread after the commit's fsync (or with the failure). Must not block.
  // When the queue itself is over max_queued_bytes, or the buffer is closing, `done`
  // runs at once on the caller's thread with kResourceExhausted / kUnavailable.
  // A non-empty `token` (e.g. a spool file's identity) is stored in the same
  // transaction, so hasToken() tells afterwards whether this append committed.
  void appendAsync(std::vector<WireRecord> records, std::vector<WireReject> rejects,
                   AppendDone done, std::string token = {});
  // Blocking form of appendAsync.
  Status append(std::vector<WireRecord> records, std::vector<WireReject> rejects,
                std::string token = {});
  // Whether an append carrying `token` has committed (tokens are kept 30 days).
  Result<bool> hasToken(const std::string& token);

  // Seals the oldest unbatched entries (up to the limits) into a new batch and
  // returns it; nullopt when nothing is unbatched.
  Result<std::optional<PendingBatch>> formBatch(const BatchLimits& limits, int64_t now_us);
  // Formed, unacked batch seqs, oldest first (to resend after a restart).
  Result<std::vector<uint64_t>> unackedBatches();
  Result<PendingBatch> loadBatch(uint64_t seq);
  // Deletes the batch and its entries. Acking an unknown (already acked) seq is OK.
  Status ack(uint64_t seq);

  BufferStats stats() const;  // cheap: kept in memory, no SQL

  // Re-seals every sealed value (records batched or not, quarantine, the key check)
  // under a new random data key and destroys the old one:
  //  1. the new key goes to `<key_file>.next` (0600, fsync'd);
  //  2. one transaction re-seals every row and the key check; its commit is the switch;
  //  3. the old key file's bytes are overwritten with zeros, then `.next` is renamed
  //     over it (atomic, folder fsync'd);
  //  4. a TRUNCATE checkpoint moves the re-sealed pages into buffer.db and empties the
  //     WAL; secure_delete has zeroed the cells the old ciphertext was in.
  // On open, a `.next` file is discarded when the key file opens the buffer (step 2
  // did not commit), or installed when only it does (a crash after step 2).
  // Appends wait meanwhile. Needs free disk space about the size of the sealed data
  // (the WAL holds the re-sealed pages until the checkpoint). kInvalidArgument for a
  // buffer written in clear (agent/buffer/testing/plaintext_buffer.h).
  Result<DataKeyRotation> rotateDataKey(const RotationStep& after_step = {});

 private:
  friend struct testing::PlaintextBufferAccess;
  // in_clear: values unsealed and no key file; reached only through the testing
  // header named above (benchmarks and tests), never from a product binary.
  static Result<std::unique_ptr<DurableBuffer>> open(BufferOptions options, bool in_clear);
  DurableBuffer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `branchline-agent rotate-data-key`, offline: opens the existing buffer at
// options.path, rotates its data key and closes it. kNotFound when there is no
// buffer; kUnavailable when another process (a running agent) has it open.
Result<DataKeyRotation> rotateBufferDataKey(BufferOptions options);

}  // namespace branchline::agent
