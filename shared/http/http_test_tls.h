// Test-only TLS helpers for bl_http's HTTPS (and the CLI's client tests): a
// throwaway PKI written to a temporary folder with bl_pki, and TlsTestClient,
// TestClient over TLS that checks the server's certificate like a real client.
// TestPki is header code; a test using it links bl_pki and bl_http_testing.
#pragma once

#include <stdlib.h>
#include <sys/types.h>

#include <filesystem>
#include <string>

#include "shared/core/atomic_file.h"
#include "shared/core/status.h"
#include "shared/http/http_test_client.h"
#include "shared/pki/pki.h"

namespace branchline::http::testing {

// In a fresh temporary folder, removed with the object (PEM, keys 0600):
//   ca.pem                          the test CA
//   server.pem, server.key          CN=http-server, SAN IP 127.0.0.1 and DNS localhost
//   client.pem, client.key          CN=agent-1 (clientAuth), from ca.pem
//   other-ca.pem                    an unrelated CA
//   other-client.pem, other-client.key   CN=agent-1 again, from other-ca.pem
class TestPki {
 public:
  TestPki() { status_ = create(); }
  ~TestPki() {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;

  // Why the files could not be made; OK when every file above exists.
  const Status& status() const { return status_; }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

 private:
  Status create() {
    char tmpl[] = "/tmp/bl-http-tls-test.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return Status::internal("mkdtemp failed");
    dir_ = tmpl;
    pki::CertificateSpec authority{
        .common_name = "Branchline HTTP test CA", .role = pki::CertRole::kAuthority, .days = 2};
    auto ca = pki::createAuthority(authority);
    if (!ca.isOk()) return ca.status();
    authority.common_name = "Another CA";
    auto other_ca = pki::createAuthority(authority);
    if (!other_ca.isOk()) return other_ca.status();
    BL_RETURN_IF_ERROR(write("ca.pem", ca->certificate_pem, 0644));
    BL_RETURN_IF_ERROR(write("other-ca.pem", other_ca->certificate_pem, 0644));
    BL_RETURN_IF_ERROR(issue(*ca,
                             {.common_name = "http-server",
                              .role = pki::CertRole::kServer,
                              .dns_names = {"localhost"},
                              .ip_addresses = {"127.0.0.1"},
                              .days = 2},
                             "server"));
    const pki::CertificateSpec client{
        .common_name = "agent-1", .role = pki::CertRole::kClient, .days = 2};
    BL_RETURN_IF_ERROR(issue(*ca, client, "client"));
    return issue(*other_ca, client, "other-client");
  }

  Status issue(const pki::Credential& ca, const pki::CertificateSpec& spec,
               const std::string& name) {
    auto credential = pki::issueCertificate(ca, spec);
    if (!credential.isOk()) return credential.status();
    BL_RETURN_IF_ERROR(write(name + ".pem", credential->certificate_pem, 0644));
    return write(name + ".key", credential->private_key_pem, 0600);
  }

  Status write(const std::string& name, const std::string& text, mode_t mode) {
    return writeFileAtomically(dir_ / name, text, mode);
  }

  std::filesystem::path dir_;
  Status status_;
};

// TestClient over TLS: trusts `ca_file` (and checks that the server's
// certificate names 127.0.0.1), presents `cert_file`/`key_file` when given.
class TlsTestClient : public TestClient {
 public:
  explicit TlsTestClient(const std::string& ca_file, const std::string& cert_file = {},
                         const std::string& key_file = {},
                         std::chrono::milliseconds deadline = std::chrono::seconds(10));

  // Why the files could not be loaded; "" when they loaded.
  const std::string& setupError() const;

  beast::error_code handshake();

  // connect() then handshake(); the first error.
  beast::error_code open(uint16_t port);
};

}  // namespace branchline::http::testing
