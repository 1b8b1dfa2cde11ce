// Fixed X25519 keys for fuzz_sealed_open, its seed generator and the seed test:
// derived from constant bytes, so the committed sealed seeds open in every
// build. Test-only and public in the repository: never use them for real data.
#pragma once

#include <cstdint>
#include <string>

#include "protocol/seal.h"
#include "tests/fuzz/fuzz_check.h"

namespace branchline::fuzz {

// The time the fuzz target opens batches at: the retired key's `until` is before it.
inline constexpr int64_t kSealNowUs = 1764071627000000;

inline protocol::SealKeyPair fixedSealPair(uint8_t tag) {
  protocol::SealKeyPair pair;
  for (size_t i = 0; i < pair.private_key.size(); ++i) {
    pair.private_key[i] = static_cast<uint8_t>(tag * 29 + i * 7 + 1);
  }
  // RFC 7748 clamping, as generateSealKeyPair stores private keys.
  pair.private_key[0] &= 248;
  pair.private_key[31] = static_cast<uint8_t>((pair.private_key[31] & 127) | 64);
  protocol::X25519Key base{};
  base[0] = 9;
  auto pub = protocol::x25519(pair.private_key, base);
  FUZZ_CHECK(pub.isOk(), "the fixed test key derives a public key");
  pair.public_key = *pub;
  return pair;
}

struct SealTestKeys {
  protocol::SealKeyPair aggregator = fixedSealPair(1);  // current: honoured with no end
  protocol::SealKeyPair retired = fixedSealPair(2);     // honoured until before kSealNowUs
  protocol::SealKeyPair stranger = fixedSealPair(3);    // in no ring
  protocol::SealKeyPair office1 = fixedSealPair(4);     // enrolled agent "office-1"
  protocol::SealKeyPair office2 = fixedSealPair(5);     // enrolled agent "office-2"
  protocol::AggregatorKeyRing ring;

  SealTestKeys() {
    ring.by_key_id[protocol::sealKeyId(aggregator.public_key)] = {aggregator, INT64_MAX};
    ring.by_key_id[protocol::sealKeyId(retired.public_key)] = {retired, kSealNowUs - 1000000};
  }

  protocol::OpenOptions openOptions(bool require_sealed) const {
    protocol::OpenOptions o;
    o.ring = &ring;
    o.agent_public_key = [this](const std::string& agent) -> Result<protocol::X25519Key> {
      if (agent == "office-1") return office1.public_key;
      if (agent == "office-2") return office2.public_key;
      return Status::notFound("agent `" + agent + "` is not enrolled");
    };
    o.require_sealed = require_sealed;
    o.now_us = kSealNowUs;
    return o;
  }
};

inline const SealTestKeys& sealTestKeys() {
  static const SealTestKeys keys;
  return keys;
}

}  // namespace branchline::fuzz
