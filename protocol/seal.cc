#include "protocol/seal.h"

#include <fcntl.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/gcm.h>
#include <mbedtls/hkdf.h>
#include <mbedtls/md.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/sha256.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "protocol/ack_auth.h"
#include "protocol/envelope.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::protocol {
namespace {

constexpr std::string_view kPrivateTag = "branchline-x25519-private-v1";
constexpr std::string_view kPublicTag = "branchline-x25519-public-v1";
constexpr size_t kMaxKeyFileBytes = 256;
constexpr size_t kTagSize = 16;
constexpr size_t kNonceSize = 12;
constexpr size_t kAesKeySize = 32;

void zeroize(void* p, size_t n) { mbedtls_platform_zeroize(p, n); }

// Zeroes a fixed-size secret when it leaves scope.
template <size_t N>
struct Secret {
  std::array<unsigned char, N> bytes{};
  ~Secret() { zeroize(bytes.data(), N); }
  unsigned char* data() { return bytes.data(); }
};

// A shared secret, zeroed when it leaves scope (every return path).
struct SharedSecret {
  X25519Key key{};
  ~SharedSecret() { zeroize(key.data(), key.size()); }
};

// Zeroes a string holding secret text (a key file's contents) when it leaves scope.
struct SecretString {
  std::string text;
  ~SecretString() { zeroize(text.data(), text.size()); }
};

std::string mbedError(int rc) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "-0x%04x", unsigned(-rc));
  return hex;
}

std::string errnoText(int err) { return std::strerror(err); }

// One CTR-DRBG seeded once from the system entropy source.
class Drbg {
 public:
  Drbg() {
    mbedtls_entropy_init(&entropy_);
    mbedtls_ctr_drbg_init(&drbg_);
  }
  ~Drbg() {  // each free zeroes its state
    mbedtls_ctr_drbg_free(&drbg_);
    mbedtls_entropy_free(&entropy_);
  }
  Drbg(const Drbg&) = delete;
  Drbg& operator=(const Drbg&) = delete;

  Status seed(std::string_view personalization) {
    if (seeded_) return Status::ok();
    int rc = mbedtls_ctr_drbg_seed(&drbg_, mbedtls_entropy_func, &entropy_,
                                   reinterpret_cast<const unsigned char*>(personalization.data()),
                                   personalization.size());
    if (rc != 0) {
      return Status::internal("seeding the random generator failed (" + mbedError(rc) + ")");
    }
    // Fresh system entropy for every request: a forked process, or a VM snapshot
    // resumed twice, must not replay the generator's stream (and so an
    // ephemeral key). It costs one getrandom per request, a few per batch.
    mbedtls_ctr_drbg_set_prediction_resistance(&drbg_, MBEDTLS_CTR_DRBG_PR_ON);
    seeded_ = true;
    return Status::ok();
  }
  Status fill(unsigned char* out, size_t n) {
    int rc = mbedtls_ctr_drbg_random(&drbg_, out, n);
    if (rc != 0) return Status::internal("random generator failed (" + mbedError(rc) + ")");
    return Status::ok();
  }
  // For mbedTLS's blinding of the scalar multiplication.
  static int rng(void* self, unsigned char* out, size_t n) {
    return mbedtls_ctr_drbg_random(&static_cast<Drbg*>(self)->drbg_, out, n);
  }

 private:
  mbedtls_entropy_context entropy_;
  mbedtls_ctr_drbg_context drbg_;
  bool seeded_ = false;
};

// A thread's own generator for key generation and blinding where no sealer
// state exists (openBatch runs on the aggregator's writer thread, tests on others).
Result<Drbg*> threadDrbg() {
  thread_local Drbg drbg;
  BL_RETURN_IF_ERROR(drbg.seed("branchline seal thread rng"));
  return &drbg;
}

// The Curve25519 group; loading it is cheap but not free, so each user keeps one.
class Curve {
 public:
  Curve() {
    mbedtls_ecp_group_init(&grp_);
    ok_ = mbedtls_ecp_group_load(&grp_, MBEDTLS_ECP_DP_CURVE25519) == 0;
  }
  ~Curve() { mbedtls_ecp_group_free(&grp_); }
  Curve(const Curve&) = delete;
  Curve& operator=(const Curve&) = delete;

  // RFC 7748 X25519. mbedTLS keeps numbers big-endian in mbedtls_mpi while the
  // RFC's byte strings are little-endian: read and write them with the _le calls.
  Status x25519(const X25519Key& scalar, const X25519Key& u, X25519Key& out, Drbg& rng) {
    if (!ok_) return Status::internal("Curve25519 is not available in this mbedTLS build");
    Secret<32> k;
    std::memcpy(k.data(), scalar.data(), 32);
    k.bytes[0] &= 248;  // clamping, RFC 7748 section 5
    k.bytes[31] &= 127;
    k.bytes[31] |= 64;
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
    if (rc == 0) rc = mbedtls_ecp_mul(&grp_, &r, &d, &p, &Drbg::rng, &rng);
    if (rc == 0) rc = mbedtls_mpi_write_binary_le(&r.X, out.data(), out.size());
    mbedtls_mpi_free(&d);  // zeroes the scalar's limbs
    mbedtls_ecp_point_free(&p);
    mbedtls_ecp_point_free(&r);
    if (rc == MBEDTLS_ERR_ECP_INVALID_KEY || rc == MBEDTLS_ERR_ECP_BAD_INPUT_DATA ||
        rc == MBEDTLS_ERR_MPI_NOT_ACCEPTABLE) {
      return Status::invalid("X25519 public key is a low-order point");
    }
    if (rc != 0) return Status::internal("X25519 failed (" + mbedError(rc) + ")");
    unsigned char any = 0;  // constant time: an all-zero secret means a low-order point
    for (unsigned char b : out) any |= b;
    if (any == 0) return Status::invalid("X25519 public key is a low-order point");
    return Status::ok();
  }

 private:
  mbedtls_ecp_group grp_;
  bool ok_ = false;
};

constexpr X25519Key kBasePoint = {9};

Status newPair(Curve& curve, Drbg& rng, SealKeyPair& pair) {
  BL_RETURN_IF_ERROR(rng.fill(pair.private_key.data(), pair.private_key.size()));
  pair.private_key[0] &= 248;
  pair.private_key[31] &= 127;
  pair.private_key[31] |= 64;
  return curve.x25519(pair.private_key, kBasePoint, pair.public_key, rng);
}

std::string toHex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<tag> <64 hex>" with optional trailing whitespace -> 32 bytes.
bool parseKeyLine(std::string_view text, std::string_view tag, X25519Key& out) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.remove_suffix(1);
  }
  if (text.size() != tag.size() + 1 + 64 || text.substr(0, tag.size()) != tag ||
      text[tag.size()] != ' ') {
    return false;
  }
  std::string_view hex = text.substr(tag.size() + 1);
  for (size_t i = 0; i < 32; ++i) {
    int hi = hexValue(hex[2 * i]), lo = hexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

// Closes a descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() {  // closes now and reports the result (a late write error shows here)
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Writes `content` to `file` atomically: a temp file in the same folder with
// `mode` exactly, fsync, rename over the target, fsync of the folder.
Status writeFileAtomically(const std::filesystem::path& file, std::string_view content,
                           mode_t mode) {
  const std::string name = file.string();
  std::filesystem::path dir = file.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::internal("key file " + name + ": create folder: " + ec.message());
  static std::atomic<unsigned> counter{0};
  const std::string tmp =
      name + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode));
  if (fd.get() < 0) return Status::internal("key file " + tmp + ": create: " + errnoText(errno));
  auto fail = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    return Status::internal("key file " + name + ": " + what + ": " + errnoText(err));
  };
  // The umask can only take bits away; make the mode exact whatever it was.
  if (::fchmod(fd.get(), mode) != 0) return fail("chmod", errno);
  size_t put = 0;
  while (put < content.size()) {
    ssize_t n = ::write(fd.get(), content.data() + put, content.size() - put);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write", errno);
    put += size_t(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync", errno);
  if (fd.release() != 0) return fail("close", errno);
  if (::rename(tmp.c_str(), name.c_str()) != 0) return fail("rename", errno);
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0 || ::fsync(d.get()) != 0) {
    return Status::internal("key file " + name + ": fsync folder " + dir.string() + ": " +
                            errnoText(errno));
  }
  return Status::ok();
}

// Reads a small key file; `private_key` also refuses group/other permissions.
Status readKeyFile(const std::filesystem::path& file, bool private_key, SecretString& out) {
  const std::string name = file.string();
  const char* what = private_key ? "seal private key file " : "seal public key file ";
  Fd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    int err = errno;
    if (err == ENOENT) return Status::notFound(what + name + " does not exist");
    if (err == EACCES) {
      return Status(Code::kPermissionDenied,
                    what + name + " is not readable by this user: " + errnoText(err));
    }
    return Status::internal(what + name + ": open: " + errnoText(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Status::internal(what + name + ": stat: " + errnoText(errno));
  }
  if (!S_ISREG(st.st_mode)) return Status::invalid(what + name + " is not a regular file");
  if (private_key && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
    return Status(Code::kPermissionDenied,
                  what + name + " has mode " + mode +
                      ": group/other may read the private sealing key; run `chmod 600 " + name +
                      "` (and consider the key exposed: rotate it)");
  }
  if (st.st_size > off_t(kMaxKeyFileBytes)) {
    return Status::invalid(what + name + " is " + std::to_string(st.st_size) +
                           " bytes; a key file is one short line");
  }
  out.text.assign(kMaxKeyFileBytes, '\0');
  size_t got = 0;
  while (got < out.text.size()) {
    ssize_t n = ::read(fd.get(), out.text.data() + got, out.text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::internal(what + name + ": read: " + errnoText(errno));
    if (n == 0) break;
    got += size_t(n);
  }
  out.text.resize(got);  // shrinking keeps the buffer; the destructor zeroes what is left
  return Status::ok();
}

// --- the seal construction -------------------------------------------------

constexpr std::string_view kHkdfInfo = "branchline sealed batch v1";
constexpr std::string_view kAadTag = "branchline envelope v1";

void putU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void putBytes(std::string& s, std::string_view b) {
  uint32_t n = static_cast<uint32_t>(b.size());
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(n >> (8 * i)));
  s.append(b);
}
std::string_view view(const X25519Key& k) {
  return {reinterpret_cast<const char*>(k.data()), k.size()};
}

// Every envelope field but the body, length-prefixed so no two headers encode alike.
std::string associatedData(const envelope::Parts& p) {
  std::string ad;
  ad.reserve(kAadTag.size() + 64 + p.key_id.size() + p.agent_id.size() + p.ephemeral_key.size());
  putBytes(ad, kAadTag);
  ad.push_back(static_cast<char>(p.format_version & 0xff));
  ad.push_back(static_cast<char>(p.format_version >> 8));
  ad.push_back(static_cast<char>(p.kind));
  ad.push_back(static_cast<char>(p.codec));
  ad.push_back(static_cast<char>(p.cipher));
  putBytes(ad, p.key_id);
  putBytes(ad, p.agent_id);
  putU64(ad, p.batch_seq);
  putU64(ad, p.raw_size);
  putBytes(ad, p.ephemeral_key);
  return ad;
}

// AES key and nonce for one batch. The ephemeral secret makes each batch's key
// fresh (so a fixed nonce would already be safe; deriving it costs nothing);
// the static secret proves the agent; salt and info bind every public key, the
// agent id and the key id, so a key agreed for one context opens no other.
struct BatchKey {
  Secret<kAesKeySize + kNonceSize> okm;
  const unsigned char* key() { return okm.data(); }
  const unsigned char* nonce() { return okm.data() + kAesKeySize; }
};

Status deriveBatchKey(const X25519Key& ephemeral_secret, const X25519Key& static_secret,
                      const X25519Key& ephemeral_public, const X25519Key& agent_public,
                      const X25519Key& aggregator_public, const std::string& agent_id,
                      const std::string& key_id, BatchKey& out) {
  Secret<64> ikm;
  std::memcpy(ikm.data(), ephemeral_secret.data(), 32);
  std::memcpy(ikm.data() + 32, static_secret.data(), 32);
  std::array<unsigned char, 96> salt;
  std::memcpy(salt.data(), ephemeral_public.data(), 32);
  std::memcpy(salt.data() + 32, agent_public.data(), 32);
  std::memcpy(salt.data() + 64, aggregator_public.data(), 32);
  std::string info;
  putBytes(info, kHkdfInfo);
  putBytes(info, agent_id);
  putBytes(info, key_id);
  int rc = mbedtls_hkdf(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256), salt.data(), salt.size(),
                        ikm.data(), ikm.bytes.size(),
                        reinterpret_cast<const unsigned char*>(info.data()), info.size(),
                        out.okm.data(), out.okm.bytes.size());
  if (rc != 0) return Status::internal("HKDF-SHA256 failed (" + mbedError(rc) + ")");
  return Status::ok();
}

class Gcm {
 public:
  Gcm() { mbedtls_gcm_init(&ctx_); }
  ~Gcm() { mbedtls_gcm_free(&ctx_); }  // zeroes the key schedule
  Gcm(const Gcm&) = delete;
  Gcm& operator=(const Gcm&) = delete;
  mbedtls_gcm_context* get() { return &ctx_; }

 private:
  mbedtls_gcm_context ctx_;
};

bool validAgentId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

SealKeyPair::~SealKeyPair() { zeroize(private_key.data(), private_key.size()); }

Result<SealKeyPair> generateSealKeyPair() {
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  Curve curve;
  SealKeyPair pair;
  BL_RETURN_IF_ERROR(newPair(curve, **rng, pair));
  return pair;
}

std::string sealKeyId(const X25519Key& public_key) {
  unsigned char digest[32];
  mbedtls_sha256_ret(public_key.data(), public_key.size(), digest, 0);
  return toHex(digest, 8);
}

Result<X25519Key> x25519(const X25519Key& scalar, const X25519Key& u) {
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  Curve curve;
  X25519Key out{};
  BL_RETURN_IF_ERROR(curve.x25519(scalar, u, out, **rng));
  return out;
}

Status writeSealPrivateKey(const std::filesystem::path& file, const SealKeyPair& pair) {
  SecretString line;
  line.text.reserve(kPrivateTag.size() + 66);
  line.text.append(kPrivateTag).append(" ");
  line.text += toHex(pair.private_key.data(), pair.private_key.size());
  line.text += "\n";
  return writeFileAtomically(file, line.text, 0600);
}

Status writeSealPublicKey(const std::filesystem::path& file, const X25519Key& public_key) {
  std::string line =
      std::string(kPublicTag) + " " + toHex(public_key.data(), public_key.size()) + "\n";
  return writeFileAtomically(file, line, 0644);
}

Result<SealKeyPair> readSealPrivateKey(const std::filesystem::path& file) {
  SecretString text;
  BL_RETURN_IF_ERROR(readKeyFile(file, true, text));
  SealKeyPair pair;
  if (!parseKeyLine(text.text, kPrivateTag, pair.private_key)) {
    X25519Key ignored;
    const bool is_public = parseKeyLine(text.text, kPublicTag, ignored);
    return Status::invalid("seal private key file " + file.string() +
                           (is_public ? " holds a public key; name the private .key file"
                                      : " is not a branchline X25519 private key (expected one "
                                        "line `" +
                                            std::string(kPrivateTag) + " <64 hex digits>`)"));
  }
  auto pub = x25519(pair.private_key, kBasePoint);
  if (!pub) return pub.status().withContext("seal private key file " + file.string());
  pair.public_key = *pub;
  return pair;
}

Result<X25519Key> readSealPublicKey(const std::filesystem::path& file) {
  SecretString text;  // not secret, but a private key given by mistake would be
  BL_RETURN_IF_ERROR(readKeyFile(file, false, text));
  X25519Key key{};
  if (!parseKeyLine(text.text, kPublicTag, key)) {
    X25519Key ignored;
    if (parseKeyLine(text.text, kPrivateTag, ignored)) {
      zeroize(ignored.data(), ignored.size());
      return Status::invalid("seal public key file " + file.string() +
                             " holds a PRIVATE key; name the .pub file (and check who can read "
                             "this one)");
    }
    return Status::invalid("seal public key file " + file.string() +
                           " is not a branchline X25519 public key (expected one line `" +
                           std::string(kPublicTag) + " <64 hex digits>`)");
  }
  return key;
}

// --- BatchSealer -------------------------------------------------------------

struct BatchSealer::State {
  Drbg rng;
  Curve curve;
  SealKeyPair agent;
  X25519Key aggregator_public{};
  std::string key_id;
  SharedSecret static_secret;  // DH(agent, aggregator): the same for every batch
  AckKey ack_key;
};

BatchSealer::BatchSealer() : state_(std::make_unique<State>()) {}
BatchSealer::~BatchSealer() = default;

Result<std::unique_ptr<BatchSealer>> BatchSealer::create(const SealerKeys& keys) {
  std::unique_ptr<BatchSealer> s(new BatchSealer());
  State& st = *s->state_;
  BL_RETURN_IF_ERROR(st.rng.seed("branchline batch sealer"));
  st.agent = keys.agent;
  st.aggregator_public = keys.aggregator_public;
  st.key_id = sealKeyId(keys.aggregator_public);
  Status agreed =
      st.curve.x25519(st.agent.private_key, st.aggregator_public, st.static_secret.key, st.rng);
  if (!agreed.isOk()) return agreed.withContext("aggregator key `" + st.key_id + "`");
  auto ack_key = deriveAckKey(st.static_secret.key, st.agent.public_key, st.aggregator_public);
  if (!ack_key) return ack_key.status();
  st.ack_key = std::move(ack_key).value();
  return s;
}

const std::string& BatchSealer::keyId() const { return state_->key_id; }
const AckKey& BatchSealer::ackKey() const { return state_->ack_key; }

Result<std::string> BatchSealer::seal(const WireBatch& batch, int zstd_level) {
  State& st = *state_;
  envelope::Parts parts;
  parts.kind = envelope::Kind::kBatch;
  parts.cipher = envelope::Cipher::kX25519Aes256Gcm;
  parts.key_id = st.key_id;
  parts.agent_id = batch.agent_id;
  parts.batch_seq = batch.seq;
  envelope::setBody(parts, envelope::serializeBatch(batch), zstd_level);

  // A fresh ephemeral pair per call: a resend of the same batch gets a new key,
  // so no (key, nonce) pair ever repeats, whatever the disk or the seq counter did.
  SealKeyPair ephemeral;
  BL_RETURN_IF_ERROR(newPair(st.curve, st.rng, ephemeral));
  SharedSecret ephemeral_secret;
  Status agreed =
      st.curve.x25519(ephemeral.private_key, st.aggregator_public, ephemeral_secret.key, st.rng);
  if (!agreed.isOk()) return agreed;
  parts.ephemeral_key.assign(view(ephemeral.public_key));

  BatchKey key;
  Status derived =
      deriveBatchKey(ephemeral_secret.key, st.static_secret.key, ephemeral.public_key,
                     st.agent.public_key, st.aggregator_public, batch.agent_id, st.key_id, key);
  BL_RETURN_IF_ERROR(derived);

  const std::string ad = associatedData(parts);
  std::string sealed(parts.body.size() + kTagSize, '\0');
  auto* out = reinterpret_cast<unsigned char*>(sealed.data());
  Gcm gcm;
  int rc = mbedtls_gcm_setkey(gcm.get(), MBEDTLS_CIPHER_ID_AES, key.key(), kAesKeySize * 8);
  if (rc == 0) {
    rc = mbedtls_gcm_crypt_and_tag(gcm.get(), MBEDTLS_GCM_ENCRYPT, parts.body.size(), key.nonce(),
                                   kNonceSize, reinterpret_cast<const unsigned char*>(ad.data()),
                                   ad.size(),
                                   reinterpret_cast<const unsigned char*>(parts.body.data()), out,
                                   kTagSize, out + parts.body.size());
  }
  if (rc != 0) {
    return Status::internal("sealing agent `" + batch.agent_id + "` batch " +
                            std::to_string(batch.seq) + " failed (" + mbedError(rc) + ")");
  }
  parts.body = std::move(sealed);
  return envelope::write(parts);
}

Result<std::string> sealBatch(const WireBatch& batch, const SealerKeys& keys, int zstd_level) {
  auto sealer = BatchSealer::create(keys);
  if (!sealer) return sealer.status();
  return (*sealer)->seal(batch, zstd_level);
}

// --- openBatch ---------------------------------------------------------------

const char* openFailureLabel(OpenFailure failure) {
  switch (failure) {
    case OpenFailure::kNone:
      return "";
    case OpenFailure::kMalformed:
      return "malformed";
    case OpenFailure::kTooLarge:
      return "too_large";
    case OpenFailure::kNotSealed:
      return "not_sealed";
    case OpenFailure::kUnknownKey:
      return "unknown_key";
    case OpenFailure::kKeyRetired:
      return "key_retired";
    case OpenFailure::kNotEnrolled:
      return "not_enrolled";
    case OpenFailure::kForgedOrAltered:
      return "seal_invalid";
    case OpenFailure::kRevoked:
      return "revoked";
  }
  return "malformed";
}

namespace {

Result<WireBatch> openClassified(std::string_view payload, const DecodeLimits& limits,
                                 const OpenOptions& options, OpenFailure& failure,
                                 AckKey* ack_key) {
  auto read = envelope::read(payload, limits);
  if (!read) return read.status();
  envelope::Parts& parts = *read;
  if (parts.kind != envelope::Kind::kBatch) {
    return Status::invalid("envelope holds an ack, not a batch");
  }
  if (parts.cipher == envelope::Cipher::kNone) {
    if (options.require_sealed) {
      failure = OpenFailure::kNotSealed;
      return Status::invalid(
          "batch is not sealed (agent `" + log::printableExcerpt(parts.agent_id) + "` batch " +
          std::to_string(parts.batch_seq) + "), and this aggregator requires sealed batches");
    }
    auto raw = envelope::inflate(parts, parts.body, limits);
    if (!raw) return raw.status();
    return envelope::parseBatch(*raw, parts, limits);
  }
  BL_RETURN_IF_ERROR(envelope::checkDeclaredSize(parts, limits));
  if (!validAgentId(parts.agent_id)) {
    return Status::invalid("envelope agent id `" + log::printableExcerpt(parts.agent_id) +
                           "` is not [A-Za-z0-9_-]{1,64}");
  }
  const std::string& agent = parts.agent_id;
  if (options.ring == nullptr) {
    failure = OpenFailure::kUnknownKey;
    return Status::invalid("batch is sealed but this aggregator has no sealing keys");
  }
  auto entry = options.ring->by_key_id.find(parts.key_id);
  if (entry == options.ring->by_key_id.end()) {
    failure = OpenFailure::kUnknownKey;
    return Status::invalid("unknown aggregator key id `" + log::printableExcerpt(parts.key_id) +
                           "`");
  }
  const int64_t now = options.now_us != 0 ? options.now_us : nowMicros();
  if (now >= entry->second.honoured_until_us) {
    failure = OpenFailure::kKeyRetired;
    return Status::invalid("aggregator key `" + parts.key_id + "` retired at " +
                           formatRfc3339Micros(entry->second.honoured_until_us));
  }
  if (!options.agent_public_key) {
    failure = OpenFailure::kNotEnrolled;
    return Status::invalid("batch is sealed but this aggregator has no enrolled-agent keys");
  }
  auto agent_public = options.agent_public_key(agent);
  if (!agent_public) {
    if (agent_public.status().code() == Code::kNotFound) {
      failure = OpenFailure::kNotEnrolled;
      return Status::invalid("agent `" + agent + "` is not enrolled");
    }
    if (agent_public.status().code() == Code::kPermissionDenied) {
      failure = OpenFailure::kRevoked;
      return Status::invalid("agent `" + agent + "` is revoked");
    }
    return agent_public.status().withContext("agent `" + agent + "` public sealing key");
  }
  if (parts.ephemeral_key.size() != 32) {
    return Status::invalid("sealed batch " + std::to_string(parts.batch_seq) + " of agent `" +
                           agent + "` carries a " + std::to_string(parts.ephemeral_key.size()) +
                           "-byte ephemeral key, expected 32");
  }
  const std::string does_not_open = "batch does not open: not sealed by agent `" + agent +
                                    "`, or altered (batch " + std::to_string(parts.batch_seq) +
                                    ", key `" + parts.key_id + "`)";
  failure = OpenFailure::kForgedOrAltered;  // from here on, any refusal is one
  if (parts.body.size() < kTagSize) return Status::invalid(does_not_open);

  X25519Key ephemeral_public;
  std::memcpy(ephemeral_public.data(), parts.ephemeral_key.data(), 32);
  const SealKeyPair& aggregator = entry->second.pair;
  auto rng = threadDrbg();
  if (!rng) return rng.status();
  Curve curve;
  SharedSecret ephemeral_secret, static_secret;
  Status s1 = curve.x25519(aggregator.private_key, ephemeral_public, ephemeral_secret.key, **rng);
  Status s2 = s1.isOk()
                  ? curve.x25519(aggregator.private_key, *agent_public, static_secret.key, **rng)
                  : Status::ok();
  BatchKey key;
  Status derived =
      (s1.isOk() && s2.isOk())
          ? deriveBatchKey(ephemeral_secret.key, static_secret.key, ephemeral_public, *agent_public,
                           aggregator.public_key, agent, parts.key_id, key)
          : Status::ok();
  if (!s1.isOk() || !s2.isOk()) return Status::invalid(does_not_open);
  BL_RETURN_IF_ERROR(derived);

  const std::string ad = associatedData(parts);
  const size_t n = parts.body.size() - kTagSize;
  std::string plain(n, '\0');
  const auto* body = reinterpret_cast<const unsigned char*>(parts.body.data());
  Gcm gcm;
  int rc = mbedtls_gcm_setkey(gcm.get(), MBEDTLS_CIPHER_ID_AES, key.key(), kAesKeySize * 8);
  if (rc == 0) {
    rc = mbedtls_gcm_auth_decrypt(
        gcm.get(), n, key.nonce(), kNonceSize, reinterpret_cast<const unsigned char*>(ad.data()),
        ad.size(), body + n, kTagSize, body, reinterpret_cast<unsigned char*>(plain.data()));
  }
  if (rc == MBEDTLS_ERR_GCM_AUTH_FAILED) return Status::invalid(does_not_open);
  if (rc != 0) {
    return Status::internal("opening agent `" + agent + "` batch " +
                            std::to_string(parts.batch_seq) + " failed (" + mbedError(rc) + ")");
  }
  // Authentic from here: what fails now is the sealing agent's own content.
  failure = OpenFailure::kNone;
  if (ack_key != nullptr) {
    auto k = deriveAckKey(static_secret.key, *agent_public, aggregator.public_key);
    if (!k) return k.status();
    *ack_key = std::move(k).value();
  }
  auto raw = envelope::inflate(parts, plain, limits);
  if (!raw) return raw.status();
  return envelope::parseBatch(*raw, parts, limits);
}

}  // namespace

Result<WireBatch> openBatch(std::string_view payload, const DecodeLimits& limits,
                            const OpenOptions& options, OpenFailure* failure, AckKey* ack_key) {
  OpenFailure why = OpenFailure::kNone;
  auto out = openClassified(payload, limits, options, why, ack_key);
  if (!out.isOk() && why == OpenFailure::kNone) {
    why = out.status().code() == Code::kResourceExhausted ? OpenFailure::kTooLarge
                                                          : OpenFailure::kMalformed;
  }
  if (failure != nullptr) *failure = out.isOk() ? OpenFailure::kNone : why;
  return out;
}

}  // namespace branchline::protocol
