// fuzz_ingest: what the agent's HTTP ingest does with a request body, minus the
// socket and the buffer. The body goes through addJsonDocument (application/json)
// and addNdjson (application/x-ndjson) into a RecordIntake, exactly as
// IngestService::handle feeds it: for the built-in `customer` source with the
// service's default IntakeLimits, and for a second source that uses every field
// type and keeps unknown fields, with limits small enough that fuzzed inputs
// reach the record_too_large / field_too_large paths.
//
// Beyond "no crash", it checks RecordIntake's and the rule engine's promises:
// every input comes out once (record or reject), a reject's raw text is valid
// UTF-8 within kMaxRawBytes, every accepted payload is a JSON object, and
// normalization is idempotent (the engine maps its own output to the same
// bytes and key).
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/ingest/record_intake.h"
#include "shared/rules/rule_engine.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using branchline::agent::RecordIntake;
namespace rules = branchline::rules;

constexpr size_t kMaxDepth = 32;  // IngestOptions defaults
constexpr size_t kMaxRecords = 10000;
const branchline::agent::IntakeLimits kServiceLimits{256 << 10, 64 << 10};
const branchline::agent::IntakeLimits kTightLimits{512, 48};
constexpr int64_t kIngestedAtUs = 1764071627000000;

// Every field type once, two key fields (the key is a JSON array), a pattern
// and a max_length, and unknown fields kept (re-serialized by boost::json).
rules::SourceSchema typedSchema() {
  rules::SourceSchema s;
  s.name = "typed";
  s.unknown_fields = rules::UnknownFieldPolicy::kKeep;
  s.key_fields = {"id", "code"};
  auto add = [&s](std::string name, rules::FieldType type, bool required) -> rules::FieldRule& {
    rules::FieldRule& f = s.fields.emplace_back();
    f.name = std::move(name);
    f.type = type;
    f.required = required;
    return f;
  };
  add("id", rules::FieldType::kInteger, true);
  rules::FieldRule& code = add("code", rules::FieldType::kString, true);
  code.pattern = "[A-Z]{2}-[0-9]+";
  code.max_length = 16;
  add("amount", rules::FieldType::kDecimal, false);
  add("active", rules::FieldType::kBoolean, false);
  add("at", rules::FieldType::kTimestamp, false);
  add("mail", rules::FieldType::kEmail, false);
  add("tel", rules::FieldType::kPhone, false).default_region = "GB";
  add("tier", rules::FieldType::kEnum, false).enum_values = {"Gold", "silver", "BRONZE"};
  add("note", rules::FieldType::kString, false).max_length = 8;
  return s;
}

struct Engines {
  std::shared_ptr<const rules::RuleEngine> engine;
  const rules::CompiledSchema* customer = nullptr;
  const rules::CompiledSchema* typed = nullptr;
};

const Engines& engines() {
  static const Engines e = [] {
    auto created = rules::RuleEngine::create({rules::defaultCustomerSchema(), typedSchema()});
    FUZZ_CHECK(created.isOk(), "the fuzz schemas compile");
    Engines out;
    out.engine = *created;
    out.customer = out.engine->find("customer");
    out.typed = out.engine->find("typed");
    FUZZ_CHECK(out.customer && out.typed, "both sources are found");
    return out;
  }();
  return e;
}

bool validUtf8(std::string_view s) { return branchline::agent::firstInvalidUtf8(s) == s.size(); }

void checkOutput(const rules::RuleEngine& engine, const rules::CompiledSchema& schema,
                 std::string_view source, RecordIntake& intake) {
  FUZZ_CHECK(intake.rejectCodes().size() == intake.rejected(), "one reject code per reject");
  size_t error_inputs = 0;
  for (size_t i = 0; i < intake.errors().size(); ++i) {
    const auto& e = intake.errors()[i];
    FUZZ_CHECK(e.index < intake.inputs(), "an error names one of the inputs");
    if (i == 0 || e.index != intake.errors()[i - 1].index) ++error_inputs;
    FUZZ_CHECK(i == 0 || e.index >= intake.errors()[i - 1].index, "errors in input order");
  }
  FUZZ_CHECK(error_inputs == intake.rejected(), "every reject has errors, every error a reject");

  // The answer body IngestService sends must be valid JSON whatever the input.
  std::string answer = "{\"accepted\":0,";
  branchline::agent::appendErrorsJson(answer, intake.errors(), 1000);
  answer += '}';
  boost::json::error_code ec;
  boost::json::parse(answer, ec);
  FUZZ_CHECK(!ec, "the answer body is valid JSON");

  for (const auto& reject : intake.takeRejects()) {
    FUZZ_CHECK(reject.source == source, "reject carries its source");
    FUZZ_CHECK(reject.raw.size() <= branchline::agent::kMaxRawBytes, "raw is bounded");
    FUZZ_CHECK(validUtf8(reject.raw), "raw is sanitized to UTF-8");
    boost::json::value reasons = boost::json::parse(reject.reasons_json, ec);
    FUZZ_CHECK(!ec && reasons.is_array() && !reasons.get_array().empty(),
               "reasons are a non-empty JSON array");
  }
  for (const auto& record : intake.takeRecords()) {
    FUZZ_CHECK(record.source == source, "record carries its source");
    FUZZ_CHECK(!record.key.empty(), "an accepted record has a key");
    FUZZ_CHECK(validUtf8(record.payload) && validUtf8(record.key), "payload and key are UTF-8");
    boost::json::value payload = boost::json::parse(record.payload, ec);
    if (ec || !payload.is_object()) {
      std::fprintf(stderr, "payload: %s\n", record.payload.c_str());
    }
    FUZZ_CHECK(!ec && payload.is_object(), "the canonical payload is a JSON object");
    rules::Outcome again = engine.apply(schema, payload.get_object());
    if (!again.ok() || again.record->payload != record.payload) {
      // Fuzz inputs are synthetic: printing them helps and leaks nothing.
      std::fprintf(stderr, "first pass:  %s\nsecond pass: %s\n", record.payload.c_str(),
                   again.ok()             ? again.record->payload.c_str()
                   : again.errors.empty() ? "(refused without a reason)"
                                          : again.errors.front().reason.c_str());
    }
    FUZZ_CHECK(again.ok(), "the engine accepts its own output");
    FUZZ_CHECK(again.record->payload == record.payload, "normalization is idempotent (payload)");
    FUZZ_CHECK(again.record->key == record.key, "normalization is idempotent (key)");
  }
}

void exercise(const rules::RuleEngine& engine, const rules::CompiledSchema& schema,
              std::string_view source, const branchline::agent::IntakeLimits& limits,
              std::string_view body) {
  {
    RecordIntake intake(engine, schema, source, kIngestedAtUs, limits);
    branchline::Status parsed = addJsonDocument(intake, body, kMaxDepth, kMaxRecords);
    if (!parsed.isOk()) {
      FUZZ_CHECK(intake.inputs() == 0, "a refused JSON body adds nothing");
      FUZZ_CHECK(!parsed.message().empty(), "a refused body says why");
    }
    checkOutput(engine, schema, source, intake);
  }
  {
    RecordIntake intake(engine, schema, source, kIngestedAtUs, limits);
    auto summary = addNdjson(intake, body, kMaxDepth, kMaxRecords);
    FUZZ_CHECK(summary.parsed + summary.oversized <= summary.lines, "parsed lines are lines");
    if (!summary.too_many) {
      FUZZ_CHECK(intake.inputs() == summary.lines, "every NDJSON line comes out once");
    }
    FUZZ_CHECK((summary.parsed + summary.oversized == summary.lines) == summary.first_error.empty(),
               "first_error is set exactly when a line failed to parse");
    checkOutput(engine, schema, source, intake);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  // IngestService answers 400 to an all-blank body before parsing it.
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return 0;
  const Engines& e = engines();
  exercise(*e.engine, *e.customer, "customer", kServiceLimits, body);
  exercise(*e.engine, *e.typed, "typed", kTightLimits, body);
  return 0;
}
