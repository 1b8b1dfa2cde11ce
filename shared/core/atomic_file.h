// Writing a whole file atomically and durably: after writeFileAtomically
// returns OK, a crash or power cut leaves the new bytes at `path`; after it
// fails (or a crash before it returns), `path` holds its old bytes or does not
// exist, never a mix, and no temp file is left behind (a crash can leave one;
// its name starts with '.' and contains ".tmp.", so a scanner that skips
// dot-files or ".tmp" names skips it). The one home of this code: do not copy it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string_view>

#include "shared/core/status.h"

namespace branchline {

struct AtomicWriteOptions {
  // false: `path` is never replaced; when it exists the call fails with
  // kAlreadyExists (link + unlink rather than rename), so two processes that
  // create the same file both see one winner.
  bool replace = true;
  // >= 0: `path`'s folder, already open (O_DIRECTORY, owned by the caller). The
  // temp file, the rename and the folder's fsync go through it, so a folder
  // swapped for a symlink meanwhile is never followed; `path` only names the
  // file in errors and gives the file name. -1: the folder is opened by name,
  // created (with missing parents) when it does not exist.
  int dir_fd = -1;
};

// Writes `bytes` to `path` with exactly `mode`: a new, uniquely named temp file
// `.<name>.tmp.XXXXXX` in the same folder (two writers never share one),
// created 0600 and fchmod'ed to `mode` before any byte is written (so the umask
// neither widens nor narrows it, and it is never readable by others before it
// has its final mode), all bytes written, fsync, close, rename over `path`,
// fsync of the folder. On any failure the temp file is removed and the error
// names `path`, the step and the errno text: kResourceExhausted for a full
// disk or quota (ENOSPC, EDQUOT: free space, then retry), kAlreadyExists (see
// `replace`), kInvalidArgument when `path` has no file name, kInternal otherwise.
Status writeFileAtomically(const std::filesystem::path& path, std::string_view bytes, mode_t mode,
                           const AtomicWriteOptions& options = {});

}  // namespace branchline
