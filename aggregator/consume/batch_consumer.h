// BatchConsumer: takes agents' batches from the shared MQTT subscription,
// opens them under DecodeLimits, commits several per store transaction and
// acknowledges each one only after that transaction is durable.
//
// Guarantees:
// - An ack with status stored/duplicate is published only after the batch is
//   committed centrally; while the store is unavailable nothing is acked and
//   the batches are retried with backoff (the agent also resends them).
// - Hostile or malformed input (garbage, truncated frames, compression bombs,
//   a topic naming another agent than the batch; with sealing: a plain batch
//   when sealing is required, a sealer other than the named agent, a changed
//   byte, an unknown or retired key id, an agent not enrolled) is refused: audited, counted,
//   answered with a refused ack when the agent is known (audit rows are
//   rate-limited per agent: ConsumerOptions::refusal_audits_per_window); it never stops the
//   other batches of its group from committing and never crashes the process.
// - Paho's callback never blocks: it moves the message into a queue bounded
//   in bytes; when that is full the message is dropped and counted (the agent
//   resends it after its ack timeout), so the network thread keeps flowing.
// - The session is clean: an aggregator that dies traps no batches in the
//   broker; agents resend and the surviving member of the share group takes them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/store/central_store.h"
#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/core/metrics.h"
#include "shared/core/status.h"

namespace branchline::mqtt {
class BrokerEvents;  // shared/mqtt/broker_events.h
}  // namespace branchline::mqtt

namespace branchline::aggregator {

struct ConsumerOptions {
  std::string aggregator_name;  // stamped on acks, ledger rows, audit rows
  std::vector<std::string> broker_uris{"tcp://127.0.0.1:1883"};
  std::string client_id;  // default: "<aggregator_name>-<pid>"
  // Set: reports what the broker refuses or takes away (must outlive the consumer).
  mqtt::BrokerEvents* broker_events = nullptr;
  // Mutual TLS for ssl:// brokers (mqtt::ClientOptions): CA, this aggregator's
  // certificate (CN "aggregator.<name>") and its key.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::string topic_prefix = "branchline/v1";
  std::string share_group = "branchline-aggregators";
  protocol::DecodeLimits limits;
  // Sealed batches (protocol/seal.h): opened with `open.ring` and the agent's
  // enrolled key (`open.agent_public_key`); `open.require_sealed` refuses plain
  // ones. The default takes plain batches only (and refuses sealed ones).
  protocol::OpenOptions open{.ring = nullptr, .require_sealed = false};
  size_t max_batches_per_commit = 16;
  size_t max_queue_bytes = 64 << 20;  // received, not yet acked; an empty queue takes any message
  // Refusal audit rows per agent (by topic): the first `refusal_audits_per_window`
  // refusals in each window get a `batch_refused` row each; the rest are counted
  // and written as one `batch_refused_suppressed` row (how many, the first
  // reason) when the window closes, so a flood of garbage writes a bounded
  // number of rows. Metrics and acks still count every refusal.
  size_t refusal_audits_per_window = 10;
  std::chrono::milliseconds refusal_audit_window{60000};
  std::chrono::milliseconds min_retry{100};  // store commit retry backoff
  std::chrono::milliseconds max_retry{5000};
};

class BatchConsumer {
 public:
  // `store` and `metrics` must outlive the consumer. Metrics are registered here.
  BatchConsumer(ConsumerOptions options, CentralStore& store, MetricsRegistry& metrics);
  ~BatchConsumer();  // stop()

  // Connects (in the background), subscribes and starts the writer thread.
  // kInvalidArgument for unusable options (empty name or prefix).
  Status start();
  // Stops taking messages, lets the writer finish the group it holds (commit
  // and acks; a group waiting on an unavailable store is abandoned unacked),
  // then disconnects. Idempotent.
  void stop();

  // The last store operation succeeded (false while commits are being retried).
  bool storeReady() const;
  bool brokerConnected() const;
  // Both of the above: what /healthz reports.
  bool ready() const { return storeReady() && brokerConnected(); }

  // `<prefix>/agents/<agent>/batch` -> agent; empty when the topic has another
  // shape or the agent id is not [A-Za-z0-9_-]{1,64}.
  static std::string agentFromTopic(const std::string& topic, const std::string& prefix,
                                    std::string_view tail = "/batch");

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::aggregator
