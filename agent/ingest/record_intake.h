// RecordIntake: the one place where parsed input becomes what the buffer stores.
// Both the HTTP ingest and the spool ingester feed it records (parsed JSON
// objects, or text that could not be parsed) and append its output in a single
// DurableBuffer append, so the two paths validate, quarantine and report errors
// identically.
//
// Guarantee: every input handed in comes out exactly once, either as a
// WireRecord (valid under the source's rules) or as a WireReject carrying the
// input as received (UTF-8 sanitized, at most kMaxRawBytes) and the reasons as
// a JSON array; nothing is dropped silently.
#pragma once

#include <boost/json/fwd.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/batch_codec.h"
#include "shared/core/status.h"
#include "shared/rules/rule_engine.h"

namespace branchline::agent {

// One entry of an answer's `errors` list: which input (0-based position in the
// request or file), which field ("" for the record as a whole), and why.
struct RecordError {
  size_t index = 0;
  std::string field;
  std::string reason;
};

inline constexpr size_t kMaxRawBytes = 64 << 10;  // raw text kept per reject

// Hostile-input bounds applied to each input before the rules see it. A
// record past either is rejected (quarantined with its reason), never parsed
// further; the other inputs of the request or file still count.
struct IntakeLimits {
  // The record as JSON text: the NDJSON line as sent, or an object measured as
  // compact JSON (array elements, single objects, CSV rows). Reject code
  // "record_too_large".
  size_t max_record_bytes = SIZE_MAX;
  // Any string value inside the record, in bytes; the error names the
  // top-level field holding it. Reject code "field_too_large".
  size_t max_field_bytes = SIZE_MAX;
};

class RecordIntake {
 public:
  // `engine` and `schema` (from engine.find(source)) must outlive the intake.
  RecordIntake(const rules::RuleEngine& engine, const rules::CompiledSchema& schema,
               std::string_view source, int64_t ingested_at_us, IntakeLimits limits = {});

  const IntakeLimits& limits() const { return limits_; }

  // A parsed input at position `index`: an object goes through the rules, any
  // other JSON value is rejected as "not a JSON object".
  void addValue(size_t index, const boost::json::value& value);
  void addObject(size_t index, const boost::json::object& object);
  // Input that could not be parsed at all (a broken NDJSON line): rejected with
  // field "" and `reason` (e.g. "invalid JSON: syntax error"), `raw` kept as
  // read; `code` is its metric code.
  void addUnparsable(size_t index, std::string_view raw, std::string reason,
                     std::string code = "invalid_json");

  size_t accepted() const { return records_.size(); }
  size_t rejected() const { return rejects_.size(); }
  size_t inputs() const { return records_.size() + rejects_.size(); }

  // Every field error of every rejected input, in input order.
  const std::vector<RecordError>& errors() const { return errors_; }
  // One short, stable code per rejected input (from its first error), for
  // metrics: missing_field, unknown_field, invalid_email, invalid_json, ...
  const std::vector<std::string>& rejectCodes() const { return reject_codes_; }

  std::vector<protocol::WireRecord> takeRecords() { return std::move(records_); }
  std::vector<protocol::WireReject> takeRejects() { return std::move(rejects_); }

 private:
  void reject(size_t index, std::string raw, std::vector<rules::FieldError> errors,
              std::string code);

  const rules::RuleEngine& engine_;
  const rules::CompiledSchema& schema_;
  std::string source_;
  int64_t ingested_at_us_;
  IntakeLimits limits_;
  std::vector<protocol::WireRecord> records_;
  std::vector<protocol::WireReject> rejects_;
  std::vector<RecordError> errors_;
  std::vector<std::string> reject_codes_;
};

// Parses `text` as one JSON document (an object, or an array whose elements
// each become an input at their index) and feeds it to `intake`. Nothing is
// added on failure: kInvalidArgument for a body that cannot be parsed (the
// message says where and why: bad JSON, invalid UTF-8, nesting past
// `max_depth` (then *too_deep is set when given), a top-level scalar),
// kResourceExhausted for more than `max_records` elements.
Status addJsonDocument(RecordIntake& intake, std::string_view text, size_t max_depth,
                       size_t max_records, bool* too_deep = nullptr);

// Feeds NDJSON (one JSON value per line, "\n" or "\r\n") to `intake`. Blank
// lines are skipped and take no index: `index` is the position among
// non-blank lines. A line that does not parse becomes a reject ("invalid
// JSON: ..."), and so does a line longer than intake.limits().max_record_bytes
// (not parsed at all); the other lines still count.
struct NdjsonSummary {
  size_t lines = 0;         // non-blank lines seen
  size_t parsed = 0;        // of which parsed as JSON
  size_t oversized = 0;     // of which rejected unparsed for their size
  bool too_many = false;    // stopped: more than max_records lines (intake is partial)
  std::string first_error;  // "line 3: invalid JSON at byte 7: syntax error"
};
NdjsonSummary addNdjson(RecordIntake& intake, std::string_view text, size_t max_depth,
                        size_t max_records);

// Appends `"errors":[...]` (at most `cap` entries) and, when entries were left
// out, `,"truncated":true` to a JSON object under construction in `out`.
void appendErrorsJson(std::string& out, const std::vector<RecordError>& errors, size_t cap);

// The short metric code for a rule engine error ("missing_field", "invalid_email").
std::string rejectCode(const rules::FieldError& error);

// Offset of the first byte that is not part of valid UTF-8 (text.size() if all valid).
size_t firstInvalidUtf8(std::string_view text);
// `text` with every invalid UTF-8 sequence replaced by U+FFFD, cut (on a
// character boundary) to at most `max_bytes`.
std::string sanitizeUtf8(std::string_view text, size_t max_bytes);

}  // namespace branchline::agent
