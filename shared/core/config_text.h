// Guards for configuration files before a TOML parser sees them: a size cap,
// and a bound on dotted-key depth (`a.b.c...`), which toml++ turns into nested
// tables by recursion: a few hundred thousand levels overflow the stack, so a
// hostile or corrupted file would crash the process instead of being refused.
// (Nested arrays and inline tables are bounded by the parser itself: 256.)
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace branchline {

struct ConfigTextLimits {
  size_t max_bytes = 1 << 20;  // the whole file
  size_t max_key_depth = 32;   // segments of one dotted key or table header
};

// kInvalidArgument naming the line ("line 3: a dotted key deeper than 32
// levels") or the size; OK otherwise. Does not validate TOML itself.
Status checkConfigText(std::string_view text, const ConfigTextLimits& limits = {});

// Reads `file` whole, refusing (kInvalidArgument) one larger than `max_bytes`
// without reading past the cap; kNotFound when it cannot be read.
Result<std::string> readConfigFile(const std::filesystem::path& file, size_t max_bytes);

}  // namespace branchline
