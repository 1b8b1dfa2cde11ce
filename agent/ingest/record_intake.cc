#include "agent/ingest/record_intake.h"

#include <array>
#include <boost/json/monotonic_resource.hpp>
#include <boost/json/parser.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include "shared/core/log.h"

namespace branchline::agent {
namespace {

// Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no
// surrogates, nothing past U+10FFFF), or 0 if the bytes there are invalid.
size_t utf8SequenceLength(const unsigned char* p, size_t n) {
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t i) { return i < n && (p[i] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 2) return 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    return p[1] >= lo && p[1] <= hi && cont(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 2) return 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    return p[1] >= lo && p[1] <= hi && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

bool containsIgnoreCase(std::string_view haystack, std::string_view needle) {
  if (needle.size() > haystack.size()) return false;
  for (size_t i = 0; i + needle.size() <= haystack.size(); ++i) {
    size_t j = 0;
    for (; j < needle.size(); ++j) {
      char a = haystack[i + j];
      if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
      if (a != needle[j]) break;
    }
    if (j == needle.size()) return true;
  }
  return false;
}

bool isIdentifier(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

namespace json = boost::json;

// Per-thread scratch for parsing: the parser's stack and the first block of the
// parsed values, reused by every request on a thread so a typical record
// parses without touching the heap.
struct ParseScratch {
  std::array<unsigned char, 4096> parser_stack;
  std::array<unsigned char, 64 << 10> values;
};
ParseScratch& scratch() {
  thread_local ParseScratch s;
  return s;
}

bool isBlank(std::string_view line) {
  for (char c : line) {
    if (c != ' ' && c != '\t' && c != '\r') return false;
  }
  return true;
}

std::string describeParseError(const json::error_code& ec, std::string_view text, size_t consumed,
                               size_t max_depth) {
  if (ec == json::error::too_deep) {
    return "JSON nesting is deeper than " + std::to_string(max_depth) + " levels";
  }
  size_t bad = firstInvalidUtf8(text);
  if (bad < text.size()) return "not valid UTF-8 at byte " + std::to_string(bad);
  return "invalid JSON at byte " + std::to_string(consumed) + ": " + ec.message();
}

// Walks a parsed record once to find what IntakeLimits bound: its size as
// compact JSON (stopping early once past the record limit: only "too large"
// matters then) and the top-level fields holding an over-long string.
class SizeProbe {
 public:
  explicit SizeProbe(const IntakeLimits& limits) : limits_(limits) {}

  size_t size() const { return size_; }
  bool tooLarge() const { return size_ > limits_.max_record_bytes; }
  bool fieldTooLong() const { return longest_ > limits_.max_field_bytes; }

  void measure(const json::value& v) {
    if (tooLarge()) return;
    switch (v.kind()) {
      case json::kind::string:
        return string(v.get_string());
      case json::kind::object: {
        const json::object& o = v.get_object();
        size_ += 2 + (o.empty() ? 0 : o.size() - 1);  // braces, commas
        for (const auto& member : o) {
          size_ += 1;  // colon
          key(member.key());
          measure(member.value());
          if (tooLarge()) return;
        }
        return;
      }
      case json::kind::array: {
        const json::array& a = v.get_array();
        size_ += 2 + (a.empty() ? 0 : a.size() - 1);
        for (const auto& e : a) {
          measure(e);
          if (tooLarge()) return;
        }
        return;
      }
      case json::kind::int64:
        size_ += digits(v.get_int64());
        return;
      case json::kind::uint64:
        size_ += digits(v.get_uint64());
        return;
      case json::kind::double_:
        size_ += 24;  // at most, as serialized
        return;
      case json::kind::bool_:
        size_ += v.get_bool() ? 4 : 5;
        return;
      case json::kind::null:
        size_ += 4;
        return;
    }
  }

  // The top-level fields of `object` holding a string past max_field_bytes,
  // with the longest such string's size; measures the object on the way.
  std::vector<std::pair<std::string, size_t>> measureObject(const json::object& object) {
    std::vector<std::pair<std::string, size_t>> long_fields;
    size_ += 2 + (object.empty() ? 0 : object.size() - 1);
    for (const auto& member : object) {
      size_ += 1;
      key(member.key());
      longest_ = 0;
      measure(member.value());
      if (tooLarge()) return {};
      if (fieldTooLong()) long_fields.emplace_back(std::string(member.key()), longest_);
    }
    return long_fields;
  }

 private:
  // Keys count toward the record's size but are not field values.
  void key(std::string_view s) {
    const size_t longest = longest_;
    string(s);
    longest_ = longest;
  }
  void string(std::string_view s) {
    longest_ = std::max(longest_, s.size());
    size_ += s.size() + 2;
    for (char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (u == '"' || u == '\\') {
        size_ += 1;
      } else if (u < 0x20) {
        size_ += (u == '\n' || u == '\r' || u == '\t' || u == '\b' || u == '\f') ? 1 : 5;
      }
    }
  }
  static size_t digits(uint64_t v) {
    size_t n = 1;
    while (v >= 10) {
      v /= 10;
      ++n;
    }
    return n;
  }
  static size_t digits(int64_t v) {
    return v < 0 ? 1 + digits(static_cast<uint64_t>(-(v + 1)) + 1)
                 : digits(static_cast<uint64_t>(v));
  }

  const IntakeLimits& limits_;
  size_t size_ = 0;
  size_t longest_ = 0;
};

std::string reasonsJson(const std::vector<rules::FieldError>& errors) {
  std::string out = "[";
  for (size_t i = 0; i < errors.size(); ++i) {
    if (i) out += ',';
    out += "{\"field\":";
    log::appendJsonString(out, errors[i].field);
    out += ",\"reason\":";
    log::appendJsonString(out, errors[i].reason);
    out += '}';
  }
  out += ']';
  return out;
}

std::string recordTooLargeReason(size_t size, size_t limit) {
  return "record is " + std::to_string(size) + " bytes, over the limit of " +
         std::to_string(limit) + " bytes per record";
}

}  // namespace

size_t firstInvalidUtf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // Fast path over ASCII, which is nearly all of a typical record.
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len = utf8SequenceLength(p + i, n - i);
    if (len == 0) return i;
    i += len;
  }
  return n;
}

std::string sanitizeUtf8(std::string_view text, size_t max_bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    size_t len = utf8SequenceLength(p + i, n - i);
    std::string_view piece = len ? text.substr(i, len) : kReplacement;
    if (out.size() + piece.size() > max_bytes) break;
    out.append(piece);
    i += len ? len : 1;
  }
  return out;
}

std::string rejectCode(const rules::FieldError& error) {
  const std::string& r = error.reason;
  if (containsIgnoreCase(r, "missing") || containsIgnoreCase(r, "required")) {
    return "missing_field";
  }
  if (containsIgnoreCase(r, "unknown field") || containsIgnoreCase(r, "not allowed") ||
      containsIgnoreCase(r, "unexpected field") || containsIgnoreCase(r, "not declared")) {
    return "unknown_field";
  }
  if (containsIgnoreCase(r, "not a json object")) return "not_object";
  if (containsIgnoreCase(r, "invalid json")) return "invalid_json";
  // Other errors are about a declared field, whose name is a bounded set; the
  // caller still caps how many distinct codes it turns into metric labels.
  if (isIdentifier(error.field)) return "invalid_" + error.field;
  return "invalid_record";
}

Status addJsonDocument(RecordIntake& intake, std::string_view text, size_t max_depth,
                       size_t max_records, bool* too_deep) {
  ParseScratch& s = scratch();
  json::monotonic_resource mr(s.values.data(), s.values.size());
  json::parse_options options;
  options.max_depth = max_depth;
  json::parser parser(json::storage_ptr(&mr), options, s.parser_stack.data(),
                      s.parser_stack.size());
  json::error_code ec;
  size_t consumed = parser.write(text.data(), text.size(), ec);
  if (ec) {
    if (too_deep != nullptr) *too_deep = ec == json::error::too_deep;
    return Status::invalid(describeParseError(ec, text, consumed, max_depth));
  }
  json::value root = parser.release();
  if (root.is_object()) {
    intake.addObject(0, root.get_object());
    return Status::ok();
  }
  if (!root.is_array()) {
    return Status::invalid("the top-level JSON value must be an object or an array of objects");
  }
  const json::array& items = root.get_array();
  if (items.size() > max_records) {
    return Status::exhausted(std::to_string(items.size()) + " records, more than " +
                             std::to_string(max_records) + " in one request");
  }
  for (size_t i = 0; i < items.size(); ++i) intake.addValue(i, items[i]);
  return Status::ok();
}

NdjsonSummary addNdjson(RecordIntake& intake, std::string_view text, size_t max_depth,
                        size_t max_records) {
  NdjsonSummary summary;
  ParseScratch& s = scratch();
  json::parse_options options;
  options.max_depth = max_depth;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (isBlank(line)) continue;
    if (summary.lines >= max_records) {
      summary.too_many = true;
      return summary;
    }
    const size_t index = summary.lines++;
    if (line.size() > intake.limits().max_record_bytes) {
      // Not parsed: a huge line costs no parse and no memory beyond the body.
      ++summary.oversized;
      intake.addUnparsable(index, line.substr(0, kMaxRawBytes),
                           recordTooLargeReason(line.size(), intake.limits().max_record_bytes),
                           "record_too_large");
      continue;
    }
    // A fresh resource per line over the same scratch block: each line's
    // values die before the next line is parsed.
    json::monotonic_resource mr(s.values.data(), s.values.size());
    json::parser parser(json::storage_ptr(&mr), options, s.parser_stack.data(),
                        s.parser_stack.size());
    json::error_code ec;
    size_t consumed = parser.write(line.data(), line.size(), ec);
    if (ec) {
      std::string why = describeParseError(ec, line, consumed, max_depth);
      if (summary.first_error.empty()) {
        summary.first_error = "line " + std::to_string(index) + ": " + why;
      }
      intake.addUnparsable(index, line, "invalid JSON: " + why);
      continue;
    }
    ++summary.parsed;
    intake.addValue(index, parser.release());
  }
  return summary;
}

void appendErrorsJson(std::string& out, const std::vector<RecordError>& errors, size_t cap) {
  out += "\"errors\":[";
  size_t n = std::min(cap, errors.size());
  for (size_t i = 0; i < n; ++i) {
    const RecordError& e = errors[i];
    if (i) out += ',';
    out += "{\"index\":";
    out += std::to_string(e.index);
    out += ",\"field\":";
    log::appendJsonString(out, e.field);
    out += ",\"reason\":";
    log::appendJsonString(out, e.reason);
    out += '}';
  }
  out += ']';
  if (n < errors.size()) out += ",\"truncated\":true";
}

RecordIntake::RecordIntake(const rules::RuleEngine& engine, const rules::CompiledSchema& schema,
                           std::string_view source, int64_t ingested_at_us, IntakeLimits limits)
    : engine_(engine),
      schema_(schema),
      source_(source),
      ingested_at_us_(ingested_at_us),
      limits_(limits) {}

void RecordIntake::addValue(size_t index, const boost::json::value& value) {
  if (const auto* object = value.if_object()) return addObject(index, *object);
  reject(index, sanitizeUtf8(boost::json::serialize(value), kMaxRawBytes),
         {{"", "not a JSON object"}}, "not_object");
}

void RecordIntake::addObject(size_t index, const boost::json::object& object) {
  if (limits_.max_record_bytes != SIZE_MAX || limits_.max_field_bytes != SIZE_MAX) {
    SizeProbe probe(limits_);
    auto long_fields = probe.measureObject(object);
    if (probe.tooLarge()) {
      // The size stops being measured at the limit: say "over", not how much.
      return reject(index, sanitizeUtf8(boost::json::serialize(object), kMaxRawBytes),
                    {{"", "record is over the limit of " +
                              std::to_string(limits_.max_record_bytes) + " bytes per record"}},
                    "record_too_large");
    }
    if (!long_fields.empty()) {
      std::vector<rules::FieldError> errors;
      for (auto& [field, size] : long_fields) {
        errors.push_back(
            {std::move(field), "value is " + std::to_string(size) + " bytes, over the limit of " +
                                   std::to_string(limits_.max_field_bytes) + " bytes per field"});
      }
      return reject(index, sanitizeUtf8(boost::json::serialize(object), kMaxRawBytes),
                    std::move(errors), "field_too_large");
    }
  }
  rules::Outcome outcome = engine_.apply(schema_, object);
  if (outcome.ok()) {
    records_.push_back(protocol::WireRecord{source_, std::move(outcome.record->key),
                                            ingested_at_us_, std::move(outcome.record->payload)});
    return;
  }
  if (outcome.errors.empty()) {
    // A rule engine that refuses without a reason is a bug there, but the
    // record must still be quarantined with something a person can read.
    outcome.errors.push_back({"", "rejected by the rules without a reason"});
  }
  std::string code = rejectCode(outcome.errors.front());
  reject(index, sanitizeUtf8(boost::json::serialize(object), kMaxRawBytes),
         std::move(outcome.errors), std::move(code));
}

void RecordIntake::addUnparsable(size_t index, std::string_view raw, std::string reason,
                                 std::string code) {
  reject(index, sanitizeUtf8(raw, kMaxRawBytes), {{"", std::move(reason)}}, std::move(code));
}

void RecordIntake::reject(size_t index, std::string raw, std::vector<rules::FieldError> errors,
                          std::string code) {
  rejects_.push_back(
      protocol::WireReject{source_, std::move(raw), reasonsJson(errors), ingested_at_us_});
  for (auto& e : errors) errors_.push_back({index, std::move(e.field), std::move(e.reason)});
  reject_codes_.push_back(std::move(code));
}

}  // namespace branchline::agent
