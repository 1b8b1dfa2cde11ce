// Key files: reading a secret file only when no one but its owner can read it,
// replacing one key file by another and zeroing an old one. Key (and
// certificate) files are written with writeFileAtomically
// (shared/core/atomic_file.h). Errors name the file and the fix, never its contents.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <filesystem>
#include <string_view>

#include "shared/core/status.h"
#include "shared/crypto/secret.h"

namespace branchline::crypto {

// How a secret file is named in errors and what its mode refusal says.
struct KeyFileRules {
  // Starts every error: "<label> <path> ...".
  std::string_view label = "private key file";
  // Why group/other access is refused, after the mode: "group/other may read it".
  std::string_view exposure = "group/other may read it";
  // Said after the `chmod 600` fix, e.g. "(and consider the key exposed: rotate it)".
  std::string_view advice = {};
  // A public key file is read the same way but any mode is fine.
  bool check_mode = true;
  // A longer file is kInvalidArgument ("is N bytes; a key file is at most M").
  size_t max_bytes = 64 * 1024;
};

// The whole file. kNotFound when it does not exist; kPermissionDenied when this
// user may not read it, or (check_mode) when it grants any group/other permission,
// naming `chmod 600 <path>`; kInvalidArgument when it is not a regular file or
// is longer than max_bytes; kInternal for other I/O errors.
Result<SecretString> readKeyFile(const std::filesystem::path& file, const KeyFileRules& rules);

// Renames `from` over `to` (atomically, in one folder) and fsyncs the folder.
Status replaceFile(const std::filesystem::path& from, const std::filesystem::path& to);

// Overwrites the file's bytes with zeros in place and fsyncs it, so an old key
// does not stay readable in the file's blocks (best effort on copy-on-write file
// systems, which keep the old blocks).
Status overwriteWithZeros(const std::filesystem::path& file);

}  // namespace branchline::crypto
