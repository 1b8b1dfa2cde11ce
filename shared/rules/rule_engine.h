// The rule engine: validates and normalizes one record against its source's
// schema (declared in config), and derives the record key. The agent runs it
// on ingest; the aggregator may re-run it to re-check. Normalization is a pure
// function of (schema, input): the same input always yields byte-identical
// canonical JSON, which is what the central store keeps.
#pragma once

#include <boost/json/object.hpp>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace toml {
inline namespace v3 {
class table;
}
}  // namespace toml

namespace branchline::rules {

enum class FieldType { kString, kEmail, kPhone, kTimestamp, kEnum, kInteger, kDecimal, kBoolean };
enum class UnknownFieldPolicy { kKeep, kDrop, kReject };

struct FieldRule {
  std::string name;
  FieldType type = FieldType::kString;
  bool required = false;
  std::optional<size_t> max_length;        // in Unicode code points, after normalization
  std::optional<std::string> pattern;      // ECMAScript regex the whole value must match
  std::vector<std::string> enum_values;    // kEnum: allowed values (matched case-insensitively,
                                           // stored as declared)
  std::string default_region = "US";       // kPhone: region for numbers without +country
};

struct SourceSchema {
  std::string name;
  std::vector<FieldRule> fields;          // canonical output order
  std::vector<std::string> key_fields;    // empty: key = hash of the normalized record
  UnknownFieldPolicy unknown_fields = UnknownFieldPolicy::kReject;
};

struct FieldError {
  std::string field;   // "" when the error is about the record as a whole
  std::string reason;  // stable, human-readable: "required field is missing"
};

struct Normalized {
  std::string key;      // the record key
  std::string payload;  // canonical JSON text
};

// Either a normalized record or every error found in it (not just the first).
struct Outcome {
  std::optional<Normalized> record;
  std::vector<FieldError> errors;
  bool ok() const { return record.has_value(); }
};

class CompiledSchema;  // schema with compiled patterns; opaque

class RuleEngine {
 public:
  // Compiles every schema; kInvalidArgument names the source and field of a bad rule
  // (unknown type, invalid regex, key field not declared...).
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

// Parses `[sources.<name>]` tables (see README "Configuration"). Errors name the source
// and the key: "sources.customer.fields.email.type: unknown type `mail`".
Result<std::vector<SourceSchema>> parseSources(const toml::table& sources);

}  // namespace branchline::rules
