#include "shared/mqtt/broker_events.h"

#include <cctype>
#include <cstdio>

#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::mqtt {

std::string reasonLabel(const std::string& reason) {
  std::string label;
  for (char c : reason) {
    const auto u = static_cast<unsigned char>(c);
    label += std::isalnum(u) ? static_cast<char>(std::tolower(u)) : '_';
  }
  return label.empty() ? "unknown" : label;
}

BrokerEvents::BrokerEvents(MetricsRegistry& metrics, const std::string& metric_prefix,
                           std::string client_id, std::chrono::seconds recent)
    : refused_(metrics.labeledCounter(
          metric_prefix + "_publish_refused_total",
          "Publishes the broker refused (MQTT 5 PUBACK reason code), by reason", "reason")),
      duplicate_identity_(metrics.counter(
          metric_prefix + "_duplicate_identity_total",
          "Times another live client under this client id took the broker session over")),
      client_id_(std::move(client_id)),
      recent_(recent) {}

void BrokerEvents::attach(ClientOptions& options) {
  options.on_publish_refused = [this, before = std::move(options.on_publish_refused)](
                                   const std::string& topic, int code, const std::string& reason) {
    if (before) before(topic, code, reason);
    publishRefused(topic, code, reason);
  };
  options.on_session_taken_over =
      [this, before = std::move(options.on_session_taken_over)](ClientOptions::Takeover how) {
        if (before) before(how);
        sessionTakenOver(how);
      };
}

void BrokerEvents::publishRefused(const std::string& topic, int code, const std::string& reason) {
  refused_.with(reasonLabel(reason)).inc();
  log::warn(
      "publish_refused",
      {{"client_id", client_id_}, {"topic", topic}, {"reason_code", code}, {"reason", reason}});
  std::lock_guard lock(mutex_);
  last_refusal_ = Refusal{topic, code, reason, nowMicros()};
}

void BrokerEvents::sessionTakenOver(ClientOptions::Takeover how) {
  duplicate_identity_.inc();
  uint64_t n;
  {
    std::lock_guard lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    last_takeover_ = now;
    n = ++takeovers_;
    // Two copies flapping take over each other every second or so: the
    // first takeover is logged, then at most one line a minute with the count.
    if (last_logged_ && now - *last_logged_ < kTakeoverLogInterval) return;
    last_logged_ = now;
  }
  log::error("duplicate_identity",
             {{"client_id", client_id_},
              {"evidence", takeoverName(how)},
              {"takeovers", n},
              {"fix",
               "another live process connects with this identity (a copied config or "
               "VM?); stop it, or give it its own id and certificate"}});
}

BrokerEvents::Health BrokerEvents::health() const {
  std::lock_guard lock(mutex_);
  Health h;
  const auto now = std::chrono::steady_clock::now();
  h.duplicate_identity = last_takeover_ && now - *last_takeover_ <= recent_;
  h.json_fields =
      std::string(",\"duplicate_identity\":") + (h.duplicate_identity ? "true" : "false");
  if (last_refusal_) {
    const Refusal& r = *last_refusal_;
    h.last_publish_refused = "{\"reason\":";
    log::appendJsonString(h.last_publish_refused, r.reason);
    h.last_publish_refused += ",\"code\":" + std::to_string(r.code) + ",\"topic\":";
    log::appendJsonString(h.last_publish_refused, r.topic);
    h.last_publish_refused += ",\"at\":";
    log::appendJsonString(h.last_publish_refused, formatRfc3339Micros(r.at_us));
    h.last_publish_refused += "}";
    h.json_fields += ",\"last_publish_refused\":" + h.last_publish_refused;
    h.publish_refused = nowMicros() - r.at_us <=
                        std::chrono::duration_cast<std::chrono::microseconds>(recent_).count();
  }
  h.degraded = h.duplicate_identity || h.publish_refused;
  return h;
}

}  // namespace branchline::mqtt
