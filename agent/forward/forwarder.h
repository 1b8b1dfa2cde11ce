// Forwarder: moves formed batches from the agent's DurableBuffer to the
// aggregators over MQTT and deletes them only on an aggregator's ack.
//
// Guarantee: a batch leaves the buffer only when an ack with status `stored`
// or `duplicate` names its seq (the aggregator sends it after its central
// commit; a broker PUBACK counts for nothing). Until then the batch is
// re-published -- same seq, same records -- after ack_timeout, after every
// reconnect, and after a restart (all unacked batches go first, oldest first).
// A `refused` batch is kept and retried too: data is never dropped here.
// At most window_batches / window_bytes (encoded) are unacked in flight, which
// also keeps Paho under the ~1 MB in flight where it stalls (LIMITS.md).
//
// Threads: one forwarder thread does all SQLite, encoding and sealing work;
// Paho's callbacks only post acks and connection changes to it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "agent/buffer/durable_buffer.h"
#include "protocol/seal.h"
#include "shared/core/metrics.h"
#include "shared/core/status.h"
#include "shared/mqtt/mqtt_client.h"

namespace branchline::agent {

struct ForwarderOptions {
  mqtt::ClientOptions mqtt;  // brokers, client id, session
  std::string agent_id;      // names the topics and every batch
  std::string topic_prefix = "branchline/v1";
  BatchLimits limits;
  size_t window_batches = 8;                     // unacked batches in flight
  size_t window_bytes = 1 << 20;                 // encoded bytes in flight
  std::chrono::milliseconds linger{100};         // a partial batch leaves after this long
  std::chrono::milliseconds ack_timeout{10000};  // re-publish an unacked batch after this
  int zstd_level = 1;
  // Set: every batch is sealed to the aggregators' key (protocol/seal.h), each
  // publish (also a resend) under a fresh ephemeral key. Unset: batches travel
  // plain, protected by the transport only.
  std::optional<protocol::SealerKeys> seal;
};

// How forwarding goes, for the agent's health check (agent/health). Durations
// are measured on the monotonic clock when progress() is called.
struct ForwardProgress {
  bool connected = false;
  // Since the broker connection was lost, or since start when it never came
  // up; 0 while connected.
  std::chrono::milliseconds disconnected_for{0};
  size_t in_flight = 0;  // batches published and not yet acked
  // While batches wait for an ack (published, or formed and unacked in the
  // buffer): how long since the later of the last ack (`stored` or
  // `duplicate`; a refusal is no progress) and the moment they began to wait.
  // 0 when none waits.
  std::chrono::milliseconds unacked_for{0};
};

class Forwarder {
 public:
  // Connects (in the background: a broker that is away is not an error) and
  // starts the forwarder thread. `buffer` and `metrics` must outlive the Forwarder.
  static Result<std::unique_ptr<Forwarder>> start(DurableBuffer& buffer, ForwarderOptions options,
                                                  MetricsRegistry& metrics);
  ~Forwarder();  // stop()

  // Wakes the forwarder now (e.g. after an append) instead of at its next poll.
  void notify();
  // Stops the thread and disconnects. Unacked batches stay in the buffer for the next start.
  void stop();

  // For tests and health: batches published and not yet acked.
  size_t inFlight() const;
  bool connected() const;
  // Any thread; a few atomic loads, no lock.
  ForwardProgress progress() const;

 private:
  Forwarder();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `<prefix>/agents/<id>/batch` and `<prefix>/agents/<id>/ack` (README "MQTT topics").
std::string batchTopic(const std::string& prefix, const std::string& agent_id);
std::string ackTopic(const std::string& prefix, const std::string& agent_id);
// `<prefix>/aggregators/+/online`: an aggregator publishes there when it
// (re)connects and when its store comes back; agents then resend what is
// unacked at once instead of waiting out ack_timeout.
std::string onlineTopicFilter(const std::string& prefix);
// `<prefix>/agents/<id>/status`: the agent's status messages (schema
// `AgentStatus`), read by the aggregators. Today they carry events for the
// central audit trail: `duplicate_identity` when another live client holds
// this agent's identity (README "Agent status events").
std::string statusTopic(const std::string& prefix, const std::string& agent_id);
// The audit detail of a duplicate identity: how it was seen, and this host's name.
std::string duplicateIdentityDetail(mqtt::ClientOptions::Takeover how);

}  // namespace branchline::agent
