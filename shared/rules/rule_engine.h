// The rule engine: validates and normalizes one record against its source's
// schema (declared in config), and derives the record key. The agent runs it
// on ingest; the aggregator may re-run it to re-check. Normalization is a pure
// function of (schema, input): the same input always yields byte-identical
// canonical JSON, which is what the central store keeps.
//
// Canonical payload: a compact JSON object holding the declared fields in schema
// order (absent optional fields omitted), then, under `unknown_fields = "keep"`,
// the undeclared fields in input order, re-serialized by boost::json (a kept
// number past the double range refuses the record; other kept doubles are settled
// on text that reads back as the same double). Applying the engine to its own
// output yields the same bytes (normalization is idempotent).
//
// Per value, in this order: a JSON type check; strings with control characters
// other than \t \n \r (C0, DEL, C1) are refused; leading/trailing white space
// (ASCII and Unicode White_Space, plus U+FEFF) is trimmed; Unicode NFC; the
// type's own normalization (below); then max_length (code points) and pattern
// (whole-value ECMAScript match) check the value as it will be stored.
// A null, or a string that is empty after trimming, counts as absent.
//
//   string     text as above
//   email      lower-cased; one @, dot-atom local part <= 64 bytes, domain of
//              >= 2 labels (letters, digits, hyphens; non-ASCII letters allowed)
//   phone      E.164 ("+14155550132") via libphonenumber, default region per field
//   timestamp  RFC 3339, any offset -> UTC "2026-11-25T11:53:47Z" / "...47.5Z"
//   enum       case-insensitive match -> the declared spelling
//   integer    JSON integer or "[+-]digits" within int64 -> JSON number
//   decimal    JSON number or numeric string -> JSON *string*, no exponent, no
//              leading/trailing zeros ("-0" -> "0"); send strings to keep exact digits
//   boolean    true/false, or "true|false|yes|no|1|0" (any case) -> JSON bool
//
// Thread safety: a RuleEngine is immutable after create(); apply() may run on
// any number of threads at once.
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

// toml++ 3.x declares its types in the ABI namespace toml::v3.
namespace toml {
inline namespace v3 {
class table;
}
}  // namespace toml

namespace branchline::rules {

enum class FieldType { kString, kEmail, kPhone, kTimestamp, kEnum, kInteger, kDecimal, kBoolean };
enum class UnknownFieldPolicy { kKeep, kDrop, kReject };

// "string", "email", ... as written in config.
const char* fieldTypeName(FieldType type);

struct FieldRule {
  std::string name;
  FieldType type = FieldType::kString;
  bool required = false;
  std::optional<size_t> max_length;  // in Unicode code points, after normalization
  // ECMAScript regex (std::regex over UTF-8 bytes) the whole value must match, at most
  // 1024 bytes. Values over 1024 bytes are refused for patterned fields: the matcher
  // (like the compiler) recurses per character.
  std::optional<std::string> pattern;
  std::vector<std::string> enum_values;  // kEnum: allowed values (matched case-insensitively,
                                         // stored as declared)
  std::string default_region = "US";     // kPhone: region for numbers without +country
};

struct SourceSchema {
  std::string name;
  std::vector<FieldRule> fields;        // canonical output order
  std::vector<std::string> key_fields;  // empty: key = hash of the normalized record
  UnknownFieldPolicy unknown_fields = UnknownFieldPolicy::kReject;
};

struct FieldError {
  std::string field;   // "" when the error is about the record as a whole
  std::string reason;  // stable, human-readable: "required field is missing"
};

struct Normalized {
  // The record key. One key field: its normalized value as text (strings
  // unquoted, numbers as JSON text). Several: a JSON array of the values.
  // No key fields: "sha256:" + lowercase hex SHA-256 of `payload`.
  std::string key;
  std::string payload;  // canonical JSON text
};

// Either a normalized record or every error found in it (not just the first):
// declared fields in schema order, then unknown fields in input order.
struct Outcome {
  std::optional<Normalized> record;
  std::vector<FieldError> errors;
  bool ok() const { return record.has_value(); }
};

class CompiledSchema;  // schema with compiled patterns; opaque

class RuleEngine {
 public:
  // Compiles every schema; kInvalidArgument names the source and field of a bad rule
  // (invalid regex, enum without values, unknown phone region, key field not declared
  // or not required, duplicate names...).
  static Result<std::shared_ptr<const RuleEngine>> create(std::vector<SourceSchema> sources);

  // nullptr for an unknown source. Thread-safe: apply() may run on many threads.
  const CompiledSchema* find(std::string_view source) const;
  Outcome apply(const CompiledSchema& schema, const boost::json::object& record) const;

  std::vector<std::string> sourceNames() const;
  ~RuleEngine();

 private:
  RuleEngine();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The built-in `customer` source the demo and README use: required external_id (the
// key), name, email, channel (web|mobile|partner|office), created_at; optional phone
// (default region US), consent_marketing (boolean), notes (<= 4096 characters).
SourceSchema defaultCustomerSchema();

// Parses `[sources.<name>]` tables (see README "Configuration"); `sources` is the
// table under the `sources` key. Errors name the source and the key:
// "sources.customer.fields.email.type: unknown type `mail`" (every error found, joined
// by "; "). Fields keep their declaration order in the file (toml++ tables iterate by
// key, so the order comes from each field node's source position); a table built in
// code without source positions yields its fields in key order.
Result<std::vector<SourceSchema>> parseSources(const toml::table& sources);

}  // namespace branchline::rules
