#include "protocol/ack_auth.h"

#include <cstring>

#include "shared/crypto/hash.h"
#include "shared/crypto/secret.h"

namespace branchline::protocol {
namespace {

constexpr std::string_view kKeyInfo = "branchline ack key v1";
constexpr std::string_view kTagDomain = "branchline ack tag v1";
constexpr std::string_view kStatusTagDomain = "branchline agent status tag v1";
constexpr size_t kTagSize = 32;

void putU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void putBytes(std::string& s, std::string_view b) {
  putU64(s, b.size());
  s.append(b);
}

// Every field but the tag, each length-prefixed so no two acks encode alike.
std::string tagInput(const WireAck& ack, std::string_view key_id) {
  std::string m;
  m.reserve(128 + ack.agent_id.size() + ack.digest.size() + ack.aggregator.size() +
            ack.message.size());
  putBytes(m, kTagDomain);
  putBytes(m, ack.agent_id);
  putU64(m, ack.batch_seq);
  putU64(m, static_cast<uint64_t>(ack.status));
  putU64(m, ack.stored_records);
  putU64(m, ack.duplicate_records);
  putU64(m, ack.rejects);
  putBytes(m, ack.digest);
  putBytes(m, ack.aggregator);
  putBytes(m, ack.message);
  putBytes(m, key_id);
  return m;
}

std::string statusTagInput(const WireAgentStatus& s, std::string_view key_id) {
  std::string m;
  putBytes(m, kStatusTagDomain);
  putU64(m, s.format_version);
  putBytes(m, s.agent_id);
  putU64(m, static_cast<uint64_t>(s.sent_at_us));
  putU64(m, s.events.size());
  for (const WireAgentEvent& e : s.events) {
    putBytes(m, e.kind);
    putU64(m, static_cast<uint64_t>(e.at_us));
    putBytes(m, e.detail);
  }
  putBytes(m, key_id);
  return m;
}

static_assert(kTagSize == crypto::Sha256Digest().size());

crypto::Sha256Digest hmac(const AckKey& key, const std::string& input) {
  return crypto::hmacSha256(key.secret, crypto::bytesOf(input));
}

std::string tagText(const crypto::Sha256Digest& tag) {
  return std::string(reinterpret_cast<const char*>(tag.data()), tag.size());
}

// Constant-time in the tag comparison.
AckCheck checkTag(const AckKey& key, std::string_view key_id, std::string_view tag,
                  const std::string& input) {
  if (tag.size() != kTagSize || key_id != key.key_id) return AckCheck::kUnauthenticated;
  const crypto::Sha256Digest expected = hmac(key, input);
  return crypto::equalConstantTime(expected, crypto::bytesOf(tag)) ? AckCheck::kAuthentic
                                                                   : AckCheck::kBadTag;
}

}  // namespace

AckKey::~AckKey() { crypto::zeroize(secret.data(), secret.size()); }

Result<AckKey> deriveAckKey(const X25519Key& static_agreement, const X25519Key& agent_public,
                            const X25519Key& aggregator_public) {
  AckKey key;
  key.key_id = sealKeyId(aggregator_public);
  std::array<unsigned char, 64> salt;
  std::memcpy(salt.data(), agent_public.data(), 32);
  std::memcpy(salt.data() + 32, aggregator_public.data(), 32);
  std::string info(kKeyInfo);
  info.push_back('\0');
  info += key.key_id;
  Status derived = crypto::hkdfSha256(salt, static_agreement, crypto::bytesOf(info), key.secret);
  if (!derived.isOk()) return derived.withContext("deriving the ack key");
  return key;
}

Result<AckKey> agentAckKey(const SealKeyPair& agent, const X25519Key& aggregator_public) {
  crypto::SecretBytes<32> secret;
  Status agreed = crypto::x25519(agent.private_key, aggregator_public, secret.array());
  if (!agreed.isOk()) return agreed.withContext("ack key");
  return deriveAckKey(secret.array(), agent.public_key, aggregator_public);
}

Result<AckKey> aggregatorAckKey(const SealKeyPair& aggregator, const X25519Key& agent_public) {
  crypto::SecretBytes<32> secret;
  Status agreed = crypto::x25519(aggregator.private_key, agent_public, secret.array());
  if (!agreed.isOk()) return agreed.withContext("ack key");
  return deriveAckKey(secret.array(), agent_public, aggregator.public_key);
}

void signAck(const AckKey& key, WireAck& ack) {
  ack.key_id = key.key_id;
  ack.tag = tagText(hmac(key, tagInput(ack, key.key_id)));
}

AckCheck checkAck(const AckKey& key, const WireAck& ack) {
  return checkTag(key, ack.key_id, ack.tag, tagInput(ack, key.key_id));
}

void signAgentStatus(const AckKey& key, WireAgentStatus& status) {
  status.key_id = key.key_id;
  status.tag = tagText(hmac(key, statusTagInput(status, key.key_id)));
}

AckCheck checkAgentStatus(const AckKey& key, const WireAgentStatus& status) {
  return checkTag(key, status.key_id, status.tag, statusTagInput(status, key.key_id));
}

}  // namespace branchline::protocol
