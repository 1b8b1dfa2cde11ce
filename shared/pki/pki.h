// The fleet's X.509 identities (mbedTLS): an ECDSA P-256 certificate
// authority, server certificates for the broker and client certificates for
// agents and aggregators, all PEM, for mutual TLS with Mosquitto and Paho
// (README "Security"). What OpenSSL must accept is what this writes: v3
// certificates with basicConstraints, keyUsage, extendedKeyUsage (serverAuth or
// clientAuth), subject/authority key identifiers and, for servers, a
// subjectAltName with DNS names and IP addresses.
//
// Private keys never appear in a log line or an error message. Key generation,
// randomness and signing come from shared/crypto; key files are written with
// writeFileAtomically (shared/core/atomic_file.h: temp file, fsync, rename or
// link, fsync of the folder) with mode 0600, and a `Credential` wipes its key
// text when it goes away.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace branchline::pki {

enum class CertRole {
  kAuthority,  // self-signed CA: keyCertSign + cRLSign, CA:TRUE
  kServer,     // TLS server: digitalSignature, serverAuth, subjectAltName
  kClient,     // TLS client: digitalSignature, clientAuth; the CN is the identity
};

struct CertificateSpec {
  std::string common_name;  // subject "CN=<common_name>,O=Branchline"; no `,` `=` `\` `"`
  CertRole role = CertRole::kClient;
  std::vector<std::string> dns_names;     // subjectAltName dNSName entries
  std::vector<std::string> ip_addresses;  // subjectAltName iPAddress entries ("127.0.0.1", "::1")
  // Valid from an hour ago (clocks drift between hosts) for `days`.
  int days = 825;
  // Explicit validity in Unix seconds (UTC) instead of `days`, both or neither:
  // an expired certificate for tests, a certificate not valid yet.
  std::optional<int64_t> not_before;
  std::optional<int64_t> not_after;
};

// A certificate and its private key, both PEM. The key text is wiped (not just
// freed) when the credential is destroyed or assigned over.
struct Credential {
  std::string certificate_pem;
  std::string private_key_pem;  // "-----BEGIN EC PRIVATE KEY-----"; never logged

  Credential() = default;
  Credential(const Credential&) = default;
  Credential(Credential&&) noexcept = default;
  Credential& operator=(const Credential& other);
  Credential& operator=(Credential&& other) noexcept;
  ~Credential();
};

// A new key pair and a self-signed certificate authority over it.
// kInvalidArgument for a bad spec (names the field), kInternal if mbedTLS fails.
Result<Credential> createAuthority(const CertificateSpec& spec);

// A new key pair and a certificate for it signed by `authority`.
Result<Credential> issueCertificate(const Credential& authority, const CertificateSpec& spec);

// Reads a certificate and its key. kNotFound for a missing file,
// kPermissionDenied if the key file grants any group/other permission,
// kInvalidArgument if either does not parse or the key is not the certificate's.
Result<Credential> loadCredential(const std::filesystem::path& certificate_file,
                                  const std::filesystem::path& key_file);

struct CertificateInfo {
  std::string subject;      // "CN=agent-1, O=Branchline"
  std::string common_name;  // "agent-1"
  std::string issuer;
  std::string serial_hex;
  int64_t not_before = 0;  // Unix seconds
  int64_t not_after = 0;
  bool is_authority = false;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
};

// Parses one PEM certificate. kInvalidArgument if it does not parse.
Result<CertificateInfo> inspectCertificate(std::string_view certificate_pem);

// Checks that `certificate_pem` is signed by `authority_pem` and valid now, as
// a TLS peer would, and, given a PEM `crl_pem` of that authority, not revoked.
// OK, or kPermissionDenied naming the certificate's CN and every reason
// ("expired", "not signed by the trusted authority", "revoked", ...).
Status verifyCertificate(std::string_view certificate_pem, std::string_view authority_pem,
                         std::string_view crl_pem = {});

// ECDSA (the key's curve) over SHA-256 of `message`, with a PEM private key
// (a Credential's). kInvalidArgument if the key does not parse.
Result<std::string> signMessage(const std::string& private_key_pem, std::string_view message);
// OK when `signature` is signMessage() of `message` by the key of
// `certificate_pem` (whose trust the caller checks with verifyCertificate);
// kPermissionDenied naming the certificate's CN otherwise.
Status verifyMessageSignature(std::string_view certificate_pem, std::string_view message,
                              std::string_view signature);

// The whole file; kNotFound when it cannot be opened.
Result<std::string> readFile(const std::filesystem::path& file);

}  // namespace branchline::pki
