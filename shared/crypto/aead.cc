#include "shared/crypto/aead.h"

#include <mbedtls/gcm.h>

#include <cassert>

#include "shared/crypto/mbedtls_error.h"
#include "shared/crypto/secret.h"

namespace branchline::crypto {

struct Aes256Gcm::State {
  mbedtls_gcm_context gcm;
  State() { mbedtls_gcm_init(&gcm); }
  ~State() { mbedtls_gcm_free(&gcm); }  // zeroes the key schedule
  State(const State&) = delete;
  State& operator=(const State&) = delete;
};

Aes256Gcm::Aes256Gcm() : state_(std::make_unique<State>()) {}
Aes256Gcm::~Aes256Gcm() = default;
Aes256Gcm::Aes256Gcm(Aes256Gcm&&) noexcept = default;
Aes256Gcm& Aes256Gcm::operator=(Aes256Gcm&&) noexcept = default;

Result<Aes256Gcm> Aes256Gcm::create(std::span<const uint8_t, kKeySize> key) {
  Aes256Gcm c;
  int rc = mbedtls_gcm_setkey(&c.state_->gcm, MBEDTLS_CIPHER_ID_AES, key.data(), kKeySize * 8);
  if (rc != 0) return Status::internal("AES-256-GCM setkey failed (" + mbedtlsErrorText(rc) + ")");
  return c;
}

Status Aes256Gcm::seal(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> ad,
                       std::span<const uint8_t> plain, std::span<uint8_t> out,
                       std::span<uint8_t, kTagSize> tag) {
  assert(out.size() == plain.size());
  int rc = mbedtls_gcm_crypt_and_tag(&state_->gcm, MBEDTLS_GCM_ENCRYPT, plain.size(), nonce.data(),
                                     kNonceSize, ad.data(), ad.size(), plain.data(), out.data(),
                                     kTagSize, tag.data());
  if (rc != 0) return Status::internal("AES-256-GCM encrypt failed (" + mbedtlsErrorText(rc) + ")");
  return Status::ok();
}

Status Aes256Gcm::open(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> ad,
                       std::span<const uint8_t> cipher, std::span<const uint8_t, kTagSize> tag,
                       std::span<uint8_t> out) {
  assert(out.size() == cipher.size());
  int rc =
      mbedtls_gcm_auth_decrypt(&state_->gcm, cipher.size(), nonce.data(), kNonceSize, ad.data(),
                               ad.size(), tag.data(), kTagSize, cipher.data(), out.data());
  if (rc == MBEDTLS_ERR_GCM_AUTH_FAILED) {
    zeroize(out.data(), out.size());  // mbedTLS zeroes it too; never hand back unauthentic bytes
    return Status::dataLoss("AES-256-GCM: authentication failed");
  }
  if (rc != 0) return Status::internal("AES-256-GCM decrypt failed (" + mbedtlsErrorText(rc) + ")");
  return Status::ok();
}

}  // namespace branchline::crypto
