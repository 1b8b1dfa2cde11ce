#include "shared/crypto/ecdsa.h"

#include <mbedtls/ecp.h>
#include <mbedtls/pk.h>

#include <array>

#include "shared/crypto/hash.h"
#include "shared/crypto/mbedtls_error.h"
#include "shared/crypto/random.h"

namespace branchline::crypto {
namespace {

class PkKey {
 public:
  PkKey() { mbedtls_pk_init(&ctx_); }
  ~PkKey() { mbedtls_pk_free(&ctx_); }  // zeroes the key
  PkKey(const PkKey&) = delete;
  PkKey& operator=(const PkKey&) = delete;
  mbedtls_pk_context* get() { return &ctx_; }

 private:
  mbedtls_pk_context ctx_;
};

// mbedTLS parses PEM from a NUL-terminated buffer whose length counts the NUL.
int parsePrivate(PkKey& key, std::string_view pem) {
  SecretString text{std::string(pem)};
  return mbedtls_pk_parse_key(key.get(), reinterpret_cast<const unsigned char*>(text.str().c_str()),
                              text.str().size() + 1, nullptr, 0);
}

}  // namespace

Result<SecretString> generateEcdsaP256Key() {
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  PkKey key;
  int rc = mbedtls_pk_setup(key.get(), mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
  if (rc != 0) return Status::internal("creating a key: " + mbedtlsErrorText(rc));
  rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*key.get()), &Drbg::callback,
                           *rng);
  if (rc != 0) return Status::internal("generating an ECDSA P-256 key: " + mbedtlsErrorText(rc));
  SecretBytes<1024> buf;
  rc = mbedtls_pk_write_key_pem(key.get(), buf.data(), buf.size());
  if (rc != 0) return Status::internal("encoding a private key: " + mbedtlsErrorText(rc));
  return SecretString(std::string(reinterpret_cast<const char*>(buf.data())));
}

Result<std::string> ecdsaPublicKeyPem(std::string_view private_key_pem) {
  PkKey key;
  int rc = parsePrivate(key, private_key_pem);
  if (rc != 0) return Status::invalid("not a PEM private key: " + mbedtlsErrorText(rc));
  std::array<unsigned char, 512> buf{};
  rc = mbedtls_pk_write_pubkey_pem(key.get(), buf.data(), buf.size());
  if (rc != 0) return Status::internal("encoding a public key: " + mbedtlsErrorText(rc));
  return std::string(reinterpret_cast<const char*>(buf.data()));
}

Result<std::string> ecdsaSign(std::string_view private_key_pem, std::string_view message) {
  PkKey key;
  int rc = parsePrivate(key, private_key_pem);
  if (rc != 0) return Status::invalid("not a PEM private key: " + mbedtlsErrorText(rc));
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  const Sha256Digest hash = sha256(message);
  std::string sig(MBEDTLS_PK_SIGNATURE_MAX_SIZE, '\0');
  size_t len = 0;
  rc = mbedtls_pk_sign(key.get(), MBEDTLS_MD_SHA256, hash.data(), hash.size(),
                       reinterpret_cast<unsigned char*>(sig.data()), &len, &Drbg::callback, *rng);
  if (rc != 0) return Status::internal("signing: " + mbedtlsErrorText(rc));
  sig.resize(len);
  return sig;
}

Status ecdsaVerify(std::string_view public_key_pem, std::string_view message,
                   std::string_view signature) {
  PkKey key;
  const std::string text(public_key_pem);
  int rc = mbedtls_pk_parse_public_key(
      key.get(), reinterpret_cast<const unsigned char*>(text.c_str()), text.size() + 1);
  if (rc != 0) return Status::invalid("not a PEM public key: " + mbedtlsErrorText(rc));
  const Sha256Digest hash = sha256(message);
  rc =
      mbedtls_pk_verify(key.get(), MBEDTLS_MD_SHA256, hash.data(), hash.size(),
                        reinterpret_cast<const unsigned char*>(signature.data()), signature.size());
  if (rc != 0) return Status(Code::kPermissionDenied, "signature does not verify");
  return Status::ok();
}

}  // namespace branchline::crypto
