// Private files and folders: customer data at rest (the agent's data
// directory, the central SQLite store) must not be readable by other local
// users. These helpers create a path private or narrow an existing one, and
// say whether they had to, so the caller can log that it changed a mode.
#pragma once

#include <filesystem>

#include "shared/core/status.h"

namespace branchline {

// Creates `dir` (and missing parents) with the leaf at mode 0700, or, when it
// exists, narrows a wider mode to 0700. Returns whether an existing mode was
// narrowed. kPermissionDenied when `dir` is owned by another user (its owner
// could widen it again at any time) or cannot be changed; kInvalidArgument
// when it is not a directory; kInternal for other I/O errors.
Result<bool> makePrivateDirectory(const std::filesystem::path& dir);

// When `file` exists and grants its group or others any access, narrows it to
// 0600 and returns true; false when it is absent or already private.
// kPermissionDenied when it is owned by another user or cannot be changed.
Result<bool> narrowToPrivateFile(const std::filesystem::path& file);

}  // namespace branchline
