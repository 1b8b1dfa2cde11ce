#include "aggregator/store/postgres_store.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "aggregator/store/seq_reuse.h"
#include "protocol/batch_digest.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::aggregator {
namespace {

// Element type oids of the binary arrays we send (pg_type.h is a server header).
constexpr uint32_t kTextOid = 25;
constexpr uint32_t kInt8Oid = 20;
constexpr Oid kTextArrayOid = 1009;
constexpr Oid kInt8ArrayOid = 1016;

// Serializes schema migrations of concurrently starting aggregators; any
// constant works as long as every build uses the same one.
constexpr int64_t kMigrationLockKey = 0x42524C4E'53544F52;  // "BRLNSTOR"

// The documented tables (README "The central store"), as in the SQLite store:
// times are RFC 3339 text so both backends read the same.
constexpr const char* kSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS records (
  id          BIGSERIAL PRIMARY KEY,
  source      TEXT NOT NULL,
  record_key  TEXT NOT NULL,
  agent_id    TEXT NOT NULL,
  batch_seq   BIGINT NOT NULL,
  payload     TEXT NOT NULL,
  ingested_at TEXT NOT NULL,
  stored_at   TEXT NOT NULL,
  UNIQUE (source, record_key)
);
CREATE TABLE IF NOT EXISTS rejects (
  id          BIGSERIAL PRIMARY KEY,
  agent_id    TEXT NOT NULL,
  batch_seq   BIGINT NOT NULL,
  source      TEXT NOT NULL,
  raw         TEXT NOT NULL,
  reasons     TEXT NOT NULL,
  ingested_at TEXT NOT NULL,
  stored_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_ledger (
  agent_id       TEXT NOT NULL,
  batch_seq      BIGINT NOT NULL,
  created_at     TEXT NOT NULL,
  stored_at      TEXT NOT NULL,
  aggregator     TEXT NOT NULL,
  records        INTEGER NOT NULL,
  stored_records INTEGER NOT NULL,
  rejects        INTEGER NOT NULL,
  PRIMARY KEY (agent_id, batch_seq)
);
CREATE TABLE IF NOT EXISTS audit (
  id        BIGSERIAL PRIMARY KEY,
  at        TEXT NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  agent_id  TEXT NOT NULL,
  batch_seq BIGINT,
  detail    TEXT NOT NULL
);
)sql";

// Version 2 (README "The central store"): content digests, so a reused batch
// sequence with other content is stored and recorded instead of being taken
// for a duplicate. Ledger rows from before the upgrade keep a NULL digest.
constexpr const char* kSchemaV2Sql = R"sql(
ALTER TABLE batch_ledger ADD COLUMN IF NOT EXISTS digest TEXT;
CREATE TABLE IF NOT EXISTS batch_conflicts (
  agent_id       TEXT NOT NULL,
  batch_seq      BIGINT NOT NULL,
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

// Each step brings a database from version i to i + 1 (index 0: empty to 1).
constexpr const char* kMigrations[] = {kSchemaSql, kSchemaV2Sql};

// $1 agents, $2 seqs, $3 created_at, $4 stored_at, $5 aggregator, $6 record
// counts, $7 reject counts, $8 digests. Key order: see the header on deadlocks.
constexpr const char* kLedgerSql =
    "INSERT INTO batch_ledger(agent_id, batch_seq, created_at, stored_at, aggregator, records, "
    "stored_records, rejects, digest) "
    "SELECT a, s, c, $4, $5, n, 0, j, d FROM unnest($1::text[], $2::int8[], $3::text[], "
    "$6::int8[], $7::int8[], $8::text[]) AS u(a, s, c, n, j, d) ORDER BY a COLLATE \"C\", s "
    "ON CONFLICT (agent_id, batch_seq) DO NOTHING RETURNING agent_id, batch_seq";

// $1 agents, $2 seqs: the digests already in the ledger for these batches.
constexpr const char* kLedgerDigestsSql =
    "SELECT l.agent_id, l.batch_seq, l.digest FROM batch_ledger l "
    "JOIN unnest($1::text[], $2::int8[]) AS u(a, s) ON l.agent_id = u.a AND l.batch_seq = u.s";

// A reused batch sequence (rare: one row at a time). $1 agent, $2 seq,
// $3 digest, $4 created_at, $5 stored_at, $6 aggregator, $7 records, $8 rejects.
constexpr const char* kConflictSql =
    "INSERT INTO batch_conflicts(agent_id, batch_seq, digest, created_at, stored_at, aggregator, "
    "records, stored_records, rejects) VALUES ($1, $2::int8, $3, $4, $5, $6, $7::int8, 0, "
    "$8::int8) ON CONFLICT (agent_id, batch_seq, digest) DO NOTHING RETURNING 1";

// $1 stored records, $2 agent, $3 seq, $4 digest.
constexpr const char* kConflictCountSql =
    "UPDATE batch_conflicts SET stored_records = $1::int8 WHERE agent_id = $2 AND "
    "batch_seq = $3::int8 AND digest = $4";

// The records of one reused batch: like kRecordsSql without the ledger update.
constexpr const char* kConflictRecordsSql =
    "WITH ins AS ("
    " INSERT INTO records(source, record_key, agent_id, batch_seq, payload, ingested_at, "
    "stored_at)"
    " SELECT src, k, a, s, p, i, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], "
    "$5::text[], $6::text[]) WITH ORDINALITY AS u(src, k, a, s, p, i, ord)"
    " ORDER BY src COLLATE \"C\", k COLLATE \"C\", ord"
    " ON CONFLICT (source, record_key) DO NOTHING RETURNING 1)"
    " SELECT count(*) FROM ins";

// $1 sources, $2 keys, $3 agents, $4 seqs, $5 payloads, $6 ingested_at,
// $7 stored_at. Inserts in key order (ties: given order, so the first
// delivery in the commit owns a key), then writes each batch's count of rows
// actually inserted into its ledger row.
constexpr const char* kRecordsSql =
    "WITH ins AS ("
    " INSERT INTO records(source, record_key, agent_id, batch_seq, payload, ingested_at, "
    "stored_at)"
    " SELECT src, k, a, s, p, i, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], "
    "$5::text[], $6::text[]) WITH ORDINALITY AS u(src, k, a, s, p, i, ord)"
    " ORDER BY src COLLATE \"C\", k COLLATE \"C\", ord"
    " ON CONFLICT (source, record_key) DO NOTHING RETURNING agent_id, batch_seq),"
    " counted AS (SELECT agent_id, batch_seq, count(*) AS n FROM ins GROUP BY agent_id, batch_seq)"
    " UPDATE batch_ledger l SET stored_records = counted.n FROM counted"
    " WHERE l.agent_id = counted.agent_id AND l.batch_seq = counted.batch_seq"
    " RETURNING l.agent_id, l.batch_seq, l.stored_records";

// $1 agents, $2 seqs, $3 sources, $4 raw, $5 reasons, $6 ingested_at, $7 stored_at.
constexpr const char* kRejectsSql =
    "INSERT INTO rejects(agent_id, batch_seq, source, raw, reasons, ingested_at, stored_at) "
    "SELECT a, s, src, r, why, i, $7 FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], "
    "$5::text[], $6::text[]) WITH ORDINALITY AS u(a, s, src, r, why, i, ord) ORDER BY ord";

constexpr const char* kAuditSql =
    "INSERT INTO audit(at, actor, action, agent_id, batch_seq, detail) "
    "VALUES ($1, $2, $3, $4, $5::int8, $6)";

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConn = std::unique_ptr<PGconn, ConnDeleter>;

// A one-dimensional PostgreSQL array in the binary wire format: the values go
// to the server as length-prefixed bytes, so nothing is ever quoted or
// escaped. The buffer is reused across commits.
class BinaryArray {
 public:
  void reset(uint32_t element_oid) {
    buf_.clear();
    count_ = 0;
    put32(1);  // dimensions
    put32(0);  // no NULLs
    put32(element_oid);
    put32(0);  // element count, patched by data()
    put32(1);  // lower bound
  }
  void addText(std::string_view v) {
    put32(static_cast<uint32_t>(v.size()));
    buf_.append(v.data(), v.size());
    ++count_;
  }
  void addInt8(int64_t v) {
    put32(8);
    uint64_t u = static_cast<uint64_t>(v);
    for (int shift = 56; shift >= 0; shift -= 8) buf_.push_back(static_cast<char>(u >> shift));
    ++count_;
  }
  uint32_t count() const { return count_; }
  const char* data() {
    for (int i = 0; i < 4; ++i) {
      buf_[12 + static_cast<size_t>(i)] = static_cast<char>(count_ >> (24 - 8 * i));
    }
    return buf_.data();
  }
  int size() const { return static_cast<int>(buf_.size()); }

 private:
  void put32(uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) buf_.push_back(static_cast<char>(v >> shift));
  }
  std::string buf_;
  uint32_t count_ = 0;
};

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string trimmed(const char* msg) {
  std::string s = msg ? msg : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (char& c : s) {
    if (c == '\n' || c == '\t') c = ' ';
  }
  return s;
}

// Retrying the whole transaction is the documented answer to these.
bool isConflict(std::string_view sqlstate) { return sqlstate == "40001" || sqlstate == "40P01"; }

// Server states meaning "away for now": connection exceptions, shutdown,
// starting up, out of resources, read-only standby.
bool isUnavailableState(std::string_view sqlstate) {
  return startsWith(sqlstate, "08") || startsWith(sqlstate, "53") || startsWith(sqlstate, "57P") ||
         sqlstate == "55P03" || sqlstate == "25006" || sqlstate == "58030";
}

int64_t parseInt(const char* text) { return std::strtoll(text, nullptr, 10); }

std::string batchKey(std::string_view agent, int64_t seq) {
  std::string k(agent);
  k.push_back('\0');
  k += std::to_string(seq);
  return k;
}

}  // namespace

bool isPostgresUrl(const std::string& url) {
  return startsWith(url, "postgresql://") || startsWith(url, "postgres://");
}

std::string redactPostgresUrl(const std::string& url) {
  std::string out = url;
  size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    size_t auth = scheme + 3;
    size_t auth_end = out.find_first_of("/?", auth);
    if (auth_end == std::string::npos) auth_end = out.size();
    size_t at = out.rfind('@', auth_end == 0 ? 0 : auth_end - 1);
    if (at != std::string::npos && at >= auth) {
      size_t colon = out.find(':', auth);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  size_t query = out.find('?');
  while (query != std::string::npos) {
    size_t name = query + 1;
    size_t end = out.find('&', name);
    if (end == std::string::npos) end = out.size();
    if (out.compare(name, 9, "password=") == 0) {
      out.replace(name + 9, end - name - 9, "***");
      end = name + 12;
    }
    query = end < out.size() ? end : std::string::npos;
  }
  return out;
}

Status checkPostgresUrl(const std::string& url) {
  const std::string shown = redactPostgresUrl(url);
  auto bad = [&shown](const std::string& why) {
    return Status::invalid("store.url `" + shown + "`: " + why +
                           " (supported: postgresql://user@host:port/database)");
  };
  if (!isPostgresUrl(url)) return bad("unsupported scheme");
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(url.c_str(), &err);
  if (!opts) {
    // libpq's message may quote the offending part, which could be the
    // password: show it only when the URL carries none.
    std::string why = "not a valid PostgreSQL URL";
    if (err && shown == url) why += ": " + trimmed(err);
    PQfreemem(err);
    return bad(why);
  }
  PQconninfoFree(opts);
  return Status::ok();
}

struct PostgresCentralStore::Impl {
  PostgresStoreOptions options;
  std::string shown_url;  // redacted
  std::mutex mutex;       // one connection: serialize every use of it
  PgConn conn;
  bool ever_connected = false;
  std::string last_sqlstate;  // of the last failure() seen
  std::minstd_rand jitter{std::random_device{}()};
  Rfc3339Formatter ingested_text;
  // Reused across commits: the binary array parameters.
  BinaryArray a_agent, a_seq, a_created, a_nrec, a_nrej, a_digest, k_agent, k_seq;
  BinaryArray r_source, r_key, r_agent, r_seq, r_payload, r_ingested;
  BinaryArray j_agent, j_seq, j_source, j_raw, j_reasons, j_ingested;
  // The ledger digest of each sequence a commit found reused (batchKey -> digest).
  std::unordered_map<std::string, std::string> ledger_digests_;

  std::string context() const { return "central store " + shown_url; }

  // Maps a failed result (or a lost connection) to the caller's retry
  // decision; drops the connection when it is no longer usable.
  Status failure(const PGresult* res, std::string_view what) {
    const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
    std::string msg = std::string(what) + ": " +
                      trimmed(res && PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
                                                                  : PQerrorMessage(conn.get()));
    last_sqlstate = state ? state : "";
    if (state) msg += " (SQLSTATE " + std::string(state) + ")";
    if (PQstatus(conn.get()) != CONNECTION_OK) {
      conn.reset();  // the next call reconnects
      return Status::unavailable("connection lost: " + msg);
    }
    std::string_view s = state ? state : "";
    if (isConflict(s) || isUnavailableState(s)) return Status::unavailable(msg);
    if (startsWith(s, "XX") || startsWith(s, "22P0")) return Status::dataLoss(msg);
    return Status::internal(msg);
  }

  Status exec(const char* sql, std::string_view what) {
    PgResult res(PQexec(conn.get(), sql));
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return failure(res.get(), what);
    return Status::ok();
  }

  void rollback() {
    if (conn && PQstatus(conn.get()) == CONNECTION_OK &&
        PQtransactionStatus(conn.get()) != PQTRANS_IDLE) {
      PgResult res(PQexec(conn.get(), "ROLLBACK"));
    }
  }

  Status prepare(const char* name, const char* sql, int n, const Oid* types) {
    PgResult res(PQprepare(conn.get(), name, sql, n, types));
    if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
      return failure(res.get(), std::string("prepare ") + name);
    }
    return Status::ok();
  }

  // Creates the schema if missing, under a transaction-scoped advisory lock
  // so aggregators starting together do not race on CREATE TABLE.
  Status migrate() {
    BL_RETURN_IF_ERROR(exec("BEGIN", "migrate: BEGIN"));
    int found = 0;
    Status s = [&]() -> Status {
      const std::string lock =
          "SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLockKey) + ")";
      BL_RETURN_IF_ERROR(exec(lock.c_str(), "migrate: lock"));
      BL_RETURN_IF_ERROR(
          exec("CREATE TABLE IF NOT EXISTS schema_version ("
               "version INTEGER NOT NULL, applied_at TEXT NOT NULL)",
               "migrate: schema_version"));
      PgResult v(PQexec(conn.get(), "SELECT coalesce(max(version), 0) FROM schema_version"));
      if (!v || PQresultStatus(v.get()) != PGRES_TUPLES_OK || PQntuples(v.get()) != 1) {
        return failure(v.get(), "migrate: read schema_version");
      }
      found = static_cast<int>(parseInt(PQgetvalue(v.get(), 0, 0)));
      if (found >= kSchemaVersion) return Status::ok();
      // Upgrades in place, one step at a time, all in this one transaction.
      const std::string at = formatRfc3339Micros(nowMicros());
      for (int step = found; step < kSchemaVersion; ++step) {
        BL_RETURN_IF_ERROR(
            exec(kMigrations[step], "migrate: schema version " + std::to_string(step + 1)));
      }
      // One row per start that created or upgraded the schema.
      const std::string version = std::to_string(kSchemaVersion);
      const char* values[] = {version.c_str(), at.c_str()};
      PgResult ins(PQexecParams(conn.get(),
                                "INSERT INTO schema_version(version, applied_at) VALUES ($1, $2)",
                                2, nullptr, values, nullptr, nullptr, 0));
      if (!ins || PQresultStatus(ins.get()) != PGRES_COMMAND_OK) {
        return failure(ins.get(), "migrate: stamp schema_version");
      }
      return Status::ok();
    }();
    if (!s) {
      rollback();
      return s;
    }
    if (found > kSchemaVersion) {
      rollback();
      return Status::dataLoss("schema version " + std::to_string(found) +
                              " is newer than this build's " + std::to_string(kSchemaVersion) +
                              "; upgrade the aggregator");
    }
    return exec("COMMIT", "migrate: COMMIT");
  }

  // Makes sure a usable connection exists: connects, sets the session up,
  // migrates and prepares the statements (prepared statements live and die
  // with the session).
  Status ensureConnected() {
    if (conn && PQstatus(conn.get()) == CONNECTION_OK) return Status::ok();
    conn.reset();
    const std::string timeout = std::to_string(options.connect_timeout.count());
    // Later keywords override the expanded URL: only fixed session settings
    // go after it. The timeouts go before, so the URL may override them; the
    // keepalives and tcp_user_timeout turn a silently vanished server (a
    // partition, a dead host) into an error instead of a commit that hangs.
    const char* keys[] = {"connect_timeout",  "keepalives",
                          "keepalives_idle",  "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout",
                          "dbname",           "client_encoding",
                          "application_name", nullptr};
    const char* values[] = {
        timeout.c_str(),         "1",    "10", "5", "3", "30000", options.url.c_str(), "UTF8",
        "branchline-aggregator", nullptr};
    PgConn fresh(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
    if (!fresh) return Status::unavailable("cannot connect: out of memory");
    if (PQstatus(fresh.get()) != CONNECTION_OK) {
      return Status::unavailable("cannot connect: " + trimmed(PQerrorMessage(fresh.get())));
    }
    // CREATE TABLE IF NOT EXISTS answers with NOTICEs; libpq would print them on stderr.
    PQsetNoticeProcessor(
        fresh.get(), [](void*, const char*) {}, nullptr);
    conn = std::move(fresh);
    Status s = [&]() -> Status {
      // Durable on OK whatever the server's default.
      BL_RETURN_IF_ERROR(exec("SET synchronous_commit = on", "session setup"));
      // The key-order sort of a commit's records (~10k rows, a few MB) must
      // stay in memory: the 4 MB default would spill it to temp files.
      BL_RETURN_IF_ERROR(exec("SET work_mem = '64MB'", "session setup"));
      BL_RETURN_IF_ERROR(migrate());
      const Oid ledger_types[] = {kTextArrayOid, kInt8ArrayOid, kTextArrayOid, 25, 25,
                                  kInt8ArrayOid, kInt8ArrayOid, kTextArrayOid};
      BL_RETURN_IF_ERROR(prepare("bl_ledger", kLedgerSql, 8, ledger_types));
      const Oid key_types[] = {kTextArrayOid, kInt8ArrayOid};
      BL_RETURN_IF_ERROR(prepare("bl_ledger_digests", kLedgerDigestsSql, 2, key_types));
      BL_RETURN_IF_ERROR(prepare("bl_conflict", kConflictSql, 8, nullptr));
      BL_RETURN_IF_ERROR(prepare("bl_conflict_count", kConflictCountSql, 4, nullptr));
      const Oid record_types[] = {kTextArrayOid,
                                  kTextArrayOid,
                                  kTextArrayOid,
                                  kInt8ArrayOid,
                                  kTextArrayOid,
                                  kTextArrayOid,
                                  25};
      BL_RETURN_IF_ERROR(prepare("bl_records", kRecordsSql, 7, record_types));
      BL_RETURN_IF_ERROR(prepare("bl_conflict_records", kConflictRecordsSql, 7, record_types));
      const Oid reject_types[] = {kTextArrayOid,
                                  kInt8ArrayOid,
                                  kTextArrayOid,
                                  kTextArrayOid,
                                  kTextArrayOid,
                                  kTextArrayOid,
                                  25};
      BL_RETURN_IF_ERROR(prepare("bl_rejects", kRejectsSql, 7, reject_types));
      BL_RETURN_IF_ERROR(prepare("bl_audit", kAuditSql, 6, nullptr));
      return prepare("bl_health", "SELECT 1", 0, nullptr);
    }();
    if (!s) {
      // A half set-up session must not be mistaken for a ready one.
      conn.reset();
      return s;
    }
    if (ever_connected) {
      log::info("central_store_reconnected", {{"url", shown_url}});
    } else {
      log::info("central_store_open", {{"url", shown_url}, {"schema_version", kSchemaVersion}});
    }
    ever_connected = true;
    return Status::ok();
  }

  // Runs a prepared statement whose parameters are all binary arrays except
  // the text scalars given in `scalars` (by parameter position).
  PgResult run(const char* name, std::initializer_list<BinaryArray*> arrays,
               std::initializer_list<std::pair<int, const std::string*>> scalars) {
    constexpr int kMax = 8;
    const char* values[kMax] = {};
    int lengths[kMax] = {};
    int formats[kMax] = {};
    int n = 0;
    for (BinaryArray* a : arrays) {
      values[n] = a ? a->data() : nullptr;
      lengths[n] = a ? a->size() : 0;
      formats[n] = 1;
      ++n;
    }
    for (auto [pos, text] : scalars) {
      values[pos] = text->c_str();
      formats[pos] = 0;
      n = std::max(n, pos + 1);
    }
    return PgResult(PQexecPrepared(conn.get(), name, n, values, lengths, formats, 0));
  }

  // One attempt at the whole commit transaction. Fills `outcomes`.
  Status commitOnce(const std::vector<protocol::WireBatch>& batches,
                    const std::vector<std::string>& digests, const std::string& aggregator,
                    std::vector<BatchOutcome>& outcomes) {
    outcomes.assign(batches.size(), BatchOutcome{});
    // A batch given twice in this call is reported duplicate the second time.
    std::unordered_map<std::string, size_t> first_index;
    std::vector<size_t> candidates;
    for (size_t i = 0; i < batches.size(); ++i) {
      const auto& b = batches[i];
      BatchOutcome& o = outcomes[i];
      o.agent_id = b.agent_id;
      o.batch_seq = b.seq;
      o.digest = digests[i];
      o.records = static_cast<uint32_t>(b.records.size());
      // Every batch is a duplicate until the ledger insert says it is new.
      o.duplicate = true;
      o.duplicate_records = o.records;
      if (first_index.emplace(batchKey(b.agent_id, static_cast<int64_t>(b.seq)), i).second) {
        candidates.push_back(i);
      }
    }
    const std::string stored_at = formatRfc3339Micros(nowMicros());

    a_agent.reset(kTextOid);
    a_seq.reset(kInt8Oid);
    a_created.reset(kTextOid);
    a_nrec.reset(kInt8Oid);
    a_nrej.reset(kInt8Oid);
    a_digest.reset(kTextOid);
    for (size_t i : candidates) {
      const auto& b = batches[i];
      a_agent.addText(b.agent_id);
      a_seq.addInt8(static_cast<int64_t>(b.seq));
      a_created.addText(formatRfc3339Micros(b.created_at_us));
      a_nrec.addInt8(static_cast<int64_t>(b.records.size()));
      a_nrej.addInt8(static_cast<int64_t>(b.rejects.size()));
      a_digest.addText(digests[i]);
    }

    BL_RETURN_IF_ERROR(exec("BEGIN", "BEGIN"));
    PgResult ledger = run(
        "bl_ledger", {&a_agent, &a_seq, &a_created, nullptr, nullptr, &a_nrec, &a_nrej, &a_digest},
        {{3, &stored_at}, {4, &aggregator}});
    if (!ledger || PQresultStatus(ledger.get()) != PGRES_TUPLES_OK) {
      return failure(ledger.get(), "insert batch_ledger rows");
    }
    std::vector<size_t> fresh;
    std::vector<bool> is_fresh(batches.size(), false);
    for (int row = 0; row < PQntuples(ledger.get()); ++row) {
      auto it = first_index.find(
          batchKey(PQgetvalue(ledger.get(), row, 0), parseInt(PQgetvalue(ledger.get(), row, 1))));
      if (it == first_index.end()) {
        return Status::internal("batch_ledger returned a batch this commit did not insert");
      }
      fresh.push_back(it->second);
      is_fresh[it->second] = true;
    }
    std::sort(fresh.begin(), fresh.end());  // given order: the first delivery owns a key

    std::vector<size_t> reused;
    BL_RETURN_IF_ERROR(findReused(batches, digests, first_index, is_fresh, reused));

    resetContents();
    for (size_t i : fresh) {
      const auto& b = batches[i];
      BatchOutcome& o = outcomes[i];
      o.duplicate = false;
      o.rejects = static_cast<uint32_t>(b.rejects.size());
      addContents(b);
    }

    if (r_source.count() > 0) {
      PgResult recs =
          run("bl_records", {&r_source, &r_key, &r_agent, &r_seq, &r_payload, &r_ingested},
              {{6, &stored_at}});
      if (!recs || PQresultStatus(recs.get()) != PGRES_TUPLES_OK) {
        return failure(recs.get(), "insert records");
      }
      for (int row = 0; row < PQntuples(recs.get()); ++row) {
        auto it = first_index.find(
            batchKey(PQgetvalue(recs.get(), row, 0), parseInt(PQgetvalue(recs.get(), row, 1))));
        if (it == first_index.end()) {
          return Status::internal("records returned a batch this commit did not insert");
        }
        outcomes[it->second].stored_records =
            static_cast<uint32_t>(parseInt(PQgetvalue(recs.get(), row, 2)));
      }
    }
    for (size_t i : fresh)
      outcomes[i].duplicate_records = outcomes[i].records - outcomes[i].stored_records;

    BL_RETURN_IF_ERROR(insertRejects(stored_at));
    for (size_t i : fresh) BL_RETURN_IF_ERROR(auditDamaged(batches[i], aggregator, stored_at));
    for (size_t i : reused) {
      BL_RETURN_IF_ERROR(storeReused(batches[i], digests[i], aggregator, stored_at, outcomes[i]));
    }
    return exec("COMMIT", "COMMIT");
  }

  // Fills the record and reject arrays with one batch's contents.
  // Empties the record and reject column arrays before a new set of batches.
  void resetContents() {
    r_source.reset(kTextOid);
    r_key.reset(kTextOid);
    r_agent.reset(kTextOid);
    r_seq.reset(kInt8Oid);
    r_payload.reset(kTextOid);
    r_ingested.reset(kTextOid);
    j_agent.reset(kTextOid);
    j_seq.reset(kInt8Oid);
    j_source.reset(kTextOid);
    j_raw.reset(kTextOid);
    j_reasons.reset(kTextOid);
    j_ingested.reset(kTextOid);
  }

  void addContents(const protocol::WireBatch& b) {
    const int64_t seq = static_cast<int64_t>(b.seq);
    for (const protocol::WireRecord& rec : b.records) {
      r_source.addText(rec.source);
      r_key.addText(rec.key);
      r_agent.addText(b.agent_id);
      r_seq.addInt8(seq);
      r_payload.addText(rec.payload);
      r_ingested.addText(ingested_text.format(rec.ingested_at_us));
    }
    for (const protocol::WireReject& rej : b.rejects) {
      j_agent.addText(b.agent_id);
      j_seq.addInt8(seq);
      j_source.addText(rej.source);
      j_raw.addText(rej.raw);
      j_reasons.addText(rej.reasons_json);
      j_ingested.addText(ingested_text.format(rej.ingested_at_us));
    }
  }

  Status insertRejects(const std::string& stored_at) {
    if (j_agent.count() == 0) return Status::ok();
    PgResult rej = run("bl_rejects", {&j_agent, &j_seq, &j_source, &j_raw, &j_reasons, &j_ingested},
                       {{6, &stored_at}});
    if (!rej || PQresultStatus(rej.get()) != PGRES_COMMAND_OK) {
      return failure(rej.get(), "insert rejects");
    }
    return Status::ok();
  }

  // The batches (indexes, in given order) that were not inserted into the
  // ledger but carry other content than the ledger row of their sequence: each
  // (agent, seq, digest) once. Sets `ledger_digests_` for them.
  Status findReused(const std::vector<protocol::WireBatch>& batches,
                    const std::vector<std::string>& digests,
                    const std::unordered_map<std::string, size_t>& first_index,
                    const std::vector<bool>& is_fresh, std::vector<size_t>& reused) {
    ledger_digests_.clear();
    // Sequences already in the ledger before this commit: read their digests.
    k_agent.reset(kTextOid);
    k_seq.reset(kInt8Oid);
    for (size_t i = 0; i < batches.size(); ++i) {
      if (is_fresh[i]) continue;
      const std::string key = batchKey(batches[i].agent_id, static_cast<int64_t>(batches[i].seq));
      const size_t first = first_index.at(key);
      if (is_fresh[first]) {
        ledger_digests_.emplace(key, digests[first]);  // inserted just now by this commit
      } else if (first == i) {
        k_agent.addText(batches[i].agent_id);
        k_seq.addInt8(static_cast<int64_t>(batches[i].seq));
      }
    }
    if (k_agent.count() > 0) {
      PgResult res = run("bl_ledger_digests", {&k_agent, &k_seq}, {});
      if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
        return failure(res.get(), "read batch_ledger digests");
      }
      for (int row = 0; row < PQntuples(res.get()); ++row) {
        if (PQgetisnull(res.get(), row, 2)) continue;  // from before digests: a duplicate
        ledger_digests_.emplace(
            batchKey(PQgetvalue(res.get(), row, 0), parseInt(PQgetvalue(res.get(), row, 1))),
            PQgetvalue(res.get(), row, 2));
      }
    }
    std::unordered_set<std::string> seen;  // (agent, seq, digest) already taken in this commit
    for (size_t i = 0; i < batches.size(); ++i) {
      if (is_fresh[i]) continue;
      const std::string key = batchKey(batches[i].agent_id, static_cast<int64_t>(batches[i].seq));
      auto ledger = ledger_digests_.find(key);
      if (ledger == ledger_digests_.end() || ledger->second == digests[i]) continue;
      if (seen.insert(key + '\0' + digests[i]).second) reused.push_back(i);
    }
    return Status::ok();
  }

  // One `buffer_damaged` audit row per buffer row the batch reports damaged.
  Status auditDamaged(const protocol::WireBatch& b, const std::string& aggregator,
                      const std::string& stored_at) {
    if (b.damaged.empty()) return Status::ok();
    const std::string seq = std::to_string(b.seq);
    for (const protocol::WireDamaged& d : b.damaged) {
      const std::string detail = bufferDamagedDetail(d);
      const char* values[] = {stored_at.c_str(),  aggregator.c_str(), kBufferDamagedAction,
                              b.agent_id.c_str(), seq.c_str(),        detail.c_str()};
      PgResult audit(PQexecPrepared(conn.get(), "bl_audit", 6, values, nullptr, nullptr, 0));
      if (!audit || PQresultStatus(audit.get()) != PGRES_COMMAND_OK) {
        return failure(audit.get(), "insert buffer_damaged audit row");
      }
    }
    return Status::ok();
  }

  // Stores a reused sequence's batch unless this content was stored before,
  // records it in batch_conflicts and audits it, all in the open transaction.
  Status storeReused(const protocol::WireBatch& b, const std::string& digest,
                     const std::string& aggregator, const std::string& stored_at, BatchOutcome& o) {
    const std::string seq = std::to_string(b.seq);
    const std::string created = formatRfc3339Micros(b.created_at_us);
    const std::string nrec = std::to_string(b.records.size());
    const std::string nrej = std::to_string(b.rejects.size());
    const char* values[] = {b.agent_id.c_str(), seq.c_str(),        digest.c_str(), created.c_str(),
                            stored_at.c_str(),  aggregator.c_str(), nrec.c_str(),   nrej.c_str()};
    PgResult conflict(PQexecPrepared(conn.get(), "bl_conflict", 8, values, nullptr, nullptr, 0));
    if (!conflict || PQresultStatus(conflict.get()) != PGRES_TUPLES_OK) {
      return failure(conflict.get(), "insert batch_conflicts row");
    }
    if (PQntuples(conflict.get()) == 0) return Status::ok();  // stored by an earlier delivery

    resetContents();
    addContents(b);
    uint32_t stored = 0;
    if (r_source.count() > 0) {
      PgResult recs =
          run("bl_conflict_records", {&r_source, &r_key, &r_agent, &r_seq, &r_payload, &r_ingested},
              {{6, &stored_at}});
      if (!recs || PQresultStatus(recs.get()) != PGRES_TUPLES_OK || PQntuples(recs.get()) != 1) {
        return failure(recs.get(), "insert records of a reused batch sequence");
      }
      stored = static_cast<uint32_t>(parseInt(PQgetvalue(recs.get(), 0, 0)));
    }
    BL_RETURN_IF_ERROR(insertRejects(stored_at));
    BL_RETURN_IF_ERROR(auditDamaged(b, aggregator, stored_at));
    const std::string stored_text = std::to_string(stored);
    const char* count_values[] = {stored_text.c_str(), b.agent_id.c_str(), seq.c_str(),
                                  digest.c_str()};
    PgResult count(
        PQexecPrepared(conn.get(), "bl_conflict_count", 4, count_values, nullptr, nullptr, 0));
    if (!count || PQresultStatus(count.get()) != PGRES_COMMAND_OK) {
      return failure(count.get(), "update batch_conflicts row");
    }
    o.duplicate = false;
    o.seq_reused = true;
    o.stored_records = stored;
    o.duplicate_records = o.records - stored;
    o.rejects = static_cast<uint32_t>(b.rejects.size());

    const std::string detail = seqReusedDetail(
        b.seq, ledger_digests_.at(batchKey(b.agent_id, static_cast<int64_t>(b.seq))), digest,
        o.stored_records, o.duplicate_records, o.rejects);
    const char* audit_values[] = {stored_at.c_str(),  aggregator.c_str(), "batch_seq_reused",
                                  b.agent_id.c_str(), seq.c_str(),        detail.c_str()};
    PgResult audit(PQexecPrepared(conn.get(), "bl_audit", 6, audit_values, nullptr, nullptr, 0));
    if (!audit || PQresultStatus(audit.get()) != PGRES_COMMAND_OK) {
      return failure(audit.get(), "insert batch_seq_reused audit row");
    }
    return Status::ok();
  }

  // Runs `attempt` in a fresh transaction, retrying deadlock and
  // serialization failures with jittered backoff within max_conflict_wait.
  template <typename Attempt>
  Status transaction(Attempt&& attempt) {
    BL_RETURN_IF_ERROR(ensureConnected().withContext(context()));
    const int64_t deadline =
        steadyMicros() +
        std::chrono::duration_cast<std::chrono::microseconds>(options.max_conflict_wait).count();
    int64_t backoff_us = 1000;
    for (int tries = 1;; ++tries) {
      last_sqlstate.clear();
      Status s = attempt();
      if (s) return s;
      rollback();
      const bool conflict = conn && isConflict(last_sqlstate);
      if (!conflict) return s.withContext(context());
      if (steadyMicros() + backoff_us > deadline) {
        return s.withContext(context() + ": still conflicting after " + std::to_string(tries) +
                             " attempts");
      }
      std::uniform_int_distribution<int64_t> spread(backoff_us / 2, backoff_us);
      std::this_thread::sleep_for(std::chrono::microseconds(spread(jitter)));
      backoff_us = std::min<int64_t>(backoff_us * 2, 100000);
    }
  }
};

PostgresCentralStore::PostgresCentralStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PostgresCentralStore::~PostgresCentralStore() = default;

Result<std::unique_ptr<PostgresCentralStore>> PostgresCentralStore::open(
    PostgresStoreOptions options) {
  BL_RETURN_IF_ERROR(checkPostgresUrl(options.url));
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->shown_url = redactPostgresUrl(impl->options.url);
  BL_RETURN_IF_ERROR(impl->ensureConnected().withContext(impl->context()));
  return std::unique_ptr<PostgresCentralStore>(new PostgresCentralStore(std::move(impl)));
}

Result<std::vector<BatchOutcome>> PostgresCentralStore::commit(
    const std::vector<protocol::WireBatch>& batches, const std::string& aggregator) {
  std::vector<BatchOutcome> outcomes;
  if (batches.empty()) return outcomes;
  // Outside the lock and the transaction: hashing is the costly part.
  std::vector<std::string> digests;
  digests.reserve(batches.size());
  for (const auto& b : batches) digests.push_back(protocol::batchDigest(b));
  std::lock_guard lock(impl_->mutex);
  Status s =
      impl_->transaction([&] { return impl_->commitOnce(batches, digests, aggregator, outcomes); });
  if (!s) {
    return s.withContext("committing " + std::to_string(batches.size()) +
                         " batches (first: agent `" + batches.front().agent_id + "` batch " +
                         std::to_string(batches.front().seq) + ")");
  }
  return outcomes;
}

Status PostgresCentralStore::audit(const AuditEntry& entry) {
  std::lock_guard lock(impl_->mutex);
  const std::string at = formatRfc3339Micros(entry.at_us ? entry.at_us : nowMicros());
  const std::string seq = entry.batch_seq ? std::to_string(*entry.batch_seq) : std::string();
  Status s = impl_->transaction([&]() -> Status {
    const char* values[] = {at.c_str(),
                            entry.actor.c_str(),
                            entry.action.c_str(),
                            entry.agent_id.c_str(),
                            entry.batch_seq ? seq.c_str() : nullptr,
                            entry.detail.c_str()};
    // One statement outside BEGIN is its own durable transaction.
    PgResult res(PQexecPrepared(impl_->conn.get(), "bl_audit", 6, values, nullptr, nullptr, 0));
    if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
      return impl_->failure(res.get(), "insert audit row");
    }
    return Status::ok();
  });
  if (!s) return s.withContext("audit `" + entry.action + "` for agent `" + entry.agent_id + "`");
  return Status::ok();
}

Status PostgresCentralStore::health() {
  std::lock_guard lock(impl_->mutex);
  BL_RETURN_IF_ERROR(impl_->ensureConnected().withContext(impl_->context()));
  PgResult res(PQexecPrepared(impl_->conn.get(), "bl_health", 0, nullptr, nullptr, nullptr, 0));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    Status s = impl_->failure(res.get(), "health probe");
    // Whatever the server said, a store that cannot answer SELECT 1 is away.
    return Status::unavailable(s.message()).withContext(impl_->context());
  }
  return Status::ok();
}

}  // namespace branchline::aggregator
