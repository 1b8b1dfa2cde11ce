// Wall-clock time as microseconds since the Unix epoch, and its RFC 3339 text
// form. Every timestamp Branchline stores or sends uses these two.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace branchline {

int64_t nowMicros();
// Monotonic microseconds, for durations and timeouts only.
int64_t steadyMicros();
// 2026-11-25T11:53:47.123456Z
std::string formatRfc3339Micros(int64_t unix_micros);
// Formats Unix microseconds as formatRfc3339Micros does, without allocating per
// call on the hot path: consecutive timestamps mostly share their second, so
// only the fraction digits are rewritten while the second is unchanged. The
// returned view is valid until the next call.
class Rfc3339Formatter {
 public:
  std::string_view format(int64_t unix_micros);

 private:
  std::string text_;
  int64_t secs_ = 0;
  bool valid_ = false;
};

// Parses RFC 3339 (any offset, optional fraction) to Unix microseconds.
std::optional<int64_t> parseRfc3339Micros(std::string_view text);

}  // namespace branchline
