// The PostgreSQL central store against a real PostgreSQL 15 started by the
// test (one server for the suite, one fresh database per test).
#include "aggregator/store/postgres_store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "aggregator/store/sqlite_store.h"
#include "aggregator/store/testing/postgres_server.h"
#include "shared/core/clock.h"

namespace branchline::aggregator {
namespace {

namespace fs = std::filesystem;
using protocol::WireBatch;
using protocol::WireRecord;
using protocol::WireReject;
using Rows = std::vector<std::vector<std::string>>;

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

class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = "/tmp/bl_pgstore_test_XXXXXX";
    EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
    path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The digest the SQLite store computes for `batch`.
std::string liteDigest(const fs::path& dir, const WireBatch& batch) {
  SqliteStoreOptions options;
  options.path = dir / "central.db";
  auto lite = SqliteCentralStore::open(options);
  EXPECT_TRUE(lite.isOk()) << lite.status().toString();
  if (!lite) return "";
  auto out = (*lite)->commit({batch}, "agg-a");
  return out ? out->front().digest : "";
}

class PostgresStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = testing::PostgresServer::create();
    ASSERT_TRUE(server.isOk()) << server.status().toString();
    server_ = std::move(server.value()).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    if (!server_->running()) {
      ASSERT_TRUE(server_->start().isOk());
    }
    static int next = 0;
    db_ = "t_" + std::to_string(::getpid()) + "_" + std::to_string(++next);
    Status s = server_->createDatabase(db_);
    ASSERT_TRUE(s.isOk()) << s.toString();
  }

  // Dropping discards the database's dirty buffers, so later server stops
  // (and the restart test) do not spend their time flushing earlier tests' data.
  void TearDown() override {
    if (server_ && server_->running() && !db_.empty()) {
      auto dropped = server_->query("postgres", "DROP DATABASE IF EXISTS " + db_ + " WITH (FORCE)");
      EXPECT_TRUE(dropped.isOk()) << dropped.status().toString();
    }
  }

  std::string url() const { return server_->url(db_); }

  std::unique_ptr<PostgresCentralStore> openStore() {
    PostgresStoreOptions options;
    options.url = url();
    options.connect_timeout = std::chrono::seconds(3);
    auto store = PostgresCentralStore::open(options);
    EXPECT_TRUE(store.isOk()) << store.status().toString();
    return store ? std::move(store.value()) : nullptr;
  }

  Rows rows(const std::string& sql) {
    auto r = server_->query(db_, sql);
    EXPECT_TRUE(r.isOk()) << r.status().toString();
    return r ? *r : Rows{};
  }
  int64_t count(const std::string& sql) {
    auto r = server_->count(db_, sql);
    EXPECT_TRUE(r.isOk()) << r.status().toString();
    return r ? *r : -1;
  }

  static testing::PostgresServer* server_;
  std::string db_;
};

testing::PostgresServer* PostgresStoreTest::server_ = nullptr;

TEST(PostgresUrl, AcceptsPostgresSchemesAndRedactsPasswords) {
  EXPECT_TRUE(checkPostgresUrl("postgresql://u@db.example:5432/central").isOk());
  EXPECT_TRUE(checkPostgresUrl("postgres://u:secret@db/central?sslmode=require").isOk());
  EXPECT_TRUE(checkCentralStoreUrl("postgresql://db/central").isOk());
  EXPECT_TRUE(checkCentralStoreUrl("sqlite:///var/lib/central.db").isOk());

  EXPECT_EQ(redactPostgresUrl("postgresql://u:s3cr%40t@db:5432/c"), "postgresql://u:***@db:5432/c");
  EXPECT_EQ(redactPostgresUrl("postgres://db/c?user=u&password=hunter2&sslmode=require"),
            "postgres://db/c?user=u&password=***&sslmode=require");
  EXPECT_EQ(redactPostgresUrl("postgresql://u@db/c"), "postgresql://u@db/c");

  for (const char* bad : {"mysql://db/central", "", "postgresql://u:hunter2@db/c?nonsense=1"}) {
    Status s = checkCentralStoreUrl(bad);
    ASSERT_FALSE(s.isOk()) << bad;
    EXPECT_EQ(s.code(), Code::kInvalidArgument);
    EXPECT_EQ(s.message().find("hunter2"), std::string::npos) << s.message();
  }
  Status s = checkCentralStoreUrl("mysql://db/central");
  EXPECT_NE(s.message().find("sqlite:///"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("postgresql://"), std::string::npos) << s.message();
}

TEST(PostgresUrl, UnreachableServerIsUnavailableWithoutThePassword) {
  // Port 1 on loopback: nothing listens there, the connection is refused.
  PostgresStoreOptions options;
  options.url = "postgresql://u:hunter2@127.0.0.1:1/central";
  options.connect_timeout = std::chrono::seconds(2);
  auto store = PostgresCentralStore::open(options);
  ASSERT_FALSE(store.isOk());
  EXPECT_EQ(store.status().code(), Code::kUnavailable) << store.status().toString();
  EXPECT_EQ(store.status().message().find("hunter2"), std::string::npos);
  EXPECT_NE(store.status().message().find("postgresql://u:***@127.0.0.1:1/central"),
            std::string::npos)
      << store.status().message();
}

TEST_F(PostgresStoreTest, SchemaColumnsAreAsDocumented) {
  auto store = openStore();
  ASSERT_TRUE(store);
  auto columns = [this](const std::string& table) {
    return rows(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
        "'public' AND table_name = '" +
        table + "' ORDER BY ordinal_position");
  };
  EXPECT_EQ(columns("records"), (Rows{{"id", "bigint"},
                                      {"source", "text"},
                                      {"record_key", "text"},
                                      {"agent_id", "text"},
                                      {"batch_seq", "bigint"},
                                      {"payload", "text"},
                                      {"ingested_at", "text"},
                                      {"stored_at", "text"}}));
  EXPECT_EQ(columns("rejects"), (Rows{{"id", "bigint"},
                                      {"agent_id", "text"},
                                      {"batch_seq", "bigint"},
                                      {"source", "text"},
                                      {"raw", "text"},
                                      {"reasons", "text"},
                                      {"ingested_at", "text"},
                                      {"stored_at", "text"}}));
  EXPECT_EQ(columns("batch_ledger"), (Rows{{"agent_id", "text"},
                                           {"batch_seq", "bigint"},
                                           {"created_at", "text"},
                                           {"stored_at", "text"},
                                           {"aggregator", "text"},
                                           {"records", "integer"},
                                           {"stored_records", "integer"},
                                           {"rejects", "integer"},
                                           {"digest", "text"}}));
  EXPECT_EQ(columns("batch_conflicts"), (Rows{{"agent_id", "text"},
                                              {"batch_seq", "bigint"},
                                              {"digest", "text"},
                                              {"created_at", "text"},
                                              {"stored_at", "text"},
                                              {"aggregator", "text"},
                                              {"records", "integer"},
                                              {"stored_records", "integer"},
                                              {"rejects", "integer"}}));
  EXPECT_EQ(columns("audit"), (Rows{{"id", "bigint"},
                                    {"at", "text"},
                                    {"actor", "text"},
                                    {"action", "text"},
                                    {"agent_id", "text"},
                                    {"batch_seq", "bigint"},
                                    {"detail", "text"}}));
  auto keyColumns = [this](const std::string& table, const std::string& type) {
    return rows(
        "SELECT k.column_name FROM information_schema.table_constraints c "
        "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
        "AND k.table_name = c.table_name WHERE c.table_name = '" +
        table + "' AND c.constraint_type = '" + type + "' ORDER BY k.ordinal_position");
  };
  EXPECT_EQ(keyColumns("records", "PRIMARY KEY"), (Rows{{"id"}}));
  EXPECT_EQ(keyColumns("records", "UNIQUE"), (Rows{{"source"}, {"record_key"}}));
  EXPECT_EQ(keyColumns("batch_ledger", "PRIMARY KEY"), (Rows{{"agent_id"}, {"batch_seq"}}));
  EXPECT_EQ(keyColumns("batch_conflicts", "PRIMARY KEY"),
            (Rows{{"agent_id"}, {"batch_seq"}, {"digest"}}));
  // id is BIGSERIAL: it has a sequence default.
  EXPECT_EQ(count("SELECT count(*) FROM information_schema.columns WHERE table_name = 'records' "
                  "AND column_name = 'id' AND column_default LIKE 'nextval(%'"),
            1);
  EXPECT_EQ(count("SELECT max(version) FROM schema_version"), PostgresCentralStore::kSchemaVersion);
  EXPECT_TRUE(store->health().isOk());
}

TEST_F(PostgresStoreTest, StoresBatchWithDocumentedTimesAndCounts) {
  auto store = openStore();
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

  auto recs = rows(
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
    EXPECT_EQ(recs[i][6].size(), 27u);
  }
  auto ledger = rows(
      "SELECT agent_id, batch_seq, created_at, aggregator, records, stored_records, rejects "
      "FROM batch_ledger");
  ASSERT_EQ(ledger.size(), 1u);
  EXPECT_EQ(ledger[0],
            (std::vector<std::string>{"office-1", "7", formatRfc3339Micros(batch.created_at_us),
                                      "agg-a", "3", "3", "2"}));
}

TEST_F(PostgresStoreTest, RecommitOfSameBatchIsDuplicateAndAddsNothing) {
  auto store = openStore();
  ASSERT_TRUE(store);
  WireBatch batch = makeBatch("office-1", 1, 50, "r", 1);
  ASSERT_TRUE(store->commit({batch}, "agg-a").isOk());
  auto again = store->commit({batch}, "agg-b");
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_TRUE(again->front().duplicate);
  EXPECT_EQ(again->front().stored_records, 0u);
  EXPECT_EQ(again->front().duplicate_records, 50u);

  WireBatch second = makeBatch("office-1", 2, 5, "s");
  auto twice = store->commit({second, second}, "agg-a");
  ASSERT_TRUE(twice.isOk()) << twice.status().toString();
  EXPECT_FALSE((*twice)[0].duplicate);
  EXPECT_EQ((*twice)[0].stored_records, 5u);
  EXPECT_TRUE((*twice)[1].duplicate);

  EXPECT_EQ(count("SELECT count(*) FROM records"), 55);
  EXPECT_EQ(count("SELECT count(*) FROM rejects"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), 2);
  EXPECT_EQ(rows("SELECT aggregator FROM batch_ledger WHERE batch_seq = 1")[0][0], "agg-a");
}

TEST_F(PostgresStoreTest, SameRecordKeyFromTwoAgentsIsStoredOnce) {
  auto store = openStore();
  ASSERT_TRUE(store);
  WireBatch a = makeBatch("office-1", 1, 10, "shared-");
  WireBatch b = makeBatch("office-2", 1, 10, "shared-");
  b.records.push_back({"customer", "only-b", 1, "{}"});
  b.records.push_back({"partner", "shared-0", 1, "{}"});  // another source: not a duplicate
  ASSERT_TRUE(store->commit({a}, "agg-a").isOk());
  auto out2 = store->commit({b}, "agg-b");
  ASSERT_TRUE(out2.isOk()) << out2.status().toString();
  EXPECT_FALSE(out2->front().duplicate);
  EXPECT_EQ(out2->front().records, 12u);
  EXPECT_EQ(out2->front().stored_records, 2u);
  EXPECT_EQ(out2->front().duplicate_records, 10u);

  EXPECT_EQ(count("SELECT count(*) FROM records"), 12);
  EXPECT_EQ(count("SELECT count(*) FROM records WHERE record_key = 'shared-3' AND "
                  "agent_id = 'office-1'"),
            1);
  EXPECT_EQ(rows("SELECT stored_records FROM batch_ledger WHERE agent_id = 'office-2'")[0][0], "2");

  // In one commit, the first batch given owns a key both carry.
  WireBatch c = makeBatch("office-3", 1, 3, "both-");
  WireBatch d = makeBatch("office-4", 1, 3, "both-");
  auto out3 = store->commit({c, d}, "agg-a");
  ASSERT_TRUE(out3.isOk()) << out3.status().toString();
  EXPECT_EQ((*out3)[0].stored_records, 3u);
  EXPECT_EQ((*out3)[1].stored_records, 0u);
  EXPECT_EQ((*out3)[1].duplicate_records, 3u);
  EXPECT_EQ(count("SELECT count(*) FROM records WHERE agent_id = 'office-3'"), 3);
}

TEST_F(PostgresStoreTest, RejectsAreStoredWithReasons) {
  auto store = openStore();
  ASSERT_TRUE(store);
  WireBatch batch = makeBatch("office-3", 4, 0, "x", 0);
  batch.rejects.push_back({"customer", "{\"name\":\"\"}",
                           "[{\"field\":\"name\",\"reason\":\"required\"}]",
                           1'790'000'000'000'000});
  // Quotes, backslashes, braces and a comma: sent as parameters, stored verbatim.
  batch.rejects.push_back({"customer", "not json at all, {\"a\\\\\"} 'x' \xc3\xa9",
                           "[{\"field\":\"\",\"reason\":\"broken JSON\"}]", 1'790'000'000'000'000});
  ASSERT_TRUE(store->commit({batch}, "agg-a").isOk());
  auto r = rows(
      "SELECT agent_id, batch_seq, source, raw, reasons, ingested_at FROM rejects "
      "ORDER BY id");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0], (std::vector<std::string>{"office-3", "4", "customer", "{\"name\":\"\"}",
                                            "[{\"field\":\"name\",\"reason\":\"required\"}]",
                                            "2026-09-21T14:13:20.000000Z"}));
  EXPECT_EQ(r[1][3], batch.rejects[1].raw);
  EXPECT_EQ(r[1][4], "[{\"field\":\"\",\"reason\":\"broken JSON\"}]");
  EXPECT_EQ(count("SELECT rejects FROM batch_ledger"), 2);
}

TEST_F(PostgresStoreTest, AuditRowsAreWritten) {
  auto store = openStore();
  ASSERT_TRUE(store);
  ASSERT_TRUE(
      store->audit({"agg-a", "batch_refused", "office-9", 12, "body inflates past 1024"}).isOk());
  ASSERT_TRUE(store->audit({"agg-a", "batch_refused", "office-9", std::nullopt, "garbage"}).isOk());
  auto r = rows("SELECT actor, action, agent_id, batch_seq, detail, at FROM audit ORDER BY id");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0][0], "agg-a");
  EXPECT_EQ(r[0][1], "batch_refused");
  EXPECT_EQ(r[0][2], "office-9");
  EXPECT_EQ(r[0][3], "12");
  EXPECT_EQ(r[0][4], "body inflates past 1024");
  EXPECT_TRUE(parseRfc3339Micros(r[0][5]).has_value());
  EXPECT_EQ(r[1][3], "<null>");
}

TEST_F(PostgresStoreTest, ReopenKeepsDataAndRefusesANewerSchema) {
  {
    auto store = openStore();
    ASSERT_TRUE(store);
    ASSERT_TRUE(store->commit({makeBatch("office-1", 1, 4, "a")}, "agg-a").isOk());
  }
  {
    auto store = openStore();
    ASSERT_TRUE(store);
    auto again = store->commit({makeBatch("office-1", 1, 4, "a")}, "agg-a");
    ASSERT_TRUE(again.isOk());
    EXPECT_TRUE(again->front().duplicate);
  }
  EXPECT_EQ(count("SELECT count(*) FROM records"), 4);
  EXPECT_EQ(count("SELECT count(*) FROM schema_version"), 1);

  ASSERT_TRUE(server_->query(db_, "INSERT INTO schema_version VALUES (99, 'later')").isOk());
  PostgresStoreOptions options;
  options.url = url();
  auto newer = PostgresCentralStore::open(options);
  ASSERT_FALSE(newer.isOk());
  EXPECT_EQ(newer.status().code(), Code::kDataLoss) << newer.status().toString();
  EXPECT_NE(newer.status().message().find("99"), std::string::npos);
}

// As in the SQLite store: a reused batch seq with other content is stored,
// recorded in batch_conflicts and audited; redeliveries are duplicates.
TEST_F(PostgresStoreTest, ReusedBatchSeqWithOtherContentIsStoredRecordedAndAudited) {
  auto store = openStore();
  ASSERT_TRUE(store);
  const WireBatch original = makeBatch("office-1", 7, 4, "a");
  WireBatch reused = makeBatch("office-1", 7, 3, "b", 1);
  reused.records.push_back(original.records[0]);
  auto first = store->commit({original}, "agg-a");
  ASSERT_TRUE(first.isOk()) << first.status().toString();
  EXPECT_FALSE(first->front().seq_reused);

  auto second = store->commit({reused}, "agg-b");
  ASSERT_TRUE(second.isOk()) << second.status().toString();
  const BatchOutcome& o = second->front();
  EXPECT_FALSE(o.duplicate);
  EXPECT_TRUE(o.seq_reused);
  EXPECT_EQ(o.records, 4u);
  EXPECT_EQ(o.stored_records, 3u);
  EXPECT_EQ(o.duplicate_records, 1u);
  EXPECT_EQ(o.rejects, 1u);
  // Both backends compute the same digest.
  ScratchDir lite;
  EXPECT_EQ(first->front().digest, liteDigest(lite.path(), original));

  EXPECT_EQ(count("SELECT count(*) FROM records"), 7);
  EXPECT_EQ(count("SELECT count(*) FROM rejects WHERE agent_id = 'office-1' AND batch_seq = 7"), 1);
  EXPECT_EQ(rows("SELECT digest, aggregator, stored_records FROM batch_ledger"),
            (Rows{{first->front().digest, "agg-a", "4"}}));
  EXPECT_EQ(rows("SELECT agent_id, batch_seq, digest, aggregator, records, stored_records, "
                 "rejects FROM batch_conflicts"),
            (Rows{{"office-1", "7", o.digest, "agg-b", "4", "3", "1"}}));
  auto audit = rows("SELECT actor, action, agent_id, batch_seq, detail FROM audit");
  ASSERT_EQ(audit.size(), 1u);
  EXPECT_EQ(audit[0][0], "agg-b");
  EXPECT_EQ(audit[0][1], "batch_seq_reused");
  EXPECT_EQ(audit[0][2], "office-1");
  EXPECT_EQ(audit[0][3], "7");
  EXPECT_NE(audit[0][4].find("stored 3 new records (1 already stored) and 1 rejects"),
            std::string::npos)
      << audit[0][4];

  auto again = store->commit({reused, original}, "agg-a");
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  for (const auto& r : *again) {
    EXPECT_TRUE(r.duplicate);
    EXPECT_FALSE(r.seq_reused);
    EXPECT_EQ(r.stored_records, 0u);
  }
  EXPECT_EQ(count("SELECT count(*) FROM records"), 7);
  EXPECT_EQ(count("SELECT count(*) FROM rejects"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM audit"), 1);

  // Both contents of one new seq in one commit, with fresh batches around them.
  auto both = store->commit({makeBatch("office-3", 1, 1, "e"), makeBatch("office-2", 1, 2, "c"),
                             makeBatch("office-2", 1, 2, "d"), makeBatch("office-2", 1, 2, "d"),
                             makeBatch("office-3", 2, 1, "f")},
                            "agg-a");
  ASSERT_TRUE(both.isOk()) << both.status().toString();
  EXPECT_FALSE((*both)[0].duplicate);
  EXPECT_FALSE((*both)[1].duplicate);
  EXPECT_FALSE((*both)[1].seq_reused);
  EXPECT_EQ((*both)[1].stored_records, 2u);
  EXPECT_TRUE((*both)[2].seq_reused);
  EXPECT_EQ((*both)[2].stored_records, 2u);
  EXPECT_TRUE((*both)[3].duplicate);
  EXPECT_FALSE((*both)[4].duplicate);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 13);
  EXPECT_EQ(count("SELECT stored_records FROM batch_ledger WHERE agent_id = 'office-2'"), 2);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action = 'batch_seq_reused'"), 2);
}

// A database at schema version 1 (no digests) is upgraded in place.
// As in SQLite: one `buffer_damaged` audit row per reported row, with its
// batch, and none more on redelivery; a reused sequence's reports too.
TEST_F(PostgresStoreTest, DamageReportsAreAuditedOnceWithTheirBatch) {
  auto store = openStore();
  ASSERT_TRUE(store);
  WireBatch b = makeBatch("office-3", 11, 2, "d");
  b.damaged.push_back({"records", 42, "customer", 1'790'000'000'123'456,
                       "records.payload of row 42: failed authentication"});
  auto first = store->commit({b}, "agg-a");
  ASSERT_TRUE(first.isOk()) << first.status().toString();
  auto again = store->commit({b}, "agg-b");
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_TRUE(again->front().duplicate);
  WireBatch reused = makeBatch("office-3", 11, 1, "e");
  reused.damaged.push_back({"quarantine", 7, "customer", 1'790'000'000'000'001,
                            "quarantine.raw of row 7: failed authentication"});
  auto third = store->commit({reused}, "agg-b");
  ASSERT_TRUE(third.isOk()) << third.status().toString();
  EXPECT_TRUE(third->front().seq_reused);

  EXPECT_EQ(count("SELECT count(*) FROM records WHERE agent_id = 'office-3'"), 3);
  auto audit = rows(
      "SELECT actor, action, agent_id, batch_seq, detail FROM audit "
      "WHERE action = 'buffer_damaged' ORDER BY id");
  ASSERT_EQ(audit.size(), 2u);
  EXPECT_EQ(audit[0][0], "agg-a");
  EXPECT_EQ(audit[0][2], "office-3");
  EXPECT_EQ(audit[0][3], "11");
  EXPECT_NE(audit[0][4].find("records#42"), std::string::npos) << audit[0][4];
  EXPECT_NE(audit[1][4].find("quarantine#7"), std::string::npos) << audit[1][4];
  // Both backends agree on the digest of a batch that reports damage.
  ScratchDir lite;
  EXPECT_EQ(first->front().digest, liteDigest(lite.path(), b));
}

TEST_F(PostgresStoreTest, UpgradesAVersion1DatabaseInPlace) {
  auto v1 = server_->query(db_, R"sql(
    CREATE TABLE records (id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL,
      record_key TEXT NOT NULL, agent_id TEXT NOT NULL, batch_seq BIGINT NOT NULL,
      payload TEXT NOT NULL, ingested_at TEXT NOT NULL, stored_at TEXT NOT NULL,
      UNIQUE (source, record_key));
    CREATE TABLE rejects (id BIGSERIAL PRIMARY KEY, agent_id TEXT NOT NULL,
      batch_seq BIGINT NOT NULL, source TEXT NOT NULL, raw TEXT NOT NULL, reasons TEXT NOT NULL,
      ingested_at TEXT NOT NULL, stored_at TEXT NOT NULL);
    CREATE TABLE batch_ledger (agent_id TEXT NOT NULL, batch_seq BIGINT NOT NULL,
      created_at TEXT NOT NULL, stored_at TEXT NOT NULL, aggregator TEXT NOT NULL,
      records INTEGER NOT NULL, stored_records INTEGER NOT NULL, rejects INTEGER NOT NULL,
      PRIMARY KEY (agent_id, batch_seq));
    CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
      action TEXT NOT NULL, agent_id TEXT NOT NULL, batch_seq BIGINT, detail TEXT NOT NULL);
    CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL);
    INSERT INTO schema_version VALUES (1, '2026-01-01T00:00:00.000000Z');
    INSERT INTO batch_ledger VALUES ('office-1', 1, '2026-01-01T00:00:00.000000Z',
      '2026-01-01T00:00:00.000000Z', 'agg-old', 1, 1, 0);
  )sql");
  ASSERT_TRUE(v1.isOk()) << v1.status().toString();
  auto store = openStore();
  ASSERT_TRUE(store);
  EXPECT_EQ(rows("SELECT version FROM schema_version ORDER BY version"), (Rows{{"1"}, {"2"}}));
  EXPECT_EQ(rows("SELECT aggregator, digest FROM batch_ledger"), (Rows{{"agg-old", "<null>"}}));
  auto old = store->commit({makeBatch("office-1", 1, 3, "other")}, "agg-a");
  ASSERT_TRUE(old.isOk()) << old.status().toString();
  EXPECT_TRUE(old->front().duplicate);  // no digest to tell contents apart: as before
  auto fresh = store->commit({makeBatch("office-1", 2, 3, "new")}, "agg-a");
  ASSERT_TRUE(fresh.isOk()) << fresh.status().toString();
  EXPECT_FALSE(fresh->front().duplicate);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger WHERE digest IS NOT NULL"), 1);
  store.reset();
  store = openStore();  // a second start does not migrate again
  ASSERT_TRUE(store);
  EXPECT_EQ(count("SELECT count(*) FROM schema_version"), 2);
}

TEST_F(PostgresStoreTest, OpenCentralStoreDispatchesOnScheme) {
  auto pg = openCentralStore(url());
  ASSERT_TRUE(pg.isOk()) << pg.status().toString();
  EXPECT_TRUE((*pg)->health().isOk());
  auto pg2 = openCentralStore("postgres://postgres@127.0.0.1:" + std::to_string(server_->port()) +
                              "/" + db_);
  ASSERT_TRUE(pg2.isOk()) << pg2.status().toString();
  ASSERT_TRUE((*pg2)->commit({makeBatch("office-1", 1, 2, "d")}, "agg-a").isOk());
  EXPECT_EQ(count("SELECT count(*) FROM records"), 2);

  std::string tmpl = "/tmp/bl_pg_sqlite_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  {
    auto lite = openCentralStore("sqlite://" + tmpl + "/central.db");
    ASSERT_TRUE(lite.isOk()) << lite.status().toString();
    EXPECT_TRUE((*lite)->health().isOk());
  }
  EXPECT_TRUE(fs::exists(fs::path(tmpl) / "central.db"));
  fs::remove_all(tmpl);
}

// Two aggregators on one database, each delivering every batch: nothing is
// lost, nothing doubled, and every batch is stored by exactly one of them.
TEST_F(PostgresStoreTest, TwoStoresCommitConcurrentlyWithoutLossOrDoubling) {
  auto first = openStore();
  auto second = openStore();
  ASSERT_TRUE(first && second);
  constexpr int kAgents = 4, kBatchesPerAgent = 40, kRecords = 50;
  std::vector<WireBatch> all;
  for (int a = 0; a < kAgents; ++a) {
    for (int s = 1; s <= kBatchesPerAgent; ++s) {
      all.push_back(makeBatch("office-" + std::to_string(a), static_cast<uint64_t>(s), kRecords,
                              "k" + std::to_string((a / 2) * 1000 + s) + "-", 1));
    }
  }
  struct Totals {
    uint64_t stored_batches = 0, duplicate_batches = 0, stored_records = 0;
    std::string error;
  };
  auto run = [&all](PostgresCentralStore* store, std::string name, bool reverse, Totals* t) {
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

  const int64_t batches = kAgents * kBatchesPerAgent;
  const int64_t unique_records = (kAgents / 2) * kBatchesPerAgent * kRecords;
  EXPECT_EQ(static_cast<int64_t>(ta.stored_batches + tb.stored_batches), batches);
  EXPECT_EQ(static_cast<int64_t>(ta.duplicate_batches + tb.duplicate_batches), batches);
  EXPECT_EQ(static_cast<int64_t>(ta.stored_records + tb.stored_records), unique_records);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), batches);
  EXPECT_EQ(count("SELECT count(*) FROM records"), unique_records);
  EXPECT_EQ(count("SELECT count(*) FROM rejects"), batches);  // one per batch, never doubled
  EXPECT_EQ(count("SELECT sum(stored_records) FROM batch_ledger"), unique_records);
  EXPECT_EQ(count("SELECT count(*) FROM (SELECT source, record_key FROM records "
                  "GROUP BY 1, 2 HAVING count(*) > 1) d"),
            0);
}

// The server goes away under an open store and comes back: commits answer
// kUnavailable meanwhile (the consumer keeps the batches unacked), and the
// same store object reconnects by itself once the server is back.
TEST_F(PostgresStoreTest, ServerStoppedIsUnavailableAndTheSameStoreRecovers) {
  auto store = openStore();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->commit({makeBatch("office-1", 1, 10, "a")}, "agg-a").isOk());

  ASSERT_TRUE(server_->stop().isOk());
  WireBatch pending = makeBatch("office-1", 2, 10, "b", 1);
  auto away = store->commit({pending}, "agg-a");
  ASSERT_FALSE(away.isOk());
  EXPECT_EQ(away.status().code(), Code::kUnavailable) << away.status().toString();
  EXPECT_NE(away.status().message().find("office-1"), std::string::npos);
  EXPECT_NE(away.status().message().find("central store " + url()), std::string::npos)
      << away.status().message();
  std::printf("[ unavailable ] %s\n", away.status().toString().c_str());
  // Still away: the reconnect attempt fails the same way, and health says so.
  auto still = store->commit({pending}, "agg-a");
  ASSERT_FALSE(still.isOk());
  EXPECT_EQ(still.status().code(), Code::kUnavailable) << still.status().toString();
  Status h = store->health();
  EXPECT_EQ(h.code(), Code::kUnavailable) << h.toString();
  EXPECT_EQ(store->audit({"agg-a", "batch_refused", "office-1", 3, "x"}).code(),
            Code::kUnavailable);

  ASSERT_TRUE(server_->start().isOk());
  EXPECT_TRUE(store->health().isOk());
  auto back = store->commit({pending}, "agg-a");
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_FALSE(back->front().duplicate);
  EXPECT_EQ(back->front().stored_records, 10u);
  auto redelivered = store->commit({pending}, "agg-a");
  ASSERT_TRUE(redelivered.isOk());
  EXPECT_TRUE(redelivered->front().duplicate);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 20);
  EXPECT_EQ(count("SELECT count(*) FROM rejects"), 1);

  // The connection drops while the server keeps running (an admin kills the
  // backend): the next commit fails unavailable, the one after reconnects.
  ASSERT_TRUE(server_
                  ->query("postgres",
                          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "application_name = 'branchline-aggregator' AND datname = '" +
                              db_ + "'")
                  .isOk());
  WireBatch later = makeBatch("office-1", 3, 5, "c");
  auto dropped = store->commit({later}, "agg-a");
  if (!dropped.isOk()) {
    EXPECT_EQ(dropped.status().code(), Code::kUnavailable) << dropped.status().toString();
    dropped = store->commit({later}, "agg-a");
  }
  ASSERT_TRUE(dropped.isOk()) << dropped.status().toString();
  EXPECT_EQ(count("SELECT count(*) FROM records"), 25);
}

// A crash (every PostgreSQL process SIGKILLed, as the chaos run does): what was
// acknowledged as committed survives WAL recovery, the commit in the gap is
// refused as unavailable, and the same store object carries on afterwards.
TEST_F(PostgresStoreTest, ServerCrashKeepsCommittedBatchesAndTheStoreRecovers) {
  auto store = openStore();
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->commit({makeBatch("office-1", 1, 50, "a")}, "agg-a").isOk());

  ASSERT_TRUE(server_->kill9().isOk());
  EXPECT_FALSE(server_->running());
  WireBatch pending = makeBatch("office-1", 2, 10, "b");
  auto away = store->commit({pending}, "agg-a");
  ASSERT_FALSE(away.isOk());
  EXPECT_EQ(away.status().code(), Code::kUnavailable) << away.status().toString();

  Status restarted = server_->start();
  ASSERT_TRUE(restarted.isOk()) << restarted.toString();
  auto back = store->commit({pending}, "agg-a");
  if (!back.isOk()) back = store->commit({pending}, "agg-a");
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(back->front().stored_records, 10u);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 60);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), 2);
}

}  // namespace
}  // namespace branchline::aggregator
