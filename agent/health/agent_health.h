// AgentHealth: whether this agent can forward what it takes, the answer of
// GET /health (README "Health"). GET /healthz only says the process serves.
//
// Degraded speaks of forwarding, not of ingest: records are still taken and
// kept while the agent is degraded. Each reason names what to look at:
//   broker_unreachable  no MQTT connection for longer than broker_unreachable
//   acks_stalled        batches wait and no ack came for acks_stalled
//   buffer_nearly_full  buffer bytes past buffer_full_ratio of its max_bytes
//   buffer_damaged      the buffer moved damaged rows aside
//   buffer_io_failed    an I/O error stopped the buffer taking records (restart
//                       after checking the disk; the one reason about ingest)
//   duplicate_identity  another live client holds this agent's identity (lately)
//   publish_refused     the broker refused a publish (lately)
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/buffer/durable_buffer.h"
#include "agent/forward/forwarder.h"
#include "agent/health/health_thresholds.h"
#include "shared/core/metrics.h"
#include "shared/mqtt/broker_events.h"

namespace branchline::agent {

// Every reason, in the order a verdict lists them.
inline constexpr std::array<std::string_view, 7> kHealthReasons = {
    "broker_unreachable", "acks_stalled",       "buffer_nearly_full", "buffer_damaged",
    "buffer_io_failed",   "duplicate_identity", "publish_refused"};

// The agent's state at one moment, as its stages report it.
struct HealthInputs {
  ForwardProgress forwarding;
  BufferStats buffer;
  uint64_t buffer_max_bytes = 0;
  mqtt::BrokerEvents::Health broker;
};

struct HealthVerdict {
  std::vector<std::string_view> reasons;  // from kHealthReasons, in its order; empty: ok
  std::string last_publish_refused;       // its JSON object, when publish_refused is a reason

  bool ok() const { return reasons.empty(); }
  // {"status":"ok"}, or {"status":"degraded","reasons":[...]} (with
  // "last_publish_refused":{...} when that is a reason).
  std::string json() const;
};

// Pure: the same inputs give the same verdict (tests pass any durations).
HealthVerdict judgeHealth(const HealthInputs& in, const HealthThresholds& thresholds);

class AgentHealth {
 public:
  // Registers bl_agent_health_degraded in `metrics`. Everything passed must
  // outlive this object.
  AgentHealth(const DurableBuffer& buffer, uint64_t buffer_max_bytes,
              const mqtt::BrokerEvents& broker, HealthThresholds thresholds,
              MetricsRegistry& metrics);

  // The forwarder to report on once started; nullptr again before it stops.
  // Until then forwarding counts as disconnected since this object was made.
  void watch(const Forwarder* forwarder);

  // Any thread; cheap (atomics, the buffer's in-memory stats, a short lock).
  HealthVerdict check() const;

 private:
  const DurableBuffer& buffer_;
  const uint64_t buffer_max_bytes_;
  const mqtt::BrokerEvents& broker_;
  const HealthThresholds thresholds_;
  const int64_t created_us_;  // steadyMicros()
  std::atomic<const Forwarder*> forwarder_{nullptr};
};

}  // namespace branchline::agent
