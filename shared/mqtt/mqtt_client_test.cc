#include "shared/mqtt/mqtt_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "shared/mqtt/testing/mosquitto_process.h"

namespace branchline::mqtt {
namespace {

using namespace std::chrono_literals;
using testing::MosquittoProcess;

// Collects what one client sees; handlers only push under a mutex (never block Paho).
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Message> messages;
  int ups = 0;
  int downs = 0;

  MessageHandler messageHandler() {
    return [this](Message&& m) {
      std::lock_guard lock(mu);
      messages.push_back(std::move(m));
      cv.notify_all();
    };
  }
  ConnectionHandler connectionHandler() {
    return [this](bool up) {
      std::lock_guard lock(mu);
      (up ? ups : downs)++;
      cv.notify_all();
    };
  }
  template <typename Pred>
  bool waitFor(Pred pred, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return pred(); });
  }
  size_t count() {
    std::lock_guard lock(mu);
    return messages.size();
  }
};

class MqttClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(broker_.start()) << broker_.error(); }

  ClientOptions options(const std::string& id) {
    ClientOptions o;
    o.broker_uris = {broker_.uri()};
    o.client_id = id;
    o.min_reconnect = 100ms;
    o.max_reconnect = 500ms;
    o.keepalive = 2s;
    return o;
  }

  std::unique_ptr<Client> connectedClient(const std::string& id, Inbox& inbox) {
    auto c =
        std::make_unique<Client>(options(id), inbox.messageHandler(), inbox.connectionHandler());
    EXPECT_TRUE(c->start().isOk());
    EXPECT_TRUE(inbox.waitFor([&] { return inbox.ups >= 1; })) << id << " never connected";
    return c;
  }

  MosquittoProcess broker_;
};

TEST_F(MqttClientTest, PublishSubscribeRoundTrip) {
  Inbox sub_box, pub_box;
  auto sub = connectedClient("sub", sub_box);
  ASSERT_TRUE(sub->subscribe("t/+/x", 1).isOk());
  auto pub = connectedClient("pub", pub_box);

  std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(pub->publish("t/1/x", binary, 1).isOk());
  ASSERT_TRUE(pub->publish("t/2/y", "not for sub", 1).isOk());
  ASSERT_TRUE(pub->publish("t/3/x", "second", 1).isOk());
  ASSERT_TRUE(sub_box.waitFor([&] { return sub_box.messages.size() >= 2; }));
  std::this_thread::sleep_for(200ms);
  std::lock_guard lock(sub_box.mu);
  ASSERT_EQ(sub_box.messages.size(), 2u);
  EXPECT_EQ(sub_box.messages[0].topic, "t/1/x");
  EXPECT_EQ(sub_box.messages[0].payload, binary);
  EXPECT_EQ(sub_box.messages[1].topic, "t/3/x");
  EXPECT_EQ(sub_box.messages[1].payload, "second");
}

TEST_F(MqttClientTest, SharedSubscriptionSplitsAndOneAloneGetsAll) {
  Inbox a_box, b_box, pub_box;
  auto a = connectedClient("agg-a", a_box);
  auto b = connectedClient("agg-b", b_box);
  ASSERT_TRUE(a->subscribe("$share/aggs/bl/agents/+/batch", 1).isOk());
  ASSERT_TRUE(b->subscribe("$share/aggs/bl/agents/+/batch", 1).isOk());
  auto pub = connectedClient("agent", pub_box);

  constexpr int kMessages = 100;
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_TRUE(pub->publish("bl/agents/o1/batch", std::to_string(i), 1).isOk());
  }
  ASSERT_TRUE(a_box.waitFor([&] { return a_box.messages.size() + b_box.count() >= kMessages; }));
  std::this_thread::sleep_for(200ms);
  std::set<std::string> seen;
  {
    std::scoped_lock lock(a_box.mu, b_box.mu);
    EXPECT_GT(a_box.messages.size(), 0u) << "member a got nothing: not shared";
    EXPECT_GT(b_box.messages.size(), 0u) << "member b got nothing: not shared";
    EXPECT_EQ(a_box.messages.size() + b_box.messages.size(), size_t{kMessages})
        << "each message goes to exactly one member";
    for (auto& m : a_box.messages) seen.insert(m.payload);
    for (auto& m : b_box.messages) seen.insert(m.payload);
  }
  EXPECT_EQ(seen.size(), size_t{kMessages});

  // With b gone, a alone carries all.
  b->stop();
  const size_t a_before = a_box.count();
  for (int i = 0; i < kMessages; ++i) {
    ASSERT_TRUE(pub->publish("bl/agents/o1/batch", "solo" + std::to_string(i), 1).isOk());
  }
  EXPECT_TRUE(a_box.waitFor([&] { return a_box.messages.size() >= a_before + kMessages; }))
      << "a got " << a_box.count() - a_before << " of " << kMessages;
}

TEST_F(MqttClientTest, ReconnectsAndResubscribesAfterBrokerCrash) {
  Inbox sub_box, pub_box;
  auto sub = connectedClient("sub", sub_box);
  ASSERT_TRUE(sub->subscribe("r/t", 1).isOk());
  auto pub = connectedClient("pub", pub_box);
  ASSERT_TRUE(pub->publish("r/t", "before", 1).isOk());
  ASSERT_TRUE(sub_box.waitFor([&] { return sub_box.messages.size() >= 1; }));

  broker_.kill9();
  ASSERT_TRUE(sub_box.waitFor([&] { return sub_box.downs >= 1; })) << "loss not reported";
  ASSERT_TRUE(pub_box.waitFor([&] { return pub_box.downs >= 1; }));
  EXPECT_FALSE(pub->connected());
  EXPECT_EQ(pub->publish("r/t", "while down", 1).code(), Code::kUnavailable);

  ASSERT_TRUE(broker_.restart()) << broker_.error();
  // Both clients come back by themselves; `sub` re-subscribes before reporting up.
  ASSERT_TRUE(sub_box.waitFor([&] { return sub_box.ups >= 2; }, 15s)) << "sub did not reconnect";
  ASSERT_TRUE(pub_box.waitFor([&] { return pub_box.ups >= 2; }, 15s)) << "pub did not reconnect";
  EXPECT_TRUE(pub->connected());
  ASSERT_TRUE(pub->publish("r/t", "after", 1).isOk());
  ASSERT_TRUE(sub_box.waitFor([&] {
    for (auto& m : sub_box.messages)
      if (m.payload == "after") return true;
    return false;
  })) << "no message after the broker restart: not resubscribed";
}

TEST_F(MqttClientTest, PublishWhileDisconnectedIsUnavailable) {
  Inbox box;
  ClientOptions o = options("lonely");
  o.broker_uris = {"tcp://127.0.0.1:" + std::to_string(MosquittoProcess::freePort())};
  Client c(o, box.messageHandler(), box.connectionHandler());
  ASSERT_TRUE(c.start().isOk());
  Status s = c.publish("x", "y", 1);
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.toString();
  EXPECT_FALSE(c.connected());
  // Subscriptions made while away are remembered (and not an error).
  EXPECT_TRUE(c.subscribe("x", 1).isOk());
}

TEST_F(MqttClientTest, FirstConnectRetriesUntilBrokerAppearsAndTriesEveryUri) {
  // The first URI never answers; the second is a broker that starts late.
  MosquittoProcess late;
  const uint16_t late_port = MosquittoProcess::freePort();
  Inbox box;
  ClientOptions o = options("patient");
  o.broker_uris = {"tcp://127.0.0.1:" + std::to_string(MosquittoProcess::freePort()),
                   "tcp://127.0.0.1:" + std::to_string(late_port)};
  Client c(o, box.messageHandler(), box.connectionHandler());
  ASSERT_TRUE(c.subscribe("late/t", 1).isOk());
  ASSERT_TRUE(c.start().isOk());
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(c.connected());

  Inbox pbox;
  ClientOptions po = options("late-pub");
  po.broker_uris = {"tcp://127.0.0.1:" + std::to_string(late_port)};
  late.setPort(late_port);
  ASSERT_TRUE(late.start()) << late.error();
  ASSERT_TRUE(box.waitFor([&] { return box.ups >= 1; }, 15s)) << "never connected";
  Client p(po, pbox.messageHandler(), pbox.connectionHandler());
  ASSERT_TRUE(p.start().isOk());
  ASSERT_TRUE(pbox.waitFor([&] { return pbox.ups >= 1; }));
  ASSERT_TRUE(p.publish("late/t", "hello", 1).isOk());
  EXPECT_TRUE(box.waitFor([&] { return !box.messages.empty(); }));
}

// Failover both ways: after moving to the second URI, a later loss must bring
// the client back to the first (Paho's own reconnect never goes back).
TEST_F(MqttClientTest, ReconnectWalksTheWholeListFromTheFirstUri) {
  MosquittoProcess second;
  ASSERT_TRUE(second.start()) << second.error();
  Inbox box, first_box, second_box;
  ClientOptions o = options("failover");
  o.broker_uris = {broker_.uri(), second.uri()};
  Client c(o, box.messageHandler(), box.connectionHandler());
  ASSERT_TRUE(c.subscribe("f/t", 1).isOk());
  // One publisher on each broker: a message reaches `c` only through the broker it is on.
  ClientOptions o1 = options("on-first"), o2 = options("on-second");
  o2.broker_uris = {second.uri()};
  Client on_first(o1, first_box.messageHandler(), first_box.connectionHandler());
  Client on_second(o2, second_box.messageHandler(), second_box.connectionHandler());
  for (Client* client : {&c, &on_first, &on_second}) ASSERT_TRUE(client->start().isOk());
  ASSERT_TRUE(box.waitFor([&] { return box.ups >= 1; }));
  ASSERT_TRUE(first_box.waitFor([&] { return first_box.ups >= 1; }));
  ASSERT_TRUE(second_box.waitFor([&] { return second_box.ups >= 1; }));
  auto received = [&](const std::string& payload) {
    return box.waitFor([&] {
      for (auto& m : box.messages)
        if (m.payload == payload) return true;
      return false;
    });
  };
  ASSERT_TRUE(on_first.publish("f/t", "1", 1).isOk());
  EXPECT_TRUE(received("1")) << "not on the first broker at the start";

  broker_.kill9();
  ASSERT_TRUE(box.waitFor([&] { return box.ups >= 2; }, 15s)) << "no failover to the second";
  ASSERT_TRUE(on_second.publish("f/t", "2", 1).isOk());
  EXPECT_TRUE(received("2")) << "not on the second broker after the first died";

  ASSERT_TRUE(broker_.restart()) << broker_.error();
  ASSERT_TRUE(first_box.waitFor([&] { return first_box.ups >= 2; }, 15s));
  second.kill9();
  ASSERT_TRUE(box.waitFor([&] { return box.ups >= 3; }, 15s)) << "never went back to the first";
  ASSERT_TRUE(on_first.publish("f/t", "3", 1).isOk());
  EXPECT_TRUE(received("3")) << "not back on the first broker after the second died";
}

TEST_F(MqttClientTest, StopIsPromptAndSilencesHandlers) {
  Inbox box;
  std::atomic<int> after_stop{0};
  std::atomic<bool> stopped{false};
  auto c = std::make_unique<Client>(
      options("quiet"),
      [&](Message&&) {
        if (stopped) after_stop++;
      },
      box.connectionHandler());
  ASSERT_TRUE(c->start().isOk());
  ASSERT_TRUE(box.waitFor([&] { return box.ups >= 1; }));
  ASSERT_TRUE(c->subscribe("q", 1).isOk());
  Inbox pbox;
  auto p = connectedClient("noisy", pbox);
  std::atomic<bool> run{true};
  std::thread flood([&] {
    while (run) {
      (void)p->publish("q", "m", 0);
      std::this_thread::sleep_for(1ms);
    }
  });
  std::this_thread::sleep_for(200ms);
  const auto t0 = std::chrono::steady_clock::now();
  c->stop();
  stopped = true;
  c.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 4s);
  std::this_thread::sleep_for(100ms);
  run = false;
  flood.join();
  EXPECT_EQ(after_stop.load(), 0);
}

// What the broker refused or ended, as the client reports it (from Paho's thread).
struct Refusals {
  struct Refusal {
    std::string topic;
    int code;
    std::string reason;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Refusal> refused;
  int takeovers = 0;

  void attach(ClientOptions& o) {
    o.on_publish_refused = [this](const std::string& topic, int code, const std::string& reason) {
      std::lock_guard lock(mu);
      refused.push_back({topic, code, reason});
      cv.notify_all();
    };
    o.on_session_taken_over = [this](ClientOptions::Takeover) {
      std::lock_guard lock(mu);
      ++takeovers;
      cv.notify_all();
    };
  }
  template <typename Pred>
  bool waitFor(Pred pred, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return pred(); });
  }
};

bool hasPayload(Inbox& box, const std::string& payload) {
  for (auto& m : box.messages)
    if (m.payload == payload) return true;
  return false;
}

// The broker's own log says which protocol each client spoke: `p5` is MQTT 5
// (`p2` would be 3.1.1), `c1`/`c0` its Clean Start flag.
TEST_F(MqttClientTest, ConnectsWithMqtt5AndCleanStartFromCleanSession) {
  Inbox clean_box, persistent_box;
  auto clean = connectedClient("clean-one", clean_box);
  ClientOptions o = options("persistent-one");
  o.clean_session = false;
  Client persistent(o, persistent_box.messageHandler(), persistent_box.connectionHandler());
  ASSERT_TRUE(persistent.start().isOk());
  ASSERT_TRUE(persistent_box.waitFor([&] { return persistent_box.ups >= 1; }));
  const std::string log = broker_.log();
  EXPECT_NE(log.find("as clean-one (p5, c1"), std::string::npos) << log;
  EXPECT_NE(log.find("as persistent-one (p5, c0"), std::string::npos) << log;
}

// A persistent session keeps its subscription (and what arrives for it) while
// the client is away, for session_expiry and no longer.
TEST_F(MqttClientTest, PersistentSessionLastsForItsExpiry) {
  Inbox pub_box;
  auto pub = connectedClient("expiry-pub", pub_box);
  auto away_and_back = [&](const std::string& id, std::chrono::seconds expiry,
                           std::chrono::milliseconds away, const std::string& payload) {
    ClientOptions o = options(id);
    o.clean_session = false;
    o.session_expiry = expiry;
    {
      Inbox first;
      Client c(o, first.messageHandler(), first.connectionHandler());
      EXPECT_TRUE(c.start().isOk());
      EXPECT_TRUE(first.waitFor([&] { return first.ups >= 1; }));
      EXPECT_TRUE(c.subscribe("expiry/" + id, 1).isOk());
    }  // disconnects
    std::this_thread::sleep_for(away);
    EXPECT_TRUE(pub->publish("expiry/" + id, payload, 1).isOk());
    auto second = std::make_unique<Inbox>();
    Client c(o, second->messageHandler(), second->connectionHandler());
    EXPECT_TRUE(c.start().isOk());  // no subscribe: only the kept session can deliver
    const bool got = second->waitFor([&] { return hasPayload(*second, payload); }, 3s);
    c.stop();
    return got;
  };
  EXPECT_TRUE(away_and_back("kept", 60s, 0ms, "while away")) << "session not kept";
  // Mosquitto expires sessions on a once-a-second sweep: 1 s of expiry is gone after 3.
  EXPECT_FALSE(away_and_back("expired", 1s, 3000ms, "after expiry")) << "session outlived 1 s";
}

// A broker each test configures first, and one client of it whose refusals are recorded.
class MqttBrokerRefusalTest : public ::testing::Test {
 protected:
  // Starts `broker` and connects `client` (reporting into `refusals` and `box`).
  void connect(const std::string& id) {
    ASSERT_TRUE(broker.start()) << broker.error();
    ClientOptions o;
    o.broker_uris = {broker.uri()};
    o.client_id = id;
    refusals.attach(o);
    client = std::make_unique<Client>(o, box.messageHandler(), box.connectionHandler());
    ASSERT_TRUE(client->start().isOk());
    ASSERT_TRUE(box.waitFor([&] { return box.ups >= 1; }));
  }

  MosquittoProcess broker;
  Refusals refusals;
  Inbox box;
  std::unique_ptr<Client> client;  // declared last: stopped before the rest goes
};

// Mosquitto 2.0 answers an MQTT 5 publish its ACL denies with PUBACK 0x87;
// the client hands that to on_publish_refused and stays connected.
TEST_F(MqttBrokerRefusalTest, PublishRefusedByTheAclIsReported) {
  broker.useAnonymousAcl("topic readwrite allowed/#\n");
  ASSERT_NO_FATAL_FAILURE(connect("acl-pub"));
  Client& c = *client;
  ASSERT_TRUE(c.subscribe("allowed/#", 1).isOk());
  ASSERT_TRUE(c.publish("denied/x", "refused", 1).isOk()) << "publish itself never blocks";
  ASSERT_TRUE(c.publish("allowed/y", "taken", 1).isOk());
  ASSERT_TRUE(refusals.waitFor([&] { return !refusals.refused.empty(); }))
      << "no refusal reported; broker log:\n"
      << broker.log();
  ASSERT_TRUE(box.waitFor([&] { return hasPayload(box, "taken"); }));
  {
    std::lock_guard lock(refusals.mu);
    ASSERT_EQ(refusals.refused.size(), 1u) << "only the denied topic is refused";
    EXPECT_EQ(refusals.refused[0].topic, "denied/x");
    EXPECT_EQ(refusals.refused[0].code, 0x87);
    EXPECT_EQ(refusals.refused[0].reason, "Not authorized");
  }
  EXPECT_TRUE(c.connected());
}

// Past the broker's max_packet_size (sent in its CONNACK) a publish is refused
// at once, as 0x95, instead of making the broker drop the connection.
TEST_F(MqttBrokerRefusalTest, PublishPastTheBrokersMaximumPacketSizeIsRefused) {
  broker.addConfig("max_packet_size 10000\n");
  ASSERT_NO_FATAL_FAILURE(connect("big-pub"));
  Client& c = *client;
  ASSERT_TRUE(c.subscribe("size/t", 1).isOk());
  Status s = c.publish("size/t", std::string(20000, 'x'), 1);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.toString();
  EXPECT_NE(s.message().find("maximum packet size (10000"), std::string::npos) << s.message();
  {
    std::lock_guard lock(refusals.mu);
    ASSERT_EQ(refusals.refused.size(), 1u);
    EXPECT_EQ(refusals.refused[0].topic, "size/t");
    EXPECT_EQ(refusals.refused[0].code, 0x95);
  }
  ASSERT_TRUE(c.publish("size/t", std::string(9000, 'y'), 1).isOk()) << "under the limit";
  EXPECT_TRUE(box.waitFor([&] { return !box.messages.empty(); }));
  EXPECT_EQ(box.ups, 1) << "the connection was never dropped";
}

// The client's own Maximum Packet Size: the broker sends it nothing larger.
TEST_F(MqttClientTest, BrokerSendsNothingPastTheClientsMaximumPacketSize) {
  ClientOptions o = options("small-sub");
  o.max_packet_size = 2000;
  Inbox sub_box, pub_box;
  Client sub(o, sub_box.messageHandler(), sub_box.connectionHandler());
  ASSERT_TRUE(sub.start().isOk());
  ASSERT_TRUE(sub_box.waitFor([&] { return sub_box.ups >= 1; }));
  ASSERT_TRUE(sub.subscribe("mps/t", 1).isOk());
  auto pub = connectedClient("big-sender", pub_box);
  ASSERT_TRUE(pub->publish("mps/t", std::string(5000, 'b'), 1).isOk());
  ASSERT_TRUE(pub->publish("mps/t", "small", 1).isOk());
  // In order on one connection: once "small" is in, the big one was dropped.
  ASSERT_TRUE(sub_box.waitFor([&] { return hasPayload(sub_box, "small"); }));
  std::lock_guard lock(sub_box.mu);
  ASSERT_EQ(sub_box.messages.size(), 1u)
      << "got " << sub_box.messages[0].payload.size() << " bytes";
  EXPECT_EQ(sub_box.downs, 0);
}

// Two live clients under one client id (a cloned config): each connect takes
// the session over. Mosquitto 2.0.11 closes the old connection without the
// DISCONNECT 0x8E that 2.0.15 sends, so here both clients find out from the
// broker dropping them again and again while it takes them back at once.
TEST_F(MqttClientTest, SessionTakenOverByTheSameClientIdIsReported) {
  ClientOptions o = options("twin");
  Refusals first_events, second_events;
  ClientOptions o1 = o, o2 = o;
  first_events.attach(o1);
  second_events.attach(o2);
  Inbox first_box, second_box;
  Client first(o1, first_box.messageHandler(), first_box.connectionHandler());
  ASSERT_TRUE(first.start().isOk());
  ASSERT_TRUE(first_box.waitFor([&] { return first_box.ups >= 1; }));
  Client second(o2, second_box.messageHandler(), second_box.connectionHandler());
  ASSERT_TRUE(second.start().isOk());
  EXPECT_TRUE(first_events.waitFor([&] { return first_events.takeovers >= 1; }, 30s))
      << "broker log:\n"
      << broker_.log();
  // The first reconnects and throws the second out in turn.
  EXPECT_TRUE(second_events.waitFor([&] { return second_events.takeovers >= 1; }, 30s));
  second.stop();
  first.stop();
  // A client alone under its id is never told its session was taken.
  Refusals alone_events;
  ClientOptions o3 = options("single");
  alone_events.attach(o3);
  Inbox alone_box;
  Client alone(o3, alone_box.messageHandler(), alone_box.connectionHandler());
  ASSERT_TRUE(alone.start().isOk());
  ASSERT_TRUE(alone_box.waitFor([&] { return alone_box.ups >= 1; }));
  alone.stop();
  EXPECT_EQ(alone_events.takeovers, 0);
}

// A peer that accepts MQTT connections, answers each CONNECT with a CONNACK
// (MQTT 5, session not present) and then never answers anything again: the
// state of a client whose packets no longer get through. Counts connections.
class SilentBroker {
 public:
  SilentBroker() {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listener_, 8) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~SilentBroker() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (int fd : peers_) ::close(fd);
    ::close(listener_);
  }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  int connections() const { return connections_.load(); }

 private:
  void serve() {
    while (!stop_) {
      std::vector<pollfd> fds{{listener_, POLLIN, 0}};
      for (int fd : peers_) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 50) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) {
          peers_.push_back(fd);
          answered_.push_back(false);
        }
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
        char buf[4096];
        if (::read(fds[i].fd, buf, sizeof buf) <= 0) continue;
        if (!answered_[i - 1]) {  // the CONNECT: CONNACK, no flags, success, no properties
          static const unsigned char kConnack[] = {0x20, 0x03, 0x00, 0x00, 0x00};
          (void)!::write(fds[i].fd, kConnack, sizeof kConnack);
          answered_[i - 1] = true;
          connections_.fetch_add(1);
        }
      }
    }
  }
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> connections_{0};
  std::vector<int> peers_;
  std::vector<bool> answered_;
  std::thread thread_;
};

// ClientOptions::stall_timeout: connected, but the resubscription never gets
// its SUBACK: the client is replaced and connects again by itself.
TEST(MqttClientStallTest, NoSubackForTheResubscriptionReplacesTheClient) {
  SilentBroker broker;
  ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "stall-suback";
  o.stall_timeout = 1000ms;
  o.min_reconnect = 100ms;
  Client c(o, nullptr, nullptr);
  ASSERT_TRUE(c.subscribe("t/#", 1).isOk());
  ASSERT_TRUE(c.start().isOk());
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (broker.connections() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_GE(broker.connections(), 2) << "the stalled client was not replaced";
  c.stop();
}

// Connected, publishes handed over, and none ever completes (no PUBACK): the
// client is replaced; the caller hears down, then up again.
TEST(MqttClientStallTest, PublishesThatNeverCompleteReplaceTheClient) {
  SilentBroker broker;
  Inbox inbox;
  ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "stall-publish";
  o.stall_timeout = 1000ms;
  o.min_reconnect = 100ms;
  Client c(o, nullptr, inbox.connectionHandler());
  ASSERT_TRUE(c.start().isOk());
  ASSERT_TRUE(inbox.waitFor([&] { return inbox.ups >= 1; }, 5s));
  ASSERT_TRUE(c.publish("t/1", "x", 1).isOk());
  ASSERT_TRUE(inbox.waitFor([&] { return inbox.downs >= 1 && inbox.ups >= 2; }, 10s))
      << "ups " << inbox.ups << " downs " << inbox.downs;
  // The broker's accept loop counts the new connection on its own thread: on
  // a loaded machine that may come a moment after the client hears up.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (broker.connections() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_GE(broker.connections(), 2);
  // The new client works: a publish is accepted again.
  EXPECT_TRUE(c.publish("t/2", "y", 1).isOk());
  c.stop();
}

// With the check off, the same silence changes nothing.
TEST(MqttClientStallTest, ZeroStallTimeoutNeverReplaces) {
  SilentBroker broker;
  ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "stall-off";
  o.stall_timeout = 0ms;
  Client c(o, nullptr, nullptr);
  ASSERT_TRUE(c.subscribe("t/#", 1).isOk());
  ASSERT_TRUE(c.start().isOk());
  std::this_thread::sleep_for(2500ms);
  EXPECT_EQ(broker.connections(), 1);
  c.stop();
}

}  // namespace
}  // namespace branchline::mqtt
