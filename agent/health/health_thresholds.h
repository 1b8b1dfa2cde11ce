// When the agent's GET /health says degraded (agent_health.h): the [health]
// table of agent.toml. Its own header so the configuration needs nothing else
// of the health check.
#pragma once

#include <chrono>

namespace branchline::agent {

struct HealthThresholds {
  std::chrono::milliseconds broker_unreachable{30000};  // no MQTT connection for longer
  std::chrono::milliseconds acks_stalled{60000};        // batches wait, no ack for longer
  double buffer_full_ratio = 0.9;                       // of the buffer's max_bytes; (0, 1]
};

}  // namespace branchline::agent
