// Sealed batches: the agent encrypts and authenticates every batch so that only
// the aggregators can open it and an aggregator can tell which agent sealed it,
// without trusting the broker (README "Security / Sealed batches").
//
// Construction (mbedTLS): X25519 between a fresh ephemeral key and the
// aggregators' static key (forward secrecy) and between the agent's static key
// and the aggregators' static key (sender authentication: only that agent or an
// aggregator can compute it); HKDF-SHA256 over both shared secrets and the
// public keys (salt), the agent id and key id (info) gives a fresh AES-256-GCM
// key and nonce per publish, so no (key, nonce) pair repeats even after a crash
// or a restored disk image. The envelope header (format version, kind, codec,
// cipher, key id, agent id, batch seq, raw size, ephemeral public key) is the
// associated data: changing any byte of it fails the open.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "protocol/batch_codec.h"
#include "shared/core/status.h"
#include "shared/crypto/x25519.h"

namespace branchline::protocol {

using X25519Key = crypto::X25519Key;
struct AckKey;  // protocol/ack_auth.h

struct SealKeyPair {
  X25519Key private_key{};  // never logged, never in an error message
  X25519Key public_key{};
  ~SealKeyPair();  // zeroes private_key (every copy zeroes its own)
};

// A new key pair from mbedTLS's CTR-DRBG seeded by the system entropy source.
// The private key is stored clamped (RFC 7748 section 5).
Result<SealKeyPair> generateSealKeyPair();
// Names a public key on the wire and in files: the first 8 bytes of its SHA-256, hex.
std::string sealKeyId(const X25519Key& public_key);
// The X25519 function of RFC 7748 (scalar and u-coordinate little-endian, the
// scalar clamped and the u top bit masked as the RFC says). kInvalidArgument for
// a low-order point (the shared secret would be all zero).
Result<X25519Key> x25519(const X25519Key& scalar, const X25519Key& u);

// Key files, one line each: `branchline-x25519-private-v1 <64 hex digits>` (the
// private key; readSealPrivateKey derives the public half) and
// `branchline-x25519-public-v1 <64 hex digits>`. Writes are atomic (temp file,
// fsync, rename over the target, fsync of the folder): private files 0600,
// public ones 0644. Reading a private key file that grants any group/other
// permission fails with kPermissionDenied; a missing file is kNotFound. Errors
// name the file, never its contents.
Status writeSealPrivateKey(const std::filesystem::path& file, const SealKeyPair& pair);
Status writeSealPublicKey(const std::filesystem::path& file, const X25519Key& public_key);
Result<SealKeyPair> readSealPrivateKey(const std::filesystem::path& file);
Result<X25519Key> readSealPublicKey(const std::filesystem::path& file);

// What an agent seals with.
struct SealerKeys {
  SealKeyPair agent;              // the agent's own static pair
  X25519Key aggregator_public{};  // the aggregators' current public key
};

// encodeBatch, then sealed: the envelope carries cipher x25519Aes256Gcm, the
// key id of `aggregator_public` and the ephemeral public key. One-shot: agrees the
// static secret per call; a forwarder seals through a BatchSealer.
Result<std::string> sealBatch(const WireBatch& batch, const SealerKeys& keys, int zstd_level = 1);

// Seals every batch of one agent. Draws from its thread's random generator
// (crypto::threadDrbg: seeded once, fed fresh system entropy on every request)
// and holds the agent/aggregator static shared secret (zeroed on destruction),
// so a batch costs two X25519 (the ephemeral key and its agreement) and one
// AES-GCM pass over the compressed body. Not thread-safe: one per forwarder thread.
class BatchSealer {
 public:
  // kInvalidArgument when the keys cannot agree (a low-order aggregator key).
  static Result<std::unique_ptr<BatchSealer>> create(const SealerKeys& keys);
  ~BatchSealer();
  BatchSealer(const BatchSealer&) = delete;
  BatchSealer& operator=(const BatchSealer&) = delete;

  Result<std::string> seal(const WireBatch& batch, int zstd_level = 1);
  // The aggregator key id every sealed envelope names.
  const std::string& keyId() const;
  // The key the aggregators' acks for this agent are tagged with (ack_auth.h),
  // from the same static agreement: computed once, at create().
  const AckKey& ackKey() const;

 private:
  BatchSealer();
  struct State;
  std::unique_ptr<State> state_;
};

// The aggregators' keys: every key honoured now, each with the time it stops
// being honoured (INT64_MAX for the current one). Rotation: add the new key,
// give the old one an `until` (now + the grace period), reload.
struct AggregatorKeyRing {
  struct Entry {
    SealKeyPair pair;
    int64_t honoured_until_us = INT64_MAX;
  };
  std::map<std::string, Entry> by_key_id;
};

struct OpenOptions {
  const AggregatorKeyRing* ring = nullptr;
  // The agent's registered public key (from the fleet's agents folder);
  // kNotFound for an agent that is not enrolled, kPermissionDenied for a revoked one.
  std::function<Result<X25519Key>(const std::string& agent_id)> agent_public_key;
  bool require_sealed = true;  // refuse cipher = none
  int64_t now_us = 0;          // 0: the clock
};

// Why openBatch refused a payload: a small fixed set, for metric labels and audit.
enum class OpenFailure {
  kNone,
  kMalformed,        // not a well-formed envelope or batch
  kTooLarge,         // over a DecodeLimits bound
  kNotSealed,        // plain batch while sealing is required
  kUnknownKey,       // names no aggregator key in the ring (or no ring)
  kKeyRetired,       // names a key past its `until`
  kNotEnrolled,      // no public sealing key for the agent it names
  kForgedOrAltered,  // does not authenticate: another sealer, or a changed byte
  kRevoked,          // the agent it names is revoked (`branchline pki revoke`)
};
// "malformed", "too_large", "not_sealed", "unknown_key", "key_retired",
// "not_enrolled", "seal_invalid", "revoked" ("" for kNone).
const char* openFailureLabel(OpenFailure failure);

// Opens a sealed (or, when allowed, plain) batch under `limits`. kInvalidArgument
// naming what failed: "batch is not sealed", "unknown aggregator key id `..`",
// "aggregator key `..` retired at ..", "agent `x` is not enrolled", "agent `x`
// is revoked", "batch does
// not open: not sealed by agent `x`, or altered", plus every decodeBatch error.
// The header's agent id is checked ([A-Za-z0-9_-]{1,64}) before agent_public_key
// sees it. Thread-safe (each thread keeps its own random generator for blinding).
// `failure`, when given, says which kind of refusal it was. `ack_key`, when
// given, is set once the batch has authenticated (even if its body then fails
// to parse): the key to tag this agent's ack with (ack_auth.h).
Result<WireBatch> openBatch(std::string_view payload, const DecodeLimits& limits,
                            const OpenOptions& options, OpenFailure* failure = nullptr,
                            AckKey* ack_key = nullptr);

}  // namespace branchline::protocol
