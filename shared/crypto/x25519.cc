#include "shared/crypto/x25519.h"

#include <mbedtls/bignum.h>
#include <mbedtls/ecp.h>

#include <cstring>

#include "shared/crypto/mbedtls_error.h"
#include "shared/crypto/random.h"
#include "shared/crypto/secret.h"

namespace branchline::crypto {
namespace {

void clamp(X25519Key& k) {  // RFC 7748 section 5
  k[0] &= 248;
  k[31] &= 127;
  k[31] |= 64;
}

// The Curve25519 group; loading it is cheap but not free, so each thread keeps one.
class Curve {
 public:
  Curve() {
    mbedtls_ecp_group_init(&grp_);
    ok_ = mbedtls_ecp_group_load(&grp_, MBEDTLS_ECP_DP_CURVE25519) == 0;
  }
  ~Curve() { mbedtls_ecp_group_free(&grp_); }
  Curve(const Curve&) = delete;
  Curve& operator=(const Curve&) = delete;

  // mbedTLS keeps numbers big-endian in mbedtls_mpi while the RFC's byte strings
  // are little-endian: read and write them with the _le calls.
  Status x25519(const X25519Key& scalar, const X25519Key& u, X25519Key& out, Drbg& rng) {
    if (!ok_) return Status::internal("Curve25519 is not available in this mbedTLS build");
    SecretBytes<32> k;
    k.array() = scalar;
    clamp(k.array());
    X25519Key u_masked = u;
    u_masked[31] &= 127;  // "MUST mask the most significant bit in the final byte"
    mbedtls_mpi d;
    mbedtls_ecp_point p, r;
    mbedtls_mpi_init(&d);
    mbedtls_ecp_point_init(&p);
    mbedtls_ecp_point_init(&r);
    int rc = mbedtls_mpi_read_binary_le(&d, k.data(), 32);
    if (rc == 0) rc = mbedtls_mpi_read_binary_le(&p.X, u_masked.data(), 32);
    if (rc == 0) rc = mbedtls_mpi_lset(&p.Z, 1);
    if (rc == 0) rc = mbedtls_ecp_mul(&grp_, &r, &d, &p, &Drbg::callback, &rng);
    if (rc == 0) rc = mbedtls_mpi_write_binary_le(&r.X, out.data(), out.size());
    mbedtls_mpi_free(&d);  // zeroes the scalar's limbs
    mbedtls_ecp_point_free(&p);
    mbedtls_ecp_point_free(&r);
    if (rc == MBEDTLS_ERR_ECP_INVALID_KEY || rc == MBEDTLS_ERR_ECP_BAD_INPUT_DATA ||
        rc == MBEDTLS_ERR_MPI_NOT_ACCEPTABLE) {
      return Status::invalid("X25519 public key is a low-order point");
    }
    if (rc != 0) return Status::internal("X25519 failed (" + mbedtlsErrorText(rc) + ")");
    unsigned char any = 0;  // constant time: an all-zero secret means a low-order point
    for (unsigned char b : out) any |= b;
    if (any == 0) return Status::invalid("X25519 public key is a low-order point");
    return Status::ok();
  }

 private:
  mbedtls_ecp_group grp_;
  bool ok_ = false;
};

Curve& threadCurve() {
  thread_local Curve curve;
  return curve;
}

}  // namespace

Status x25519(const X25519Key& scalar, const X25519Key& u, X25519Key& out) {
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  return threadCurve().x25519(scalar, u, out, **rng);
}

Status generateX25519KeyPair(X25519Key& private_key, X25519Key& public_key) {
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  BL_RETURN_IF_ERROR((*rng)->fill(private_key));
  clamp(private_key);
  return threadCurve().x25519(private_key, kX25519BasePoint, public_key, **rng);
}

}  // namespace branchline::crypto
