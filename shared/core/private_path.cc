#include "shared/core/private_path.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <system_error>

namespace branchline {
namespace {

Status errnoStatus(const std::string& what, const std::filesystem::path& path) {
  const int err = errno;
  std::string m = what + " " + path.string() + ": " + std::strerror(err);
  if (err == EPERM || err == EACCES) return {Code::kPermissionDenied, m};
  return Status::internal(m);
}

Status checkOwner(const struct stat& st, const std::filesystem::path& path) {
  if (st.st_uid == ::geteuid()) return Status::ok();
  return {Code::kPermissionDenied, path.string() + " is owned by uid " + std::to_string(st.st_uid) +
                                       ", not by this process (uid " + std::to_string(::geteuid()) +
                                       "): chown it to the service user"};
}

// Narrows `path` (already stat'ed as `st`) to `mode` when it grants more.
Result<bool> narrow(const std::filesystem::path& path, const struct stat& st, mode_t mode) {
  if ((st.st_mode & 07777 & ~mode) == 0) return false;
  BL_RETURN_IF_ERROR(checkOwner(st, path));
  if (::chmod(path.c_str(), mode) != 0) return errnoStatus("chmod", path);
  return true;
}

}  // namespace

Result<bool> makePrivateDirectory(const std::filesystem::path& dir) {
  if (dir.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(dir.parent_path(), ec);
    if (ec)
      return Status::internal("cannot create " + dir.parent_path().string() + ": " + ec.message());
  }
  // Created at 0700 from the start: no moment at which it is wider.
  if (::mkdir(dir.c_str(), 0700) == 0) return false;
  if (errno != EEXIST) return errnoStatus("cannot create", dir);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return errnoStatus("stat", dir);
  if (!S_ISDIR(st.st_mode)) return Status::invalid(dir.string() + " is not a directory");
  BL_RETURN_IF_ERROR(checkOwner(st, dir));
  return narrow(dir, st, 0700);
}

Result<bool> narrowToPrivateFile(const std::filesystem::path& file) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    return errnoStatus("stat", file);
  }
  return narrow(file, st, 0600);
}

}  // namespace branchline
