// SHA-256 (one-shot and incremental), HMAC-SHA256 and HKDF-SHA256 (RFC 5869).
// Bytes in, bytes out; the callers own their formats (hex, truncation).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace branchline::crypto {

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest sha256(std::span<const uint8_t> data);
Sha256Digest sha256(std::string_view data);

// Lower-case hex of `bytes` ("00ff...").
std::string toHex(std::span<const uint8_t> bytes);

// Incremental SHA-256: update() any number of times, then finish() once.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::span<const uint8_t> data);
  void update(std::string_view data);
  // REQUIRES: called once; no update() after it.
  Sha256Digest finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// HMAC-SHA256 (RFC 2104) of `message` under `key`.
Sha256Digest hmacSha256(std::span<const uint8_t> key, std::span<const uint8_t> message);

// HKDF-SHA256 (RFC 5869, extract then expand): fills `out` (at most 255 * 32
// bytes). kInternal only if mbedTLS refuses (an oversized `out`).
Status hkdfSha256(std::span<const uint8_t> salt, std::span<const uint8_t> ikm,
                  std::span<const uint8_t> info, std::span<uint8_t> out);

// Constant-time equality of two byte strings of the same length (false otherwise).
bool equalConstantTime(std::span<const uint8_t> a, std::span<const uint8_t> b);

}  // namespace branchline::crypto
