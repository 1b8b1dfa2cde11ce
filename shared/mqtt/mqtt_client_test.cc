#include "shared/mqtt/mqtt_client.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace branchline::mqtt
