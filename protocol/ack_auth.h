// Authenticated acks: an agent deletes a batch only on an ack that an
// aggregator made for that agent, that batch sequence and that content
// (README "Security / Authenticated acks"). The broker, a bridge, or anyone
// holding a fleet TLS certificate can drop or delay acks, never make one.
//
// Key: HKDF-SHA256 of the static X25519 agreement between the agent's sealing
// key and the aggregators' (the secret that already proves who sealed a batch:
// only that agent and the aggregators can compute it); salt = the agent's then
// the aggregator's public key, info = "branchline ack key v1" and the key id.
// Tag: HMAC-SHA256 over a length-prefixed encoding of every other ack field
// (agent id, batch seq, status, the three counts, the batch digest, the
// aggregator, the message and the key id). A real ack altered in any field, or
// moved to another seq, fails; one made for other content under the same seq
// carries another digest (protocol/batch_digest.h), which the agent compares
// with the batch it holds.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/core/status.h"

namespace branchline::protocol {

// The MAC key of one agent's acks under one aggregator key. Zeroed on destruction.
struct AckKey {
  std::string key_id;  // sealKeyId() of the aggregator public key it was agreed with
  std::array<uint8_t, 32> secret{};
  AckKey() = default;
  AckKey(const AckKey&) = default;
  AckKey& operator=(const AckKey&) = default;
  ~AckKey();
};

// From the static agreement x25519(agent private, aggregator public), which
// equals x25519(aggregator private, agent public).
Result<AckKey> deriveAckKey(const X25519Key& static_agreement, const X25519Key& agent_public,
                            const X25519Key& aggregator_public);
// The same key, from either side's own pair and the other side's public key.
// kInvalidArgument for a low-order public key.
Result<AckKey> agentAckKey(const SealKeyPair& agent, const X25519Key& aggregator_public);
Result<AckKey> aggregatorAckKey(const SealKeyPair& aggregator, const X25519Key& agent_public);

// Sets ack.key_id and ack.tag over every other field (set them all first).
void signAck(const AckKey& key, WireAck& ack);

enum class AckCheck {
  kAuthentic,
  kUnauthenticated,  // no tag, a tag of the wrong size, or keyed to another aggregator key
  kBadTag,           // keyed to this key but the tag does not match: altered or forged
};
// Constant-time in the tag comparison.
AckCheck checkAck(const AckKey& key, const WireAck& ack);

// An agent's status message (batch_codec.h) is tagged with the same key: only
// that agent and the aggregators can make one. Sets status.key_id and
// status.tag over every other field (domain-separated from acks).
void signAgentStatus(const AckKey& key, WireAgentStatus& status);
AckCheck checkAgentStatus(const AckKey& key, const WireAgentStatus& status);

}  // namespace branchline::protocol
