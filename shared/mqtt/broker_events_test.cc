// BrokerEvents without a broker: what the log-side hooks make of a refusal and
// a takeover (counters, /healthz members, the "recent" window).
#include "shared/mqtt/broker_events.h"

#include <gtest/gtest.h>

#include <thread>

namespace branchline::mqtt {
namespace {

using namespace std::chrono_literals;

TEST(BrokerEventsTest, RefusalAndTakeoverShowInMetricsAndHealth) {
  MetricsRegistry metrics;
  BrokerEvents events(metrics, "bl_test", "client-1", std::chrono::hours(1));
  EXPECT_FALSE(events.health().degraded);
  EXPECT_EQ(events.health().json_fields, R"(,"duplicate_identity":false)");

  ClientOptions o;
  int earlier_calls = 0;
  o.on_publish_refused = [&](const std::string&, int, const std::string&) { ++earlier_calls; };
  events.attach(o);
  o.on_publish_refused("t/\"q\"", 0x87, "Not authorized");
  o.on_publish_refused("t/2", 0x95, "Packet too large");
  o.on_session_taken_over(ClientOptions::Takeover::kRepeatedDrops);
  EXPECT_EQ(earlier_calls, 2) << "attach() keeps the callback already set";

  const std::string text = metrics.renderPrometheus();
  EXPECT_NE(text.find(R"(bl_test_publish_refused_total{reason="not_authorized"} 1)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(bl_test_publish_refused_total{reason="packet_too_large"} 1)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("bl_test_duplicate_identity_total 1"), std::string::npos) << text;

  const auto h = events.health();
  EXPECT_TRUE(h.degraded);
  EXPECT_EQ(h.json_fields.rfind(R"(,"duplicate_identity":true,"last_publish_refused":)"
                                R"({"reason":"Packet too large","code":149,"topic":"t/2","at":")",
                                0),
            0u)
      << h.json_fields;
}

TEST(BrokerEventsTest, OldEventsNoLongerDegradeButTheLastRefusalStays) {
  MetricsRegistry metrics;
  BrokerEvents events(metrics, "bl_test", "client-1", std::chrono::seconds(0));
  events.publishRefused("t/1", 0x87, "Not authorized");
  events.sessionTakenOver(ClientOptions::Takeover::kBrokerSaidSo);
  std::this_thread::sleep_for(5ms);  // past the 0 s window
  const auto h = events.health();
  EXPECT_FALSE(h.degraded);
  EXPECT_EQ(h.json_fields.find(R"("duplicate_identity":false)"), 1u) << h.json_fields;
  EXPECT_NE(h.json_fields.find(R"("last_publish_refused":{"reason":"Not authorized")"),
            std::string::npos)
      << h.json_fields;
}

TEST(BrokerEventsTest, ReasonLabels) {
  EXPECT_EQ(reasonLabel("Not authorized"), "not_authorized");
  EXPECT_EQ(reasonLabel("Quota exceeded"), "quota_exceeded");
  EXPECT_EQ(reasonLabel(""), "unknown");
}

}  // namespace
// Two copies flapping take over each other every second: each takeover is
// counted, the log says it once (then at most once a minute, with the count).
TEST(BrokerEventsTest, RepeatedTakeoversAreCountedEachAndLoggedOnce) {
  MetricsRegistry metrics;
  BrokerEvents events(metrics, "bl_test", "client-1");
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 5; ++i) events.sessionTakenOver(ClientOptions::Takeover::kBrokerSaidSo);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(metrics.renderPrometheus().find("bl_test_duplicate_identity_total 5"),
            std::string::npos);
  size_t lines = 0;
  for (size_t at = log.find(R"("event":"duplicate_identity")"); at != std::string::npos;
       at = log.find(R"("event":"duplicate_identity")", at + 1)) {
    ++lines;
  }
  EXPECT_EQ(lines, 1u) << log;
  EXPECT_NE(log.find(R"("takeovers":1)"), std::string::npos) << log;
}

}  // namespace branchline::mqtt
