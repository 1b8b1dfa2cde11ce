#include "shared/crypto/key_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "shared/core/unique_fd.h"

namespace branchline::crypto {
namespace {

namespace fs = std::filesystem;

std::string errnoText(int err) { return std::strerror(err); }

fs::path folderOf(const fs::path& file) {
  fs::path dir = file.parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

Status fsyncFolder(const fs::path& file) {
  const fs::path dir = folderOf(file);
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0 || ::fsync(d.get()) != 0) {
    return Status::internal(file.string() + ": fsync folder " + dir.string() + ": " +
                            errnoText(errno));
  }
  return Status::ok();
}

}  // namespace

Result<SecretString> readKeyFile(const fs::path& file, const KeyFileRules& rules) {
  const std::string name = file.string();
  const std::string what = std::string(rules.label) + " " + name;
  UniqueFd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) return Status::notFound(what + " does not exist");
    if (err == EACCES) {
      return Status(Code::kPermissionDenied,
                    what + " is not readable by this user: " + errnoText(err));
    }
    return Status::internal(what + ": open: " + errnoText(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::internal(what + ": stat: " + errnoText(errno));
  if (!S_ISREG(st.st_mode)) return Status::invalid(what + " is not a regular file");
  if (rules.check_mode && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
    std::string fix = "; run `chmod 600 " + name + "`";
    if (!rules.advice.empty()) fix += " " + std::string(rules.advice);
    return Status(Code::kPermissionDenied,
                  what + " has mode " + mode + ": " + std::string(rules.exposure) + fix);
  }
  if (st.st_size > off_t(rules.max_bytes)) {
    return Status::invalid(what + " is " + std::to_string(st.st_size) +
                           " bytes; a key file is at most " + std::to_string(rules.max_bytes));
  }
  // Straight into the secret's own buffer with read(2): no stream buffer keeps a copy.
  // One byte more than allowed tells a file that grew since the fstat.
  SecretString out;
  out.str().assign(rules.max_bytes + 1, '\0');
  size_t got = 0;
  while (got < out.str().size()) {
    ssize_t n = ::read(fd.get(), out.str().data() + got, out.str().size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::internal(what + ": read: " + errnoText(errno));
    if (n == 0) break;
    got += size_t(n);
  }
  if (got > rules.max_bytes) {
    return Status::invalid(what + " is longer than " + std::to_string(rules.max_bytes) +
                           " bytes; a key file is at most that");
  }
  out.str().resize(got);  // shrinking keeps the buffer; the destructor zeroes all of it
  return out;
}

Status replaceFile(const fs::path& from, const fs::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return Status::internal(to.string() + ": rename from " + from.string() + ": " +
                            errnoText(errno));
  }
  return fsyncFolder(to);
}

Status overwriteWithZeros(const fs::path& file) {
  const std::string name = file.string();
  UniqueFd fd(::open(name.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) return Status::internal(name + ": open: " + errnoText(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Status::internal(name + ": stat: " + errnoText(errno));
  const std::array<unsigned char, 4096> zeros{};
  for (off_t at = 0; at < st.st_size;) {
    const size_t n = size_t(std::min<off_t>(st.st_size - at, off_t(zeros.size())));
    ssize_t w = ::pwrite(fd.get(), zeros.data(), n, at);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return Status::internal(name + ": overwrite: " + errnoText(errno));
    at += w;
  }
  if (::fsync(fd.get()) != 0) return Status::internal(name + ": fsync: " + errnoText(errno));
  if (fd.release() != 0) return Status::internal(name + ": close: " + errnoText(errno));
  return Status::ok();
}

}  // namespace branchline::crypto
