#include "shared/pki/pki.h"

#include <gtest/gtest.h>
#include <mbedtls/x509_crt.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <ctime>
#include <filesystem>

#include "shared/core/atomic_file.h"
#include "shared/core/metrics.h"
#include "shared/pki/certificate_expiry.h"
#include "shared/pki/crl.h"

namespace branchline::pki {
namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/bl-pki-test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  fs::path path() const { return path_; }

 private:
  std::string path_;
};

CertificateSpec authoritySpec(const std::string& name = "Branchline test CA") {
  CertificateSpec s;
  s.common_name = name;
  s.role = CertRole::kAuthority;
  s.days = 30;
  return s;
}

CertificateSpec clientSpec(const std::string& cn) {
  CertificateSpec s;
  s.common_name = cn;
  s.role = CertRole::kClient;
  s.days = 10;
  return s;
}

mode_t modeOf(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

// mbedTLS's own chain check, independent of verifyCertificate's wrapping.
uint32_t mbedtlsVerifyFlags(const std::string& cert_pem, const std::string& ca_pem) {
  mbedtls_x509_crt crt, ca;
  mbedtls_x509_crt_init(&crt);
  mbedtls_x509_crt_init(&ca);
  EXPECT_EQ(mbedtls_x509_crt_parse(&crt, reinterpret_cast<const unsigned char*>(cert_pem.c_str()),
                                   cert_pem.size() + 1),
            0);
  EXPECT_EQ(mbedtls_x509_crt_parse(&ca, reinterpret_cast<const unsigned char*>(ca_pem.c_str()),
                                   ca_pem.size() + 1),
            0);
  uint32_t flags = 0;
  int rc = mbedtls_x509_crt_verify(&crt, &ca, nullptr, nullptr, &flags, nullptr, nullptr);
  if (rc == 0) {
    EXPECT_EQ(flags, 0u);
  }
  mbedtls_x509_crt_free(&crt);
  mbedtls_x509_crt_free(&ca);
  return flags;
}

TEST(PkiTest, AuthorityIssuesClientCertificateThatVerifies) {
  auto ca = createAuthority(authoritySpec());
  ASSERT_TRUE(ca.isOk()) << ca.status().toString();
  EXPECT_NE(ca->certificate_pem.find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_NE(ca->private_key_pem.find("BEGIN EC PRIVATE KEY"), std::string::npos);
  auto ca_info = inspectCertificate(ca->certificate_pem);
  ASSERT_TRUE(ca_info.isOk()) << ca_info.status().toString();
  EXPECT_TRUE(ca_info->is_authority);
  EXPECT_EQ(ca_info->common_name, "Branchline test CA");
  EXPECT_EQ(ca_info->subject, ca_info->issuer);

  auto leaf = issueCertificate(*ca, clientSpec("agent-1"));
  ASSERT_TRUE(leaf.isOk()) << leaf.status().toString();
  auto info = inspectCertificate(leaf->certificate_pem);
  ASSERT_TRUE(info.isOk());
  EXPECT_EQ(info->common_name, "agent-1");
  EXPECT_FALSE(info->is_authority);
  EXPECT_EQ(info->issuer, ca_info->subject);
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  EXPECT_LE(info->not_before, now);
  EXPECT_NEAR(static_cast<double>(info->not_after), static_cast<double>(now + 10 * 86400), 10.0);

  EXPECT_EQ(mbedtlsVerifyFlags(leaf->certificate_pem, ca->certificate_pem), 0u);
  EXPECT_TRUE(verifyCertificate(leaf->certificate_pem, ca->certificate_pem).isOk());

  // Random serials: two certificates for the same name differ.
  auto again = issueCertificate(*ca, clientSpec("agent-1"));
  ASSERT_TRUE(again.isOk());
  EXPECT_NE(inspectCertificate(again->certificate_pem)->serial_hex, info->serial_hex);
}

TEST(PkiTest, ExpiredAndForeignCertificatesDoNotVerify) {
  auto ca = createAuthority(authoritySpec());
  auto other_ca = createAuthority(authoritySpec("Some other CA"));
  ASSERT_TRUE(ca.isOk() && other_ca.isOk());

  CertificateSpec expired = clientSpec("agent-1");
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  expired.not_before = now - 10 * 86400;
  expired.not_after = now - 86400;
  auto old = issueCertificate(*ca, expired);
  ASSERT_TRUE(old.isOk()) << old.status().toString();
  EXPECT_NE(
      mbedtlsVerifyFlags(old->certificate_pem, ca->certificate_pem) & MBEDTLS_X509_BADCERT_EXPIRED,
      0u);
  Status s = verifyCertificate(old->certificate_pem, ca->certificate_pem);
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_NE(s.message().find("agent-1"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("expired"), std::string::npos) << s.message();

  auto foreign = issueCertificate(*other_ca, clientSpec("agent-1"));
  ASSERT_TRUE(foreign.isOk());
  EXPECT_NE(mbedtlsVerifyFlags(foreign->certificate_pem, ca->certificate_pem) &
                MBEDTLS_X509_BADCERT_NOT_TRUSTED,
            0u);
  EXPECT_EQ(verifyCertificate(foreign->certificate_pem, ca->certificate_pem).code(),
            Code::kPermissionDenied);
}

// What matters is that OpenSSL (inside Paho and Mosquitto) accepts what mbedTLS
// wrote: the chain, the purposes, and the broker's IP address in its SAN.
TEST(PkiTest, OpenSslAcceptsChainPurposeAndSubjectAltName) {
  TempDir tmp;
  auto ca = createAuthority(authoritySpec());
  ASSERT_TRUE(ca.isOk());
  CertificateSpec server;
  server.common_name = "broker";
  server.role = CertRole::kServer;
  server.dns_names = {"localhost", "mqtt.example.org"};
  server.ip_addresses = {"127.0.0.1", "::1"};
  auto broker = issueCertificate(*ca, server);
  ASSERT_TRUE(broker.isOk()) << broker.status().toString();
  auto client = issueCertificate(*ca, clientSpec("aggregator.agg-1"));
  ASSERT_TRUE(client.isOk());

  auto info = inspectCertificate(broker->certificate_pem);
  ASSERT_TRUE(info.isOk());
  EXPECT_EQ(info->dns_names, (std::vector<std::string>{"localhost", "mqtt.example.org"}));
  EXPECT_EQ(info->ip_addresses, (std::vector<std::string>{"127.0.0.1", "::1"}));

  const fs::path dir = tmp.path();
  ASSERT_TRUE(writeFileAtomically(dir / "ca.crt", ca->certificate_pem, 0644).isOk());
  ASSERT_TRUE(writeFileAtomically(dir / "broker.crt", broker->certificate_pem, 0644).isOk());
  ASSERT_TRUE(writeFileAtomically(dir / "client.crt", client->certificate_pem, 0644).isOk());
  auto run = [&](const std::string& args) {
    const std::string cmd = "openssl " + args + " >" + (dir / "out.txt").string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  };
  const std::string ca_file = (dir / "ca.crt").string();
  EXPECT_EQ(run("verify -CAfile " + ca_file + " -purpose sslserver -verify_ip 127.0.0.1 " +
                (dir / "broker.crt").string()),
            0)
      << *readFile(dir / "out.txt");
  EXPECT_EQ(run("verify -CAfile " + ca_file + " -purpose sslserver -verify_hostname localhost " +
                (dir / "broker.crt").string()),
            0)
      << *readFile(dir / "out.txt");
  EXPECT_NE(run("verify -CAfile " + ca_file + " -purpose sslserver -verify_ip 10.1.2.3 " +
                (dir / "broker.crt").string()),
            0)
      << "an address not in the SAN must not verify";
  EXPECT_EQ(
      run("verify -CAfile " + ca_file + " -purpose sslclient " + (dir / "client.crt").string()), 0)
      << *readFile(dir / "out.txt");
  // A client certificate is no server certificate (extendedKeyUsage).
  EXPECT_NE(
      run("verify -CAfile " + ca_file + " -purpose sslserver " + (dir / "client.crt").string()), 0);
  EXPECT_EQ(run("x509 -noout -subject -nameopt RFC2253 -in " + (dir / "client.crt").string()), 0);
  EXPECT_NE(readFile(dir / "out.txt")->find("CN=aggregator.agg-1"), std::string::npos)
      << *readFile(dir / "out.txt");
}

TEST(PkiTest, KeyFilesArePrivateAtomicAndNeverReplacedSilently) {
  TempDir tmp;
  auto ca = createAuthority(authoritySpec());
  ASSERT_TRUE(ca.isOk());
  const fs::path key = tmp.path() / "ca.key";
  const fs::path crt = tmp.path() / "ca.crt";
  ASSERT_TRUE(writeFileAtomically(key, ca->private_key_pem, 0600, {.replace = false}).isOk());
  ASSERT_TRUE(writeFileAtomically(crt, ca->certificate_pem, 0644, {.replace = false}).isOk());
  EXPECT_EQ(modeOf(key), 0600u);
  EXPECT_EQ(modeOf(crt), 0644u);
  EXPECT_EQ(writeFileAtomically(key, "other", 0600, {.replace = false}).code(),
            Code::kAlreadyExists);
  EXPECT_EQ(*readFile(key), ca->private_key_pem) << "the existing key is untouched";
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(tmp.path())) ++entries;
  EXPECT_EQ(entries, 2u) << "no temp file left behind";

  auto loaded = loadCredential(crt, key);
  ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
  EXPECT_EQ(loaded->certificate_pem, ca->certificate_pem);

  ASSERT_EQ(::chmod(key.c_str(), 0640), 0);
  Status s = loadCredential(crt, key).status();
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_NE(s.message().find("chmod 600"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("PRIVATE KEY"), std::string::npos) << "no key material in errors";
  ASSERT_EQ(::chmod(key.c_str(), 0600), 0);

  auto other = createAuthority(authoritySpec("Other"));
  ASSERT_TRUE(other.isOk());
  ASSERT_TRUE(writeFileAtomically(key, other->private_key_pem, 0600).isOk());
  EXPECT_EQ(loadCredential(crt, key).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(loadCredential(tmp.path() / "missing.crt", key).status().code(), Code::kNotFound);
}

TEST(PkiTest, RejectsBadSpecs) {
  auto ca = createAuthority(authoritySpec());
  ASSERT_TRUE(ca.isOk());
  EXPECT_EQ(issueCertificate(*ca, clientSpec("a,O=evil")).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(issueCertificate(*ca, clientSpec("")).status().code(), Code::kInvalidArgument);
  CertificateSpec bad_ip = clientSpec("broker");
  bad_ip.role = CertRole::kServer;
  bad_ip.ip_addresses = {"300.1.1.1"};
  EXPECT_EQ(issueCertificate(*ca, bad_ip).status().code(), Code::kInvalidArgument);
  CertificateSpec half = clientSpec("x");
  half.not_before = 0;
  EXPECT_EQ(issueCertificate(*ca, half).status().code(), Code::kInvalidArgument);
  // A leaf cannot issue.
  auto leaf = issueCertificate(*ca, clientSpec("agent-1"));
  ASSERT_TRUE(leaf.isOk());
  EXPECT_EQ(issueCertificate(*leaf, clientSpec("agent-2")).status().code(), Code::kInvalidArgument);
  // A key that is not the authority's.
  Credential mixed = *ca;
  mixed.private_key_pem = leaf->private_key_pem;
  Status s = issueCertificate(mixed, clientSpec("agent-2")).status();
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message().find("PRIVATE"), std::string::npos);
}

TEST(PkiTest, RevocationListIsSignedByTheAuthorityAndRevokesOnlyItsSerials) {
  auto ca = createAuthority(authoritySpec());
  ASSERT_TRUE(ca.isOk());
  auto revoked = issueCertificate(*ca, clientSpec("agent-1"));
  auto kept = issueCertificate(*ca, clientSpec("agent-2"));
  ASSERT_TRUE(revoked.isOk() && kept.isOk());
  const std::string serial = inspectCertificate(revoked->certificate_pem)->serial_hex;
  EXPECT_NE(serial.find(':'), std::string::npos) << "mbedTLS spells serials with colons";
  EXPECT_EQ(canonicalSerial(serial).find(':'), std::string::npos);
  EXPECT_EQ(canonicalSerial("00:0a:ff"), "0AFF");

  RevocationList list;
  list.crl_number = 7;
  list.this_update = ::time(nullptr);
  list.revoked.push_back({serial, list.this_update - 60});
  auto crl = writeRevocationList(*ca, list);
  ASSERT_TRUE(crl.isOk()) << crl.status().toString();
  EXPECT_EQ(crl->rfind("-----BEGIN X509 CRL-----", 0), 0u);

  auto back = readRevocationList(*crl, ca->certificate_pem);
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(back->crl_number, 7);
  EXPECT_EQ(back->this_update, list.this_update);
  ASSERT_EQ(back->revoked.size(), 1u);
  EXPECT_EQ(back->revoked[0].serial_hex, canonicalSerial(serial));
  EXPECT_EQ(back->revoked[0].revoked_at, list.this_update - 60);

  // mbedTLS, which parses CRLs, agrees with what OpenSSL wrote.
  Status s = verifyCertificate(revoked->certificate_pem, ca->certificate_pem, *crl);
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_NE(s.message().find("revoked"), std::string::npos) << s.message();
  EXPECT_TRUE(verifyCertificate(kept->certificate_pem, ca->certificate_pem, *crl).isOk());

  // Another authority's list is not ours, nor is garbage.
  auto other = createAuthority(authoritySpec("Another CA"));
  ASSERT_TRUE(other.isOk());
  auto foreign = writeRevocationList(*other, list);
  ASSERT_TRUE(foreign.isOk());
  EXPECT_EQ(readRevocationList(*foreign, ca->certificate_pem).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(readRevocationList("not a crl", ca->certificate_pem).status().code(),
            Code::kInvalidArgument);
  list.revoked.push_back({"xyz", 0});
  EXPECT_EQ(writeRevocationList(*ca, list).status().code(), Code::kInvalidArgument);
}

// The value `name` has in `metrics`' Prometheus text.
double gaugeValue(const MetricsRegistry& metrics, const std::string& name) {
  const std::string text = metrics.renderPrometheus();
  const size_t at = text.find("\n" + name + " ");
  EXPECT_NE(at, std::string::npos) << text;
  return at == std::string::npos ? -1e9 : std::stod(text.substr(at + name.size() + 2));
}

TEST(PkiTest, CertificateExpiryGaugeDropsAsTheCertificateAges) {
  TempDir tmp;
  auto ca = createAuthority(authoritySpec());
  ASSERT_TRUE(ca.isOk());
  // A short-lived certificate: two days left when the test starts.
  const int64_t start = ::time(nullptr);
  CertificateSpec spec = clientSpec("agent-1");
  spec.not_before = start - 60;
  spec.not_after = start + 2 * 86400;
  auto cert = issueCertificate(*ca, spec);
  ASSERT_TRUE(cert.isOk());
  const fs::path file = tmp.path() / "agent-1.crt";
  ASSERT_TRUE(writeFileAtomically(file, cert->certificate_pem, 0644).isOk());

  int64_t clock = start;
  MetricsRegistry metrics;
  ASSERT_TRUE(addCertificateExpiryGauge(metrics, "bl_agent_certificate_expiry_days", file, [&] {
                return clock;
              }).isOk());
  EXPECT_NEAR(gaugeValue(metrics, "bl_agent_certificate_expiry_days"), 2.0, 0.001);
  clock = start + 86400 + 43200;
  EXPECT_NEAR(gaugeValue(metrics, "bl_agent_certificate_expiry_days"), 0.5, 0.001);
  clock = start + 3 * 86400;
  EXPECT_NEAR(gaugeValue(metrics, "bl_agent_certificate_expiry_days"), -1.0, 0.001)
      << "expired: negative";

  // The real clock, read at render time.
  MetricsRegistry real;
  ASSERT_TRUE(
      addCertificateExpiryGauge(real, "bl_aggregator_certificate_expiry_days", file).isOk());
  const double now_left = gaugeValue(real, "bl_aggregator_certificate_expiry_days");
  EXPECT_LE(now_left, 2.0);
  EXPECT_GT(now_left, 1.9);
  EXPECT_EQ(addCertificateExpiryGauge(real, "x", tmp.path() / "missing.crt").code(),
            Code::kNotFound);
}

}  // namespace
}  // namespace branchline::pki
