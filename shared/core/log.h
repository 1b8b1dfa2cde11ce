// Structured logging: one JSON object per line on stderr, with an event name
// and typed fields. Never pass secrets or record contents (PII) as fields:
// log identifiers (agent, source, batch, record index), counts and reasons.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

namespace branchline::log {

enum class Level { kDebug, kInfo, kWarn, kError };

using Value = std::variant<std::string_view, int64_t, uint64_t, double, bool>;
struct Field {
  std::string_view key;
  Value value;
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
  Field(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
  Field(std::string_view k, int v) : key(k), value(int64_t{v}) {}
  Field(std::string_view k, long v) : key(k), value(int64_t{v}) {}
  Field(std::string_view k, long long v) : key(k), value(int64_t{v}) {}
  Field(std::string_view k, unsigned v) : key(k), value(uint64_t{v}) {}
  Field(std::string_view k, unsigned long v) : key(k), value(uint64_t{v}) {}
  Field(std::string_view k, unsigned long long v) : key(k), value(uint64_t{v}) {}
  Field(std::string_view k, double v) : key(k), value(v) {}
  Field(std::string_view k, bool v) : key(k), value(v) {}
};

// Sets the component name stamped on every line ("agent", "aggregator", ...)
// and the minimum level. Call once from main.
void init(std::string_view component, Level min_level = Level::kInfo);

void write(Level level, std::string_view event, std::initializer_list<Field> fields = {});
inline void debug(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kDebug, e, f);
}
inline void info(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kInfo, e, f);
}
inline void warn(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kWarn, e, f);
}
inline void error(std::string_view e, std::initializer_list<Field> f = {}) {
  write(Level::kError, e, f);
}

// Text from hostile input (ids, topics, header fields) for a log line or an
// error message: at most `max` bytes, anything but printable ASCII as `?`,
// and "..." when it was cut.
std::string printableExcerpt(std::string_view s, size_t max = 80);

// Appends `s` to `out` as a JSON string literal (quotes and escapes included).
void appendJsonString(std::string& out, std::string_view s);

}  // namespace branchline::log
