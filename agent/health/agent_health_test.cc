// The verdict of GET /health from given inputs: every reason at its threshold,
// and the body a probe reads. Durations are passed in, so nothing sleeps.
#include "agent/health/agent_health.h"

#include <gtest/gtest.h>

namespace branchline::agent {
namespace {

using namespace std::chrono_literals;

// A working agent: connected, nothing waiting, a buffer a tenth full.
HealthInputs working() {
  HealthInputs in;
  in.forwarding.connected = true;
  in.buffer.bytes = 100;
  in.buffer_max_bytes = 1000;
  return in;
}

std::vector<std::string_view> reasons(const HealthInputs& in, const HealthThresholds& t = {}) {
  return judgeHealth(in, t).reasons;
}

TEST(AgentHealthTest, WorkingAgentIsOk) {
  const HealthVerdict v = judgeHealth(working(), {});
  EXPECT_TRUE(v.ok());
  EXPECT_EQ(v.json(), R"({"status":"ok"})");
}

TEST(AgentHealthTest, BrokerUnreachableOnlyPastTheThreshold) {
  HealthInputs in = working();
  in.forwarding.connected = false;
  in.forwarding.disconnected_for = 30000ms;  // the default threshold: not past it
  EXPECT_TRUE(reasons(in).empty());
  in.forwarding.disconnected_for = 30001ms;
  EXPECT_EQ(reasons(in), std::vector<std::string_view>{"broker_unreachable"});
  HealthThresholds t;
  t.broker_unreachable = 40s;
  EXPECT_TRUE(reasons(in, t).empty());
}

TEST(AgentHealthTest, AcksStalledOnlyPastTheThreshold) {
  HealthInputs in = working();
  in.forwarding.in_flight = 2;
  in.forwarding.unacked_for = 60000ms;
  EXPECT_TRUE(reasons(in).empty());
  in.forwarding.unacked_for = 60001ms;
  EXPECT_EQ(reasons(in), std::vector<std::string_view>{"acks_stalled"});
}

TEST(AgentHealthTest, BufferNearlyFullPastTheRatio) {
  HealthInputs in = working();
  in.buffer.bytes = 900;  // exactly 0.9 of 1000: not past it
  EXPECT_TRUE(reasons(in).empty());
  in.buffer.bytes = 901;
  EXPECT_EQ(reasons(in), std::vector<std::string_view>{"buffer_nearly_full"});
  HealthThresholds t;
  t.buffer_full_ratio = 1.0;
  EXPECT_TRUE(reasons(in, t).empty());
}

TEST(AgentHealthTest, DamagedRowsAreAReason) {
  HealthInputs in = working();
  in.buffer.damaged = 1;
  EXPECT_EQ(reasons(in), std::vector<std::string_view>{"buffer_damaged"});
}

TEST(AgentHealthTest, BrokerEventsAreReasonsWithTheLastRefusal) {
  HealthInputs in = working();
  in.broker.last_publish_refused = R"({"reason":"Not authorized","code":135,"topic":"t","at":"x"})";
  EXPECT_TRUE(judgeHealth(in, {}).ok()) << "an old refusal is history, not a reason";
  in.broker.publish_refused = true;
  in.broker.duplicate_identity = true;
  const HealthVerdict v = judgeHealth(in, {});
  EXPECT_EQ(v.reasons, (std::vector<std::string_view>{"duplicate_identity", "publish_refused"}));
  EXPECT_EQ(
      v.json(),
      R"({"status":"degraded","reasons":["duplicate_identity","publish_refused"],)"
      R"("last_publish_refused":{"reason":"Not authorized","code":135,"topic":"t","at":"x"}})");
}

TEST(AgentHealthTest, EveryReasonAtOnceInTheirOrder) {
  HealthInputs in;
  in.forwarding.disconnected_for = 1h;
  in.forwarding.unacked_for = 1h;
  in.buffer.bytes = 999;
  in.buffer.damaged = 3;
  in.buffer.io_failed = true;
  in.buffer_max_bytes = 1000;
  in.broker.duplicate_identity = true;
  in.broker.publish_refused = true;
  in.broker.last_publish_refused = "{}";
  const HealthVerdict v = judgeHealth(in, {});
  EXPECT_EQ(v.reasons, std::vector<std::string_view>(kHealthReasons.begin(), kHealthReasons.end()));
  EXPECT_EQ(v.json(),
            R"({"status":"degraded","reasons":["broker_unreachable","acks_stalled",)"
            R"("buffer_nearly_full","buffer_damaged","buffer_io_failed","duplicate_identity",)"
            R"("publish_refused"],)"
            R"("last_publish_refused":{}})");
}

}  // namespace
}  // namespace branchline::agent
