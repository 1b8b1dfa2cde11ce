#include "shared/pki/crl.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cctype>
#include <ctime>
#include <memory>

namespace branchline::pki {
namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;
using BioPtr = Owned<BIO, BIO_free_all>;
using X509Ptr = Owned<X509, X509_free>;
using KeyPtr = Owned<EVP_PKEY, EVP_PKEY_free>;
using CrlPtr = Owned<X509_CRL, X509_CRL_free>;
using RevokedPtr = Owned<X509_REVOKED, X509_REVOKED_free>;
using TimePtr = Owned<ASN1_TIME, ASN1_TIME_free>;
using IntPtr = Owned<ASN1_INTEGER, ASN1_INTEGER_free>;
using BnPtr = Owned<BIGNUM, BN_free>;
using ExtPtr = Owned<X509_EXTENSION, X509_EXTENSION_free>;

// The oldest queued OpenSSL error, and the queue emptied so it cannot leak
// into the next call's message.
std::string opensslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no OpenSSL error recorded";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

Status sslFail(const std::string& what) {
  return Status::internal("certificate revocation list: " + what + ": " + opensslError());
}

BioPtr readOnlyBio(std::string_view text) {
  return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

Result<X509Ptr> parseAuthority(std::string_view pem) {
  auto bio = readOnlyBio(pem);
  X509Ptr cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!cert) {
    return Status::invalid(
        "certificate revocation list: the authority certificate does not parse: " + opensslError());
  }
  return cert;
}

Result<int64_t> unixSeconds(const ASN1_TIME* t) {
  std::tm tm{};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) {
    return Status::invalid("certificate revocation list: a time does not parse");
  }
  return static_cast<int64_t>(::timegm(&tm));
}

}  // namespace

std::string canonicalSerial(std::string_view serial) {
  std::string out;
  for (char c : serial) {
    if (c == ':' || c == ' ') continue;
    out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  while (out.size() > 2 && out.compare(0, 2, "00") == 0) out.erase(0, 2);
  if (out.size() % 2 == 1) out.insert(out.begin(), '0');
  return out;
}

Result<std::string> writeRevocationList(const Credential& authority, const RevocationList& list) {
  auto ca = parseAuthority(authority.certificate_pem);
  if (!ca.isOk()) return ca.status();
  auto key_bio = readOnlyBio(authority.private_key_pem);
  KeyPtr key(key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr) : nullptr);
  ERR_clear_error();  // the key's text never reaches a message
  if (!key) return Status::invalid("certificate revocation list: the authority key does not parse");

  CrlPtr crl(X509_CRL_new());
  if (!crl) return sslFail("allocating");
  if (X509_CRL_set_version(crl.get(), 1) != 1 ||  // 1 is v2: needed for extensions
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca->get())) != 1) {
    return sslFail("setting version and issuer");
  }
  TimePtr this_update(ASN1_TIME_set(nullptr, static_cast<time_t>(list.this_update)));
  if (!this_update || X509_CRL_set1_lastUpdate(crl.get(), this_update.get()) != 1 ||
      X509_CRL_set1_nextUpdate(crl.get(), X509_get0_notAfter(ca->get())) != 1) {
    return sslFail("setting thisUpdate/nextUpdate");
  }
  for (const auto& r : list.revoked) {
    const std::string hex = canonicalSerial(r.serial_hex);
    BIGNUM* raw = nullptr;
    if (hex.empty() || BN_hex2bn(&raw, hex.c_str()) != static_cast<int>(hex.size())) {
      BN_free(raw);
      ERR_clear_error();
      return Status::invalid("certificate revocation list: serial `" + r.serial_hex +
                             "` is not hexadecimal");
    }
    BnPtr bn(raw);
    IntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
    TimePtr when(ASN1_TIME_set(nullptr, static_cast<time_t>(r.revoked_at)));
    RevokedPtr entry(X509_REVOKED_new());
    if (!serial || !when || !entry ||
        X509_REVOKED_set_serialNumber(entry.get(), serial.get()) != 1 ||
        X509_REVOKED_set_revocationDate(entry.get(), when.get()) != 1 ||
        X509_CRL_add0_revoked(crl.get(), entry.get()) != 1) {
      return sslFail("adding serial " + hex);
    }
    entry.release();  // the CRL owns it now
  }
  if (X509_CRL_sort(crl.get()) != 1) return sslFail("sorting");

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca->get(), nullptr, nullptr, crl.get(), 0);
  ExtPtr akid(X509V3_EXT_conf_nid(nullptr, &ctx, NID_authority_key_identifier,
                                  const_cast<char*>("keyid:always")));
  if (!akid || X509_CRL_add_ext(crl.get(), akid.get(), -1) != 1) {
    return sslFail("adding authorityKeyIdentifier");
  }
  IntPtr number(ASN1_INTEGER_new());
  if (!number || ASN1_INTEGER_set_int64(number.get(), list.crl_number) != 1 ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, number.get(), 0, 0) != 1) {
    return sslFail("adding crlNumber");
  }
  if (X509_CRL_sign(crl.get(), key.get(), EVP_sha256()) <= 0) return sslFail("signing");

  BioPtr out(BIO_new(BIO_s_mem()));
  if (!out || PEM_write_bio_X509_CRL(out.get(), crl.get()) != 1) return sslFail("encoding");
  char* data = nullptr;
  const long len = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Result<RevocationList> readRevocationList(std::string_view crl_pem,
                                          std::string_view authority_pem) {
  auto ca = parseAuthority(authority_pem);
  if (!ca.isOk()) return ca.status();
  auto bio = readOnlyBio(crl_pem);
  CrlPtr crl(bio ? PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!crl) return Status::invalid("not a PEM certificate revocation list: " + opensslError());
  if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(ca->get())) != 0 ||
      X509_CRL_verify(crl.get(), X509_get0_pubkey(ca->get())) != 1) {
    ERR_clear_error();
    return Status::invalid(
        "the certificate revocation list is not signed by the fleet's certificate authority");
  }
  RevocationList out;
  auto this_update = unixSeconds(X509_CRL_get0_lastUpdate(crl.get()));
  if (!this_update.isOk()) return this_update.status();
  out.this_update = *this_update;
  IntPtr number(static_cast<ASN1_INTEGER*>(
      X509_CRL_get_ext_d2i(crl.get(), NID_crl_number, nullptr, nullptr)));
  int64_t n = 0;
  if (number && ASN1_INTEGER_get_int64(&n, number.get()) == 1) out.crl_number = n;
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl.get());
  for (int i = 0; revoked != nullptr && i < sk_X509_REVOKED_num(revoked); ++i) {
    const X509_REVOKED* r = sk_X509_REVOKED_value(revoked, i);
    BnPtr bn(ASN1_INTEGER_to_BN(X509_REVOKED_get0_serialNumber(r), nullptr));
    if (!bn) return sslFail("reading a serial");
    char* hex = BN_bn2hex(bn.get());
    if (hex == nullptr) return sslFail("reading a serial");
    RevokedCertificate entry;
    entry.serial_hex = canonicalSerial(hex);
    OPENSSL_free(hex);
    auto when = unixSeconds(X509_REVOKED_get0_revocationDate(r));
    if (!when.isOk()) return when.status();
    entry.revoked_at = *when;
    out.revoked.push_back(std::move(entry));
  }
  return out;
}

}  // namespace branchline::pki
