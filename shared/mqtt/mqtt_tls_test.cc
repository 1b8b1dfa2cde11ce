// Mutual TLS, the per-identity access policy and the broker limits, end to
// end: a real Mosquitto in the mode `branchline pki` and `branchline up`
// configure, real Paho clients with certificates from shared/pki. What is
// refused must be refused by the broker itself.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "shared/core/atomic_file.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/mqtt/testing/mosquitto_process.h"
#include "shared/pki/broker_config.h"
#include "shared/pki/pki.h"

namespace branchline::mqtt {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string kAgents = "branchline/v1/agents/";

// Received messages, for waiting on from the test thread.
class Inbox {
 public:
  MessageHandler handler() {
    return [this](Message&& m) {
      std::lock_guard lock(mu_);
      messages_.push_back(std::move(m));
      cv_.notify_all();
    };
  }
  // True once a message with this payload arrived (within `timeout`).
  bool waitFor(const std::string& payload, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      for (const auto& m : messages_) {
        if (m.payload == payload) return true;
      }
      return false;
    });
  }
  std::vector<Message> all() {
    std::lock_guard lock(mu_);
    return messages_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Message> messages_;
};

bool waitConnected(Client& c, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (c.connected()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return c.connected();
}

// One CA, a broker and the identities the tests use, written once; one broker
// for the whole suite (each Paho TLS connect costs time, so tests stay few).
class MqttTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/bl-mqtt-tls-test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = new fs::path(tmpl);
    pki::CertificateSpec ca_spec;
    ca_spec.common_name = "Branchline test CA";
    ca_spec.role = pki::CertRole::kAuthority;
    auto ca = pki::createAuthority(ca_spec);
    ASSERT_TRUE(ca.isOk()) << ca.status().toString();
    ca_spec.common_name = "Another CA";
    auto other_ca = pki::createAuthority(ca_spec);
    ASSERT_TRUE(other_ca.isOk());
    write("ca.crt", ca->certificate_pem, 0644);
    write("other-ca.crt", other_ca->certificate_pem, 0644);

    pki::CertificateSpec server;
    server.common_name = "broker";
    server.role = pki::CertRole::kServer;
    server.dns_names = {"localhost"};
    server.ip_addresses = {"127.0.0.1"};
    issue(*ca, server, "broker");
    issue(*ca, client("agent-1"), "agent-1");
    issue(*ca, client("agent-2"), "agent-2");
    issue(*ca, client("agent-4"), "agent-4");
    issue(*ca, client("agent-5"), "agent-5");
    issue(*ca, client(pki::aggregatorIdentity("agg-1")), "agg-1");
    issue(*other_ca, client("agent-1"), "foreign-agent-1");
    pki::CertificateSpec expired = client("agent-3");
    const int64_t now = static_cast<int64_t>(::time(nullptr));
    expired.not_before = now - 30 * 86400;
    expired.not_after = now - 86400;
    issue(*ca, expired, "expired-agent-3");

    broker_ = new testing::MosquittoProcess();
    broker_->useTls(
        file("ca.crt"), file("broker.crt"), file("broker.key"),
        pki::mosquittoDynamicSecurity(
            "branchline/v1", {.agents = {"agent-1", "agent-2", "agent-3", "agent-4", "agent-5"},
                              .aggregators = {"agg-1"}}));
    ASSERT_TRUE(broker_->start()) << broker_->error();
  }
  static void TearDownTestSuite() {
    delete broker_;
    broker_ = nullptr;
    if (dir_ != nullptr) fs::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }

  static pki::CertificateSpec client(const std::string& cn) {
    pki::CertificateSpec s;
    s.common_name = cn;
    s.role = pki::CertRole::kClient;
    s.days = 2;
    return s;
  }
  static std::string file(const std::string& name) { return (*dir_ / name).string(); }
  static void write(const std::string& name, const std::string& text, mode_t mode) {
    Status s = writeFileAtomically(*dir_ / name, text, mode);
    ASSERT_TRUE(s.isOk()) << s.toString();
  }
  static void issue(const pki::Credential& ca, const pki::CertificateSpec& spec,
                    const std::string& name) {
    auto c = pki::issueCertificate(ca, spec);
    ASSERT_TRUE(c.isOk()) << c.status().toString();
    write(name + ".crt", c->certificate_pem, 0644);
    write(name + ".key", c->private_key_pem, 0600);
  }

  // A client of the suite's broker; `identity` names the .crt/.key pair ("" = none).
  static ClientOptions options(const std::string& identity, const std::string& ca = "ca.crt") {
    ClientOptions o;
    o.broker_uris = {broker_->uri()};
    o.min_reconnect = 100ms;
    o.max_reconnect = 500ms;
    o.ca_file = file(ca);
    if (!identity.empty()) {
      o.cert_file = file(identity + ".crt");
      o.key_file = file(identity + ".key");
    }
    return o;
  }

  static fs::path* dir_;
  static testing::MosquittoProcess* broker_;
};

fs::path* MqttTlsTest::dir_ = nullptr;
testing::MosquittoProcess* MqttTlsTest::broker_ = nullptr;

// All started at once, against one control that must get in: a client with no
// certificate, with one from another CA, with an expired one, and a client
// that does not trust the broker's CA; none of them ever connects.
TEST_F(MqttTlsTest, OnlyClientsWithAValidCertificateConnect) {
  Client good(options("agent-1"), nullptr, nullptr);
  Client no_cert(options(""), nullptr, nullptr);
  Client foreign(options("foreign-agent-1"), nullptr, nullptr);
  Client expired(options("expired-agent-3"), nullptr, nullptr);
  Client distrustful(options("agent-2", "other-ca.crt"), nullptr, nullptr);
  ClientOptions plain_options = options("");
  plain_options.broker_uris = {"tcp://127.0.0.1:" + std::to_string(broker_->port())};
  Client plain(plain_options, nullptr, nullptr);
  for (Client* c : {&good, &no_cert, &foreign, &expired, &distrustful, &plain}) {
    ASSERT_TRUE(c->start().isOk());
  }
  ASSERT_TRUE(waitConnected(good, 20s))
      << "a valid certificate must connect; see " << broker_->dir() / "mosquitto.log";
  // Several reconnect rounds (100-500 ms apart) for the others to fail in.
  std::this_thread::sleep_for(2s);
  EXPECT_FALSE(no_cert.connected()) << "no client certificate";
  EXPECT_FALSE(foreign.connected()) << "certificate from another CA";
  EXPECT_FALSE(expired.connected()) << "expired certificate";
  EXPECT_FALSE(distrustful.connected()) << "broker certificate not from the trusted CA";
  EXPECT_FALSE(plain.connected()) << "plain TCP to the TLS listener";
  EXPECT_TRUE(good.connected());
  // The broker's own reasons, and the certificate's CN as the user name.
  const std::string log = *pki::readFile(broker_->dir() / "mosquitto.log");
  EXPECT_NE(log.find("peer did not return a certificate"), std::string::npos) << log;
  EXPECT_NE(log.find("certificate verify failed"), std::string::npos) << log;
  EXPECT_NE(log.find("alert unknown ca"), std::string::npos) << log;
  EXPECT_NE(log.find("u'agent-1')"), std::string::npos) << log;
}

// The broker enforces the ACL: agent-1 cannot publish under agent-2's id, cannot
// read another agent's ack, and cannot read batches at all; the aggregator
// identity (subscribed as aggregators are, through $share) sees agent-1's own
// batches and never the forged one.
TEST_F(MqttTlsTest, AclConfinesEachAgentToItsOwnTopics) {
  Inbox aggregator_inbox, agent1_inbox, agent2_inbox;
  Client aggregator(options("agg-1"), aggregator_inbox.handler(), nullptr);
  // MQTT 5: the broker answers the forged publish with PUBACK 0x87.
  std::mutex refused_mu;
  std::vector<std::pair<std::string, int>> refused;
  ClientOptions agent1_options = options("agent-1");
  agent1_options.on_publish_refused = [&](const std::string& topic, int code, const std::string&) {
    std::lock_guard lock(refused_mu);
    refused.emplace_back(topic, code);
  };
  Client agent1(agent1_options, agent1_inbox.handler(), nullptr);
  Client agent2(options("agent-2"), agent2_inbox.handler(), nullptr);
  for (Client* c : {&aggregator, &agent1, &agent2}) ASSERT_TRUE(c->start().isOk());
  for (Client* c : {&aggregator, &agent1, &agent2}) ASSERT_TRUE(waitConnected(*c, 20s));

  ASSERT_TRUE(aggregator.subscribe("$share/branchline-aggregators/" + kAgents + "+/batch").isOk());
  ASSERT_TRUE(agent1.subscribe(kAgents + "agent-1/ack").isOk());
  ASSERT_TRUE(agent2.subscribe(kAgents + "agent-2/ack").isOk());
  // Not allowed: the broker refuses them in the SUBACK (and would deliver
  // nothing on them anyway).
  EXPECT_FALSE(agent1.subscribe(kAgents + "agent-2/ack").isOk());
  EXPECT_FALSE(agent2.subscribe(kAgents + "+/batch").isOk());

  // One connection delivers in order: once "own-2" arrives, "forged" (sent
  // before it) would have arrived too had the broker let it through.
  ASSERT_TRUE(agent1.publish(kAgents + "agent-1/batch", "own-1").isOk());
  ASSERT_TRUE(agent1.publish(kAgents + "agent-2/batch", "forged").isOk());
  ASSERT_TRUE(agent1.publish(kAgents + "agent-1/batch", "own-2").isOk());
  ASSERT_TRUE(aggregator_inbox.waitFor("own-2", 10s));
  std::vector<std::string> seen;
  for (const auto& m : aggregator_inbox.all()) seen.push_back(m.topic + " " + m.payload);
  EXPECT_EQ(seen, (std::vector<std::string>{kAgents + "agent-1/batch own-1",
                                            kAgents + "agent-1/batch own-2"}));
  EXPECT_TRUE(agent1.connected()) << "a refused publish is dropped, the client stays";
  {
    // The PUBACKs come in order: "own-2" was delivered, so the refusal is in.
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    std::unique_lock lock(refused_mu);
    while (refused.empty() && std::chrono::steady_clock::now() < deadline) {
      lock.unlock();
      std::this_thread::sleep_for(20ms);
      lock.lock();
    }
    EXPECT_EQ(refused,
              (std::vector<std::pair<std::string, int>>{{kAgents + "agent-2/batch", 0x87}}));
  }

  ASSERT_TRUE(aggregator.publish(kAgents + "agent-2/ack", "ack-for-2").isOk());
  ASSERT_TRUE(aggregator.publish(kAgents + "agent-1/ack", "ack-for-1").isOk());
  ASSERT_TRUE(agent2_inbox.waitFor("ack-for-2", 10s)) << "agent-2 reads its own ack";
  ASSERT_TRUE(agent1_inbox.waitFor("ack-for-1", 10s)) << "agent-1 reads its own ack";
  for (const auto& m : agent1_inbox.all()) {
    EXPECT_EQ(m.topic, kAgents + "agent-1/ack") << "agent-1 read " << m.payload;
  }
  for (const auto& m : agent2_inbox.all()) {
    EXPECT_EQ(m.topic, kAgents + "agent-2/ack") << "agent-2 read a batch: " << m.payload;
  }
}

// Batches reach only aggregators (README "Broker access policy"): three clients with
// agent certificates asking to join the aggregators' shared subscription, or
// to read every batch directly, are refused at SUBSCRIBE time by the broker;
// so the aggregator gets every batch an agent publishes, at once, and no
// attacker gets any.
TEST_F(MqttTlsTest, OnlyAggregatorsMaySubscribeToBatches) {
  const std::string shared = "$share/branchline-aggregators/" + kAgents + "+/batch";
  Inbox aggregator_inbox, attackers_inbox;
  Client aggregator(options("agg-1"), aggregator_inbox.handler(), nullptr);
  Client agent2(options("agent-2"), nullptr, nullptr);
  Client a1(options("agent-1"), attackers_inbox.handler(), nullptr);
  Client a4(options("agent-4"), attackers_inbox.handler(), nullptr);
  Client a5(options("agent-5"), attackers_inbox.handler(), nullptr);
  std::vector<Client*> attackers{&a1, &a4, &a5};
  for (Client* c : {&aggregator, &agent2, &a1, &a4, &a5}) ASSERT_TRUE(c->start().isOk());
  for (Client* c : {&aggregator, &agent2, &a1, &a4, &a5}) ASSERT_TRUE(waitConnected(*c, 20s));
  ASSERT_TRUE(aggregator.subscribe(shared).isOk());
  for (Client* c : attackers) {
    for (const std::string& filter : {shared, kAgents + "+/batch", kAgents + "agent-2/batch"}) {
      Status s = c->subscribe(filter);
      EXPECT_FALSE(s.isOk()) << filter << ": the broker granted it";
      // The SUBACK's failure code: 0x87 Not authorized (MQTT 5).
      EXPECT_EQ(s.code(), Code::kPermissionDenied) << s.toString();
      EXPECT_NE(s.message().find("0x87 Not authorized"), std::string::npos) << s.toString();
    }
  }

  const int kBatches = 200;
  for (int i = 0; i < kBatches; ++i) {
    // Paho refuses a publish past its in-flight window (64): try again shortly.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    Status s;
    while (!(s = agent2.publish(kAgents + "agent-2/batch", "b-" + std::to_string(i))).isOk() &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
    ASSERT_TRUE(s.isOk()) << s.toString();
  }
  // Round-robin with three intruders would leave the aggregator a quarter.
  ASSERT_TRUE(aggregator_inbox.waitFor("b-" + std::to_string(kBatches - 1), 10s));
  EXPECT_EQ(aggregator_inbox.all().size(), static_cast<size_t>(kBatches));
  EXPECT_TRUE(attackers_inbox.all().empty()) << attackers_inbox.all().front().payload;
}

// One identity per connection (README "Broker access policy", `use_username_as_clientid`):
// for 10 s a client with agent-1's certificate keeps connecting under agent-2's
// client id and under the aggregator's. agent-2 is never disconnected and every
// batch it publishes meanwhile arrives; the aggregator's last will (its
// "offline" notice) never reaches the agents.
TEST_F(MqttTlsTest, AnotherCertificateCannotTakeOverAClientId) {
  const std::string will = "offline-will-of-agg-1";
  const std::string agg_id = "agg-1-" + std::to_string(::getpid());
  std::atomic<int> agent2_losses{0}, aggregator_losses{0};
  Inbox aggregator_inbox, agent2_inbox;
  ClientOptions agg_options = options("agg-1");
  agg_options.client_id = agg_id;
  agg_options.will_topic = "branchline/v1/aggregators/agg-1/online";
  agg_options.will_payload = will;
  Client aggregator(agg_options, aggregator_inbox.handler(), [&](bool up) {
    if (!up) ++aggregator_losses;
  });
  ClientOptions agent2_options = options("agent-2");
  agent2_options.client_id = "branchline-agent-agent-2";
  agent2_options.clean_session = false;
  Client agent2(agent2_options, agent2_inbox.handler(), [&](bool up) {
    if (!up) ++agent2_losses;
  });
  for (Client* c : {&aggregator, &agent2}) ASSERT_TRUE(c->start().isOk());
  for (Client* c : {&aggregator, &agent2}) ASSERT_TRUE(waitConnected(*c, 20s));
  ASSERT_TRUE(aggregator.subscribe("$share/branchline-aggregators/" + kAgents + "+/batch").isOk());
  ASSERT_TRUE(agent2.subscribe("branchline/v1/aggregators/+/online").isOk());

  std::atomic<bool> attacking{true};
  std::atomic<int> attacker_connects{0};
  std::thread attacker([&] {
    for (int round = 0; attacking.load(); ++round) {
      ClientOptions o = options("agent-1");
      o.client_id = round % 2 == 0 ? "branchline-agent-agent-2" : agg_id;
      Client c(o, nullptr, nullptr);
      if (!c.start().isOk()) continue;
      if (waitConnected(c, 5s)) ++attacker_connects;
    }
  });
  int published = 0, samples_disconnected = 0;
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    if (!agent2.connected()) ++samples_disconnected;
    if (agent2.publish(kAgents + "agent-2/batch", "batch-" + std::to_string(published)).isOk()) {
      ++published;
    }
    std::this_thread::sleep_for(100ms);
  }
  attacking = false;
  attacker.join();

  EXPECT_GE(attacker_connects.load(), 3) << "the attacker must really have connected";
  EXPECT_EQ(samples_disconnected, 0);
  EXPECT_EQ(agent2_losses.load(), 0) << "agent-2 was disconnected";
  EXPECT_EQ(aggregator_losses.load(), 0) << "the aggregator was disconnected";
  ASSERT_GT(published, 50);
  ASSERT_TRUE(aggregator_inbox.waitFor("batch-" + std::to_string(published - 1), 10s));
  EXPECT_EQ(aggregator_inbox.all().size(), static_cast<size_t>(published))
      << "every batch agent-2 published arrived, once";
  for (const auto& m : agent2_inbox.all()) {
    EXPECT_NE(m.payload, will) << "the aggregator's will fired on " << m.topic;
  }
}

// The broker's resident memory in KiB (VmRSS), or -1.
long residentKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// Broker limits (README "Broker limits", pki::mosquittoLimits()): publishes
// past max_packet_size (the aggregators' 16 MiB payload limit plus headers)
// are refused by the broker, which disconnects the client before reading the
// payload: none is delivered and the broker's memory does not grow with them.
// The client's next, normal publish goes through.
TEST_F(MqttTlsTest, APublishPastTheSizeLimitIsRefusedAndTheBrokerStaysSmall) {
  Inbox aggregator_inbox;
  std::atomic<int> losses{0};
  Client aggregator(options("agg-1"), aggregator_inbox.handler(), nullptr);
  Client agent2(options("agent-2"), nullptr, [&](bool up) {
    if (!up) ++losses;
  });
  for (Client* c : {&aggregator, &agent2}) ASSERT_TRUE(c->start().isOk());
  for (Client* c : {&aggregator, &agent2}) ASSERT_TRUE(waitConnected(*c, 20s));
  ASSERT_TRUE(aggregator.subscribe("$share/branchline-aggregators/" + kAgents + "+/batch").isOk());
  ASSERT_TRUE(agent2.publish(kAgents + "agent-2/batch", "before").isOk());
  ASSERT_TRUE(aggregator_inbox.waitFor("before", 10s));
  const long rss_before = residentKib(broker_->pid());
  ASSERT_GT(rss_before, 0);

  const size_t kHuge = size_t{32} << 20;  // twice the limit
  // An MQTT 5 client learns the broker's Maximum Packet Size from its CONNACK
  // and refuses such a publish itself, staying connected.
  Status local = agent2.publish(kAgents + "agent-2/batch", std::string(kHuge, 'x'));
  EXPECT_EQ(local.code(), Code::kInvalidArgument) << local.toString();
  // A client that ignores it (an MQTT 3.1.1 tool with the same certificate) is
  // cut off by the broker at the packet's length prefix.
  const std::string huge_file = file("huge.bin");
  {
    std::ofstream out(huge_file, std::ios::binary);
    out << std::string(kHuge, 'x');
  }
  auto publishFile = [&](const std::string& path, const std::string& client_id) {
    const std::string cmd = "timeout 30 mosquitto_pub -V mqttv311 -q 1 -h 127.0.0.1 -p " +
                            std::to_string(broker_->port()) + " --cafile " + file("ca.crt") +
                            " --cert " + file("agent-2.crt") + " --key " + file("agent-2.key") +
                            " -i " + client_id + " -t " + kAgents + "agent-2/batch -f " + path +
                            " >/dev/null 2>&1";
    return std::system(cmd.c_str());
  };
  write("small.bin", "small-from-the-tool", 0644);
  ASSERT_EQ(publishFile(file("small.bin"), "tool-check"), 0) << "the tool itself does not work";
  ASSERT_TRUE(aggregator_inbox.waitFor("small-from-the-tool", 10s));
  for (int i = 0; i < 4; ++i) {
    EXPECT_NE(publishFile(huge_file, "intruder-" + std::to_string(i)), 0)
        << "publish " << i << " was taken";
  }
  const long rss_after = residentKib(broker_->pid());
  ASSERT_TRUE(waitConnected(agent2, 20s));
  ASSERT_TRUE(agent2.publish(kAgents + "agent-2/batch", "after").isOk());
  ASSERT_TRUE(aggregator_inbox.waitFor("after", 20s));
  for (const auto& m : aggregator_inbox.all()) {
    EXPECT_LT(m.payload.size(), size_t{1} << 20) << "an oversized publish was delivered";
  }
  // Holding even one of them would have cost 32 MiB.
  EXPECT_LT(rss_after - rss_before, 8 * 1024) << rss_before << " KiB -> " << rss_after << " KiB";
}

// Unusable TLS options are one clear error at start(), not an endless retry loop.
TEST(MqttTlsOptionsTest, StartRefusesUnusableTlsFiles) {
  char tmpl[] = "/tmp/bl-mqtt-tls-opts.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path dir = tmpl;
  ASSERT_TRUE(writeFileAtomically(dir / "c.crt", "x", 0644).isOk());
  ASSERT_TRUE(writeFileAtomically(dir / "c.key", "x", 0644).isOk());
  ClientOptions o;
  o.broker_uris = {"ssl://127.0.0.1:1"};
  o.ca_file = (dir / "missing-ca.crt").string();
  o.cert_file = (dir / "c.crt").string();
  o.key_file = (dir / "c.key").string();
  {
    Status s = Client(o, nullptr, nullptr).start();
    EXPECT_EQ(s.code(), Code::kNotFound);
    EXPECT_NE(s.message().find("ca_file"), std::string::npos) << s.message();
  }
  o.ca_file = o.cert_file;
  {
    Status s = Client(o, nullptr, nullptr).start();
    EXPECT_EQ(s.code(), Code::kPermissionDenied);
    EXPECT_NE(s.message().find("chmod 600"), std::string::npos) << s.message();
  }
  // A key that is not the certificate's.
  pki::CertificateSpec spec;
  spec.common_name = "CA";
  spec.role = pki::CertRole::kAuthority;
  auto ca = pki::createAuthority(spec);
  ASSERT_TRUE(ca.isOk());
  spec.role = pki::CertRole::kClient;
  spec.common_name = "agent-1";
  auto one = pki::issueCertificate(*ca, spec);
  spec.common_name = "agent-2";
  auto two = pki::issueCertificate(*ca, spec);
  ASSERT_TRUE(one.isOk() && two.isOk());
  ASSERT_TRUE(writeFileAtomically(dir / "c.crt", one->certificate_pem, 0644).isOk());
  ASSERT_TRUE(writeFileAtomically(dir / "c.key", two->private_key_pem, 0600).isOk());
  {
    Status s = Client(o, nullptr, nullptr).start();
    EXPECT_EQ(s.code(), Code::kInvalidArgument);
    EXPECT_NE(s.message().find("is not the private key of"), std::string::npos) << s.message();
  }
  o.key_file.clear();
  EXPECT_EQ(Client(o, nullptr, nullptr).start().code(), Code::kInvalidArgument);
  // tcp:// ignores the TLS options entirely.
  o.broker_uris = {"tcp://127.0.0.1:1"};
  EXPECT_TRUE(Client(o, nullptr, nullptr).start().isOk());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace branchline::mqtt
