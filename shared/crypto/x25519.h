// X25519 (RFC 7748): key pairs and Diffie-Hellman shared secrets over Curve25519,
// byte strings little-endian as in the RFC. Thread-safe (each thread keeps its own
// curve and random generator, for mbedTLS's blinding of the scalar).
#pragma once

#include <array>
#include <cstdint>

#include "shared/core/status.h"

namespace branchline::crypto {

using X25519Key = std::array<uint8_t, 32>;
// The base point u = 9: x25519(private, kX25519BasePoint) is the public key.
inline constexpr X25519Key kX25519BasePoint = {9};

// The X25519 function: the scalar clamped and the u top bit masked as the RFC
// says. kInvalidArgument for a low-order point (the result would be all zero).
// `out` may hold a secret: give it zeroing storage (SecretBytes<32>::array()).
Status x25519(const X25519Key& scalar, const X25519Key& u, X25519Key& out);

// A new pair from the thread's Drbg; the private key is stored clamped (section 5).
Status generateX25519KeyPair(X25519Key& private_key, X25519Key& public_key);

}  // namespace branchline::crypto
