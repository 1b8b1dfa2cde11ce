#include "agent/health/agent_health.h"

#include <boost/json.hpp>

#include "shared/core/clock.h"

namespace branchline::agent {

std::string HealthVerdict::json() const {
  boost::json::object body;
  body["status"] = ok() ? "ok" : "degraded";
  if (!ok()) {
    boost::json::array names;
    for (std::string_view r : reasons) names.emplace_back(r);
    body["reasons"] = std::move(names);
  }
  if (!last_publish_refused.empty()) {
    body["last_publish_refused"] = boost::json::parse(last_publish_refused);
  }
  return boost::json::serialize(body);
}

HealthVerdict judgeHealth(const HealthInputs& in, const HealthThresholds& thresholds) {
  const ForwardProgress& f = in.forwarding;
  const bool reason[kHealthReasons.size()] = {
      !f.connected && f.disconnected_for > thresholds.broker_unreachable,
      f.unacked_for > thresholds.acks_stalled,
      in.buffer_max_bytes > 0 &&
          static_cast<double>(in.buffer.bytes) >
              thresholds.buffer_full_ratio * static_cast<double>(in.buffer_max_bytes),
      in.buffer.damaged > 0,
      in.buffer.io_failed,
      in.broker.duplicate_identity,
      in.broker.publish_refused,
  };
  HealthVerdict v;
  for (size_t i = 0; i < kHealthReasons.size(); ++i) {
    if (reason[i]) v.reasons.push_back(kHealthReasons[i]);
  }
  if (in.broker.publish_refused) v.last_publish_refused = in.broker.last_publish_refused;
  return v;
}

AgentHealth::AgentHealth(const DurableBuffer& buffer, uint64_t buffer_max_bytes,
                         const mqtt::BrokerEvents& broker, HealthThresholds thresholds,
                         MetricsRegistry& metrics)
    : buffer_(buffer),
      buffer_max_bytes_(buffer_max_bytes),
      broker_(broker),
      thresholds_(thresholds),
      created_us_(steadyMicros()) {
  metrics.callbackGauge("bl_agent_health_degraded",
                        "1 while GET /health answers 503 degraded (it names the reasons)",
                        [this] { return check().ok() ? 0.0 : 1.0; });
}

void AgentHealth::watch(const Forwarder* forwarder) { forwarder_.store(forwarder); }

HealthVerdict AgentHealth::check() const {
  HealthInputs in;
  if (const Forwarder* f = forwarder_.load()) {
    in.forwarding = f->progress();
  } else {
    in.forwarding.disconnected_for =
        std::chrono::milliseconds((steadyMicros() - created_us_) / 1000);
  }
  in.buffer = buffer_.stats();
  in.buffer_max_bytes = buffer_max_bytes_;
  in.broker = broker_.health();
  return judgeHealth(in, thresholds_);
}

}  // namespace branchline::agent
