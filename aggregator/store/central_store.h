// CentralStore: the aggregators' idempotent writer into the central store (the
// tables documented in README "The central store"). One commit() is one
// transaction: either every given batch is recorded in the batch ledger with
// its records and rejects, or nothing is. A batch already in the ledger
// (agent_id, batch_seq) with the same content digest (protocol/batch_digest.h) is a
// duplicate and adds nothing; a record whose (source, record_key) is already
// stored is counted as a duplicate and not stored again. So redelivery, from
// any agent through any aggregator, never doubles data: at-least-once delivery
// becomes exactly-once storage.
//
// A batch whose (agent_id, batch_seq) is in the ledger with a DIFFERENT digest
// is a reused sequence (an agent restored from an old disk image): its records
// and rejects are stored anyway (record dedup still applies), it is recorded
// in batch_conflicts (agent_id, batch_seq, digest) so its own redeliveries are
// duplicates, and a `batch_seq_reused` audit row is written in the same
// transaction. Nothing a reused sequence carries is lost.
//
// When commit() returns OK the transaction is durable (synchronous=FULL for
// SQLite): only then may the caller acknowledge the batches to their agents.
// Backends (SQLite, PostgreSQL) share these semantics and tests.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/batch_codec.h"
#include "shared/core/status.h"

namespace branchline::aggregator {

// What one commit did with one batch, in the order the batches were given.
struct BatchOutcome {
  std::string agent_id;
  uint64_t batch_seq = 0;
  bool duplicate = false;          // already in the ledger; nothing was written for it
  bool seq_reused = false;         // stored although its seq was in the ledger with other content
  std::string digest;              // the batch's content digest (protocol/batch_digest.h)
  uint32_t records = 0;            // records in the batch
  uint32_t stored_records = 0;     // of which newly stored
  uint32_t duplicate_records = 0;  // of which already stored (same source and record key)
  uint32_t rejects = 0;            // rejects stored from this batch
};

// One row of the audit trail. `detail` is a reason, never record contents.
struct AuditEntry {
  std::string actor;   // the aggregator (or admin) recording it
  std::string action;  // "batch_refused", "batch_seq_reused", ...
  std::string agent_id;
  std::optional<uint64_t> batch_seq;
  std::string detail;
  int64_t at_us = 0;  // 0: now
};

class CentralStore {
 public:
  virtual ~CentralStore() = default;

  // Commits all `batches` in one transaction, stamping `aggregator` on their
  // ledger rows. Returns one outcome per batch (a batch given twice in the same
  // call is stored once and reported duplicate the second time). On failure
  // nothing is written: kUnavailable when the store is away or busy past its
  // retry budget (retry later with backoff), kInternal/kDataLoss otherwise.
  virtual Result<std::vector<BatchOutcome>> commit(const std::vector<protocol::WireBatch>& batches,
                                                   const std::string& aggregator) = 0;

  // Appends one audit row in its own transaction; durable when OK.
  virtual Status audit(const AuditEntry& entry) = 0;

  // OK when the store answers a trivial query; kUnavailable otherwise.
  virtual Status health() = 0;
};

// OK when `url` names a supported backend in a form it accepts:
// "sqlite:///abs/path.db" or "postgresql://user@host:port/db" (also
// "postgres://"). Otherwise kInvalidArgument naming the URL (password
// redacted) and what is accepted. Connects to nothing: for config validation.
Status checkCentralStoreUrl(const std::string& url);

// Opens the backend named by `url` (see checkCentralStoreUrl). A PostgreSQL
// server that cannot be reached yet is not an error: the store returned then
// answers kUnavailable (commit, audit, health) and connects by itself, at most
// one attempt a second, once the server is there.
Result<std::unique_ptr<CentralStore>> openCentralStore(const std::string& url);

}  // namespace branchline::aggregator
