#include "shared/pki/pki.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "shared/crypto/ecdsa.h"
#include "shared/crypto/key_file.h"
#include "shared/crypto/mbedtls_error.h"
#include "shared/crypto/random.h"
#include "shared/crypto/secret.h"

namespace branchline::pki {
namespace {

namespace fs = std::filesystem;

Status mbedFail(const std::string& what, int rc) {
  return Status::internal(what + ": " + crypto::mbedtlsErrorText(rc));
}

// One mbedTLS context with its init/free pair: `.ctx` is the raw context.
template <typename T, void (*Init)(T*), void (*Free)(T*)>
struct Mbed {
  T ctx;
  Mbed() { Init(&ctx); }
  ~Mbed() { Free(&ctx); }
  Mbed(const Mbed&) = delete;
  Mbed& operator=(const Mbed&) = delete;
};
using PkKey = Mbed<mbedtls_pk_context, mbedtls_pk_init, mbedtls_pk_free>;
using Crt = Mbed<mbedtls_x509_crt, mbedtls_x509_crt_init, mbedtls_x509_crt_free>;
using CrtWriter =
    Mbed<mbedtls_x509write_cert, mbedtls_x509write_crt_init, mbedtls_x509write_crt_free>;
using Mpi = Mbed<mbedtls_mpi, mbedtls_mpi_init, mbedtls_mpi_free>;
using Crl = Mbed<mbedtls_x509_crl, mbedtls_x509_crl_init, mbedtls_x509_crl_free>;

// A PEM buffer for mbedTLS: NUL-terminated, and the length counts the NUL.
int parseCertificate(Crt& crt, std::string_view pem) {
  std::string text(pem);
  return mbedtls_x509_crt_parse(&crt.ctx, reinterpret_cast<const unsigned char*>(text.c_str()),
                                text.size() + 1);
}

int parseKey(PkKey& key, const std::string& pem) {
  return mbedtls_pk_parse_key(&key.ctx, reinterpret_cast<const unsigned char*>(pem.c_str()),
                              pem.size() + 1, nullptr, 0);
}

bool safeNameChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == ' ' ||
         c == '.' || c == '_' || c == '-';
}

Status checkSpec(const CertificateSpec& spec) {
  const std::string& cn = spec.common_name;
  // X.509's upper bound for a common name is 64 characters; the character set
  // keeps the subject string free of the separators mbedTLS parses.
  if (cn.empty() || cn.size() > 64 || cn.front() == ' ' || cn.back() == ' ') {
    return Status::invalid("certificate common name `" + cn +
                           "`: must be 1 to 64 characters, not starting or ending with a space");
  }
  for (char c : cn) {
    if (!safeNameChar(c)) {
      return Status::invalid("certificate common name `" + cn +
                             "`: only A-Z a-z 0-9 space . _ - are allowed");
    }
  }
  for (const auto& dns : spec.dns_names) {
    bool ok = !dns.empty() && dns.size() <= 253;
    for (char c : dns) {
      ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '*');
    }
    if (!ok) return Status::invalid("subjectAltName DNS name `" + dns + "`: not a host name");
  }
  if (spec.not_before.has_value() != spec.not_after.has_value()) {
    return Status::invalid("certificate validity: give both not_before and not_after, or neither");
  }
  if (spec.not_before && *spec.not_after <= *spec.not_before) {
    return Status::invalid("certificate validity: not_after must be later than not_before");
  }
  if (!spec.not_before && (spec.days < 1 || spec.days > 36500)) {
    return Status::invalid("certificate validity: days must be between 1 and 36500, got " +
                           std::to_string(spec.days));
  }
  return Status::ok();
}

// "YYYYMMDDhhmmss" (UTC), mbedTLS's validity format.
Result<std::string> x509Time(int64_t unix_seconds) {
  const time_t t = static_cast<time_t>(unix_seconds);
  std::tm tm{};
  if (::gmtime_r(&t, &tm) == nullptr || tm.tm_year + 1900 < 1950 || tm.tm_year + 1900 > 9999) {
    return Status::invalid("certificate validity: time " + std::to_string(unix_seconds) +
                           " is out of range");
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return std::string(buf);
}

int64_t fromX509Time(const mbedtls_x509_time& t) {
  std::tm tm{};
  tm.tm_year = t.year - 1900;
  tm.tm_mon = t.mon - 1;
  tm.tm_mday = t.day;
  tm.tm_hour = t.hour;
  tm.tm_min = t.min;
  tm.tm_sec = t.sec;
  return static_cast<int64_t>(::timegm(&tm));
}

// mbedtls asn1write writes backwards from the end of a buffer; these helpers
// return the DER that ends at `end`.
using Der = std::vector<unsigned char>;

// SubjectAltName ::= SEQUENCE OF GeneralName; dNSName [2] IA5String,
// iPAddress [7] OCTET STRING (4 or 16 bytes), both IMPLICIT. mbedTLS 2.28 has
// no setter for it, so it goes in as a raw extension.
Result<Der> subjectAltNameDer(const CertificateSpec& spec) {
  std::vector<std::pair<unsigned char, Der>> names;  // (tag number, value)
  for (const auto& dns : spec.dns_names) names.push_back({2, Der(dns.begin(), dns.end())});
  for (const auto& ip : spec.ip_addresses) {
    std::array<unsigned char, 16> bytes{};
    if (::inet_pton(AF_INET, ip.c_str(), bytes.data()) == 1) {
      names.push_back({7, Der(bytes.begin(), bytes.begin() + 4)});
    } else if (::inet_pton(AF_INET6, ip.c_str(), bytes.data()) == 1) {
      names.push_back({7, Der(bytes.begin(), bytes.end())});
    } else {
      return Status::invalid("subjectAltName IP address `" + ip + "`: not an IPv4 or IPv6 address");
    }
  }
  Der buf(64 + 300 * names.size());
  unsigned char* const start = buf.data();
  unsigned char* p = start + buf.size();
  size_t len = 0;
  for (auto it = names.rbegin(); it != names.rend(); ++it) {
    int rc = mbedtls_asn1_write_raw_buffer(&p, start, it->second.data(), it->second.size());
    if (rc < 0) return mbedFail("encoding subjectAltName", rc);
    size_t item = static_cast<size_t>(rc);
    rc = mbedtls_asn1_write_len(&p, start, item);
    if (rc < 0) return mbedFail("encoding subjectAltName", rc);
    item += static_cast<size_t>(rc);
    rc = mbedtls_asn1_write_tag(&p, start, MBEDTLS_ASN1_CONTEXT_SPECIFIC | it->first);
    if (rc < 0) return mbedFail("encoding subjectAltName", rc);
    len += item + static_cast<size_t>(rc);
  }
  int rc = mbedtls_asn1_write_len(&p, start, len);
  if (rc < 0) return mbedFail("encoding subjectAltName", rc);
  len += static_cast<size_t>(rc);
  rc = mbedtls_asn1_write_tag(&p, start, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
  if (rc < 0) return mbedFail("encoding subjectAltName", rc);
  len += static_cast<size_t>(rc);
  return Der(p, p + len);
}

// ExtKeyUsageSyntax ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId (one here).
Result<Der> extendedKeyUsageDer(const char* oid, size_t oid_len) {
  Der buf(64);
  unsigned char* const start = buf.data();
  unsigned char* p = start + buf.size();
  int rc = mbedtls_asn1_write_oid(&p, start, oid, oid_len);
  if (rc < 0) return mbedFail("encoding extendedKeyUsage", rc);
  size_t len = static_cast<size_t>(rc);
  rc = mbedtls_asn1_write_len(&p, start, len);
  if (rc < 0) return mbedFail("encoding extendedKeyUsage", rc);
  len += static_cast<size_t>(rc);
  rc = mbedtls_asn1_write_tag(&p, start, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
  if (rc < 0) return mbedFail("encoding extendedKeyUsage", rc);
  len += static_cast<size_t>(rc);
  return Der(p, p + len);
}

// A new P-256 key (shared/crypto), as PEM and parsed for the certificate writer.
Result<crypto::SecretString> generateKey(PkKey& key) {
  auto pem = crypto::generateEcdsaP256Key();
  if (!pem.isOk()) return pem.status();
  int rc = parseKey(key, pem->str());
  if (rc != 0) return mbedFail("reading the new key", rc);
  return pem;
}

// Everything but the issuer: subject, key, validity, serial and extensions.
Result<std::string> writeCertificate(const CertificateSpec& spec, PkKey& subject_key,
                                     PkKey& issuer_key, const std::string& issuer_name,
                                     crypto::Drbg& rng) {
  CrtWriter w;
  mbedtls_x509write_crt_set_version(&w.ctx, MBEDTLS_X509_CRT_VERSION_3);
  mbedtls_x509write_crt_set_md_alg(&w.ctx, MBEDTLS_MD_SHA256);
  mbedtls_x509write_crt_set_subject_key(&w.ctx, &subject_key.ctx);
  mbedtls_x509write_crt_set_issuer_key(&w.ctx, &issuer_key.ctx);

  const std::string subject = "CN=" + spec.common_name + ",O=Branchline";
  int rc = mbedtls_x509write_crt_set_subject_name(&w.ctx, subject.c_str());
  if (rc != 0) return mbedFail("certificate subject `" + subject + "`", rc);
  rc = mbedtls_x509write_crt_set_issuer_name(&w.ctx, issuer_name.c_str());
  if (rc != 0) return mbedFail("certificate issuer `" + issuer_name + "`", rc);

  // A random positive 128-bit serial: unique without a serial database.
  std::array<unsigned char, 16> serial{};
  Status drawn = rng.fill(serial);
  if (!drawn.isOk()) return drawn.withContext("drawing a serial number");
  serial[0] = static_cast<unsigned char>((serial[0] & 0x7f) | 0x40);
  Mpi mpi;
  rc = mbedtls_mpi_read_binary(&mpi.ctx, serial.data(), serial.size());
  if (rc == 0) rc = mbedtls_x509write_crt_set_serial(&w.ctx, &mpi.ctx);
  if (rc != 0) return mbedFail("setting the serial number", rc);

  int64_t not_before = 0;
  int64_t not_after = 0;
  if (spec.not_before) {
    not_before = *spec.not_before;
    not_after = *spec.not_after;
  } else {
    not_before = static_cast<int64_t>(::time(nullptr)) - 3600;
    not_after = not_before + 3600 + int64_t{spec.days} * 86400;
  }
  auto from = x509Time(not_before);
  if (!from.isOk()) return from.status();
  auto to = x509Time(not_after);
  if (!to.isOk()) return to.status();
  rc = mbedtls_x509write_crt_set_validity(&w.ctx, from->c_str(), to->c_str());
  if (rc != 0) return mbedFail("setting the validity", rc);

  const bool authority = spec.role == CertRole::kAuthority;
  rc = mbedtls_x509write_crt_set_basic_constraints(&w.ctx, authority ? 1 : 0, authority ? 0 : -1);
  if (rc != 0) return mbedFail("setting basicConstraints", rc);
  rc = mbedtls_x509write_crt_set_subject_key_identifier(&w.ctx);
  if (rc == 0) rc = mbedtls_x509write_crt_set_authority_key_identifier(&w.ctx);
  if (rc != 0) return mbedFail("setting the key identifiers", rc);
  rc = mbedtls_x509write_crt_set_key_usage(
      &w.ctx, authority ? MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN
                        : MBEDTLS_X509_KU_DIGITAL_SIGNATURE);
  if (rc != 0) return mbedFail("setting keyUsage", rc);

  if (!authority) {
    const bool server = spec.role == CertRole::kServer;
    auto eku = server ? extendedKeyUsageDer(MBEDTLS_OID_SERVER_AUTH,
                                            MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH))
                      : extendedKeyUsageDer(MBEDTLS_OID_CLIENT_AUTH,
                                            MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH));
    if (!eku.isOk()) return eku.status();
    rc = mbedtls_x509write_crt_set_extension(&w.ctx, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0,
                                             eku->data(), eku->size());
    if (rc != 0) return mbedFail("setting extendedKeyUsage", rc);
  }
  if (!spec.dns_names.empty() || !spec.ip_addresses.empty()) {
    auto san = subjectAltNameDer(spec);
    if (!san.isOk()) return san.status();
    rc = mbedtls_x509write_crt_set_extension(&w.ctx, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                             MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                             san->data(), san->size());
    if (rc != 0) return mbedFail("setting subjectAltName", rc);
  }

  std::vector<unsigned char> pem(8192);
  rc = mbedtls_x509write_crt_pem(&w.ctx, pem.data(), pem.size(), &crypto::Drbg::callback, &rng);
  if (rc != 0) return mbedFail("signing the certificate", rc);
  return std::string(reinterpret_cast<const char*>(pem.data()));
}

std::string commonNameOf(const mbedtls_x509_name* name) {
  for (; name != nullptr; name = name->next) {
    if (MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &name->oid) == 0) {
      return std::string(reinterpret_cast<const char*>(name->val.p), name->val.len);
    }
  }
  return "";
}

std::string dnString(const mbedtls_x509_name* name) {
  char buf[512];
  int rc = mbedtls_x509_dn_gets(buf, sizeof buf, name);
  return rc < 0 ? std::string() : std::string(buf);
}

}  // namespace

Credential& Credential::operator=(const Credential& other) {
  if (this != &other) {
    certificate_pem = other.certificate_pem;
    crypto::zeroize(private_key_pem);
    private_key_pem = other.private_key_pem;
  }
  return *this;
}

Credential& Credential::operator=(Credential&& other) noexcept {
  if (this != &other) {
    certificate_pem = std::move(other.certificate_pem);
    crypto::zeroize(private_key_pem);
    private_key_pem = std::move(other.private_key_pem);
  }
  return *this;
}

Credential::~Credential() { crypto::zeroize(private_key_pem); }

Result<Credential> createAuthority(const CertificateSpec& spec) {
  if (spec.role != CertRole::kAuthority) {
    return Status::invalid("createAuthority: the spec's role must be kAuthority");
  }
  BL_RETURN_IF_ERROR(checkSpec(spec));
  auto rng = crypto::threadDrbg();
  if (!rng.isOk()) return rng.status();
  PkKey key;
  auto pem = generateKey(key);
  if (!pem.isOk()) return pem.status();
  const std::string name = "CN=" + spec.common_name + ",O=Branchline";
  auto cert = writeCertificate(spec, key, key, name, **rng);
  if (!cert.isOk()) return cert.status();
  Credential out;
  out.certificate_pem = std::move(cert).value();
  out.private_key_pem = pem->release();
  return out;
}

Result<Credential> issueCertificate(const Credential& authority, const CertificateSpec& spec) {
  if (spec.role == CertRole::kAuthority) {
    return Status::invalid("issueCertificate: intermediate authorities are not supported");
  }
  BL_RETURN_IF_ERROR(checkSpec(spec));
  Crt ca;
  int rc = parseCertificate(ca, authority.certificate_pem);
  if (rc != 0)
    return Status::invalid("authority certificate does not parse: " + crypto::mbedtlsErrorText(rc));
  if (!ca.ctx.ca_istrue) {
    return Status::invalid("certificate `" + commonNameOf(&ca.ctx.subject) +
                           "` is not a certificate authority (basicConstraints CA:FALSE)");
  }
  PkKey ca_key;
  rc = parseKey(ca_key, authority.private_key_pem);
  // The mbedTLS message never quotes key material, only what was wrong.
  if (rc != 0)
    return Status::invalid("authority private key does not parse: " + crypto::mbedtlsErrorText(rc));
  if (mbedtls_pk_check_pair(&ca.ctx.pk, &ca_key.ctx) != 0) {
    return Status::invalid("authority private key is not the key of certificate `" +
                           commonNameOf(&ca.ctx.subject) + "`");
  }
  // mbedTLS prints a DN as "CN=x, O=y"; its parser wants "CN=x,O=y". The
  // issuer written is compared byte for byte with the authority's subject below.
  std::string issuer = dnString(&ca.ctx.subject);
  for (size_t at; (at = issuer.find(", ")) != std::string::npos;) issuer.erase(at + 1, 1);

  auto rng = crypto::threadDrbg();
  if (!rng.isOk()) return rng.status();
  PkKey key;
  auto pem = generateKey(key);
  if (!pem.isOk()) return pem.status();
  auto cert = writeCertificate(spec, key, ca_key, issuer, **rng);
  if (!cert.isOk()) return cert.status();

  Crt issued;
  rc = parseCertificate(issued, *cert);
  if (rc != 0) return mbedFail("re-reading the issued certificate", rc);
  if (issued.ctx.issuer_raw.len != ca.ctx.subject_raw.len ||
      std::memcmp(issued.ctx.issuer_raw.p, ca.ctx.subject_raw.p, ca.ctx.subject_raw.len) != 0) {
    return Status::invalid("authority subject `" + dnString(&ca.ctx.subject) +
                           "` cannot be reproduced as an issuer name (not written by branchline?)");
  }
  Credential out;
  out.certificate_pem = std::move(cert).value();
  out.private_key_pem = pem->release();
  return out;
}

Result<Credential> loadCredential(const fs::path& certificate_file, const fs::path& key_file) {
  // The key first: a key file open to group/other is refused whatever else is wrong.
  auto key = crypto::readKeyFile(key_file, {});
  if (!key.isOk()) return key.status();
  auto cert = readFile(certificate_file);
  if (!cert.isOk()) return cert.status();
  Credential out;
  out.certificate_pem = std::move(cert).value();
  out.private_key_pem = key->release();

  Crt crt;
  int rc = parseCertificate(crt, out.certificate_pem);
  if (rc != 0) {
    return Status::invalid(certificate_file.string() +
                           ": not a PEM certificate: " + crypto::mbedtlsErrorText(rc));
  }
  PkKey pk;
  rc = parseKey(pk, out.private_key_pem);
  if (rc != 0) {
    return Status::invalid(key_file.string() +
                           ": not a PEM private key: " + crypto::mbedtlsErrorText(rc));
  }
  if (mbedtls_pk_check_pair(&crt.ctx.pk, &pk.ctx) != 0) {
    return Status::invalid(key_file.string() + " is not the private key of " +
                           certificate_file.string());
  }
  return out;
}

Result<CertificateInfo> inspectCertificate(std::string_view certificate_pem) {
  Crt crt;
  int rc = parseCertificate(crt, certificate_pem);
  if (rc != 0) return Status::invalid("not a PEM certificate: " + crypto::mbedtlsErrorText(rc));
  CertificateInfo info;
  info.subject = dnString(&crt.ctx.subject);
  info.common_name = commonNameOf(&crt.ctx.subject);
  info.issuer = dnString(&crt.ctx.issuer);
  char serial[128];
  if (mbedtls_x509_serial_gets(serial, sizeof serial, &crt.ctx.serial) > 0)
    info.serial_hex = serial;
  info.not_before = fromX509Time(crt.ctx.valid_from);
  info.not_after = fromX509Time(crt.ctx.valid_to);
  info.is_authority = crt.ctx.ca_istrue != 0;
  for (const mbedtls_x509_sequence* s = &crt.ctx.subject_alt_names; s != nullptr && s->buf.p;
       s = s->next) {
    const int type = s->buf.tag & MBEDTLS_ASN1_TAG_VALUE_MASK;
    if (type == 2) {
      info.dns_names.emplace_back(reinterpret_cast<const char*>(s->buf.p), s->buf.len);
    } else if (type == 7 && (s->buf.len == 4 || s->buf.len == 16)) {
      char text[INET6_ADDRSTRLEN];
      const int family = s->buf.len == 4 ? AF_INET : AF_INET6;
      if (::inet_ntop(family, s->buf.p, text, sizeof text) != nullptr) {
        info.ip_addresses.emplace_back(text);
      }
    }
  }
  return info;
}

Status verifyCertificate(std::string_view certificate_pem, std::string_view authority_pem,
                         std::string_view crl_pem) {
  Crt crt;
  int rc = parseCertificate(crt, certificate_pem);
  if (rc != 0) return Status::invalid("not a PEM certificate: " + crypto::mbedtlsErrorText(rc));
  Crt ca;
  rc = parseCertificate(ca, authority_pem);
  if (rc != 0)
    return Status::invalid("authority: not a PEM certificate: " + crypto::mbedtlsErrorText(rc));
  Crl crl;
  if (!crl_pem.empty()) {
    const std::string text(crl_pem);
    rc = mbedtls_x509_crl_parse(&crl.ctx, reinterpret_cast<const unsigned char*>(text.c_str()),
                                text.size() + 1);
    if (rc != 0)
      return Status::invalid("not a PEM revocation list: " + crypto::mbedtlsErrorText(rc));
  }
  uint32_t flags = 0;
  rc = mbedtls_x509_crt_verify(&crt.ctx, &ca.ctx, crl_pem.empty() ? nullptr : &crl.ctx, nullptr,
                               &flags, nullptr, nullptr);
  if (rc == 0) return Status::ok();
  std::string why;
  if (flags != 0) {
    char buf[1024];
    if (mbedtls_x509_crt_verify_info(buf, sizeof buf, "", flags) > 0) why = buf;
    while (!why.empty() && why.back() == '\n') why.pop_back();
    for (size_t at; (at = why.find('\n')) != std::string::npos;) why.replace(at, 1, "; ");
  }
  if (why.empty()) why = crypto::mbedtlsErrorText(rc);
  return Status(Code::kPermissionDenied,
                "certificate `" + commonNameOf(&crt.ctx.subject) + "` does not verify: " + why);
}

Result<std::string> signMessage(const std::string& private_key_pem, std::string_view message) {
  auto sig = crypto::ecdsaSign(private_key_pem, message);
  if (!sig.isOk() && sig.status().code() == Code::kInvalidArgument) {
    return sig.status().withContext("signing key");
  }
  return sig;
}

Status verifyMessageSignature(std::string_view certificate_pem, std::string_view message,
                              std::string_view signature) {
  Crt crt;
  int rc = parseCertificate(crt, certificate_pem);
  if (rc != 0) return Status::invalid("not a PEM certificate: " + crypto::mbedtlsErrorText(rc));
  std::array<unsigned char, 512> public_pem{};
  rc = mbedtls_pk_write_pubkey_pem(&crt.ctx.pk, public_pem.data(), public_pem.size());
  if (rc != 0) return mbedFail("reading the certificate's public key", rc);
  Status verified =
      crypto::ecdsaVerify(reinterpret_cast<const char*>(public_pem.data()), message, signature);
  if (verified.code() == Code::kPermissionDenied) {
    return Status(Code::kPermissionDenied, "signature is not by the key of certificate `" +
                                               commonNameOf(&crt.ctx.subject) + "`");
  }
  return verified;
}

Result<std::string> readFile(const fs::path& file) {
  // Straight into the string with read(2): no stream buffer keeps a copy of a key.
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::notFound("cannot read " + file.string() + ": " + strerror(errno));
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size) + 1);
  char chunk[4096];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      crypto::zeroize(chunk, sizeof chunk);
      crypto::zeroize(out);
      return Status::notFound("cannot read " + file.string() + ": " + strerror(err));
    }
    if (n == 0) break;
    out.append(chunk, static_cast<size_t>(n));
  }
  ::close(fd);
  crypto::zeroize(chunk, sizeof chunk);
  return out;
}

}  // namespace branchline::pki
