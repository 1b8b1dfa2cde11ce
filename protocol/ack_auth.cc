#include "protocol/ack_auth.h"

#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>

#include <cstring>

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

std::string hmac(const AckKey& key, const std::string& input);

AckCheck checkTag(const AckKey& key, std::string_view key_id, std::string_view tag,
                  const std::string& input) {
  if (tag.size() != kTagSize || key_id != key.key_id) return AckCheck::kUnauthenticated;
  const std::string expected = hmac(key, input);
  unsigned char diff = 0;
  for (size_t i = 0; i < kTagSize; ++i) {
    diff |= static_cast<unsigned char>(expected[i] ^ tag[i]);
  }
  return diff == 0 ? AckCheck::kAuthentic : AckCheck::kBadTag;
}

std::string hmac(const AckKey& key, const std::string& input) {
  std::string out(kTagSize, '\0');
  [[maybe_unused]] int rc =
      mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key.secret.data(),
                      key.secret.size(), reinterpret_cast<const unsigned char*>(input.data()),
                      input.size(), reinterpret_cast<unsigned char*>(out.data()));
  // Fails only for a missing digest (SHA-256 is always built in) or bad arguments.
  if (rc != 0) out.assign(kTagSize, '\0');
  return out;
}

}  // namespace

AckKey::~AckKey() { mbedtls_platform_zeroize(secret.data(), secret.size()); }

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
  int rc = mbedtls_hkdf(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), salt.data(), salt.size(),
                        static_agreement.data(), static_agreement.size(),
                        reinterpret_cast<const unsigned char*>(info.data()), info.size(),
                        key.secret.data(), key.secret.size());
  if (rc != 0) return Status::internal("deriving the ack key failed (HKDF-SHA256)");
  return key;
}

Result<AckKey> agentAckKey(const SealKeyPair& agent, const X25519Key& aggregator_public) {
  auto agreed = x25519(agent.private_key, aggregator_public);
  if (!agreed) return agreed.status().withContext("ack key");
  X25519Key secret = *agreed;
  auto key = deriveAckKey(secret, agent.public_key, aggregator_public);
  mbedtls_platform_zeroize(secret.data(), secret.size());
  return key;
}

Result<AckKey> aggregatorAckKey(const SealKeyPair& aggregator, const X25519Key& agent_public) {
  auto agreed = x25519(aggregator.private_key, agent_public);
  if (!agreed) return agreed.status().withContext("ack key");
  X25519Key secret = *agreed;
  auto key = deriveAckKey(secret, agent_public, aggregator.public_key);
  mbedtls_platform_zeroize(secret.data(), secret.size());
  return key;
}

void signAck(const AckKey& key, WireAck& ack) {
  ack.key_id = key.key_id;
  ack.tag = hmac(key, tagInput(ack, key.key_id));
}

AckCheck checkAck(const AckKey& key, const WireAck& ack) {
  return checkTag(key, ack.key_id, ack.tag, tagInput(ack, key.key_id));
}

void signAgentStatus(const AckKey& key, WireAgentStatus& status) {
  status.key_id = key.key_id;
  status.tag = hmac(key, statusTagInput(status, key.key_id));
}

AckCheck checkAgentStatus(const AckKey& key, const WireAgentStatus& status) {
  return checkTag(key, status.key_id, status.tag, statusTagInput(status, key.key_id));
}

}  // namespace branchline::protocol
