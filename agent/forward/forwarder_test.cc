#include "agent/forward/forwarder.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "protocol/ack_auth.h"
#include "protocol/batch_digest.h"
#include "shared/core/atomic_file.h"
#include "shared/core/clock.h"
#include "shared/mqtt/testing/mosquitto_process.h"
#include "shared/mqtt/testing/publish.h"
#include "shared/pki/pki.h"

namespace branchline::agent {
namespace {

using namespace std::chrono_literals;
using mqtt::testing::MosquittoProcess;
using protocol::AckStatus;
using protocol::WireBatch;

constexpr char kPrefix[] = "bl-test/v1";
constexpr char kAgent[] = "office-7";

// Stands in for the aggregator pair: decodes every batch it receives and acks it
// according to `mode`. Handlers only decode, record and publish (non-blocking).
class FakeAggregator {
 public:
  enum class Mode {
    kAck,          // ack `stored` (or `duplicate` when seen before)
    kSilent,       // never ack
    kIgnoreFirst,  // drop the first delivery of each seq, ack the next
    kRefuseFirst,  // refuse the first delivery of each seq, ack the next
  };

  // persistent: a persistent session, whose subscription the broker keeps
  // (and queues batches for) while the fake aggregator is away.
  explicit FakeAggregator(const std::string& uri, bool persistent = false) {
    mqtt::ClientOptions o;
    o.broker_uris = {uri};
    o.client_id = "fake-aggregator";
    o.clean_session = !persistent;
    o.min_reconnect = 100ms;
    o.max_reconnect = 300ms;
    client_ = std::make_unique<mqtt::Client>(
        o, [this](mqtt::Message&& m) { onBatch(std::move(m)); },
        [this](bool up) {
          std::lock_guard lock(mu_);
          if (up) ++ups_;
          cv_.notify_all();
        });
    EXPECT_TRUE(client_->subscribe(std::string(kPrefix) + "/agents/+/batch", 1).isOk());
    EXPECT_TRUE(client_->start().isOk());
    EXPECT_TRUE(waitFor([&] { return ups_ > 0; })) << "fake aggregator never connected";
  }

  void setMode(Mode m) {
    std::lock_guard lock(mu_);
    mode_ = m;
  }
  // Publishes as this aggregator (e.g. its online announcement), waiting out
  // a full Paho window.
  Status publish(const std::string& topic, const std::string& payload) {
    return mqtt::testing::publishWaitingForRoom(*client_, topic, payload);
  }
  // Opens batches as a sealing aggregator does (set before the forwarder starts).
  void setOpenOptions(protocol::OpenOptions o) {
    std::lock_guard lock(mu_);
    open_ = std::move(o);
  }

  // Acks every batch seen so far (for a test that held acks back).
  void ackAllSeen() {
    std::lock_guard lock(mu_);
    for (const auto& [seq, b] : first_) sendAck(seq, AckStatus::kStored);
  }

  template <typename Pred>
  bool waitFor(Pred pred, std::chrono::milliseconds timeout = 15s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(); });
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, WireBatch> first_;       // first delivery of each seq
  std::map<uint64_t, int> deliveries_;        // seq -> times received
  std::map<uint64_t, bool> equal_on_resend_;  // seq -> every resend matched the first
  std::set<std::string> keys_acked_;          // record keys in batches acked
  size_t decode_errors_ = 0;
  std::map<uint64_t, std::set<std::string>> payloads_;  // seq -> distinct payloads received
  std::map<uint64_t, protocol::AckKey> ack_keys_;       // seq -> key of its (sealed) ack
  int ups_ = 0;

 private:
  void onBatch(mqtt::Message&& m) {
    std::lock_guard lock(mu_);
    protocol::AckKey key;
    auto batch = open_ ? protocol::openBatch(m.payload, {}, *open_, nullptr, &key)
                       : protocol::decodeBatch(m.payload);
    if (!batch.isOk()) {
      ++decode_errors_;
      cv_.notify_all();
      return;
    }
    const uint64_t seq = batch->seq;
    if (!key.key_id.empty()) ack_keys_[seq] = key;
    payloads_[seq].insert(m.payload);
    const int n = ++deliveries_[seq];
    if (n == 1) {
      first_[seq] = *batch;
    } else {
      auto& eq = equal_on_resend_.try_emplace(seq, true).first->second;
      eq = eq && (first_[seq] == *batch);
    }
    switch (mode_) {
      case Mode::kAck:
        sendAck(seq, n == 1 ? AckStatus::kStored : AckStatus::kDuplicate);
        break;
      case Mode::kSilent:
        break;
      case Mode::kIgnoreFirst:
        if (n > 1) sendAck(seq, AckStatus::kStored);
        break;
      case Mode::kRefuseFirst:
        sendAck(seq, n == 1 ? AckStatus::kRefused : AckStatus::kStored);
        break;
    }
    cv_.notify_all();
  }

  void sendAck(uint64_t seq, AckStatus status) {
    protocol::WireAck ack;
    ack.agent_id = kAgent;
    ack.batch_seq = seq;
    ack.status = status;
    ack.aggregator = "fake";
    ack.message = status == AckStatus::kRefused ? "test refusal" : "";
    if (status != AckStatus::kRefused) {
      for (const auto& r : first_[seq].records) keys_acked_.insert(r.key);
    }
    // A sealed batch's ack is tagged as a real aggregator tags it.
    auto key = ack_keys_.find(seq);
    if (key != ack_keys_.end()) {
      ack.digest = protocol::batchDigest(first_[seq]);
      protocol::signAck(key->second, ack);
    }
    EXPECT_TRUE(client_
                    ->publish(std::string(kPrefix) + "/agents/" + kAgent + "/ack",
                              protocol::encodeAck(ack), 1)
                    .isOk());
  }

  Mode mode_ = Mode::kAck;
  std::optional<protocol::OpenOptions> open_;
  std::unique_ptr<mqtt::Client> client_;
};

// Fresh agent and aggregator sealing pairs, and how the fake aggregator opens
// the agent's batches with them (the ring lives as long as this).
struct SealingKeys {
  protocol::SealKeyPair aggregator = *protocol::generateSealKeyPair();
  protocol::SealKeyPair agent = *protocol::generateSealKeyPair();
  protocol::AggregatorKeyRing ring;
  SealingKeys() {
    ring.by_key_id[protocol::sealKeyId(aggregator.public_key)] = {aggregator, INT64_MAX};
  }
  protocol::OpenOptions openOptions() const {
    protocol::OpenOptions open;
    open.ring = &ring;
    open.agent_public_key = [this](const std::string& id) -> Result<protocol::X25519Key> {
      if (id != kAgent) return Status::notFound(id);
      return agent.public_key;
    };
    return open;
  }
};

class ForwarderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(broker_.start()) << broker_.error();
    char tmpl[] = "/tmp/bl-forwarder-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    openBuffer();
    aggregator_ = std::make_unique<FakeAggregator>(broker_.uri());
  }
  void TearDown() override {
    forwarder_.reset();
    buffer_.reset();
    aggregator_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void openBuffer() {
    BufferOptions o;
    o.path = dir_ / "buffer.db";
    auto b = DurableBuffer::open(o);
    ASSERT_TRUE(b.isOk()) << b.status().toString();
    buffer_ = std::move(b).value();
  }

  ForwarderOptions options() {
    ForwarderOptions o;
    o.mqtt.broker_uris = {broker_.uri()};
    o.mqtt.client_id = std::string("agent-") + kAgent;
    o.mqtt.clean_session = false;
    o.mqtt.min_reconnect = 100ms;
    o.mqtt.max_reconnect = 300ms;
    o.agent_id = kAgent;
    o.topic_prefix = kPrefix;
    o.limits.max_records = 100;
    o.linger = 20ms;
    o.ack_timeout = 30s;
    return o;
  }

  void startForwarder(ForwarderOptions o) {
    metrics_ = std::make_unique<MetricsRegistry>();
    auto f = Forwarder::start(*buffer_, std::move(o), *metrics_);
    ASSERT_TRUE(f.isOk()) << f.status().toString();
    forwarder_ = std::move(f).value();
  }

  // Appends records k<first>..k<first+n-1> (durably).
  void append(int first, int n) {
    std::vector<WireRecord> records;
    for (int i = first; i < first + n; ++i) {
      records.push_back({"customer", "k" + std::to_string(i), nowMicros(),
                         "{\"external_id\":\"k" + std::to_string(i) + "\",\"name\":\"N\"}"});
    }
    ASSERT_TRUE(buffer_->append(std::move(records), {}).isOk());
    forwarder_->notify();
  }

  // Waits until the buffer holds nothing: every batch acked and deleted.
  bool waitDrained(std::chrono::milliseconds timeout = 15s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      const BufferStats s = buffer_->stats();
      if (s.records == 0 && s.batches == 0 && s.unbatched_records == 0) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  void expectImmediateResendOn(const std::string& payload, const std::string& before = "");

  uint64_t metric(const std::string& name) {
    const std::string text = metrics_->renderPrometheus();
    const size_t at = text.find("\n" + name + " ");
    if (at == std::string::npos) return UINT64_MAX;
    return std::stoull(text.substr(at + name.size() + 2));
  }

  // `name{label="value"} N`, 0 when absent.
  uint64_t labeledMetric(const std::string& name, const std::string& label,
                         const std::string& value) {
    const std::string text = metrics_->renderPrometheus();
    const std::string series = name + "{" + label + "=\"" + value + "\"} ";
    const size_t at = text.find(series);
    if (at == std::string::npos) return 0;
    return std::stoull(text.substr(at + series.size()));
  }

  MosquittoProcess broker_;
  std::filesystem::path dir_;
  std::unique_ptr<DurableBuffer> buffer_;
  std::unique_ptr<MetricsRegistry> metrics_;
  std::unique_ptr<FakeAggregator> aggregator_;
  std::unique_ptr<Forwarder> forwarder_;
};

TEST_F(ForwarderTest, RecordsArriveAndAreDeletedOnceAcked) {
  startForwarder(options());
  append(0, 250);  // two full batches and a partial one that leaves after linger
  append(250, 7);
  ASSERT_TRUE(aggregator_->waitFor([&] { return aggregator_->keys_acked_.size() == 257; }))
      << "acked keys: " << aggregator_->keys_acked_.size();
  ASSERT_TRUE(waitDrained()) << "buffer still holds " << buffer_->stats().records << " records";
  {
    std::lock_guard lock(aggregator_->mu_);
    EXPECT_EQ(aggregator_->decode_errors_, 0u);
    for (const auto& [seq, b] : aggregator_->first_) {
      EXPECT_EQ(b.agent_id, kAgent);
      EXPECT_LE(b.records.size(), 100u) << "batch " << seq << " past max_records";
    }
  }
  EXPECT_EQ(metric("bl_agent_batches_acked_total"), metric("bl_agent_batches_sent_total"));
  EXPECT_GE(metric("bl_agent_batches_sent_total"), 3u);
  EXPECT_EQ(metric("bl_agent_batches_retried_total"), 0u);
  EXPECT_EQ(metric("bl_agent_mqtt_connected"), 1u);
  EXPECT_EQ(forwarder_->inFlight(), 0u);
}

TEST_F(ForwarderTest, UnackedBatchIsResentAfterAckTimeoutWithTheSameSeqAndRecords) {
  aggregator_->setMode(FakeAggregator::Mode::kIgnoreFirst);
  auto o = options();
  o.ack_timeout = 400ms;
  startForwarder(o);
  const auto t0 = std::chrono::steady_clock::now();
  append(0, 30);
  ASSERT_TRUE(waitDrained()) << "never acked";
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 400ms) << "resent before ack_timeout";
  std::lock_guard lock(aggregator_->mu_);
  ASSERT_FALSE(aggregator_->deliveries_.empty());
  for (const auto& [seq, n] : aggregator_->deliveries_) {
    EXPECT_GE(n, 2) << "batch " << seq;
    EXPECT_TRUE(aggregator_->equal_on_resend_[seq]) << "batch " << seq << " changed on resend";
  }
  EXPECT_EQ(aggregator_->keys_acked_.size(), 30u);
  EXPECT_GE(metric("bl_agent_batches_retried_total"), 1u);
}

// With ack_timeout at 60 s, one batch delivered and left unacked: publishing
// `payload` on an aggregator's `online` topic must get it resent (and so acked
// and drained) within 10 s. `before`, if any, is announced first, once the
// forwarder is connected (and past the resend rate limit it starts).
void ForwarderTest::expectImmediateResendOn(const std::string& payload, const std::string& before) {
  aggregator_->setMode(FakeAggregator::Mode::kIgnoreFirst);
  auto o = options();
  o.ack_timeout = 60s;
  startForwarder(o);
  const std::string topic = std::string(kPrefix) + "/aggregators/agg-9/online";
  if (!before.empty()) {
    for (int i = 0; i < 500 && !forwarder_->connected(); ++i) std::this_thread::sleep_for(20ms);
    ASSERT_TRUE(forwarder_->connected());
    ASSERT_TRUE(aggregator_->publish(topic, before).isOk());
    std::this_thread::sleep_for(1200ms);
  }
  append(0, 30);
  ASSERT_TRUE(aggregator_->waitFor([&] { return !aggregator_->deliveries_.empty(); }));
  ASSERT_TRUE(aggregator_->publish(topic, payload).isOk());
  ASSERT_TRUE(waitDrained(10s)) << "not resent";
  EXPECT_EQ(aggregator_->keys_acked_.size(), 30u);
  EXPECT_GE(metric("bl_agent_batches_retried_total"), 1u);
}

protocol::WireAnnouncement announcement(bool online, uint64_t epoch) {
  protocol::WireAnnouncement a;
  a.aggregator = "agg-9";
  a.online = online;
  a.epoch = epoch;
  return a;
}

// An aggregator announcing itself makes the agent resend what is unacked at
// once, long before ack_timeout.
TEST_F(ForwarderTest, AggregatorOnlineAnnouncementTriggersAnImmediateResend) {
  expectImmediateResendOn(protocol::encodeAnnouncement(announcement(true, 5)));
}

// An aggregator's will (it was killed holding this batch): the batch goes out
// again at once, for the others. It counts for the epoch the aggregator last
// announced online.
TEST_F(ForwarderTest, AggregatorOfflineWillTriggersAnImmediateResend) {
  expectImmediateResendOn(protocol::encodeAnnouncement(announcement(false, 5)),
                          protocol::encodeAnnouncement(announcement(true, 5)));
}

// A will of another epoch (an old one replayed), unsigned notices where the
// agent checks them, and garbage: ignored and counted, nothing resent.
TEST_F(ForwarderTest, StaleUnsignedOrMalformedAnnouncementsCauseNoResend) {
  aggregator_->setMode(FakeAggregator::Mode::kIgnoreFirst);
  auto o = options();
  o.ack_timeout = 60s;
  startForwarder(o);
  append(0, 30);
  ASSERT_TRUE(aggregator_->waitFor([&] { return !aggregator_->deliveries_.empty(); }));
  const std::string topic = std::string(kPrefix) + "/aggregators/agg-9/online";
  ASSERT_TRUE(
      aggregator_->publish(topic, protocol::encodeAnnouncement(announcement(false, 4))).isOk());
  ASSERT_TRUE(aggregator_->publish(topic, "{\"aggregator\":\"agg-9\",\"online\":false}").isOk());
  auto other = announcement(true, 1);
  other.aggregator = "agg-8";  // not the topic's aggregator
  ASSERT_TRUE(aggregator_->publish(topic, protocol::encodeAnnouncement(other)).isOk());
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (labeledMetric("bl_agent_announcements_refused_total", "reason", "malformed") < 2 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(labeledMetric("bl_agent_announcements_refused_total", "reason", "stale"), 1u);
  EXPECT_EQ(labeledMetric("bl_agent_announcements_refused_total", "reason", "malformed"), 2u);
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(metric("bl_agent_batches_retried_total"), 0u) << "a refused notice caused a resend";
  EXPECT_FALSE(waitDrained(100ms));
}

protocol::WireAnnouncement signedAnnouncement(const pki::Credential& identity, bool online,
                                              uint64_t epoch) {
  protocol::WireAnnouncement a = announcement(online, epoch);
  a.certificate_pem = identity.certificate_pem;
  a.signature = *pki::signMessage(identity.private_key_pem, protocol::announcementSigningInput(a));
  return a;
}

// With the fleet CA (mqtt.ca_file), a notice counts only when signed by an
// aggregator certificate of that CA whose CN names the topic's aggregator.
TEST_F(ForwarderTest, WithTheFleetCaOnlySignedAnnouncementsOfThatAggregatorCount) {
  const pki::Credential ca =
      *pki::createAuthority({.common_name = "fleet", .role = pki::CertRole::kAuthority});
  const pki::Credential stranger_ca =
      *pki::createAuthority({.common_name = "stranger", .role = pki::CertRole::kAuthority});
  const pki::Credential agg9 = *pki::issueCertificate(ca, {.common_name = "aggregator.agg-9"});
  const pki::Credential agg8 = *pki::issueCertificate(ca, {.common_name = "aggregator.agg-8"});
  const pki::Credential fake9 =
      *pki::issueCertificate(stranger_ca, {.common_name = "aggregator.agg-9"});
  const auto ca_file = dir_ / "ca.crt";
  ASSERT_TRUE(writeFileAtomically(ca_file, ca.certificate_pem, 0644).isOk());

  aggregator_->setMode(FakeAggregator::Mode::kIgnoreFirst);
  auto o = options();
  o.ack_timeout = 60s;
  o.mqtt.ca_file = ca_file.string();  // the broker is tcp://: used for announcements only
  startForwarder(o);
  append(0, 30);
  ASSERT_TRUE(aggregator_->waitFor([&] { return !aggregator_->deliveries_.empty(); }));
  const std::string topic = std::string(kPrefix) + "/aggregators/agg-9/online";
  auto send = [&](const protocol::WireAnnouncement& a) {
    ASSERT_TRUE(aggregator_->publish(topic, protocol::encodeAnnouncement(a)).isOk());
  };
  send(announcement(true, 1));               // unsigned
  send(signedAnnouncement(fake9, true, 1));  // another CA
  send(signedAnnouncement(agg8, true, 1));   // a real aggregator, not this one
  auto altered = signedAnnouncement(agg9, true, 1);
  altered.epoch = 2;  // signed for epoch 1
  send(altered);
  auto refusedAs = [&](const char* reason) {
    return labeledMetric("bl_agent_announcements_refused_total", "reason", reason);
  };
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (refusedAs("bad_signature") < 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(refusedAs("unsigned"), 1u);
  EXPECT_EQ(refusedAs("untrusted_certificate"), 2u);
  EXPECT_EQ(refusedAs("bad_signature"), 1u);
  EXPECT_EQ(metric("bl_agent_batches_retried_total"), 0u) << "a refused notice caused a resend";

  send(signedAnnouncement(agg9, true, 1));
  ASSERT_TRUE(waitDrained(10s)) << "a genuine notice did not get the batch resent";
  EXPECT_GE(metric("bl_agent_batches_retried_total"), 1u);
}

// Sealing on: the aggregator opens every batch with its key and the agent's
// enrolled key; a resend carries the same seq and records under a fresh
// ephemeral key (different bytes), and no record travels in clear.
TEST_F(ForwarderTest, SealedBatchesOpenWithTheAggregatorKeyAndResendsCarryTheSameRecords) {
  const SealingKeys keys;
  const protocol::SealKeyPair& aggregator_key = keys.aggregator;
  const protocol::SealKeyPair& agent_key = keys.agent;
  aggregator_->setOpenOptions(keys.openOptions());
  aggregator_->setMode(FakeAggregator::Mode::kIgnoreFirst);
  auto o = options();
  o.ack_timeout = 400ms;
  o.seal = protocol::SealerKeys{agent_key, aggregator_key.public_key};
  startForwarder(o);
  append(0, 130);
  ASSERT_TRUE(waitDrained()) << "never acked";
  {
    std::lock_guard lock(aggregator_->mu_);
    EXPECT_EQ(aggregator_->decode_errors_, 0u);
    EXPECT_EQ(aggregator_->keys_acked_.size(), 130u);
    ASSERT_GE(aggregator_->deliveries_.size(), 2u);
    for (const auto& [seq, n] : aggregator_->deliveries_) {
      EXPECT_GE(n, 2) << "batch " << seq;
      EXPECT_TRUE(aggregator_->equal_on_resend_[seq]) << "batch " << seq << " changed on resend";
      EXPECT_EQ(aggregator_->payloads_[seq].size(), size_t(n)) << "a resend reused its key";
      for (const auto& payload : aggregator_->payloads_[seq]) {
        EXPECT_EQ(payload.find("external_id"), std::string::npos) << "record in clear";
      }
    }
  }
  EXPECT_GE(metric("bl_agent_batches_sealed_total"), 4u);
  EXPECT_GT(metric("bl_agent_seal_microseconds_total"), 0u);
}

// The broker, a bridge or any fleet certificate can publish on an agent's ack
// topic. With sealing on, an ack counts only when tagged with the key the agent
// shares with the aggregators and when it names the content held: forged,
// tampered, replayed and unknown acks delete nothing, and are counted.
TEST_F(ForwarderTest, ForgedTamperedAndReplayedAcksDeleteNothing) {
  const SealingKeys keys;
  const protocol::SealKeyPair& aggregator_key = keys.aggregator;
  const protocol::SealKeyPair& agent_key = keys.agent;
  aggregator_->setOpenOptions(keys.openOptions());
  aggregator_->setMode(FakeAggregator::Mode::kSilent);
  auto o = options();
  o.seal = protocol::SealerKeys{agent_key, aggregator_key.public_key};
  startForwarder(o);
  append(0, 250);
  ASSERT_TRUE(aggregator_->waitFor([&] { return aggregator_->first_.size() == 3; }));
  std::map<uint64_t, WireBatch> held;
  {
    std::lock_guard lock(aggregator_->mu_);
    held = aggregator_->first_;
  }
  const protocol::AckKey real_key =
      *protocol::aggregatorAckKey(aggregator_key, agent_key.public_key);
  const std::string ack_topic = std::string(kPrefix) + "/agents/" + kAgent + "/ack";
  auto ackFor = [&](uint64_t seq) {
    protocol::WireAck a;
    a.agent_id = kAgent;
    a.batch_seq = seq;
    a.status = AckStatus::kStored;
    a.stored_records = 100;
    a.aggregator = "agg-1";
    if (held.count(seq)) a.digest = protocol::batchDigest(held[seq]);
    return a;
  };
  size_t forged = 0, tampered = 0, replayed = 0, unknown = 0;
  for (uint64_t seq = 0; seq <= 200; ++seq) {  // untagged, as built from the schema alone
    ASSERT_TRUE(aggregator_->publish(ack_topic, protocol::encodeAck(ackFor(seq))).isOk());
    ++forged;
  }
  for (const auto& [seq, batch] : held) {
    // A real ack for another batch, moved to this seq.
    protocol::WireAck moved = ackFor(seq == 0 ? 1 : 0);
    protocol::signAck(real_key, moved);
    moved.batch_seq = seq;
    moved.digest = protocol::batchDigest(batch);
    ASSERT_TRUE(aggregator_->publish(ack_topic, protocol::encodeAck(moved)).isOk());
    ++tampered;
    // Authentic, but for other content under this seq.
    protocol::WireAck other = ackFor(seq);
    WireBatch changed = batch;
    changed.records.pop_back();
    other.digest = protocol::batchDigest(changed);
    protocol::signAck(real_key, other);
    ASSERT_TRUE(aggregator_->publish(ack_topic, protocol::encodeAck(other)).isOk());
    ++replayed;
  }
  protocol::WireAck never_sent = ackFor(999);
  protocol::signAck(real_key, never_sent);
  ASSERT_TRUE(aggregator_->publish(ack_topic, protocol::encodeAck(never_sent)).isOk());
  ++unknown;

  const auto deadline = std::chrono::steady_clock::now() + 15s;
  auto counted = [&] {
    return labeledMetric("bl_agent_acks_refused_total", "reason", "forged") == forged &&
           labeledMetric("bl_agent_acks_refused_total", "reason", "tampered") == tampered &&
           labeledMetric("bl_agent_acks_refused_total", "reason", "replayed") == replayed &&
           labeledMetric("bl_agent_acks_refused_total", "reason", "unknown_batch") == unknown;
  };
  while (!counted() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(counted()) << metrics_->renderPrometheus();
  EXPECT_EQ(buffer_->stats().records, 250u) << "an unauthentic ack deleted records";
  EXPECT_EQ(metric("bl_agent_batches_acked_total"), 0u);

  // The real acks still work.
  aggregator_->setMode(FakeAggregator::Mode::kAck);
  aggregator_->ackAllSeen();
  ASSERT_TRUE(waitDrained()) << "real acks did not delete the batches";
  EXPECT_EQ(metric("bl_agent_batches_acked_total"), 3u);
}

TEST_F(ForwarderTest, SealingWithALowOrderAggregatorKeyFailsAtStart) {
  auto o = options();
  o.seal = protocol::SealerKeys{*protocol::generateSealKeyPair(), protocol::X25519Key{}};
  MetricsRegistry metrics;
  auto f = Forwarder::start(*buffer_, std::move(o), metrics);
  ASSERT_FALSE(f.isOk());
  EXPECT_NE(f.status().message().find("sealing keys"), std::string::npos) << f.status().message();
}

TEST_F(ForwarderTest, RefusedBatchIsKeptAndRetried) {
  aggregator_->setMode(FakeAggregator::Mode::kRefuseFirst);
  auto o = options();
  o.ack_timeout = 300ms;
  startForwarder(o);
  append(0, 5);
  ASSERT_TRUE(waitDrained());
  EXPECT_EQ(metric("bl_agent_batches_refused_total"), 1u);
  EXPECT_GE(metric("bl_agent_batches_retried_total"), 1u);
  std::lock_guard lock(aggregator_->mu_);
  EXPECT_EQ(aggregator_->keys_acked_.size(), 5u);
}

TEST_F(ForwarderTest, RestartResendsUnackedBatchesFirst) {
  aggregator_->setMode(FakeAggregator::Mode::kSilent);
  startForwarder(options());
  append(0, 150);  // batch of 100 + batch of 50
  ASSERT_TRUE(aggregator_->waitFor([&] { return aggregator_->first_.size() == 2; }));
  std::map<uint64_t, WireBatch> before;
  {
    std::lock_guard lock(aggregator_->mu_);
    before = aggregator_->first_;
  }
  // The agent goes down with both batches unacked, and comes back.
  forwarder_.reset();
  buffer_.reset();
  openBuffer();
  ASSERT_EQ(buffer_->stats().batches, 2u);
  aggregator_->setMode(FakeAggregator::Mode::kAck);
  startForwarder(options());
  append(150, 10);  // formed only after the old ones went out again
  ASSERT_TRUE(waitDrained());
  std::lock_guard lock(aggregator_->mu_);
  for (const auto& [seq, b] : before) {
    EXPECT_GE(aggregator_->deliveries_[seq], 2) << "batch " << seq << " not resent";
    EXPECT_TRUE(aggregator_->equal_on_resend_[seq]) << "batch " << seq << " changed on resend";
  }
  EXPECT_EQ(aggregator_->keys_acked_.size(), 160u);
  EXPECT_GT(aggregator_->first_.rbegin()->first, before.rbegin()->first)
      << "the new batch reused an old seq";
}

TEST_F(ForwarderTest, WindowBoundsBatchesInFlight) {
  aggregator_->setMode(FakeAggregator::Mode::kSilent);
  auto o = options();
  o.limits.max_records = 10;
  o.window_batches = 3;
  startForwarder(o);
  append(0, 100);
  ASSERT_TRUE(aggregator_->waitFor([&] { return aggregator_->first_.size() >= 3; }));
  std::this_thread::sleep_for(500ms);
  {
    std::lock_guard lock(aggregator_->mu_);
    EXPECT_EQ(aggregator_->first_.size(), 3u) << "window of 3 batches exceeded";
  }
  EXPECT_EQ(forwarder_->inFlight(), 3u);
  // Acks open the window again, until everything is through.
  aggregator_->setMode(FakeAggregator::Mode::kAck);
  aggregator_->ackAllSeen();
  ASSERT_TRUE(waitDrained());
  std::lock_guard lock(aggregator_->mu_);
  EXPECT_EQ(aggregator_->keys_acked_.size(), 100u);
  EXPECT_EQ(aggregator_->first_.size(), 10u);
}

TEST_F(ForwarderTest, WindowBytesBoundsBytesInFlight) {
  aggregator_->setMode(FakeAggregator::Mode::kSilent);
  auto o = options();
  o.limits.max_records = 10;
  o.window_batches = 100;
  o.window_bytes = 1;  // below one batch: exactly one in flight at a time
  startForwarder(o);
  append(0, 50);
  ASSERT_TRUE(aggregator_->waitFor([&] { return aggregator_->first_.size() >= 1; }));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(forwarder_->inFlight(), 1u);
  std::lock_guard lock(aggregator_->mu_);
  EXPECT_EQ(aggregator_->first_.size(), 1u);
}

// The broker restarts (SIGTERM: it keeps its sessions) while batches wait
// unacked: the reconnect alone resends them. The fake aggregator's session is
// persistent, so a resend that reaches the broker before the aggregator has
// reconnected is queued for it instead of lost (with a clean session that race
// made this test flaky on a busy machine).
TEST_F(ForwarderTest, BrokerRestartThenEverythingArrives) {
  aggregator_.reset();
  aggregator_ = std::make_unique<FakeAggregator>(broker_.uri(), /*persistent=*/true);
  auto o = options();
  o.ack_timeout = 60s;  // only the reconnect may trigger the resend here
  startForwarder(o);
  append(0, 20);
  ASSERT_TRUE(waitDrained());

  aggregator_->setMode(FakeAggregator::Mode::kSilent);
  append(20, 20);
  ASSERT_TRUE(aggregator_->waitFor([&] { return aggregator_->first_.size() >= 2; }));
  broker_.stop();
  // While away nothing new is formed.
  std::this_thread::sleep_for(300ms);
  append(40, 20);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(buffer_->stats().unbatched_records, 20u);
  EXPECT_FALSE(forwarder_->connected());

  aggregator_->setMode(FakeAggregator::Mode::kAck);
  ASSERT_TRUE(broker_.restart()) << broker_.error();
  ASSERT_TRUE(waitDrained(20s)) << "not drained after the broker came back";
  std::lock_guard lock(aggregator_->mu_);
  EXPECT_EQ(aggregator_->keys_acked_.size(), 60u);
}

// What the agent's /health reads: how long the link is down, how long acks wait.
TEST_F(ForwarderTest, ProgressSaysHowLongTheLinkIsDownAndHowLongAcksWait) {
  const auto eventually = [](auto pred) {
    const auto deadline = std::chrono::steady_clock::now() + 15s;
    while (!pred() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    return pred();
  };
  startForwarder(options());
  ASSERT_TRUE(eventually([&] { return forwarder_->connected(); }));
  ForwardProgress p = forwarder_->progress();
  EXPECT_EQ(p.disconnected_for, 0ms);
  EXPECT_EQ(p.unacked_for, 0ms);
  append(0, 10);
  ASSERT_TRUE(waitDrained());
  ASSERT_TRUE(eventually([&] { return forwarder_->progress().unacked_for == 0ms; }));

  // No ack: the batch waits, and the wait grows.
  aggregator_->setMode(FakeAggregator::Mode::kSilent);
  append(10, 10);
  ASSERT_TRUE(eventually([&] { return forwarder_->progress().in_flight == 1; }));
  std::this_thread::sleep_for(150ms);
  p = forwarder_->progress();
  EXPECT_GE(p.unacked_for, 100ms);
  EXPECT_LT(p.unacked_for, 10s);
  EXPECT_TRUE(p.connected);
  // An ack ends the wait.
  aggregator_->ackAllSeen();
  ASSERT_TRUE(waitDrained());
  ASSERT_TRUE(eventually([&] { return forwarder_->progress().unacked_for == 0ms; }));

  // The broker dies: the outage is timed from the first loss, not from each
  // failed reconnect (every 100-300 ms here).
  broker_.kill9();
  ASSERT_TRUE(eventually([&] { return !forwarder_->progress().connected; }));
  std::this_thread::sleep_for(600ms);
  p = forwarder_->progress();
  EXPECT_FALSE(p.connected);
  EXPECT_GE(p.disconnected_for, 550ms);
  ASSERT_TRUE(broker_.restart()) << broker_.error();
  ASSERT_TRUE(eventually([&] { return forwarder_->progress().connected; }));
  EXPECT_EQ(forwarder_->progress().disconnected_for, 0ms);
}

TEST_F(ForwarderTest, NothingIsFormedWithoutABroker) {
  auto o = options();
  o.mqtt.broker_uris = {"tcp://127.0.0.1:" + std::to_string(MosquittoProcess::freePort())};
  startForwarder(o);
  append(0, 250);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(buffer_->stats().batches, 0u);
  EXPECT_EQ(buffer_->stats().unbatched_records, 250u);
  EXPECT_EQ(metric("bl_agent_buffer_records"), 250u);
}

}  // namespace
}  // namespace branchline::agent
