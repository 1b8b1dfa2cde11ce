#include "shared/core/atomic_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "shared/core/unique_fd.h"

namespace branchline {
namespace {

namespace fs = std::filesystem;

Status stepFailed(const fs::path& path, const std::string& step, int err) {
  std::string message = path.string() + ": " + step + ": " + std::strerror(err);
  if (err == ENOSPC || err == EDQUOT) {
    return Status::exhausted(message + " (free space on that file system, then retry)");
  }
  return Status::internal(message);
}

// `.<name>.tmp.` and six random letters or digits, like mkstemp's XXXXXX (which
// has no openat form, and the spool writes through a folder descriptor).
std::string tempName(const std::string& name) {
  static constexpr char kLetters[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  static std::atomic<uint64_t> counter{0};
  uint64_t bits = 0;
  if (::getrandom(&bits, sizeof bits, GRND_NONBLOCK) != ssize_t(sizeof bits)) {
    // No entropy yet (early boot): the pid and a counter still differ between writers.
    bits = (uint64_t(::getpid()) << 32) ^ counter.fetch_add(1);
  }
  std::string out = "." + name + ".tmp.";
  for (int i = 0; i < 6; ++i) {
    out += kLetters[bits % (sizeof kLetters - 1)];
    bits /= sizeof kLetters - 1;
  }
  return out;
}

// Removes the temp file on every way out except the one where it became `path`.
class TempFileGuard {
 public:
  TempFileGuard(int dir_fd, std::string name) : dir_fd_(dir_fd), name_(std::move(name)) {}
  ~TempFileGuard() {
    if (!name_.empty()) ::unlinkat(dir_fd_, name_.c_str(), 0);
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void keep() { name_.clear(); }
  // Removes it now, so the folder's fsync below covers the removal too.
  void removeNow() {
    ::unlinkat(dir_fd_, name_.c_str(), 0);
    name_.clear();
  }

 private:
  int dir_fd_;
  std::string name_;
};

}  // namespace

Status writeFileAtomically(const fs::path& path, std::string_view bytes, mode_t mode,
                           const AtomicWriteOptions& options) {
  const std::string name = path.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return Status::invalid(path.string() + ": not a file name; cannot write it");
  }
  UniqueFd own_dir(-1);
  int dir_fd = options.dir_fd;
  if (dir_fd < 0) {
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return stepFailed(path, "create folder " + dir.string(), ec.value());
    own_dir = UniqueFd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (own_dir.get() < 0) return stepFailed(path, "open folder " + dir.string(), errno);
    dir_fd = own_dir.get();
  }

  std::string tmp;
  UniqueFd fd(-1);
  for (int attempt = 0; attempt < 100 && fd.get() < 0; ++attempt) {
    tmp = tempName(name);
    // 0600 until the fchmod: never readable by others, whatever `mode` and the umask.
    fd = UniqueFd(
        ::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (fd.get() < 0 && errno != EEXIST) break;
  }
  if (fd.get() < 0) return stepFailed(path, "create temp file", errno);
  TempFileGuard guard(dir_fd, tmp);
  auto fail = [&](const std::string& step, int err) {
    return stepFailed(path, step + " " + tmp, err);
  };

  if (::fchmod(fd.get(), mode) != 0) return fail("chmod", errno);
  size_t put = 0;
  while (put < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + put, bytes.size() - put);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write", errno);
    if (n == 0) return fail("write", EIO);  // no progress and no errno: do not spin
    put += size_t(n);
  }
  if (::fsync(fd.get()) != 0) return fail("fsync", errno);
  // A write-back error can surface only at close.
  if (fd.release() != 0) return fail("close", errno);

  if (options.replace) {
    if (::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) return fail("rename", errno);
    guard.keep();
  } else {
    // linkat refuses an existing name, so the file is never silently replaced.
    const int rc = ::linkat(dir_fd, tmp.c_str(), dir_fd, name.c_str(), 0);
    const int err = errno;
    guard.removeNow();
    if (rc != 0 && err == EEXIST) {
      return Status(Code::kAlreadyExists, path.string() + " already exists; not overwritten");
    }
    if (rc != 0) return stepFailed(path, "link " + tmp, err);
  }
  // The rename is durable only once the folder's entry is.
  if (::fsync(dir_fd) != 0) return stepFailed(path, "fsync folder", errno);
  return Status::ok();
}

}  // namespace branchline
