// ECDSA over P-256 with SHA-256, keys as PEM: what the fleet's certificates use
// (shared/pki) and what signs its revocation lists and rotation notices.
// Signatures are DER (SEQUENCE of r, s), as X.509 and OpenSSL write them.
#pragma once

#include <string>
#include <string_view>

#include "shared/core/status.h"
#include "shared/crypto/secret.h"

namespace branchline::crypto {

// A new P-256 private key, PEM ("-----BEGIN EC PRIVATE KEY-----").
Result<SecretString> generateEcdsaP256Key();

// The public half of a private key, PEM ("-----BEGIN PUBLIC KEY-----").
Result<std::string> ecdsaPublicKeyPem(std::string_view private_key_pem);

// ECDSA (the key's curve) over SHA-256 of `message`. kInvalidArgument "not a PEM
// private key: ..." if the key does not parse (the text never quotes the key).
Result<std::string> ecdsaSign(std::string_view private_key_pem, std::string_view message);

// OK when `signature` is ecdsaSign() of `message` by the private half of
// `public_key_pem` ("-----BEGIN PUBLIC KEY-----"); kPermissionDenied otherwise,
// kInvalidArgument if the public key does not parse.
Status ecdsaVerify(std::string_view public_key_pem, std::string_view message,
                   std::string_view signature);

}  // namespace branchline::crypto
