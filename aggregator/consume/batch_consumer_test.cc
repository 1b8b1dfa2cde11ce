#include "aggregator/consume/batch_consumer.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "aggregator/consume/seal_keys.h"
#include "aggregator/store/sqlite_store.h"
#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/core/clock.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/mqtt/testing/mosquitto_process.h"
#include "shared/mqtt/testing/publish.h"

namespace branchline::aggregator {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using protocol::AckStatus;
using protocol::WireAck;
using protocol::WireBatch;

constexpr const char* kPrefix = "branchline/v1";

fs::path makeTempDir() {
  std::string tmpl = "/tmp/bl_consumer_test_XXXXXX";
  EXPECT_NE(mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

int64_t queryCount(const fs::path& db, const std::string& sql) {
  sqlite3* h = nullptr;
  EXPECT_EQ(sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sql;
  int64_t n = -1;
  if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close_v2(h);
  return n;
}

WireBatch makeBatch(const std::string& agent, uint64_t seq, size_t records,
                    const std::string& key_prefix) {
  WireBatch b;
  b.agent_id = agent;
  b.seq = seq;
  b.created_at_us = 1'790'000'000'000'000;
  for (size_t i = 0; i < records; ++i) {
    std::string key = key_prefix + std::to_string(i);
    b.records.push_back({"customer", key, 1'790'000'000'000'000 + static_cast<int64_t>(i),
                         "{\"external_id\":\"" + key + "\"}"});
  }
  return b;
}

std::string batchTopic(const std::string& agent) {
  return std::string(kPrefix) + "/agents/" + agent + "/batch";
}

// Wraps the real store: can hold commits at a gate, fail them as if the store
// were away, and records how many batches each commit carried.
class ControlledStore : public CentralStore {
 public:
  explicit ControlledStore(CentralStore& inner) : inner_(inner) {}

  Result<std::vector<BatchOutcome>> commit(const std::vector<WireBatch>& batches,
                                           const std::string& aggregator) override {
    {
      std::unique_lock lock(mutex_);
      ++waiting_;
      cv_.notify_all();
      cv_.wait(lock, [this] { return open_; });
      --waiting_;
      ++attempts_;
      cv_.notify_all();
      if (failing_) return Status::unavailable("central store is down (test)");
      sizes_.push_back(batches.size());
    }
    return inner_.commit(batches, aggregator);
  }
  Status audit(const AuditEntry& entry) override {
    if (failing_.load()) return Status::unavailable("central store is down (test)");
    return inner_.audit(entry);
  }
  Status health() override { return inner_.health(); }

  void setOpen(bool open) {
    std::lock_guard lock(mutex_);
    open_ = open;
    cv_.notify_all();
  }
  void setFailing(bool failing) { failing_ = failing; }
  bool waitForWaiting(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return waiting_ >= n; });
  }
  bool waitForAttempts(int n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return attempts_ >= n; });
  }
  std::vector<size_t> sizes() {
    std::lock_guard lock(mutex_);
    return sizes_;
  }

 private:
  CentralStore& inner_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = true;
  std::atomic<bool> failing_{false};
  int waiting_ = 0;
  int attempts_ = 0;
  std::vector<size_t> sizes_;
};

// A fake agent (any number of agent ids) on its own MQTT connection: publishes
// raw payloads and collects the acks addressed to any agent.
class FakeAgent {
 public:
  explicit FakeAgent(const std::string& uri) {
    mqtt::ClientOptions o;
    o.broker_uris = {uri};
    o.client_id = "fake-agent-" + std::to_string(::getpid());
    client_ = std::make_unique<mqtt::Client>(
        o, [this](mqtt::Message&& m) { onMessage(std::move(m)); },
        [this](bool up) {
          std::lock_guard lock(mutex_);
          connected_ = up;
          cv_.notify_all();
        });
    EXPECT_TRUE(client_->subscribe(std::string(kPrefix) + "/agents/+/ack", 1).isOk());
    EXPECT_TRUE(client_->start().isOk());
  }
  ~FakeAgent() { client_->stop(); }

  bool waitConnected() {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, 10s, [this] { return connected_; });
  }
  void publish(const std::string& topic, const std::string& payload) {
    ASSERT_TRUE(mqtt::testing::publishWaitingForRoom(*client_, topic, payload).isOk());
  }
  void publishBatch(const WireBatch& b, const std::string& topic_agent = "") {
    publish(batchTopic(topic_agent.empty() ? b.agent_id : topic_agent), protocol::encodeBatch(b));
  }
  // Waits until at least n acks arrived; returns all so far.
  std::vector<WireAck> waitAcks(size_t n, std::chrono::milliseconds timeout = 20s) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return acks_.size() >= n; });
    return acks_;
  }
  size_t ackCount() {
    std::lock_guard lock(mutex_);
    return acks_.size();
  }
  std::vector<std::string> badAcks() {
    std::lock_guard lock(mutex_);
    return bad_;
  }

 private:
  void onMessage(mqtt::Message&& m) {
    auto ack = protocol::decodeAck(m.payload);
    std::lock_guard lock(mutex_);
    if (!ack) {
      bad_.push_back(ack.status().toString());
    } else if (m.topic != std::string(kPrefix) + "/agents/" + ack->agent_id + "/ack") {
      bad_.push_back("ack for `" + ack->agent_id + "` on topic " + m.topic);
    } else {
      acks_.push_back(std::move(ack.value()));
    }
    cv_.notify_all();
  }

  std::unique_ptr<mqtt::Client> client_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool connected_ = false;
  std::vector<WireAck> acks_;
  std::vector<std::string> bad_;
};

class BatchConsumerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(broker_.start()) << broker_.error();
    dir_ = makeTempDir();
    db_ = dir_ / "central.db";
    SqliteStoreOptions so;
    so.path = db_;
    auto store = SqliteCentralStore::open(so);
    ASSERT_TRUE(store.isOk()) << store.status().toString();
    store_ = std::move(store.value());
    controlled_ = std::make_unique<ControlledStore>(*store_);
  }
  void TearDown() override {
    consumers_.clear();
    agent_.reset();
    controlled_.reset();
    store_.reset();
    broker_.stop();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  ConsumerOptions options(const std::string& name) {
    ConsumerOptions o;
    o.aggregator_name = name;
    o.broker_uris = {broker_.uri()};
    o.topic_prefix = kPrefix;
    o.share_group = "test-aggregators";
    o.limits.max_inflated_bytes = 1 << 20;
    o.min_retry = 20ms;
    o.max_retry = 100ms;
    return o;
  }

  BatchConsumer& startConsumer(ConsumerOptions o, CentralStore& store, MetricsRegistry& metrics) {
    consumers_.push_back(std::make_unique<BatchConsumer>(std::move(o), store, metrics));
    BatchConsumer& c = *consumers_.back();
    EXPECT_TRUE(c.start().isOk());
    // Clean sessions: only a made subscription receives, so wait for it.
    for (int i = 0; i < 500 && !c.brokerConnected(); ++i) std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(c.brokerConnected());
    return c;
  }

  FakeAgent& agent() {
    if (!agent_) {
      agent_ = std::make_unique<FakeAgent>(broker_.uri());
      EXPECT_TRUE(agent_->waitConnected());
    }
    return *agent_;
  }

  int64_t count(const std::string& sql) { return queryCount(db_, sql); }

  mqtt::testing::MosquittoProcess broker_;
  fs::path dir_, db_;
  std::unique_ptr<SqliteCentralStore> store_;
  std::unique_ptr<ControlledStore> controlled_;
  MetricsRegistry metrics_;
  std::unique_ptr<FakeAgent> agent_;
  std::vector<std::unique_ptr<BatchConsumer>> consumers_;
};

TEST(AgentFromTopic, AcceptsOnlyWellFormedBatchTopics) {
  EXPECT_EQ(BatchConsumer::agentFromTopic("branchline/v1/agents/office-1/batch", kPrefix),
            "office-1");
  EXPECT_EQ(BatchConsumer::agentFromTopic("branchline/v1/agents//batch", kPrefix), "");
  EXPECT_EQ(BatchConsumer::agentFromTopic("branchline/v1/agents/a/b/batch", kPrefix), "");
  EXPECT_EQ(BatchConsumer::agentFromTopic("branchline/v1/agents/office 1/batch", kPrefix), "");
  EXPECT_EQ(BatchConsumer::agentFromTopic("other/v1/agents/office-1/batch", kPrefix), "");
  EXPECT_EQ(BatchConsumer::agentFromTopic("branchline/v1/agents/office-1/ack", kPrefix), "");
  EXPECT_EQ(BatchConsumer::agentFromTopic("branchline/v1/agents/" + std::string(65, 'a') + "/batch",
                                          kPrefix),
            "");
}

TEST_F(BatchConsumerTest, AcksArriveAfterCommitAndRecordsAreStored) {
  startConsumer(options("agg-a"), *store_, metrics_);
  FakeAgent& a = agent();
  a.publishBatch(makeBatch("office-1", 1, 100, "one-"));
  auto acks = a.waitAcks(1);
  ASSERT_EQ(acks.size(), 1u);
  // The ack left after the commit: the ledger already holds the batch.
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger WHERE agent_id='office-1' AND batch_seq=1"),
            1);
  EXPECT_EQ(acks[0].status, AckStatus::kStored);
  EXPECT_EQ(acks[0].agent_id, "office-1");
  EXPECT_EQ(acks[0].batch_seq, 1u);
  EXPECT_EQ(acks[0].stored_records, 100u);
  EXPECT_EQ(acks[0].aggregator, "agg-a");

  for (uint64_t seq = 2; seq <= 6; ++seq) {
    a.publishBatch(makeBatch("office-1", seq, 50, "s" + std::to_string(seq) + "-"));
  }
  acks = a.waitAcks(6);
  ASSERT_EQ(acks.size(), 6u);
  for (const auto& ack : acks) EXPECT_EQ(ack.status, AckStatus::kStored);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 100 + 5 * 50);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger WHERE aggregator='agg-a'"), 6);
  EXPECT_TRUE(a.badAcks().empty());
  std::string text = metrics_.renderPrometheus();
  EXPECT_NE(text.find("bl_aggregator_batches_stored_total 6\n"), std::string::npos) << text;
  EXPECT_NE(text.find("bl_aggregator_records_stored_total 350\n"), std::string::npos);
  EXPECT_NE(text.find("bl_aggregator_store_ready 1\n"), std::string::npos);
}

TEST_F(BatchConsumerTest, SameBatchTwiceIsStoredOnceAndSecondAckIsDuplicate) {
  startConsumer(options("agg-a"), *store_, metrics_);
  FakeAgent& a = agent();
  WireBatch batch = makeBatch("office-2", 9, 20, "dup-");
  a.publishBatch(batch);
  ASSERT_EQ(a.waitAcks(1).size(), 1u);
  a.publishBatch(batch);  // an agent resending after its ack timeout
  auto acks = a.waitAcks(2);
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[0].status, AckStatus::kStored);
  EXPECT_EQ(acks[1].status, AckStatus::kDuplicate);
  EXPECT_EQ(acks[1].batch_seq, 9u);
  EXPECT_EQ(acks[1].stored_records, 0u);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 20);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), 1);
  EXPECT_NE(metrics_.renderPrometheus().find("bl_aggregator_batches_duplicate_total 1\n"),
            std::string::npos);
}

TEST_F(BatchConsumerTest, HostileInputIsRefusedAuditedAndDoesNotStopItsGroup) {
  ConsumerOptions o = options("agg-a");
  o.max_batches_per_commit = 16;
  startConsumer(o, *controlled_, metrics_);
  FakeAgent& a = agent();

  // Hold the writer inside a first commit so everything below queues into one group.
  controlled_->setOpen(false);
  size_t queued_bytes = 0;
  auto send = [&](const std::string& topic, std::string payload) {
    queued_bytes += topic.size() + payload.size();
    a.publish(topic, std::move(payload));
  };
  const std::string topic1 = batchTopic("office-1");
  send(topic1, protocol::encodeBatch(makeBatch("office-1", 1, 5, "first-")));
  ASSERT_TRUE(controlled_->waitForWaiting(1, 10s));

  send(topic1, "this is not a Cap'n Proto envelope at all");
  {
    WireBatch bomb = makeBatch("office-1", 2, 0, "");
    bomb.records.push_back({"customer", "bomb", 1, std::string(64 << 20, 'a')});
    std::string bomb_payload = protocol::encodeBatch(bomb, 19);
    ASSERT_LT(bomb_payload.size(), 1u << 20);  // small on the wire, 64 MB inflated
    send(topic1, std::move(bomb_payload));
  }
  std::string full = protocol::encodeBatch(makeBatch("office-1", 3, 50, "trunc-"));
  send(topic1, full.substr(0, full.size() / 2));
  send(topic1, protocol::encodeBatch(makeBatch("office-2", 4, 7, "forged-")));  // not office-1's
  send(topic1, protocol::encodeBatch(makeBatch("office-1", 5, 10, "valid-")));
  send(topic1, "");  // empty payload

  // Everything is queued (the gauge counts the held group too); let the writer go.
  const std::string want = "bl_aggregator_queue_bytes " + std::to_string(queued_bytes) + "\n";
  for (int i = 0; i < 1000 && metrics_.renderPrometheus().find(want) == std::string::npos; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_NE(metrics_.renderPrometheus().find(want), std::string::npos)
      << metrics_.renderPrometheus();
  controlled_->setOpen(true);

  auto acks = a.waitAcks(7);
  ASSERT_EQ(acks.size(), 7u);
  int refused_for_office1 = 0;
  for (const auto& ack : acks) {
    if (ack.status == AckStatus::kRefused) {
      EXPECT_EQ(ack.agent_id, "office-1");
      EXPECT_FALSE(ack.message.empty());
      ++refused_for_office1;
    }
  }
  EXPECT_EQ(refused_for_office1, 5);
  EXPECT_TRUE(a.badAcks().empty());

  // The valid batches of the group were committed together, the rest audited.
  EXPECT_EQ(count("SELECT count(*) FROM records"), 15);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), 2);
  EXPECT_EQ(count("SELECT count(*) FROM records WHERE record_key LIKE 'forged-%' OR "
                  "record_key LIKE 'trunc-%' OR record_key = 'bomb'"),
            0);
  auto sizes = controlled_->sizes();
  ASSERT_EQ(sizes.size(), 2u);
  EXPECT_EQ(sizes[1], 1u);  // only `valid-` was left to commit in the second group
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action='batch_refused' AND "
                  "agent_id='office-1' AND actor='agg-a'"),
            5);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE batch_seq = 2 AND detail LIKE "
                  "'%max_inflated_bytes%'"),
            1);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE detail LIKE '%claims `office-2`%'"), 1);
  std::string text = metrics_.renderPrometheus();
  EXPECT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"too_large\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"agent_mismatch\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"malformed\"} 3\n"),
            std::string::npos);

  // And it keeps working afterwards.
  a.publishBatch(makeBatch("office-1", 6, 3, "after-"));
  acks = a.waitAcks(8);
  ASSERT_EQ(acks.size(), 8u);
  EXPECT_EQ(acks.back().status, AckStatus::kStored);
  EXPECT_EQ(acks.back().batch_seq, 6u);
}

TEST_F(BatchConsumerTest, StoreOutageMeansNoAckUntilTheCommitSucceeds) {
  BatchConsumer& c = startConsumer(options("agg-a"), *controlled_, metrics_);
  FakeAgent& a = agent();
  controlled_->setFailing(true);
  a.publishBatch(makeBatch("office-1", 1, 30, "outage-"));
  ASSERT_TRUE(controlled_->waitForAttempts(3, 10s));  // retried with backoff
  EXPECT_FALSE(c.storeReady());
  EXPECT_FALSE(c.ready());
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(a.ackCount(), 0u);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 0);
  EXPECT_NE(metrics_.renderPrometheus().find("bl_aggregator_store_ready 0\n"), std::string::npos);

  controlled_->setFailing(false);
  auto acks = a.waitAcks(1);
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].status, AckStatus::kStored);
  EXPECT_EQ(acks[0].stored_records, 30u);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 30);
  EXPECT_TRUE(c.storeReady());
}

TEST_F(BatchConsumerTest, FullQueueDropsWithoutBlockingAndKeepsWorking) {
  ConsumerOptions o = options("agg-a");
  o.limits.max_message_bytes = 64 << 10;
  o.max_queue_bytes = 64 << 10;
  o.max_batches_per_commit = 1;
  startConsumer(o, *controlled_, metrics_);
  FakeAgent& a = agent();
  controlled_->setOpen(false);
  std::minstd_rand rng(7);
  auto bulky = [&rng](uint64_t seq) {
    WireBatch b = makeBatch("office-1", seq, 1, "bulky-" + std::to_string(seq) + "-");
    b.records[0].payload.resize(20 << 10);
    for (char& ch : b.records[0].payload) ch = static_cast<char>('a' + rng() % 26);
    return protocol::encodeBatch(b, 0);  // stored raw: exactly its size on the wire
  };
  a.publish(batchTopic("office-1"), bulky(1));
  ASSERT_TRUE(controlled_->waitForWaiting(1, 10s));
  for (uint64_t seq = 2; seq <= 10; ++seq) a.publish(batchTopic("office-1"), bulky(seq));
  std::string text;
  for (int i = 0; i < 500; ++i) {
    text = metrics_.renderPrometheus();
    if (text.find("bl_aggregator_batches_dropped_total 0\n") == std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(text.find("bl_aggregator_batches_dropped_total 0\n"), std::string::npos) << text;
  controlled_->setOpen(true);
  // The queued ones are acked; the dropped ones are not (their agent resends).
  auto acks = a.waitAcks(3, 10s);
  ASSERT_GE(acks.size(), 3u);
  std::this_thread::sleep_for(300ms);
  size_t acked = a.ackCount();
  EXPECT_LT(acked, 10u);
  EXPECT_EQ(count("SELECT count(*) FROM records"), static_cast<int64_t>(acked));
  // A resend of a dropped batch goes through.
  a.publish(batchTopic("office-1"), bulky(10));
  ASSERT_EQ(a.waitAcks(acked + 1).size(), acked + 1);
}

// A flood of garbage on one agent's topic: every message is refused and
// counted, but the audit trail gets at most a few rows per agent per window,
// plus one summary row per window with how many more there were.
TEST_F(BatchConsumerTest, AGarbageFloodWritesABoundedNumberOfAuditRows) {
  ConsumerOptions o = options("agg-a");
  o.refusal_audits_per_window = 5;
  o.refusal_audit_window = 1000ms;
  BatchConsumer& c = startConsumer(o, *store_, metrics_);
  FakeAgent& a = agent();
  const auto started = std::chrono::steady_clock::now();
  constexpr int kFlood = 2000;
  for (int i = 0; i < kFlood; ++i)
    a.publish(batchTopic("office-1"), "garbage " + std::to_string(i));
  a.publish(batchTopic("office-2"), "one bad message from another agent");
  std::string text;
  for (int i = 0; i < 2000; ++i) {
    text = metrics_.renderPrometheus();
    if (text.find("bl_aggregator_batches_refused_total{reason=\"malformed\"} " +
                  std::to_string(kFlood + 1) + "\n") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"malformed\"} " +
                      std::to_string(kFlood + 1) + "\n"),
            std::string::npos)
      << text;
  c.stop();  // closes the open windows: their summaries are written
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const int64_t single =
      count("SELECT count(*) FROM audit WHERE action='batch_refused' AND agent_id='office-1'");
  const int64_t summaries = count(
      "SELECT count(*) FROM audit WHERE action='batch_refused_suppressed' AND "
      "agent_id='office-1'");
  const int64_t summarized = count(
      "SELECT COALESCE(SUM(CAST(detail AS INTEGER)), 0) FROM audit WHERE "
      "action='batch_refused_suppressed' AND agent_id='office-1'");
  EXPECT_EQ(single + summarized, kFlood) << "every refusal is accounted for";
  const int64_t windows = static_cast<int64_t>(seconds) + 2;
  EXPECT_LE(single, 5 * windows);
  EXPECT_LE(summaries, windows);
  EXPECT_GE(summaries, 1);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE agent_id='office-2'"), 1)
      << "another agent's refusal has its own row";
}

TEST_F(BatchConsumerTest, TwoConsumersInOneShareGroupSplitBatchesAndStoreEachOnce) {
  SqliteStoreOptions so;
  so.path = db_;
  auto second_store = SqliteCentralStore::open(so);  // the pair shares the file
  ASSERT_TRUE(second_store.isOk());
  MetricsRegistry second_metrics;
  startConsumer(options("agg-a"), *store_, metrics_);
  startConsumer(options("agg-b"), **second_store, second_metrics);
  FakeAgent& a = agent();
  constexpr int kAgents = 4, kBatches = 15;
  for (int s = 1; s <= kBatches; ++s) {
    for (int g = 0; g < kAgents; ++g) {
      std::string id = "office-" + std::to_string(g);
      a.publishBatch(
          makeBatch(id, static_cast<uint64_t>(s), 20, id + "-" + std::to_string(s) + "-"));
    }
  }
  auto acks = a.waitAcks(kAgents * kBatches, 30s);
  ASSERT_EQ(acks.size(), static_cast<size_t>(kAgents * kBatches));
  std::map<std::string, int> by_aggregator;
  for (const auto& ack : acks) {
    EXPECT_EQ(ack.status, AckStatus::kStored);
    by_aggregator[ack.aggregator]++;
  }
  EXPECT_GT(by_aggregator["agg-a"], 0);
  EXPECT_GT(by_aggregator["agg-b"], 0);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), kAgents * kBatches);
  EXPECT_EQ(count("SELECT count(*) FROM records"), kAgents * kBatches * 20);
  EXPECT_EQ(count("SELECT count(DISTINCT aggregator) FROM batch_ledger"), 2);
  consumers_.clear();  // before second_store goes away
}

// Sealed batches (README "Security / Sealed batches"): the aggregator opens
// them with its key ring and the agent's key from the agents folder. Every
// refusal stores nothing, writes one audit row and counts under its reason; a
// captured batch published again is stored once; an agent enrolled while the
// aggregator runs is accepted without a restart.
TEST_F(BatchConsumerTest, SealedBatchesAreOpenedAndEveryForgeryIsRefusedAndAudited) {
  const fs::path agents_dir = dir_ / "pki" / "agents";
  auto enroll = [&](const std::string& id) {
    protocol::SealKeyPair pair = *protocol::generateSealKeyPair();
    EXPECT_TRUE(
        protocol::writeSealPublicKey(agents_dir / (id + ".seal.pub"), pair.public_key).isOk());
    return pair;
  };
  const protocol::SealKeyPair office1 = enroll("office-1");
  const protocol::SealKeyPair office2 = enroll("office-2");
  const protocol::SealKeyPair office9 = *protocol::generateSealKeyPair();  // enrolled later
  const protocol::SealKeyPair current = *protocol::generateSealKeyPair();
  const protocol::SealKeyPair retired = *protocol::generateSealKeyPair();
  const protocol::SealKeyPair stranger = *protocol::generateSealKeyPair();
  const fs::path aggregators_dir = dir_ / "pki" / "aggregators";
  ASSERT_TRUE(protocol::writeSealPrivateKey(aggregators_dir / "current.key", current).isOk());
  ASSERT_TRUE(protocol::writeSealPrivateKey(aggregators_dir / "retired.key", retired).isOk());
  auto ring = loadAggregatorKeyRing({aggregators_dir / "current.key"},
                                    {{aggregators_dir / "retired.key", nowMicros() - 1000000}});
  ASSERT_TRUE(ring.isOk()) << ring.status().toString();
  EnrolledAgentKeys agent_keys({.agents_dir = agents_dir});

  ConsumerOptions o = options("agg-a");
  o.open.ring = &*ring;
  o.open.agent_public_key = [&](const std::string& id) { return agent_keys.lookup(id); };
  o.open.require_sealed = true;
  startConsumer(o, *store_, metrics_);
  FakeAgent& a = agent();

  auto seal = [&](const WireBatch& b, const protocol::SealKeyPair& by,
                  const protocol::SealKeyPair& to) {
    auto sealed = protocol::sealBatch(b, {by, to.public_key});
    EXPECT_TRUE(sealed.isOk()) << sealed.status().toString();
    return sealed.isOk() ? *sealed : std::string();
  };
  size_t sent = 0;
  auto sendAndWait = [&](const std::string& agent_id, std::string payload) {
    a.publish(batchTopic(agent_id), std::move(payload));
    auto acks = a.waitAcks(++sent);
    EXPECT_EQ(acks.size(), sent);
    return acks.empty() ? WireAck{} : acks.back();
  };

  // A sealed batch is stored; the same captured bytes again are a duplicate.
  const std::string captured = seal(makeBatch("office-1", 1, 10, "good-"), office1, current);
  EXPECT_EQ(sendAndWait("office-1", captured).status, AckStatus::kStored);
  EXPECT_EQ(sendAndWait("office-1", captured).status, AckStatus::kDuplicate);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 10);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), 1);

  // The refusals, each expected under its reason.
  std::string flipped = seal(makeBatch("office-1", 4, 10, "flipped-"), office1, current);
  flipped[flipped.size() - 30] ^= 0x20;
  std::string truncated = seal(makeBatch("office-1", 5, 10, "trunc-"), office1, current);
  truncated.resize(truncated.size() - 40);
  const std::vector<std::tuple<std::string, std::string, std::string>> refusals = {
      {"office-1", protocol::encodeBatch(makeBatch("office-1", 2, 10, "plain-")), "not_sealed"},
      {"office-1", seal(makeBatch("office-1", 3, 10, "forged-"), office2, current), "seal_invalid"},
      {"office-1", flipped, "seal_invalid"},
      {"office-1", truncated, "malformed"},
      {"office-1", seal(makeBatch("office-1", 6, 10, "unknown-"), office1, stranger),
       "unknown_key"},
      {"office-1", seal(makeBatch("office-1", 7, 10, "retired-"), office1, retired), "key_retired"},
      {"office-9", seal(makeBatch("office-9", 1, 10, "early-"), office9, current), "not_enrolled"},
  };
  std::map<std::string, int> expected;
  for (const auto& [agent_id, payload, reason] : refusals) {
    WireAck ack = sendAndWait(agent_id, payload);
    EXPECT_EQ(ack.status, AckStatus::kRefused) << reason;
    EXPECT_EQ(ack.agent_id, agent_id) << reason;
    ++expected[reason];
  }
  EXPECT_EQ(count("SELECT count(*) FROM records"), 10);
  EXPECT_EQ(count("SELECT count(*) FROM batch_ledger"), 1);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action='batch_refused'"),
            static_cast<int64_t>(refusals.size()));
  EXPECT_EQ(
      count("SELECT count(*) FROM audit WHERE detail LIKE '%not sealed by agent `office-1`%'"), 2);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE agent_id='office-9' AND detail LIKE "
                  "'%not enrolled%'"),
            1);
  const std::string text = metrics_.renderPrometheus();
  for (const auto& [reason, n] : expected) {
    EXPECT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"" + reason + "\"} " +
                        std::to_string(n) + "\n"),
              std::string::npos)
        << reason << "\n"
        << text;
  }

  // office-9 is enrolled while the aggregator runs: its resend is accepted.
  ASSERT_TRUE(
      protocol::writeSealPublicKey(agents_dir / "office-9.seal.pub", office9.public_key).isOk());
  EXPECT_EQ(
      sendAndWait("office-9", seal(makeBatch("office-9", 1, 10, "late-"), office9, current)).status,
      AckStatus::kStored);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 20);
  EXPECT_TRUE(a.badAcks().empty());
}

TEST(SealKeys, RingRefusesOpenKeyFilesAndDuplicates) {
  const fs::path dir = makeTempDir();
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  const protocol::SealKeyPair k = *protocol::generateSealKeyPair();
  ASSERT_TRUE(protocol::writeSealPrivateKey(dir / "a.key", k).isOk());
  ASSERT_TRUE(protocol::writeSealPrivateKey(dir / "b.key", k).isOk());
  auto twice = loadAggregatorKeyRing({dir / "a.key"}, {{dir / "b.key", 1}});
  ASSERT_FALSE(twice.isOk());
  EXPECT_NE(twice.status().message().find("listed twice"), std::string::npos);
  ASSERT_EQ(::chmod((dir / "a.key").c_str(), 0644), 0);
  auto open_mode = loadAggregatorKeyRing({dir / "a.key"}, {});
  ASSERT_FALSE(open_mode.isOk());
  EXPECT_EQ(open_mode.status().code(), Code::kPermissionDenied);
  EXPECT_NE(open_mode.status().message().find((dir / "a.key").string()), std::string::npos);
  EXPECT_EQ(loadAggregatorKeyRing({dir / "missing.key"}, {}).status().code(), Code::kNotFound);

  EnrolledAgentKeys keys({.agents_dir = dir, .ttl = std::chrono::milliseconds(0)});
  EXPECT_EQ(keys.lookup("office-1").status().code(), Code::kNotFound);
  EXPECT_EQ(keys.lookup("../a").status().code(), Code::kInvalidArgument);
  ASSERT_TRUE(protocol::writeSealPublicKey(dir / "office-1.seal.pub", k.public_key).isOk());
  auto found = keys.lookup("office-1");
  ASSERT_TRUE(found.isOk());
  EXPECT_EQ(*found, k.public_key);
  fs::remove(dir / "office-1.seal.pub");  // un-enrolled: refused once the cache entry expires
  EXPECT_EQ(keys.lookup("office-1").status().code(), Code::kNotFound);
}

// README "Input limits": each decode bound refuses under its own reason, with
// an audit row naming the bound, stores nothing of the refused batch, and the
// batches around it are stored.
TEST_F(BatchConsumerTest, DecodeLimitsRefuseEachUnderItsReasonWithAnAuditRow) {
  ConsumerOptions o = options("agg-a");
  o.limits.max_inflate_ratio = 20;
  o.limits.max_records = 50;
  startConsumer(o, *store_, metrics_);
  FakeAgent& a = agent();

  // 100 KB of one letter: small on the wire, ~1000x inflated, under max_inflated_bytes.
  WireBatch bomb = makeBatch("office-1", 1, 0, "");
  bomb.records.push_back({"customer", "bomb", 1, std::string(100 << 10, 'a')});
  a.publishBatch(bomb);
  a.publishBatch(makeBatch("office-1", 2, 51, "many-"));  // 51 entries, past max_records
  a.publishBatch(makeBatch("office-1", 3, 20, "fine-"));  // ordinary records compress ~5x
  auto acks = a.waitAcks(3);
  ASSERT_EQ(acks.size(), 3u);
  std::map<uint64_t, AckStatus> status;
  for (const auto& ack : acks) status[ack.batch_seq] = ack.status;
  EXPECT_EQ(status[1], AckStatus::kRefused);
  EXPECT_EQ(status[2], AckStatus::kRefused);
  EXPECT_EQ(status[3], AckStatus::kStored);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 20);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action = 'batch_refused' AND batch_seq = 1 "
                  "AND detail LIKE '%past max_inflate_ratio 20%'"),
            1);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action = 'batch_refused' AND batch_seq = 2 "
                  "AND detail LIKE '%past max_records 50%'"),
            1);
  std::string text = metrics_.renderPrometheus();
  EXPECT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"inflate_ratio\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("bl_aggregator_batches_refused_total{reason=\"too_large\"} 1\n"),
            std::string::npos)
      << text;
}

TEST_F(BatchConsumerTest, CapnProtoTraversalAndNestingLimitsRefuseWithTheirReasons) {
  // One consumer per bound, one after the other; a consumer's metrics registry
  // must outlive it (its gauges read the consumer).
  MetricsRegistry traversal_metrics;
  ConsumerOptions o = options("agg-a");
  o.limits.max_traversal_words = 512;  // 4 KiB of Cap'n Proto reading
  startConsumer(o, *store_, traversal_metrics);
  FakeAgent& a = agent();
  a.publishBatch(makeBatch("office-1", 1, 200, "wide-"));  // ~14 KiB of records
  a.publishBatch(makeBatch("office-1", 2, 3, "small-"));
  auto acks = a.waitAcks(2);
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_NE(traversal_metrics.renderPrometheus().find(
                "bl_aggregator_batches_refused_total{reason=\"traversal_limit\"} 1\n"),
            std::string::npos)
      << traversal_metrics.renderPrometheus();
  consumers_.clear();

  ConsumerOptions n = options("agg-b");
  n.limits.max_nesting = 1;  // the envelope reads; the batch's record list is one level too deep
  startConsumer(n, *store_, metrics_);
  a.publishBatch(makeBatch("office-1", 3, 3, "deep-"));
  acks = a.waitAcks(3);
  ASSERT_EQ(acks.size(), 3u);
  std::map<uint64_t, AckStatus> status;
  for (const auto& ack : acks) status[ack.batch_seq] = ack.status;
  EXPECT_EQ(status[1], AckStatus::kRefused);
  EXPECT_EQ(status[2], AckStatus::kStored);
  EXPECT_EQ(status[3], AckStatus::kRefused);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 3);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE batch_seq = 1 AND detail LIKE "
                  "'%traversal limit%'"),
            1);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE batch_seq = 3 AND detail LIKE "
                  "'%deeply-nested%'"),
            1);
  EXPECT_NE(metrics_.renderPrometheus().find(
                "bl_aggregator_batches_refused_total{reason=\"nesting_limit\"} 1\n"),
            std::string::npos)
      << metrics_.renderPrometheus();
}

// An agent restored from an old disk image reuses batch seqs for new records:
// they are stored (acked "stored"), audited and counted for an alert; the
// redelivery of the reused batch is a plain duplicate.
TEST_F(BatchConsumerTest, ABatchSeqReusedWithOtherContentLosesNoRecordAndRaisesTheAlertMetric) {
  startConsumer(options("agg-a"), *store_, metrics_);
  FakeAgent& a = agent();
  a.publishBatch(makeBatch("office-1", 5, 10, "before-image-"));
  ASSERT_EQ(a.waitAcks(1).size(), 1u);
  const WireBatch reused = makeBatch("office-1", 5, 8, "after-restore-");
  a.publishBatch(reused);
  auto acks = a.waitAcks(2);
  ASSERT_EQ(acks.size(), 2u);
  EXPECT_EQ(acks[1].status, AckStatus::kStored);
  EXPECT_EQ(acks[1].batch_seq, 5u);
  EXPECT_EQ(acks[1].stored_records, 8u);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 18);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action = 'batch_seq_reused' AND "
                  "agent_id = 'office-1' AND batch_seq = 5 AND actor = 'agg-a'"),
            1);
  EXPECT_EQ(count("SELECT count(*) FROM batch_conflicts"), 1);
  std::string text = metrics_.renderPrometheus();
  EXPECT_NE(text.find("bl_aggregator_batch_seq_reused_total 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("bl_aggregator_records_stored_total 18\n"), std::string::npos) << text;

  a.publishBatch(reused);  // the restored agent resends it: nothing new, no second alert
  acks = a.waitAcks(3);
  ASSERT_EQ(acks.size(), 3u);
  EXPECT_EQ(acks[2].status, AckStatus::kDuplicate);
  EXPECT_EQ(count("SELECT count(*) FROM records"), 18);
  EXPECT_EQ(count("SELECT count(*) FROM audit WHERE action = 'batch_seq_reused'"), 1);
  text = metrics_.renderPrometheus();
  EXPECT_NE(text.find("bl_aggregator_batch_seq_reused_total 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("bl_aggregator_batches_duplicate_total 1\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace branchline::aggregator
