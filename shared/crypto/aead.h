// AES-256-GCM (NIST SP 800-38D) with a 12-byte nonce and a 16-byte tag. The key
// schedule is set up once per Aes256Gcm, so a hot path (a value per record) pays
// only the pass over its bytes.
//
// The caller owns nonce uniqueness: one (key, nonce) pair must never seal two
// different messages (agent/buffer/record_cipher.h and protocol/seal.h say how
// each one ensures it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "shared/core/status.h"

namespace branchline::crypto {

class Aes256Gcm {
 public:
  static constexpr size_t kKeySize = 32;
  static constexpr size_t kNonceSize = 12;
  static constexpr size_t kTagSize = 16;

  // The key is copied into the context's schedule (zeroed on destruction).
  static Result<Aes256Gcm> create(std::span<const uint8_t, kKeySize> key);
  ~Aes256Gcm();
  Aes256Gcm(Aes256Gcm&&) noexcept;
  Aes256Gcm& operator=(Aes256Gcm&&) noexcept;
  Aes256Gcm(const Aes256Gcm&) = delete;
  Aes256Gcm& operator=(const Aes256Gcm&) = delete;

  // Encrypts `plain` into `out` (REQUIRES: out.size() == plain.size()) and writes
  // the tag over `ad` and the ciphertext. kInternal if mbedTLS fails.
  Status seal(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> ad,
              std::span<const uint8_t> plain, std::span<uint8_t> out,
              std::span<uint8_t, kTagSize> tag);
  // Decrypts `cipher` into `out` (REQUIRES: out.size() == cipher.size()) only if
  // `tag` authenticates `ad` and `cipher`: kDataLoss when it does not (changed,
  // forged, or another key), and `out` is then zeroed. kInternal otherwise.
  Status open(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> ad,
              std::span<const uint8_t> cipher, std::span<const uint8_t, kTagSize> tag,
              std::span<uint8_t> out);

 private:
  Aes256Gcm();
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace branchline::crypto
