// BrokerEvents: what the broker refused or took away from one process's MQTT
// client, made visible: a log line, a counter and a health field each for a
// publish the broker refused (an MQTT 5 PUBACK reason code) and for a
// duplicate identity (another live client under this client id).
//
//   mqtt::BrokerEvents events(metrics, "bl_agent", client_id);
//   events.attach(client_options);         // before the Client is made
//   body += events.health().json_fields;   // in GET /healthz (the aggregator's;
//                                          // the agent's GET /health names reasons)
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "shared/core/metrics.h"
#include "shared/mqtt/mqtt_client.h"

namespace branchline::mqtt {

class BrokerEvents {
 public:
  // Registers <prefix>_publish_refused_total{reason} and
  // <prefix>_duplicate_identity_total in `metrics` (which must outlive this).
  // An event counts as recent (health()) for `recent` after it happened.
  BrokerEvents(MetricsRegistry& metrics, const std::string& metric_prefix, std::string client_id,
               std::chrono::seconds recent = std::chrono::minutes(5));

  // Sets options.on_publish_refused and on_session_taken_over to report here,
  // after calling whatever was set there before. This object must outlive the Client.
  void attach(ClientOptions& options);

  // Both are called from Paho's thread; they only take a short lock.
  void publishRefused(const std::string& topic, int reason_code, const std::string& reason);
  void sessionTakenOver(ClientOptions::Takeover how);

  struct Health {
    bool degraded = false;            // a refusal or a takeover within `recent`
    bool duplicate_identity = false;  // a takeover within `recent`
    bool publish_refused = false;     // a refusal within `recent`
    // Once a publish was refused: {"reason","code","topic","at"} of the last one.
    std::string last_publish_refused;
    // `,"duplicate_identity":<bool>` and, once a publish was refused,
    // `,"last_publish_refused":{...}`: JSON object members to append to a health body.
    std::string json_fields;
  };
  Health health() const;

 private:
  struct Refusal {
    std::string topic;
    int code = 0;
    std::string reason;
    int64_t at_us = 0;  // Unix microseconds
  };

  LabeledCounter& refused_;
  Counter& duplicate_identity_;
  const std::string client_id_;
  const std::chrono::seconds recent_;
  mutable std::mutex mutex_;
  std::optional<Refusal> last_refusal_;
  std::optional<std::chrono::steady_clock::time_point> last_takeover_;
  std::optional<std::chrono::steady_clock::time_point> last_logged_;  // duplicate_identity
  uint64_t takeovers_ = 0;
  static constexpr std::chrono::seconds kTakeoverLogInterval{60};
};

// "Not authorized" -> "not_authorized": a reason code's name as a metric label.
std::string reasonLabel(const std::string& reason);

}  // namespace branchline::mqtt
