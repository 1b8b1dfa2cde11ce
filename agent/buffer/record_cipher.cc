#include "agent/buffer/record_cipher.h"

#include <fcntl.h>
#include <mbedtls/gcm.h>
#include <mbedtls/platform_util.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
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

std::filesystem::path folderOf(const std::filesystem::path& file) {
  std::filesystem::path dir = file.parent_path();
  return dir.empty() ? std::filesystem::path(".") : dir;
}

// Renames `from` to `file` and fsyncs the folder, so the rename survives a power cut.
// Without `replace` an existing `file` is kept: kAlreadyExists.
Status renameIntoPlace(const std::filesystem::path& from, const std::filesystem::path& file,
                       bool replace) {
  const std::string name = file.string();
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, name.c_str(), replace ? 0 : RENAME_NOREPLACE) !=
      0) {
    int err = errno;
    if (err == EEXIST) return Status(Code::kAlreadyExists, "key file " + name + " appeared");
    return Status::internal("key file " + name + ": rename from " + from.string() + ": " +
                            errnoText(err));
  }
  const std::filesystem::path dir = folderOf(file);
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0 || ::fsync(d.get()) != 0) {
    return Status::internal("key file " + name + ": fsync folder " + dir.string() + ": " +
                            errnoText(errno));
  }
  return Status::ok();
}

// Writes a key to a temp file and renames it into place. Without `replace`, a key
// another process created meanwhile is kept: kAlreadyExists.
Status writeKeyFile(const std::filesystem::path& file, const DataKey& key, bool replace) {
  const std::string name = file.string();
  const std::filesystem::path dir = folderOf(file);
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
  Status s = renameIntoPlace(tmp, file, replace);
  if (!s.isOk()) ::unlink(tmp.c_str());
  return s;
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
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto existing = readDataKeyFile(file);
    if (existing.isOk() || existing.status().code() != Code::kNotFound) return existing;
    auto key = generateDataKey();
    if (!key.isOk()) return key;
    Status s = writeKeyFile(file, *key, /*replace=*/false);
    if (s.isOk()) return key;
    if (s.code() != Code::kAlreadyExists) return s;
    // Another process created it first: use theirs.
  }
  return Status::internal("key file " + file.string() + " keeps disappearing");
}

Result<DataKey> readDataKeyFile(const std::filesystem::path& file) {
  const std::string name = file.string();
  Fd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return Status::notFound("key file " + name + " does not exist");
    return Status::internal("key file " + name + ": open: " + errnoText(errno));
  }
  DataKey key;
  BL_RETURN_IF_ERROR(readKey(fd.get(), name, key));
  return key;
}

Status replaceDataKeyFile(const std::filesystem::path& from, const std::filesystem::path& to) {
  return renameIntoPlace(from, to, /*replace=*/true);
}

Status writeDataKeyFile(const std::filesystem::path& file, const DataKey& key) {
  return writeKeyFile(file, key, /*replace=*/true);
}

Result<DataKey> generateDataKey() {
  DataKey key;
  BL_RETURN_IF_ERROR(fillRandom(key.data(), DataKey::kSize));
  return key;
}

Status zeroDataKeyFile(const std::filesystem::path& file) {
  const std::string name = file.string();
  Fd fd(::open(name.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) return Status::internal("key file " + name + ": open: " + errnoText(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Status::internal("key file " + name + ": stat: " + errnoText(errno));
  }
  const std::array<unsigned char, 4096> zeros{};
  for (off_t at = 0; at < st.st_size;) {
    const size_t n = size_t(std::min<off_t>(st.st_size - at, off_t(zeros.size())));
    ssize_t w = ::pwrite(fd.get(), zeros.data(), n, at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Status::internal("key file " + name + ": overwrite: " + errnoText(errno));
    at += w;
  }
  if (::fsync(fd.get()) != 0) {
    return Status::internal("key file " + name + ": fsync: " + errnoText(errno));
  }
  if (fd.release() != 0) {
    return Status::internal("key file " + name + ": close: " + errnoText(errno));
  }
  return Status::ok();
}

// A run's nonce state, alone in an anonymous page marked MADV_WIPEONFORK: in a
// forked child the kernel hands back that page zeroed, so `active` reads 0 there.
struct NonceRun {
  uint64_t active;
  uint64_t counter;
  unsigned char base[kNonceSize];
};

struct RecordCipher::State {
  mbedtls_gcm_context gcm;
  NonceRun* run = nullptr;  // null without MADV_WIPEONFORK: then every seal draws its own
  size_t run_page = 0;
  State() {
    mbedtls_gcm_init(&gcm);
    const long page = ::sysconf(_SC_PAGESIZE);
    run_page = page > 0 ? size_t(page) : 4096;
    void* p = ::mmap(nullptr, run_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    if (::madvise(p, run_page, MADV_WIPEONFORK) != 0) {
      ::munmap(p, run_page);
      return;
    }
    run = static_cast<NonceRun*>(p);
  }
  ~State() {  // gcm_free zeroes the key schedule
    if (run != nullptr) {
      mbedtls_platform_zeroize(run, sizeof *run);
      ::munmap(run, run_page);
    }
    mbedtls_gcm_free(&gcm);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Writes the next value's nonce: from the run when one is active in this process,
  // else fresh from the kernel.
  Status nextNonce(unsigned char* nonce) {
    if (run == nullptr || run->active == 0) {
      Status s = fillRandom(nonce, kNonceSize);
      return s.isOk() ? s : s.withContext("buffer cipher: nonce");
    }
    std::memcpy(nonce, run->base, kNonceSize);
    const uint64_t i = run->counter++;
    for (int b = 0; b < 8; ++b) nonce[4 + b] ^= static_cast<unsigned char>(i >> (8 * b));
    return Status::ok();
  }

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
  BL_RETURN_IF_ERROR(st.nextNonce(nonce));
  unsigned char ad[1 + 8 + kMaxColumnName];
  size_t ad_len = State::associatedData(column, rowid, ad);
  int rc = mbedtls_gcm_crypt_and_tag(
      &st.gcm, MBEDTLS_GCM_ENCRYPT, plain.size(), nonce, kNonceSize, ad, ad_len,
      reinterpret_cast<const unsigned char*>(plain.data()), body, kTagSize, tag);
  if (rc != 0)
    return Status::internal("buffer cipher: encrypt failed (" + std::to_string(rc) + ")");
  return Status::ok();
}

Status RecordCipher::beginRun() {
  State& st = *state_;
  if (st.run == nullptr) return Status::ok();  // each seal draws from the kernel instead
  st.run->active = 0;                          // a failed draw leaves no run behind
  unsigned char base[kNonceSize];
  Status s = fillRandom(base, kNonceSize);
  if (!s.isOk()) return s.withContext("buffer cipher: nonce run");
  // A hedge should a kernel without VM generation ID support hand two resumed copies
  // the same bytes: the clock they read then most likely differs.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t ns = uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
  for (int b = 0; b < 8; ++b) base[b] ^= static_cast<unsigned char>(ns >> (8 * b));
  std::memcpy(st.run->base, base, kNonceSize);
  st.run->counter = 0;
  st.run->active = 1;
  return Status::ok();
}

void RecordCipher::endRun() {
  if (state_->run != nullptr) state_->run->active = 0;
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
