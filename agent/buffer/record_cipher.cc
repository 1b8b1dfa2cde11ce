#include "agent/buffer/record_cipher.h"

#include <fcntl.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/gcm.h>
#include <mbedtls/platform_util.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace branchline::agent {
namespace {

constexpr unsigned char kFormatVersion = 1;
constexpr size_t kNonceSize = 12;
constexpr size_t kTagSize = 16;
// Associated data: version byte, rowid (8 bytes LE), column name.
constexpr size_t kMaxColumnName = 48;

std::string errnoText(int err) { return std::strerror(err); }

// Closes a descriptor on scope exit; close() errors on a read-only fd carry no data.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the result (a write's late error shows up here).
  int release() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

Status readKey(int fd, const std::string& name, DataKey& key) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return Status::internal("key file " + name + ": stat: " + errnoText(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    return Status::invalid("key file " + name + " is not a regular file");
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
    return Status(Code::kPermissionDenied,
                  "key file " + name + " has mode " + mode +
                      ": group/other may access the buffer's data key; run `chmod 600 " + name +
                      "` (and check who has read it)");
  }
  if (st.st_size != off_t(DataKey::kSize)) {
    return Status::dataLoss("key file " + name + " holds " + std::to_string(st.st_size) +
                            " bytes, expected " + std::to_string(DataKey::kSize) +
                            "; restore the agent's original key file");
  }
  size_t got = 0;
  while (got < DataKey::kSize) {
    ssize_t n = ::read(fd, key.data() + got, DataKey::kSize - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return Status::internal("key file " + name + ": read: " +
                              (n == 0 ? std::string("unexpected end") : errnoText(errno)));
    }
    got += size_t(n);
  }
  return Status::ok();
}

Status fillRandom(unsigned char* out, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::getrandom(out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::internal(std::string("getrandom: ") + errnoText(errno));
    got += size_t(r);
  }
  return Status::ok();
}

// Writes a new key to a temp file and renames it into place without replacing a
// key another process created meanwhile. Returns kAlreadyExists in that case.
Status createKeyFile(const std::filesystem::path& file, const DataKey& key) {
  const std::string name = file.string();
  std::filesystem::path dir = file.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::internal("key file " + name + ": create folder: " + ec.message());

  std::string tmp = name + ".tmp." + std::to_string(::getpid());
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) return Status::internal("key file " + tmp + ": create: " + errnoText(errno));
  auto fail = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    return Status::internal("key file " + tmp + ": " + what + ": " + errnoText(err));
  };
  // The umask can only take bits away; make 0600 exact whatever it was.
  if (::fchmod(fd.get(), 0600) != 0) return fail("chmod", errno);
  size_t put = 0;
  while (put < DataKey::kSize) {
    ssize_t n = ::write(fd.get(), key.data() + put, DataKey::kSize - put);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write", errno);
    put += size_t(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync", errno);
  if (fd.release() != 0) return fail("close", errno);
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, name.c_str(), RENAME_NOREPLACE) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    if (err == EEXIST) return Status(Code::kAlreadyExists, "key file " + name + " appeared");
    return Status::internal("key file " + name + ": rename: " + errnoText(err));
  }
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0 || ::fsync(d.get()) != 0) {
    return Status::internal("key file " + name + ": fsync folder " + dir.string() + ": " +
                            errnoText(errno));
  }
  return Status::ok();
}

}  // namespace

DataKey::~DataKey() { mbedtls_platform_zeroize(bytes_.data(), bytes_.size()); }

DataKey::DataKey(DataKey&& other) noexcept : bytes_(other.bytes_) {
  mbedtls_platform_zeroize(other.bytes_.data(), other.bytes_.size());
}

DataKey& DataKey::operator=(DataKey&& other) noexcept {
  if (this != &other) {
    bytes_ = other.bytes_;
    mbedtls_platform_zeroize(other.bytes_.data(), other.bytes_.size());
  }
  return *this;
}

Result<DataKey> loadOrCreateDataKey(const std::filesystem::path& file) {
  const std::string name = file.string();
  for (int attempt = 0; attempt < 2; ++attempt) {
    Fd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() >= 0) {
      DataKey key;
      BL_RETURN_IF_ERROR(readKey(fd.get(), name, key));
      return key;
    }
    if (errno != ENOENT)
      return Status::internal("key file " + name + ": open: " + errnoText(errno));
    DataKey key;
    BL_RETURN_IF_ERROR(fillRandom(key.data(), DataKey::kSize));
    Status s = createKeyFile(file, key);
    if (s.isOk()) return key;
    if (s.code() != Code::kAlreadyExists) return s;
    // Another process created it first: use theirs.
  }
  return Status::internal("key file " + name + " keeps disappearing");
}

struct RecordCipher::State {
  mbedtls_gcm_context gcm;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  // Nonces are drawn from a pool refilled 1 KiB at a time: each DRBG call re-keys
  // AES, which per 12-byte nonce cost more than sealing a small value.
  std::array<unsigned char, MBEDTLS_CTR_DRBG_MAX_REQUEST> nonce_pool{};
  size_t pool_left = 0;
  State() {
    mbedtls_gcm_init(&gcm);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
  }
  ~State() {  // each free zeroes its context (key schedule, DRBG state)
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    mbedtls_gcm_free(&gcm);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // The associated data binding a value to its place; returns its length.
  static size_t associatedData(std::string_view column, int64_t rowid,
                               unsigned char (&ad)[1 + 8 + kMaxColumnName]) {
    assert(column.size() <= kMaxColumnName && "column name too long for the AAD buffer");
    ad[0] = kFormatVersion;
    uint64_t id = uint64_t(rowid);
    for (int i = 0; i < 8; ++i) ad[1 + i] = static_cast<unsigned char>(id >> (8 * i));
    std::memcpy(ad + 9, column.data(), column.size());
    return 9 + column.size();
  }
};

RecordCipher::RecordCipher() : state_(std::make_unique<State>()) {}
RecordCipher::~RecordCipher() = default;

Result<std::unique_ptr<RecordCipher>> RecordCipher::create(const DataKey& key) {
  std::unique_ptr<RecordCipher> c(new RecordCipher());
  State& st = *c->state_;
  int rc = mbedtls_gcm_setkey(&st.gcm, MBEDTLS_CIPHER_ID_AES, key.data(), DataKey::kSize * 8);
  if (rc != 0)
    return Status::internal("buffer cipher: gcm setkey failed (" + std::to_string(rc) + ")");
  static constexpr unsigned char kPersonalization[] = "branchline buffer nonces";
  rc = mbedtls_ctr_drbg_seed(&st.drbg, mbedtls_entropy_func, &st.entropy, kPersonalization,
                             sizeof kPersonalization - 1);
  if (rc != 0) {
    return Status::internal("buffer cipher: seeding the random generator failed (" +
                            std::to_string(rc) + ")");
  }
  return c;
}

Status RecordCipher::seal(std::string_view column, int64_t rowid, std::string_view plain,
                          std::string& out) {
  State& st = *state_;
  out.resize(kOverhead + plain.size());
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  p[0] = kFormatVersion;
  unsigned char* nonce = p + 1;
  unsigned char* body = nonce + kNonceSize;
  unsigned char* tag = body + plain.size();
  if (st.pool_left < kNonceSize) {
    int rc = mbedtls_ctr_drbg_random(&st.drbg, st.nonce_pool.data(), st.nonce_pool.size());
    if (rc != 0) {
      return Status::internal("buffer cipher: random nonces failed (" + std::to_string(rc) + ")");
    }
    st.pool_left = st.nonce_pool.size();
  }
  st.pool_left -= kNonceSize;
  std::memcpy(nonce, st.nonce_pool.data() + st.pool_left, kNonceSize);
  unsigned char ad[1 + 8 + kMaxColumnName];
  size_t ad_len = State::associatedData(column, rowid, ad);
  int rc = mbedtls_gcm_crypt_and_tag(
      &st.gcm, MBEDTLS_GCM_ENCRYPT, plain.size(), nonce, kNonceSize, ad, ad_len,
      reinterpret_cast<const unsigned char*>(plain.data()), body, kTagSize, tag);
  if (rc != 0)
    return Status::internal("buffer cipher: encrypt failed (" + std::to_string(rc) + ")");
  return Status::ok();
}

Status RecordCipher::open(std::string_view column, int64_t rowid, std::string_view sealed,
                          std::string& out) {
  const std::string where = std::string(column) + " of row " + std::to_string(rowid);
  if (sealed.size() < kOverhead) {
    return Status::dataLoss(where + ": sealed value is " + std::to_string(sealed.size()) +
                            " bytes, shorter than the " + std::to_string(kOverhead) +
                            "-byte envelope");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(sealed.data());
  if (p[0] != kFormatVersion) {
    return Status::dataLoss(where + ": unknown sealed-value version " + std::to_string(p[0]));
  }
  const unsigned char* nonce = p + 1;
  const unsigned char* body = nonce + kNonceSize;
  const size_t n = sealed.size() - kOverhead;
  const unsigned char* tag = body + n;
  out.resize(n);
  unsigned char ad[1 + 8 + kMaxColumnName];
  size_t ad_len = State::associatedData(column, rowid, ad);
  int rc = mbedtls_gcm_auth_decrypt(&state_->gcm, n, nonce, kNonceSize, ad, ad_len, tag, kTagSize,
                                    body, reinterpret_cast<unsigned char*>(out.data()));
  if (rc == MBEDTLS_ERR_GCM_AUTH_FAILED) {
    out.clear();
    return Status::dataLoss(where +
                            ": failed authentication (the file is corrupt or was modified, or "
                            "the value was sealed under another data key)");
  }
  if (rc != 0) return Status::internal(where + ": decrypt failed (" + std::to_string(rc) + ")");
  return Status::ok();
}

}  // namespace branchline::agent
