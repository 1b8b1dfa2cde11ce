#include "shared/crypto/hash.h"

#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>
#include <mbedtls/sha256.h>

#include <cassert>

#include "shared/crypto/mbedtls_error.h"

namespace branchline::crypto {

// The mbedTLS calls below fail only on hardware-accelerator errors (none is
// configured) or bad arguments, which the types here rule out.

Sha256Digest sha256(std::span<const uint8_t> data) {
  Sha256Digest out;
  [[maybe_unused]] int rc = mbedtls_sha256_ret(data.data(), data.size(), out.data(), /*is224=*/0);
  assert(rc == 0);
  return out;
}

Sha256Digest sha256(std::string_view data) {
  return sha256(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

std::string toHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * bytes.size(), '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

struct Sha256::State {
  mbedtls_sha256_context ctx;
};

Sha256::Sha256() : state_(std::make_unique<State>()) {
  mbedtls_sha256_init(&state_->ctx);
  [[maybe_unused]] int rc = mbedtls_sha256_starts_ret(&state_->ctx, /*is224=*/0);
  assert(rc == 0);
}

Sha256::~Sha256() { mbedtls_sha256_free(&state_->ctx); }

void Sha256::update(std::span<const uint8_t> data) {
  [[maybe_unused]] int rc = mbedtls_sha256_update_ret(&state_->ctx, data.data(), data.size());
  assert(rc == 0);
}

void Sha256::update(std::string_view data) {
  update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

Sha256Digest Sha256::finish() {
  Sha256Digest out;
  [[maybe_unused]] int rc = mbedtls_sha256_finish_ret(&state_->ctx, out.data());
  assert(rc == 0);
  return out;
}

Sha256Digest hmacSha256(std::span<const uint8_t> key, std::span<const uint8_t> message) {
  Sha256Digest out{};
  [[maybe_unused]] int rc =
      mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), key.data(), key.size(),
                      message.data(), message.size(), out.data());
  assert(rc == 0);
  return out;
}

Status hkdfSha256(std::span<const uint8_t> salt, std::span<const uint8_t> ikm,
                  std::span<const uint8_t> info, std::span<uint8_t> out) {
  int rc = mbedtls_hkdf(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), salt.data(), salt.size(),
                        ikm.data(), ikm.size(), info.data(), info.size(), out.data(), out.size());
  if (rc != 0) return Status::internal("HKDF-SHA256 failed (" + mbedtlsErrorText(rc) + ")");
  return Status::ok();
}

bool equalConstantTime(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size()) return false;
  uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace branchline::crypto
