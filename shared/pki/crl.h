// The fleet's certificate revocation list (README "Renewal, revocation, rotation"): a
// PEM X.509 v2 CRL signed by the fleet CA, which Mosquitto's `crlfile` checks
// every client certificate against. mbedTLS 2.28 parses CRLs but cannot write
// them, so this one file uses OpenSSL's libcrypto (which Paho and Mosquitto
// already use) to write and read it.
//
// nextUpdate is the CA's own notAfter: OpenSSL refuses every client once a
// CRL's nextUpdate has passed, and a fleet CRL is re-signed only when something
// is revoked, so an earlier nextUpdate would lock the whole fleet out one day.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"
#include "shared/pki/pki.h"

namespace branchline::pki {

struct RevokedCertificate {
  std::string serial_hex;  // canonicalSerial() form
  int64_t revoked_at = 0;  // Unix seconds (UTC)
};

struct RevocationList {
  std::vector<RevokedCertificate> revoked;
  int64_t crl_number = 0;   // the crlNumber extension; grows with every list issued
  int64_t this_update = 0;  // Unix seconds
};

// A serial as upper-case hex without separators or leading zero bytes, the
// form both mbedTLS ("4A:0F:..") and OpenSSL spellings reduce to.
std::string canonicalSerial(std::string_view serial);

// The PEM CRL of `list`, signed (ECDSA with SHA-256) by `authority`, with
// authorityKeyIdentifier and crlNumber. kInvalidArgument for a bad serial or
// an authority that does not parse; kInternal if OpenSSL fails.
Result<std::string> writeRevocationList(const Credential& authority, const RevocationList& list);

// Parses `crl_pem` and checks it is signed by `authority_pem`'s key and names
// it as issuer. kInvalidArgument (saying which) otherwise.
Result<RevocationList> readRevocationList(std::string_view crl_pem, std::string_view authority_pem);

}  // namespace branchline::pki
