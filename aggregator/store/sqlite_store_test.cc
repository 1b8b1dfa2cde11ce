#include "aggregator/store/sqlite_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shared/core/clock.h"
#include "shared/core/testing/sqlite_fault_vfs.h"

namespace branchline::aggregator {
namespace {

namespace fs = std::filesystem;
using protocol::WireBatch;
using protocol::WireRecord;
using protocol::WireReject;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/bl_store_test_XXXXXX";
    char* made = mkdtemp(tmpl.data());
    EXPECT_NE(made, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// A read-only view of the file, as a user querying the central store has.
class Query {
 public:
  explicit Query(const fs::path& path) {
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  }
  ~Query() { sqlite3_close_v2(db_); }
  std::vector<std::vector<std::string>> rows(const std::string& sql) {
    std::vector<std::vector<std::string>> out;
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sql;
    while (sqlite3_step(st) == SQLITE_ROW) {
      std::vector<std::string> row;
      for (int i = 0; i < sqlite3_column_count(st); ++i) {
        const unsigned char* t = sqlite3_column_text(st, i);
        row.emplace_back(t ? reinterpret_cast<const char*>(t) : "<null>");
      }
      out.push_back(std::move(row));
    }
    sqlite3_finalize(st);
    return out;
  }
  int64_t count(const std::string& sql) { return std::stoll(rows(sql).at(0).at(0)); }

 private:
  sqlite3* db_ = nullptr;
};

WireBatch makeBatch(const std::string& agent, uint64_t seq, size_t records,
                    const std::string& key_prefix, size_t rejects = 0) {
  WireBatch b;
  b.agent_id = agent;
  b.seq = seq;
  b.created_at_us = 1'790'000'000'000'000 + static_cast<int64_t>(seq);
  for (size_t i = 0; i < records; ++i) {
    std::string key = key_prefix + std::to_string(i);
    b.records.push_back({"customer", key, 1'790'000'000'123'456 + static_cast<int64_t>(i),
                         "{\"external_id\":\"" + key + "\",\"name\":\"Ada\"}"});
  }
  for (size_t i = 0; i < rejects; ++i) {
    b.rejects.push_back({"customer", "{\"email\":\"nope\"}",
                         "[{\"field\":\"email\",\"reason\":\"not an email address\"}]",
                         1'790'000'000'000'001});
  }
  return b;
}

std::unique_ptr<SqliteCentralStore> openStore(const fs::path& path) {
  SqliteStoreOptions options;
  options.path = path;
  auto store = SqliteCentralStore::open(options);
  EXPECT_TRUE(store.isOk()) << store.status().toString();
  return store ? std::move(store.value()) : nullptr;
}

TEST(SqliteUrl, ParsesAbsoluteSqlitePathsOnly) {
  auto ok = parseSqliteUrl("sqlite:///var/lib/branchline/central.db");
  ASSERT_TRUE(ok.isOk());
  EXPECT_EQ(ok->string(), "/var/lib/branchline/central.db");

  for (const char* bad : {"postgres://db/central", "sqlite://relative.db", "sqlite:///",
                          "/abs/path.db", "sqlite:///a.db?mode=ro", ""}) {
    auto r = parseSqliteUrl(bad);
    ASSERT_FALSE(r.isOk()) << bad;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("sqlite:///"), std::string::npos) << r.status().message();
  }
  auto store = openCentralStore("mysql://localhost/central");
  ASSERT_FALSE(store.isOk());
  EXPECT_EQ(store.status().code(), Code::kInvalidArgument);
  EXPECT_NE(store.status().message().find("unsupported scheme"), std::string::npos);
}

TEST(SqliteCentralStore, SchemaColumnsAreAsDocumented) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  Query q(dir.path() / "central.db");
  auto columns = [&q](const std::string& table) {
    std::vector<std::pair<std::string, std::string>> out;
    for (auto& row : q.rows("PRAGMA table_info(" + table + ")")) out.emplace_back(row[1], row[2]);
    return out;
  };
  using Cols = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(columns("records"), (Cols{{"id", "INTEGER"},
                                      {"source", "TEXT"},
                                      {"record_key", "TEXT"},
                                      {"agent_id", "TEXT"},
                                      {"batch_seq", "INTEGER"},
                                      {"payload", "TEXT"},
                                      {"ingested_at", "TEXT"},
                                      {"stored_at", "TEXT"}}));
  EXPECT_EQ(columns("rejects"), (Cols{{"id", "INTEGER"},
                                      {"agent_id", "TEXT"},
                                      {"batch_seq", "INTEGER"},
                                      {"source", "TEXT"},
                                      {"raw", "TEXT"},
                                      {"reasons", "TEXT"},
                                      {"ingested_at", "TEXT"},
                                      {"stored_at", "TEXT"}}));
  EXPECT_EQ(columns("batch_ledger"), (Cols{{"agent_id", "TEXT"},
                                           {"batch_seq", "INTEGER"},
                                           {"created_at", "TEXT"},
                                           {"stored_at", "TEXT"},
                                           {"aggregator", "TEXT"},
                                           {"records", "INTEGER"},
                                           {"stored_records", "INTEGER"},
                                           {"rejects", "INTEGER"},
                                           {"digest", "TEXT"}}));
  EXPECT_EQ(columns("batch_conflicts"), (Cols{{"agent_id", "TEXT"},
                                              {"batch_seq", "INTEGER"},
                                              {"digest", "TEXT"},
                                              {"created_at", "TEXT"},
                                              {"stored_at", "TEXT"},
                                              {"aggregator", "TEXT"},
                                              {"records", "INTEGER"},
                                              {"stored_records", "INTEGER"},
                                              {"rejects", "INTEGER"}}));
  EXPECT_EQ(columns("audit"), (Cols{{"id", "INTEGER"},
                                    {"at", "TEXT"},
                                    {"actor", "TEXT"},
                                    {"action", "TEXT"},
                                    {"agent_id", "TEXT"},
                                    {"batch_seq", "INTEGER"},
                                    {"detail", "TEXT"}}));
  // Primary keys as documented: records.id, and (agent_id, batch_seq) for the ledger.
  EXPECT_EQ(q.rows("PRAGMA table_info(records)")[0][5], "1");
  auto ledger = q.rows("PRAGMA table_info(batch_ledger)");
  EXPECT_EQ(ledger[0][5], "1");
  EXPECT_EQ(ledger[1][5], "2");
  EXPECT_EQ(q.count("PRAGMA user_version"), SqliteCentralStore::kSchemaVersion);
  EXPECT_EQ(q.rows("PRAGMA journal_mode")[0][0], "wal");
  EXPECT_TRUE(store->health().isOk());
}

TEST(SqliteCentralStore, StoresBatchWithDocumentedTimesAndCounts) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  WireBatch batch = makeBatch("office-1", 7, 3, "k", 2);
  int64_t before = nowMicros();
  auto outcome = store->commit({batch}, "agg-a");
  ASSERT_TRUE(outcome.isOk()) << outcome.status().toString();
  ASSERT_EQ(outcome->size(), 1u);
  const BatchOutcome& o = outcome->front();
  EXPECT_FALSE(o.duplicate);
  EXPECT_EQ(o.agent_id, "office-1");
  EXPECT_EQ(o.batch_seq, 7u);
  EXPECT_EQ(o.records, 3u);
  EXPECT_EQ(o.stored_records, 3u);
  EXPECT_EQ(o.duplicate_records, 0u);
  EXPECT_EQ(o.rejects, 2u);

  Query q(dir.path() / "central.db");
  auto recs = q.rows(
      "SELECT source, record_key, agent_id, batch_seq, payload, ingested_at, stored_at "
      "FROM records ORDER BY id");
  ASSERT_EQ(recs.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(recs[i][0], "customer");
    EXPECT_EQ(recs[i][1], batch.records[i].key);
    EXPECT_EQ(recs[i][2], "office-1");
    EXPECT_EQ(recs[i][3], "7");
    EXPECT_EQ(recs[i][4], batch.records[i].payload);
    EXPECT_EQ(recs[i][5], formatRfc3339Micros(batch.records[i].ingested_at_us));
    auto stored = parseRfc3339Micros(recs[i][6]);
    ASSERT_TRUE(stored.has_value()) << recs[i][6];
    EXPECT_GE(*stored, before);
    EXPECT_EQ(recs[i][6].size(), 27u);  // microseconds, UTC "Z"
  }
  auto ledger = q.rows(
      "SELECT agent_id, batch_seq, created_at, aggregator, records, stored_records, rejects "
      "FROM batch_ledger");
  ASSERT_EQ(ledger.size(), 1u);
  EXPECT_EQ(ledger[0],
            (std::vector<std::string>{"office-1", "7", formatRfc3339Micros(batch.created_at_us),
                                      "agg-a", "3", "3", "2"}));
}

TEST(SqliteCentralStore, RecommitOfSameBatchIsDuplicateAndAddsNothing) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  WireBatch batch = makeBatch("office-1", 1, 50, "r", 1);
  ASSERT_TRUE(store->commit({batch}, "agg-a").isOk());
  auto again = store->commit({batch}, "agg-b");
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_TRUE(again->front().duplicate);
  EXPECT_EQ(again->front().stored_records, 0u);

  // The same batch twice within one transaction is also stored once.
  WireBatch second = makeBatch("office-1", 2, 5, "s");
  auto twice = store->commit({second, second}, "agg-a");
  ASSERT_TRUE(twice.isOk());
  EXPECT_FALSE((*twice)[0].duplicate);
  EXPECT_TRUE((*twice)[1].duplicate);

  Query q(dir.path() / "central.db");
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 55);
  EXPECT_EQ(q.count("SELECT count(*) FROM rejects"), 1);
  EXPECT_EQ(q.count("SELECT count(*) FROM batch_ledger"), 2);
  // The ledger keeps the first committer.
  EXPECT_EQ(q.rows("SELECT aggregator FROM batch_ledger WHERE batch_seq = 1")[0][0], "agg-a");
}

TEST(SqliteCentralStore, SameRecordKeyFromTwoAgentsIsStoredOnce) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  WireBatch a = makeBatch("office-1", 1, 10, "shared-");
  WireBatch b = makeBatch("office-2", 1, 10, "shared-");
  b.records.push_back({"customer", "only-b", 1, "{}"});
  b.records.push_back({"partner", "shared-0", 1, "{}"});  // another source: not a duplicate
  auto out = store->commit({a}, "agg-a");
  ASSERT_TRUE(out.isOk());
  auto out2 = store->commit({b}, "agg-b");
  ASSERT_TRUE(out2.isOk());
  EXPECT_FALSE(out2->front().duplicate);  // a different batch (another agent)
  EXPECT_EQ(out2->front().records, 12u);
  EXPECT_EQ(out2->front().stored_records, 2u);
  EXPECT_EQ(out2->front().duplicate_records, 10u);

  Query q(dir.path() / "central.db");
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 12);
  EXPECT_EQ(q.count("SELECT count(*) FROM records WHERE record_key = 'shared-3' AND "
                    "agent_id = 'office-1'"),
            1);
  EXPECT_EQ(q.rows("SELECT stored_records FROM batch_ledger WHERE agent_id = 'office-2'")[0][0],
            "2");
}

TEST(SqliteCentralStore, RejectsAreStoredWithReasons) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  WireBatch batch = makeBatch("office-3", 4, 0, "x", 0);
  batch.rejects.push_back({"customer", "{\"name\":\"\"}",
                           "[{\"field\":\"name\",\"reason\":\"required\"}]",
                           1'790'000'000'000'000});
  batch.rejects.push_back({"customer", "not json at all",
                           "[{\"field\":\"\",\"reason\":\"broken JSON\"}]", 1'790'000'000'000'000});
  ASSERT_TRUE(store->commit({batch}, "agg-a").isOk());
  Query q(dir.path() / "central.db");
  auto rows = q.rows(
      "SELECT agent_id, batch_seq, source, raw, reasons, ingested_at FROM rejects "
      "ORDER BY id");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"office-3", "4", "customer", "{\"name\":\"\"}",
                                               "[{\"field\":\"name\",\"reason\":\"required\"}]",
                                               "2026-09-21T14:13:20.000000Z"}));
  EXPECT_EQ(rows[1][3], "not json at all");
  EXPECT_EQ(rows[1][4], "[{\"field\":\"\",\"reason\":\"broken JSON\"}]");
}

TEST(SqliteCentralStore, AuditRowsAreWritten) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  ASSERT_TRUE(
      store->audit({"agg-a", "batch_refused", "office-9", 12, "body inflates past 1024"}).isOk());
  ASSERT_TRUE(store->audit({"agg-a", "batch_refused", "office-9", std::nullopt, "garbage"}).isOk());
  Query q(dir.path() / "central.db");
  auto rows =
      q.rows("SELECT actor, action, agent_id, batch_seq, detail, at FROM audit ORDER BY id");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0][0], "agg-a");
  EXPECT_EQ(rows[0][1], "batch_refused");
  EXPECT_EQ(rows[0][2], "office-9");
  EXPECT_EQ(rows[0][3], "12");
  EXPECT_EQ(rows[0][4], "body inflates past 1024");
  EXPECT_TRUE(parseRfc3339Micros(rows[0][5]).has_value());
  EXPECT_EQ(rows[1][3], "<null>");
}

// A batch that reports damaged agent buffer rows stores its records and one
// `buffer_damaged` audit row per damaged row, in the same transaction; its
// redelivery audits nothing more.
TEST(SqliteCentralStore, DamageReportsAreAuditedOnceWithTheirBatch) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  WireBatch b = makeBatch("office-3", 11, 2, "d");
  b.damaged.push_back({"records", 42, "customer", 1'790'000'000'123'456,
                       "records.payload of row 42: failed authentication"});
  b.damaged.push_back({"quarantine", 7, "customer", 1'790'000'000'000'001,
                       "quarantine.raw of row 7: failed authentication"});
  auto first = store->commit({b}, "agg-a");
  ASSERT_TRUE(first.isOk()) << first.status().toString();
  EXPECT_EQ(first->front().stored_records, 2u);
  auto again = store->commit({b}, "agg-b");
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_TRUE(again->front().duplicate);

  Query q(dir.path() / "central.db");
  EXPECT_EQ(q.count("SELECT count(*) FROM records WHERE agent_id = 'office-3'"), 2);
  auto audit = q.rows("SELECT actor, action, agent_id, batch_seq, detail FROM audit ORDER BY id");
  ASSERT_EQ(audit.size(), 2u);
  EXPECT_EQ(audit[0][0], "agg-a");
  EXPECT_EQ(audit[0][1], "buffer_damaged");
  EXPECT_EQ(audit[0][2], "office-3");
  EXPECT_EQ(audit[0][3], "11");
  EXPECT_NE(audit[0][4].find("records#42"), std::string::npos) << audit[0][4];
  EXPECT_NE(audit[0][4].find("records.payload of row 42: failed authentication"), std::string::npos)
      << audit[0][4];
  EXPECT_NE(audit[1][4].find("quarantine#7"), std::string::npos) << audit[1][4];
}

// Issue 15 part 3: EIO on a write or an fsync, or a full disk, while the
// central store commits: the commit fails (so the aggregator acks nothing and
// the agent keeps the batch), nothing of it is visible, and the same batch
// commits once the disk is back, without a restart.
TEST(SqliteCentralStore, FailedWritesFsyncsAndAFullDiskCommitNothingAndTheStoreRecovers) {
  using branchline::testing::SqliteFaultVfs;
  TempDir dir;
  const fs::path db = dir.path() / "central.db";
  SqliteFaultVfs vfs;
  auto store = openStore(db);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->commit({makeBatch("office-1", 1, 5, "a")}, "agg-a").isOk());
  const SqliteFaultVfs::Fault faults[] = {SqliteFaultVfs::Fault::kSyncEio,
                                          SqliteFaultVfs::Fault::kWriteEio,
                                          SqliteFaultVfs::Fault::kWriteFull};
  uint64_t seq = 2;
  for (SqliteFaultVfs::Fault fault : faults) {
    SCOPED_TRACE("fault " + std::to_string(static_cast<int>(fault)));
    const WireBatch batch = makeBatch("office-1", seq, 5, "k" + std::to_string(seq) + "-");
    vfs.arm(fault, "central.db", -1);
    auto failed = store->commit({batch}, "agg-a");
    vfs.disarm();
    ASSERT_FALSE(failed.isOk()) << "committed through a failing disk";
    EXPECT_EQ(failed.status().code(), Code::kUnavailable) << failed.status().toString();
    {
      Query q(db);
      EXPECT_EQ(
          q.count("SELECT count(*) FROM batch_ledger WHERE batch_seq = " + std::to_string(seq)), 0);
    }
    auto retried = store->commit({batch}, "agg-a");
    ASSERT_TRUE(retried.isOk()) << retried.status().toString();
    EXPECT_FALSE(retried->front().duplicate);
    EXPECT_EQ(retried->front().stored_records, 5u);
    ++seq;
  }
  EXPECT_GE(vfs.failures(), 3u);
  store.reset();
  Query q(db);
  EXPECT_EQ(q.rows("PRAGMA integrity_check").at(0).at(0), "ok");
  EXPECT_EQ(q.count("SELECT count(*) FROM batch_ledger"), 4);
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 20);
}

TEST(SqliteCentralStore, ReopenKeepsDataAndSchema) {
  TempDir dir;
  {
    auto store = openStore(dir.path() / "central.db");
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->commit({makeBatch("office-1", 1, 4, "a")}, "agg-a").isOk());
  }
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  auto again = store->commit({makeBatch("office-1", 1, 4, "a")}, "agg-a");
  ASSERT_TRUE(again.isOk());
  EXPECT_TRUE(again->front().duplicate);
  Query q(dir.path() / "central.db");
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 4);
  EXPECT_EQ(q.count("SELECT count(*) FROM schema_version"), 1);
}

mode_t modeOf(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

// README "Private files": customer data is readable by the service user only,
// whatever the umask; files an older version left wider are narrowed.
TEST(SqliteCentralStore, StoreWalAndShmAreCreatedPrivateAndWiderOnesNarrowed) {
  TempDir dir;
  const fs::path db = dir.path() / "central.db";
  const mode_t old_umask = ::umask(0);  // the most permissive a service could run with
  {
    auto store = openStore(db);
    ::umask(old_umask);
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->commit({makeBatch("office-1", 1, 4, "a", 1)}, "agg-a").isOk());
    for (const char* suffix : {"", "-wal", "-shm"}) {
      const fs::path f = db.string() + suffix;
      ASSERT_TRUE(fs::exists(f)) << f;
      EXPECT_EQ(modeOf(f), 0600u) << f;
    }
  }
  ::umask(old_umask);
  ASSERT_EQ(::chmod(db.c_str(), 0644), 0);
  auto store = openStore(db);
  ASSERT_TRUE(store);
  for (const char* suffix : {"", "-wal", "-shm"}) {
    const fs::path f = db.string() + suffix;
    if (fs::exists(f)) {
      EXPECT_EQ(modeOf(f), 0600u) << f;
    }
  }
  Query q(db);
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 4);
}

// An agent restored from an old disk image sends batch seqs it already used,
// with other records: they are stored (nothing lost), recorded in
// batch_conflicts and audited; redeliveries of either content are duplicates.
TEST(SqliteCentralStore, ReusedBatchSeqWithOtherContentIsStoredRecordedAndAudited) {
  TempDir dir;
  auto store = openStore(dir.path() / "central.db");
  ASSERT_TRUE(store);
  const WireBatch original = makeBatch("office-1", 7, 4, "a");
  WireBatch reused = makeBatch("office-1", 7, 3, "b", 1);
  reused.records.push_back(original.records[0]);  // one record both contents carry
  auto first = store->commit({original}, "agg-a");
  ASSERT_TRUE(first.isOk()) << first.status().toString();
  EXPECT_FALSE(first->front().seq_reused);
  EXPECT_EQ(first->front().digest.size(), 64u);

  auto second = store->commit({reused}, "agg-b");
  ASSERT_TRUE(second.isOk()) << second.status().toString();
  const BatchOutcome& o = second->front();
  EXPECT_FALSE(o.duplicate);
  EXPECT_TRUE(o.seq_reused);
  EXPECT_NE(o.digest, first->front().digest);
  EXPECT_EQ(o.records, 4u);
  EXPECT_EQ(o.stored_records, 3u);
  EXPECT_EQ(o.duplicate_records, 1u);
  EXPECT_EQ(o.rejects, 1u);

  Query q(dir.path() / "central.db");
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 7);
  EXPECT_EQ(q.count("SELECT count(*) FROM records WHERE record_key LIKE 'b%' AND batch_seq = 7"),
            3);
  EXPECT_EQ(q.count("SELECT count(*) FROM rejects WHERE agent_id = 'office-1' AND batch_seq = 7"),
            1);
  // The ledger keeps the first content; the reuse has its own row.
  EXPECT_EQ(q.rows("SELECT digest, aggregator, stored_records FROM batch_ledger"),
            (std::vector<std::vector<std::string>>{{first->front().digest, "agg-a", "4"}}));
  EXPECT_EQ(
      q.rows("SELECT agent_id, batch_seq, digest, aggregator, records, stored_records, "
             "rejects FROM batch_conflicts"),
      (std::vector<std::vector<std::string>>{{"office-1", "7", o.digest, "agg-b", "4", "3", "1"}}));
  auto audit = q.rows("SELECT actor, action, agent_id, batch_seq, detail FROM audit");
  ASSERT_EQ(audit.size(), 1u);
  EXPECT_EQ(audit[0][0], "agg-b");
  EXPECT_EQ(audit[0][1], "batch_seq_reused");
  EXPECT_EQ(audit[0][2], "office-1");
  EXPECT_EQ(audit[0][3], "7");
  EXPECT_NE(audit[0][4].find("stored 3 new records (1 already stored) and 1 rejects"),
            std::string::npos)
      << audit[0][4];
  EXPECT_NE(audit[0][4].find(first->front().digest.substr(0, 16)), std::string::npos);
  EXPECT_EQ(audit[0][4].find("external_id"), std::string::npos);  // never record contents

  // Redeliveries of either content change nothing and audit nothing more.
  auto again = store->commit({reused, original}, "agg-a");
  ASSERT_TRUE(again.isOk());
  for (const auto& r : *again) {
    EXPECT_TRUE(r.duplicate);
    EXPECT_FALSE(r.seq_reused);
    EXPECT_EQ(r.stored_records, 0u);
  }
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 7);
  EXPECT_EQ(q.count("SELECT count(*) FROM rejects"), 1);
  EXPECT_EQ(q.count("SELECT count(*) FROM audit"), 1);

  // Both contents of one new seq in the same commit: the first is the ledger's.
  auto both = store->commit({makeBatch("office-2", 1, 2, "c"), makeBatch("office-2", 1, 2, "d"),
                             makeBatch("office-2", 1, 2, "d")},
                            "agg-a");
  ASSERT_TRUE(both.isOk()) << both.status().toString();
  EXPECT_FALSE((*both)[0].duplicate);
  EXPECT_FALSE((*both)[0].seq_reused);
  EXPECT_TRUE((*both)[1].seq_reused);
  EXPECT_EQ((*both)[1].stored_records, 2u);
  EXPECT_TRUE((*both)[2].duplicate);
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 11);
  EXPECT_EQ(q.count("SELECT count(*) FROM audit WHERE action = 'batch_seq_reused'"), 2);
}

// A store written by the previous version (1: no digests) is upgraded in place
// on open; its ledger rows keep working as the duplicates they are.
TEST(SqliteCentralStore, UpgradesAVersion1FileInPlace) {
  TempDir dir;
  const fs::path path = dir.path() / "central.db";
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const char* v1 = R"sql(
      PRAGMA journal_mode=WAL;
      CREATE TABLE records (id INTEGER PRIMARY KEY, source TEXT NOT NULL, record_key TEXT NOT NULL,
        agent_id TEXT NOT NULL, batch_seq INTEGER NOT NULL, payload TEXT NOT NULL,
        ingested_at TEXT NOT NULL, stored_at TEXT NOT NULL, UNIQUE (source, record_key));
      CREATE TABLE rejects (id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL,
        batch_seq INTEGER NOT NULL, source TEXT NOT NULL, raw TEXT NOT NULL,
        reasons TEXT NOT NULL, ingested_at TEXT NOT NULL, stored_at TEXT NOT NULL);
      CREATE TABLE batch_ledger (agent_id TEXT NOT NULL, batch_seq INTEGER NOT NULL,
        created_at TEXT NOT NULL, stored_at TEXT NOT NULL, aggregator TEXT NOT NULL,
        records INTEGER NOT NULL, stored_records INTEGER NOT NULL, rejects INTEGER NOT NULL,
        PRIMARY KEY (agent_id, batch_seq));
      CREATE TABLE audit (id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
        action TEXT NOT NULL, agent_id TEXT NOT NULL, batch_seq INTEGER, detail TEXT NOT NULL);
      CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL);
      INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00.000000Z');
      INSERT INTO batch_ledger VALUES ('office-1', 1, '2026-01-01T00:00:00.000000Z',
        '2026-01-01T00:00:00.000000Z', 'agg-old', 1, 1, 0);
      INSERT INTO records(source, record_key, agent_id, batch_seq, payload, ingested_at,
        stored_at) VALUES ('customer', 'old-0', 'office-1', 1, '{}',
        '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
      PRAGMA user_version = 1;
    )sql";
    ASSERT_EQ(sqlite3_exec(db, v1, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close_v2(db);
  }
  auto store = openStore(path);
  ASSERT_TRUE(store);
  Query q(path);
  EXPECT_EQ(q.count("PRAGMA user_version"), 2);
  EXPECT_EQ(q.rows("SELECT version FROM schema_version ORDER BY rowid"),
            (std::vector<std::vector<std::string>>{{"1"}, {"2"}}));
  EXPECT_EQ(q.rows("SELECT aggregator, digest FROM batch_ledger"),
            (std::vector<std::vector<std::string>>{{"agg-old", "<null>"}}));
  EXPECT_EQ(q.count("SELECT count(*) FROM batch_conflicts"), 0);
  // A ledger row without a digest cannot tell content apart: a duplicate, as before.
  auto old = store->commit({makeBatch("office-1", 1, 3, "other")}, "agg-a");
  ASSERT_TRUE(old.isOk()) << old.status().toString();
  EXPECT_TRUE(old->front().duplicate);
  auto fresh = store->commit({makeBatch("office-1", 2, 3, "new")}, "agg-a");
  ASSERT_TRUE(fresh.isOk()) << fresh.status().toString();
  EXPECT_FALSE(fresh->front().duplicate);
  EXPECT_EQ(q.count("SELECT count(*) FROM records"), 4);
  EXPECT_EQ(q.count("SELECT count(*) FROM batch_ledger WHERE digest IS NOT NULL"), 1);
  // Reopening does not migrate again.
  store.reset();
  store = openStore(path);
  ASSERT_TRUE(store);
  EXPECT_EQ(q.count("SELECT count(*) FROM schema_version"), 2);
}

TEST(SqliteCentralStore, RefusesAFileThatIsNotADatabase) {
  TempDir dir;
  fs::path path = dir.path() / "central.db";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("this is not a SQLite database, it is a text file of some length........", f);
  std::fclose(f);
  SqliteStoreOptions options;
  options.path = path;
  auto store = SqliteCentralStore::open(options);
  ASSERT_FALSE(store.isOk());
  EXPECT_EQ(store.status().code(), Code::kDataLoss) << store.status().toString();
  EXPECT_NE(store.status().message().find(path.string()), std::string::npos);
}

// Two aggregators sharing the file, each delivering every batch (as happens
// when an agent resends to the other member of the pair): nothing is lost,
// nothing doubled, and every batch is "stored" by exactly one of them.
TEST(SqliteCentralStore, TwoStoresOnOneFileCommitConcurrentlyWithoutLossOrDoubling) {
  TempDir dir;
  fs::path path = dir.path() / "central.db";
  auto first = openStore(path);
  auto second = openStore(path);
  ASSERT_TRUE(first && second);
  constexpr int kAgents = 4, kBatchesPerAgent = 40, kRecords = 50;
  std::vector<WireBatch> all;
  for (int a = 0; a < kAgents; ++a) {
    for (int s = 1; s <= kBatchesPerAgent; ++s) {
      // Keys overlap across agents: agent a's batch s shares keys with agent a+1's.
      all.push_back(makeBatch("office-" + std::to_string(a), static_cast<uint64_t>(s), kRecords,
                              "k" + std::to_string((a / 2) * 1000 + s) + "-"));
    }
  }
  struct Totals {
    uint64_t stored_batches = 0, duplicate_batches = 0, stored_records = 0;
    std::string error;
  };
  auto run = [&all](SqliteCentralStore* store, std::string name, bool reverse, Totals* t) {
    std::vector<WireBatch> order = all;
    if (reverse) std::reverse(order.begin(), order.end());
    for (size_t i = 0; i < order.size(); i += 4) {
      std::vector<WireBatch> group(
          order.begin() + static_cast<long>(i),
          order.begin() + static_cast<long>(std::min(i + 4, order.size())));
      auto out = store->commit(group, name);
      if (!out) {
        t->error = out.status().toString();
        return;
      }
      for (const BatchOutcome& o : *out) {
        (o.duplicate ? t->duplicate_batches : t->stored_batches)++;
        t->stored_records += o.stored_records;
      }
    }
  };
  Totals ta, tb;
  std::thread ta_thread(run, first.get(), "agg-a", false, &ta);
  std::thread tb_thread(run, second.get(), "agg-b", true, &tb);
  ta_thread.join();
  tb_thread.join();
  ASSERT_EQ(ta.error, "");
  ASSERT_EQ(tb.error, "");

  const uint64_t batches = kAgents * kBatchesPerAgent;
  const uint64_t unique_records = (kAgents / 2) * kBatchesPerAgent * kRecords;
  EXPECT_EQ(ta.stored_batches + tb.stored_batches, batches);
  EXPECT_EQ(ta.duplicate_batches + tb.duplicate_batches, batches);
  EXPECT_EQ(ta.stored_records + tb.stored_records, unique_records);

  Query q(path);
  EXPECT_EQ(static_cast<uint64_t>(q.count("SELECT count(*) FROM batch_ledger")), batches);
  EXPECT_EQ(static_cast<uint64_t>(q.count("SELECT count(*) FROM records")), unique_records);
  EXPECT_EQ(static_cast<uint64_t>(q.count("SELECT sum(stored_records) FROM batch_ledger")),
            unique_records);
  EXPECT_EQ(q.count("SELECT count(*) FROM (SELECT source, record_key FROM records "
                    "GROUP BY 1, 2 HAVING count(*) > 1)"),
            0);
}

}  // namespace
}  // namespace branchline::aggregator
