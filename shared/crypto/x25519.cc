#include "shared/crypto/x25519.h"

#include <openssl/evp.h>

#include <cstring>

#include "shared/crypto/random.h"
#include "shared/crypto/secret.h"

namespace branchline::crypto {
namespace {

void clamp(X25519Key& k) {  // RFC 7748 section 5
  k[0] &= 248;
  k[31] &= 127;
  k[31] |= 64;
}

// OpenSSL's libcrypto (README "Security"): its X25519 takes about 30 us here,
// mbedTLS 2.28's generic curve code about 500; a sealed batch needs two on
// each side. Constant time in the scalar.
Status agree(const X25519Key& scalar, const X25519Key& u, X25519Key& out) {
  SecretBytes<32> k;
  k.array() = scalar;
  clamp(k.array());
  X25519Key u_masked = u;
  u_masked[31] &= 127;  // "MUST mask the most significant bit in the final byte"
  EVP_PKEY* own = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, k.data(), 32);
  EVP_PKEY* peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, u_masked.data(), 32);
  EVP_PKEY_CTX* ctx = own != nullptr ? EVP_PKEY_CTX_new(own, nullptr) : nullptr;
  const bool ready = ctx != nullptr && peer != nullptr && EVP_PKEY_derive_init(ctx) == 1 &&
                     EVP_PKEY_derive_set_peer(ctx, peer) == 1;
  size_t len = out.size();
  // OpenSSL refuses to derive an all-zero secret (a low-order point).
  const bool derived = ready && EVP_PKEY_derive(ctx, out.data(), &len) == 1 && len == out.size();
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(peer);
  EVP_PKEY_free(own);  // cleanses its copy of the scalar
  if (!ready) return Status::internal("X25519 failed (OpenSSL)");
  unsigned char any = 0;  // constant time: an all-zero secret means a low-order point
  for (unsigned char b : out) any |= b;
  if (!derived || any == 0) {
    zeroize(out.data(), out.size());
    return Status::invalid("X25519 public key is a low-order point");
  }
  return Status::ok();
}

}  // namespace

Status x25519(const X25519Key& scalar, const X25519Key& u, X25519Key& out) {
  return agree(scalar, u, out);
}

Status generateX25519KeyPair(X25519Key& private_key, X25519Key& public_key) {
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  BL_RETURN_IF_ERROR((*rng)->fill(private_key));
  clamp(private_key);
  return agree(private_key, kX25519BasePoint, public_key);
}

}  // namespace branchline::crypto
