#include "shared/rules/rule_engine.h"

#include <gtest/gtest.h>
#include <phonenumbers/phonenumberutil.h>
#include <toml++/toml.h>

#include <atomic>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shared/rules/testing/customer_records.h"

namespace branchline::rules {
namespace {

namespace json = boost::json;
using testing::makeCustomers;

std::shared_ptr<const RuleEngine> mustCreate(std::vector<SourceSchema> sources) {
  Result<std::shared_ptr<const RuleEngine>> engine = RuleEngine::create(std::move(sources));
  EXPECT_TRUE(engine.isOk()) << engine.status().toString();
  return engine.isOk() ? engine.value() : nullptr;
}

json::object obj(std::string_view text) { return json::parse(text).as_object(); }

std::string errorsText(const Outcome& o) {
  std::string s;
  for (const FieldError& e : o.errors) s += e.field + ": " + e.reason + "\n";
  return s;
}

// A one-field source, `v`, of the given type, and unknown fields dropped.
class OneField {
 public:
  explicit OneField(FieldRule rule, UnknownFieldPolicy unknown = UnknownFieldPolicy::kDrop) {
    rule.name = "v";
    SourceSchema s;
    s.name = "t";
    s.fields = {std::move(rule)};
    s.unknown_fields = unknown;
    engine_ = mustCreate({std::move(s)});
  }
  // The normalized JSON text of `v`, or "!" + the error reason.
  std::string operator()(std::string_view value_json) const {
    json::object rec;
    rec["v"] = json::parse(value_json);
    Outcome o = engine_->apply(*engine_->find("t"), rec);
    if (!o.ok()) return o.errors.empty() ? "!?" : "!" + o.errors[0].reason;
    const json::object out = json::parse(o.record->payload).as_object();
    const json::value* v = out.if_contains("v");
    return v == nullptr ? "<absent>" : json::serialize(*v);
  }

 private:
  std::shared_ptr<const RuleEngine> engine_;
};

FieldRule typed(FieldType type) {
  FieldRule f;
  f.type = type;
  return f;
}

constexpr std::string_view kCustomer = R"({
  "external_id": "C-1001", "name": "Ada Lovelace", "email": "Ada@Example.COM",
  "channel": "Web", "created_at": "2026-11-25T12:53:47+01:00",
  "phone": "(415) 555-0132", "consent_marketing": "yes", "notes": "VIP"})";

constexpr std::string_view kCustomerCanonical =
    R"({"external_id":"C-1001","name":"Ada Lovelace","email":"ada@example.com",)"
    R"("channel":"web","created_at":"2026-11-25T11:53:47Z","phone":"+14155550132",)"
    R"("consent_marketing":true,"notes":"VIP"})";

TEST(RuleEngine, DefaultCustomerNormalizesToCanonicalJson) {
  auto engine = mustCreate({defaultCustomerSchema()});
  const CompiledSchema* customer = engine->find("customer");
  ASSERT_NE(customer, nullptr);
  EXPECT_EQ(engine->find("orders"), nullptr);
  EXPECT_EQ(engine->sourceNames(), std::vector<std::string>{"customer"});

  Outcome o = engine->apply(*customer, obj(kCustomer));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload, kCustomerCanonical);
  EXPECT_EQ(o.record->key, "C-1001");
}

TEST(RuleEngine, OutputIsDeterministicAndIdempotent) {
  auto engine = mustCreate({defaultCustomerSchema()});
  const CompiledSchema& customer = *engine->find("customer");
  const Outcome a = engine->apply(customer, obj(kCustomer));
  const Outcome b = engine->apply(customer, obj(kCustomer));
  const Outcome reordered = engine->apply(customer, obj(R"({
    "notes": "VIP", "consent_marketing": "yes", "phone": "(415) 555-0132",
    "created_at": "2026-11-25T12:53:47+01:00", "channel": "Web", "email": "Ada@Example.COM",
    "name": "Ada Lovelace", "external_id": "C-1001"})"));
  ASSERT_TRUE(a.ok() && b.ok() && reordered.ok());
  EXPECT_EQ(a.record->payload, b.record->payload);
  EXPECT_EQ(a.record->payload, reordered.record->payload);
  EXPECT_EQ(a.record->key, reordered.record->key);
  // The aggregator re-checks stored payloads: normalizing them again changes nothing.
  const Outcome again = engine->apply(customer, obj(a.record->payload));
  ASSERT_TRUE(again.ok()) << errorsText(again);
  EXPECT_EQ(again.record->payload, a.record->payload);
}

TEST(RuleEngine, StringsAreTrimmedAndNfcNormalized) {
  OneField v(typed(FieldType::kString));
  EXPECT_EQ(v(R"("  hello  ")"), R"("hello")");
  EXPECT_EQ(v(R"("\t hi\r\n")"), R"("hi")");
  EXPECT_EQ(v(R"("\u00a0\u3000Jos\u00e9\u2003\ufeff")"), R"("José")");
  EXPECT_EQ(v(R"("e\u0301")"), R"("é")");  // decomposed -> composed
  EXPECT_EQ(v(R"("Ame\u0301lie  ")"), R"("Amélie")");
  EXPECT_EQ(v(R"("line 1\nline 2")"), R"("line 1\nline 2")");  // inner newline kept
  EXPECT_EQ(v(R"("say \"hi\" \\ ok")"), R"("say \"hi\" \\ ok")");
  EXPECT_EQ(v("42"), "!expected a string");
  EXPECT_EQ(v("[\"a\"]"), "!expected a string");
}

TEST(RuleEngine, ControlCharactersAreRefused) {
  OneField v(typed(FieldType::kString));
  EXPECT_EQ(v(R"("a\u0000b")"), "!contains control characters");
  EXPECT_EQ(v(R"("bell\u0007")"), "!contains control characters");
  EXPECT_EQ(v(R"("del\u007f")"), "!contains control characters");
  EXPECT_EQ(v(R"("c1\u0085")"), "!contains control characters");
  EXPECT_EQ(v(R"("\u000bvt")"), "!contains control characters");
  OneField email(typed(FieldType::kEmail));
  EXPECT_EQ(email(R"("a@b.com\u0001")"), "!contains control characters");
}

TEST(RuleEngine, MaxLengthCountsCodePoints) {
  FieldRule rule = typed(FieldType::kString);
  rule.max_length = 5;
  OneField v(rule);
  EXPECT_EQ(v(R"("ééééé")"), R"("ééééé")");  // 10 bytes, 5 code points
  EXPECT_EQ(v(R"("e\u0301e\u0301e\u0301e\u0301e\u0301")"), R"("ééééé")");  // counted after NFC
  EXPECT_EQ(v(R"("  abcde  ")"), R"("abcde")");                            // counted after trimming
  EXPECT_EQ(v(R"("éééééé")"), "!longer than 5 characters");
  EXPECT_EQ(v(R"("😀😀😀😀😀😀")"), "!longer than 5 characters");
}

TEST(RuleEngine, PatternMustMatchTheWholeValue) {
  FieldRule rule = typed(FieldType::kString);
  rule.pattern = "[A-Z]{2}-[0-9]+";
  OneField v(rule);
  EXPECT_EQ(v(R"(" AB-123 ")"), R"("AB-123")");
  EXPECT_EQ(v(R"("xAB-123")"), "!does not match the pattern `[A-Z]{2}-[0-9]+`");
  EXPECT_EQ(v(R"("AB-123x")"), "!does not match the pattern `[A-Z]{2}-[0-9]+`");
  // A huge value is refused, not fed to std::regex (whose recursion would overflow the stack).
  FieldRule loose = typed(FieldType::kString);
  loose.pattern = "(a|b)*";
  OneField any(loose);
  EXPECT_EQ(any("\"" + std::string(1024, 'a') + "\""), "\"" + std::string(1024, 'a') + "\"");
  EXPECT_EQ(any("\"" + std::string(200000, 'a') + "\""),
            "!longer than 1024 bytes, the limit for pattern checks");
}

TEST(RuleEngine, EmailIsLowerCasedAndChecked) {
  OneField v(typed(FieldType::kEmail));
  EXPECT_EQ(v(R"(" Ada.Lovelace+CRM@Example.COM ")"), R"("ada.lovelace+crm@example.com")");
  EXPECT_EQ(v(R"("JOSÉ@Exämple.DE")"), R"("josé@exämple.de")");
  EXPECT_EQ(v(R"("o'brien@mail.co.uk")"), R"("o'brien@mail.co.uk")");
  for (const char* bad :
       {R"("plainaddress")", R"("a@b")", R"("@example.com")", R"("a@@example.com")",
        R"("a@b@example.com")", R"("a b@example.com")", R"("a@exa mple.com")",
        R"("a@-example.com")", R"("a@example..com")", R"("a@example.com.")", R"(".a@example.com")",
        R"("a..b@example.com")", R"("a@exa_mple.com")", R"("a(b)@example.com")"}) {
    EXPECT_EQ(v(bad), "!not an email address") << bad;
  }
  const std::string long_local = "\"" + std::string(65, 'a') + "@example.com\"";
  EXPECT_EQ(v(long_local), "!not an email address");
  std::string long_domain = "a@";
  for (char c : std::string("bcde")) long_domain += std::string(60, c) + ".";
  long_domain += "com";
  EXPECT_EQ(v("\"" + long_domain + "\""), R"("a@)" + long_domain.substr(2) + "\"");        // 249
  EXPECT_EQ(v("\"" + std::string(6, 'x') + long_domain + "\""), "!not an email address");  // 255
  EXPECT_EQ(v("true"), "!expected a string");
}

TEST(RuleEngine, PhoneIsFormattedAsE164) {
  OneField v(typed(FieldType::kPhone));  // default region US
  EXPECT_EQ(v(R"("(415) 555-0132")"), R"("+14155550132")");
  EXPECT_EQ(v(R"("415.555.0132")"), R"("+14155550132")");
  EXPECT_EQ(v(R"("+1 415-555-0132")"), R"("+14155550132")");
  EXPECT_EQ(v(R"("+44 20 7946 0958")"), R"("+442079460958")");
  EXPECT_EQ(v(R"("555-0132")"), "!not a valid phone number");
  EXPECT_EQ(v(R"("not a phone")"), "!not a valid phone number");
  EXPECT_EQ(v(R"("+1 000 000 0000")"), "!not a valid phone number");
  EXPECT_EQ(v("4155550132"), "!expected a string");

  FieldRule uk = typed(FieldType::kPhone);
  uk.default_region = "GB";
  OneField gb(uk);
  EXPECT_EQ(gb(R"("020 7946 0958")"), R"("+442079460958")");
}

// The engine skips libphonenumber's Parse for plain North American numbers; its
// answers must be exactly Parse + IsValidNumber + Format(E164) over any such input.
TEST(RuleEngine, PhoneFastPathAgreesWithLibphonenumber) {
  using i18n::phonenumbers::PhoneNumber;
  using i18n::phonenumbers::PhoneNumberUtil;
  const PhoneNumberUtil* util = PhoneNumberUtil::GetInstance();
  FieldRule ca_rule = typed(FieldType::kPhone);
  ca_rule.default_region = "CA";
  const OneField us(typed(FieldType::kPhone)), ca(ca_rule);
  std::mt19937 rng(20261125);
  const char* kShapes[] = {"(%03d) %03d-%04d",  "%03d.%03d.%04d",     "1 %03d %03d %04d",
                           "+1 %03d-%03d-%04d", "+1%03d%03d%04d",     "1-%03d-%03d-%04d",
                           "%03d %03d %04d",    "+1 (%03d) %03d %04d"};
  size_t valid = 0;
  for (int i = 0; i < 3000; ++i) {
    char number[40];
    std::snprintf(number, sizeof number, kShapes[i % 8], static_cast<int>(rng() % 1000),
                  static_cast<int>(rng() % 1000), static_cast<int>(rng() % 10000));
    for (const char* region : {"US", "CA"}) {
      PhoneNumber pn;
      std::string expected = "!not a valid phone number";
      if (util->Parse(number, region, &pn) == PhoneNumberUtil::NO_PARSING_ERROR &&
          util->IsValidNumber(pn)) {
        std::string e164;
        util->Format(pn, PhoneNumberUtil::E164, &e164);
        expected = "\"" + e164 + "\"";
        ++valid;
      }
      const std::string input = "\"" + std::string(number) + "\"";
      EXPECT_EQ((region[0] == 'U' ? us : ca)(input), expected) << number << " in " << region;
    }
  }
  EXPECT_GT(valid, 1000u);  // the sample exercises valid numbers, not only rejections
}

TEST(RuleEngine, TimestampIsConvertedToUtc) {
  OneField v(typed(FieldType::kTimestamp));
  EXPECT_EQ(v(R"("2026-11-25T11:53:47Z")"), R"("2026-11-25T11:53:47Z")");
  EXPECT_EQ(v(R"("2026-11-25T12:53:47+01:00")"), R"("2026-11-25T11:53:47Z")");
  EXPECT_EQ(v(R"("2026-11-24T23:30:00-05:30")"), R"("2026-11-25T05:00:00Z")");  // day rolls
  EXPECT_EQ(v(R"("2026-11-25T11:53:47.500Z")"), R"("2026-11-25T11:53:47.5Z")");
  EXPECT_EQ(v(R"("2026-11-25T11:53:47.000Z")"), R"("2026-11-25T11:53:47Z")");
  EXPECT_EQ(v(R"("2026-11-25t11:53:47.123456z")"), R"("2026-11-25T11:53:47.123456Z")");
  EXPECT_EQ(v(R"("2024-02-29T00:00:00Z")"), R"("2024-02-29T00:00:00Z")");
  for (const char* bad :
       {R"("2026-11-25")", R"("2026-11-25T11:53:47")", R"("2025-02-29T00:00:00Z")",
        R"("2026-13-01T00:00:00Z")", R"("yesterday")", R"("0000-01-01T00:00:00+01:00")"}) {
    EXPECT_EQ(v(bad), "!not an RFC 3339 timestamp") << bad;
  }
  EXPECT_EQ(v("1764071627"), "!expected a string");
}

TEST(RuleEngine, EnumMatchesIgnoringCaseAndStoresDeclaredSpelling) {
  FieldRule rule = typed(FieldType::kEnum);
  rule.enum_values = {"Web", "mobile", "Straße"};
  OneField v(rule);
  EXPECT_EQ(v(R"(" WEB ")"), R"("Web")");
  EXPECT_EQ(v(R"("Mobile")"), R"("mobile")");
  EXPECT_EQ(v(R"("STRASSE")"), R"("Straße")");  // full case folding
  EXPECT_EQ(v(R"("fax")"), "!not one of: Web, mobile, Straße");
  EXPECT_EQ(v("1"), "!expected a string");
}

TEST(RuleEngine, IntegerAcceptsNumbersAndDigitStrings) {
  OneField v(typed(FieldType::kInteger));
  EXPECT_EQ(v("42"), "42");
  EXPECT_EQ(v("-7"), "-7");
  EXPECT_EQ(v(R"(" +0042 ")"), "42");
  EXPECT_EQ(v(R"("-0")"), "0");
  EXPECT_EQ(v(R"("-9223372036854775808")"), "-9223372036854775808");
  EXPECT_EQ(v("9223372036854775807"), "9223372036854775807");
  EXPECT_EQ(v("9223372036854775808"), "!integer out of range (64-bit signed)");
  EXPECT_EQ(v(R"("9223372036854775808")"), "!integer out of range (64-bit signed)");
  EXPECT_EQ(v(R"("12a")"), "!not an integer");
  EXPECT_EQ(v(R"("1.0")"), "!not an integer");
  EXPECT_EQ(v(R"("+")"), "!not an integer");
  EXPECT_EQ(v("1.5"), "!expected an integer");
  EXPECT_EQ(v("true"), "!expected an integer");
}

TEST(RuleEngine, DecimalIsACanonicalString) {
  OneField v(typed(FieldType::kDecimal));
  EXPECT_EQ(v(R"("1.50")"), R"("1.5")");
  EXPECT_EQ(v(R"("000123.4500")"), R"("123.45")");
  EXPECT_EQ(v(R"("-0")"), R"("0")");
  EXPECT_EQ(v(R"("-0.000")"), R"("0")");
  EXPECT_EQ(v(R"("+.5")"), R"("0.5")");
  EXPECT_EQ(v(R"("7.")"), R"("7")");
  EXPECT_EQ(v(R"("1.5e3")"), R"("1500")");
  EXPECT_EQ(v(R"("1.5E-3")"), R"("0.0015")");
  EXPECT_EQ(v(R"("-12345678901234567890.123456789")"), R"("-12345678901234567890.123456789")");
  EXPECT_EQ(v("0.1"), R"("0.1")");  // the double's shortest form, not 0.1000000000000000055
  EXPECT_EQ(v("1e3"), R"("1000")");
  EXPECT_EQ(v("-2.50"), R"("-2.5")");
  EXPECT_EQ(v("12"), R"("12")");
  EXPECT_EQ(v("1e21"), R"("1000000000000000000000")");
  EXPECT_EQ(v(R"("1e999")"), "!decimal out of range");
  for (const char* bad : {R"("abc")", R"("1,000")", R"("1.2.3")", R"("NaN")", R"("1e")",
                          R"("0x10")", R"(".")", R"("- 1")"}) {
    EXPECT_EQ(v(bad), "!not a decimal number") << bad;
  }
  EXPECT_EQ(v("false"), "!expected a number or a numeric string");
}

TEST(RuleEngine, BooleanAcceptsCommonSpellings) {
  OneField v(typed(FieldType::kBoolean));
  for (const char* yes : {"true", R"("true")", R"("TRUE")", R"(" Yes ")", R"("1")"})
    EXPECT_EQ(v(yes), "true") << yes;
  for (const char* no : {"false", R"("False")", R"("no")", R"("NO")", R"("0")"})
    EXPECT_EQ(v(no), "false") << no;
  EXPECT_EQ(v(R"("maybe")"), "!not a boolean (true/false/yes/no/1/0)");
  EXPECT_EQ(v("1"), "!expected a boolean");
  EXPECT_EQ(v("null"), "<absent>");
}

TEST(RuleEngine, RequiredOptionalAndNull) {
  auto engine = mustCreate({defaultCustomerSchema()});
  const CompiledSchema& customer = *engine->find("customer");
  const std::string base =
      R"("external_id":"x1","name":"N","email":"n@example.com","channel":"office",)"
      R"("created_at":"2026-01-01T00:00:00Z")";

  // Optional null, blank or missing: omitted.
  Outcome o = engine->apply(customer, obj("{" + base + R"(,"phone":null,"notes":"   "})"));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload, "{" + base + "}");

  // Required null, blank or missing: one error each, in schema order.
  o = engine->apply(customer, obj(R"({"external_id":null,"name":" \u00a0 ","channel":"web",
                                      "created_at":"2026-01-01T00:00:00Z"})"));
  ASSERT_FALSE(o.ok());
  ASSERT_EQ(o.errors.size(), 3u) << errorsText(o);
  EXPECT_EQ(o.errors[0].field, "external_id");
  EXPECT_EQ(o.errors[1].field, "name");
  EXPECT_EQ(o.errors[2].field, "email");
  for (const FieldError& e : o.errors) EXPECT_EQ(e.reason, "required field is missing");
}

TEST(RuleEngine, AllErrorsAreCollectedInSchemaOrderThenUnknownFields) {
  auto engine = mustCreate({defaultCustomerSchema()});
  Outcome o = engine->apply(*engine->find("customer"), obj(R"({
    "zzz": 1, "external_id": "x", "email": "nope", "channel": "fax",
    "created_at": "soon", "phone": "12", "consent_marketing": 3, "name": "N", "aaa": 2})"));
  ASSERT_FALSE(o.ok());
  EXPECT_FALSE(o.record.has_value());
  EXPECT_EQ(errorsText(o),
            "email: not an email address\n"
            "channel: not one of: web, mobile, partner, office\n"
            "created_at: not an RFC 3339 timestamp\n"
            "phone: not a valid phone number\n"
            "consent_marketing: expected a boolean\n"
            "zzz: unknown field\n"
            "aaa: unknown field\n");
}

SourceSchema smallSchema(UnknownFieldPolicy unknown) {
  SourceSchema s;
  s.name = "small";
  s.unknown_fields = unknown;
  s.fields.push_back({.name = "id", .type = FieldType::kString, .required = true});
  s.fields.push_back({.name = "n", .type = FieldType::kInteger});
  return s;
}

TEST(RuleEngine, UnknownFieldPolicies) {
  const std::string input = R"({"extra":{"b":[1,2.5,"x"]},"n":"1","id":"a","more":null})";
  auto keep = mustCreate({smallSchema(UnknownFieldPolicy::kKeep)});
  Outcome o = keep->apply(*keep->find("small"), obj(input));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload, R"({"id":"a","n":1,"extra":{"b":[1,2.5E0,"x"]},"more":null})");

  auto drop = mustCreate({smallSchema(UnknownFieldPolicy::kDrop)});
  o = drop->apply(*drop->find("small"), obj(input));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload, R"({"id":"a","n":1})");

  auto reject = mustCreate({smallSchema(UnknownFieldPolicy::kReject)});
  o = reject->apply(*reject->find("small"), obj(input));
  EXPECT_EQ(errorsText(o), "extra: unknown field\nmore: unknown field\n");
}

// Found by fuzz_ingest: a kept number that overflows a double must not reach the
// payload as `Infinity` (not JSON); the record is rejected instead. And kept
// numbers are idempotent.
TEST(RuleEngine, KeptNumbersAreFiniteAndIdempotent) {
  auto keep = mustCreate({smallSchema(UnknownFieldPolicy::kKeep)});
  Outcome o = keep->apply(*keep->find("small"), obj(R"({"id":"a","big":5e911})"));
  EXPECT_EQ(errorsText(o), "big: number out of range (not a finite double)\n");
  o = keep->apply(*keep->find("small"), obj(R"({"id":"a","deep":[1,{"x":-1e400}]})"));
  EXPECT_EQ(errorsText(o), "deep: number out of range (not a finite double)\n");
  // Kept doubles settle on text that reads back as itself, so applying the
  // engine to its own output changes nothing (boost::json's number parsing
  // is not correctly rounded: "2.5e91" alone would drift on each pass).
  for (std::string_view input : {R"({"id":"a","ok":1e308,"x":[2.5e91,0.1,-0.0,1e-320]})",
                                 R"({"id":"a","y":{"z":12345678901234567890123.0}})"}) {
    o = keep->apply(*keep->find("small"), obj(input));
    ASSERT_TRUE(o.ok()) << errorsText(o);
    Outcome again = keep->apply(*keep->find("small"), obj(o.record->payload));
    ASSERT_TRUE(again.ok()) << errorsText(again);
    EXPECT_EQ(again.record->payload, o.record->payload) << input;
  }
}

TEST(RuleEngine, KeyFromDeclaredFieldsOrHash) {
  SourceSchema one = smallSchema(UnknownFieldPolicy::kReject);
  one.key_fields = {"id"};
  SourceSchema num = smallSchema(UnknownFieldPolicy::kReject);
  num.name = "num";
  num.fields[1].required = true;
  num.key_fields = {"n"};
  SourceSchema both = num;
  both.name = "both";
  both.key_fields = {"n", "id"};
  SourceSchema hashed = smallSchema(UnknownFieldPolicy::kReject);
  hashed.name = "hashed";
  auto engine = mustCreate({one, num, both, hashed});

  const json::object rec = obj(R"({"id":" a\"b ","n":"007"})");
  Outcome o = engine->apply(*engine->find("small"), rec);
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->key, "a\"b");  // normalized, unquoted
  o = engine->apply(*engine->find("num"), rec);
  EXPECT_EQ(o.record->key, "7");
  o = engine->apply(*engine->find("both"), rec);
  EXPECT_EQ(o.record->key, R"([7,"a\"b"])");

  // printf '%s' '{"id":"a","n":1}' | sha256sum
  o = engine->apply(*engine->find("hashed"), obj(R"({"n":1,"id":"a"})"));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload, R"({"id":"a","n":1})");
  EXPECT_EQ(o.record->key,
            "sha256:ebddcace15c56ac9ac7a5499fffba4dece33724d7e2ad7ff5bdd262a10e643ef");
  Outcome other = engine->apply(*engine->find("hashed"), obj(R"({"n":2,"id":"a"})"));
  EXPECT_NE(other.record->key, o.record->key);
}

TEST(RuleEngine, CreateRefusesBadRules) {
  auto expectError = [](SourceSchema s, std::string_view needle) {
    Result<std::shared_ptr<const RuleEngine>> r = RuleEngine::create({std::move(s)});
    ASSERT_FALSE(r.isOk()) << needle;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  SourceSchema s = smallSchema(UnknownFieldPolicy::kDrop);
  s.key_fields = {"missing"};
  expectError(s, "source `small`: key field `missing` is not declared");
  s.key_fields = {"n"};
  expectError(s, "key field `n` must be required");
  s = smallSchema(UnknownFieldPolicy::kDrop);
  s.fields[0].pattern = "([a-z";
  expectError(s, "source `small`: field `id`: invalid pattern `([a-z`");
  // Found by fuzz_config: std::regex's compiler recursion overflows the stack on
  // long patterns, so they are refused at load (1024 bytes still compiles).
  s.fields[0].pattern = std::string(20000, 'a');
  expectError(s, "field `id`: pattern of 20000 bytes is longer than the limit of 1024");
  s.fields[0].pattern = std::string(1024, 'a');
  EXPECT_TRUE(RuleEngine::create({s}).isOk());
  s = smallSchema(UnknownFieldPolicy::kDrop);
  s.fields[1].type = FieldType::kEnum;
  expectError(s, "field `n`: enum declares no values");
  s.fields[1].enum_values = {"a", "A"};
  expectError(s, "repeats another value");
  s = smallSchema(UnknownFieldPolicy::kDrop);
  s.fields[1].type = FieldType::kPhone;
  s.fields[1].default_region = "XX";
  expectError(s, "unknown phone region `XX`");
  s = smallSchema(UnknownFieldPolicy::kDrop);
  s.fields[1].name = "id";
  expectError(s, "field `id`: declared twice");
  s = smallSchema(UnknownFieldPolicy::kDrop);
  s.name = "bad name";
  expectError(s, "name must be 1-64 characters");
  s = smallSchema(UnknownFieldPolicy::kDrop);
  s.fields[0].max_length = 0;
  expectError(s, "max_length must be at least 1");

  Result<std::shared_ptr<const RuleEngine>> twice = RuleEngine::create(
      {smallSchema(UnknownFieldPolicy::kDrop), smallSchema(UnknownFieldPolicy::kDrop)});
  EXPECT_FALSE(twice.isOk());
}

constexpr std::string_view kSourcesToml = R"(
[sources.orders]
key = ["order_id", "line"]
unknown_fields = "keep"
[sources.orders.fields.order_id]
type = "string"
required = true
pattern = "^O-[0-9]+$"
[sources.orders.fields.line]
type = "integer"
required = true
[sources.orders.fields.amount]
type = "decimal"
[sources.orders.fields.contact_phone]
type = "phone"
region = "GB"
[sources.orders.fields.state]
type = "enum"
values = ["open", "paid"]
[sources.orders.fields.buyer]
type = "email"
max_length = 100

[sources.events]
unknown_fields = "drop"
fields.zeta = { type = "timestamp", required = true }
fields.alpha = { type = "boolean" }
fields.mid.type = "string"
)";

TEST(ParseSources, ReadsFieldsInDeclarationOrder) {
  const toml::table config = toml::parse(kSourcesToml);
  Result<std::vector<SourceSchema>> parsed = parseSources(*config["sources"].as_table());
  ASSERT_TRUE(parsed.isOk()) << parsed.status().toString();
  ASSERT_EQ(parsed->size(), 2u);
  const SourceSchema& orders = (*parsed)[0];
  EXPECT_EQ(orders.name, "orders");
  EXPECT_EQ(orders.unknown_fields, UnknownFieldPolicy::kKeep);
  EXPECT_EQ(orders.key_fields, (std::vector<std::string>{"order_id", "line"}));
  std::vector<std::string> names;
  for (const FieldRule& f : orders.fields) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"order_id", "line", "amount", "contact_phone", "state",
                                             "buyer"}));
  EXPECT_EQ(orders.fields[0].pattern, "^O-[0-9]+$");
  EXPECT_EQ(orders.fields[3].type, FieldType::kPhone);
  EXPECT_EQ(orders.fields[3].default_region, "GB");
  EXPECT_EQ(orders.fields[4].enum_values, (std::vector<std::string>{"open", "paid"}));
  EXPECT_EQ(orders.fields[5].max_length, 100u);

  const SourceSchema& events = (*parsed)[1];
  names.clear();
  for (const FieldRule& f : events.fields) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"zeta", "alpha", "mid"}));
  EXPECT_EQ(events.unknown_fields, UnknownFieldPolicy::kDrop);
  EXPECT_TRUE(events.fields[0].required);

  // The parsed schema drives the engine: declaration order is the payload order.
  auto engine = mustCreate(std::move(parsed.value()));
  Outcome o = engine->apply(*engine->find("orders"), obj(R"({
    "buyer":"B@X.IO","state":"PAID","contact_phone":"020 7946 0958","amount":"12.50",
    "line":"2","order_id":"O-77","gift":true})"));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload,
            R"({"order_id":"O-77","line":2,"amount":"12.5","contact_phone":"+442079460958",)"
            R"("state":"paid","buyer":"b@x.io","gift":true})");
  EXPECT_EQ(o.record->key, R"(["O-77",2])");
  o = engine->apply(*engine->find("events"),
                    obj(R"({"mid":"m","alpha":"no","zeta":"2026-01-01T00:00:00Z"})"));
  ASSERT_TRUE(o.ok()) << errorsText(o);
  EXPECT_EQ(o.record->payload, R"({"zeta":"2026-01-01T00:00:00Z","alpha":false,"mid":"m"})");
}

TEST(ParseSources, ErrorsNameThePath) {
  auto errorOf = [](std::string_view text) {
    const toml::table config = toml::parse(text);
    Result<std::vector<SourceSchema>> parsed = parseSources(*config["sources"].as_table());
    return parsed.isOk() ? std::string("ok") : parsed.status().message();
  };
  EXPECT_EQ(errorOf(R"(
[sources.customer.fields.email]
type = "email"
typo = 1
)"),
            "sources.customer.fields.email.typo: unknown key");
  EXPECT_EQ(errorOf(R"(
[sources.customer.fields.email]
type = "mail"
)"),
            "sources.customer.fields.email.type: unknown type `mail` "
            "(string|email|phone|timestamp|enum|integer|decimal|boolean)");
  EXPECT_EQ(errorOf(R"(
[sources.customer]
keys = ["id"]
unknown_fields = "ignore"
[sources.customer.fields.id]
required = "yes"
max_length = -1
)"),
            "sources.customer.keys: unknown key; "
            "sources.customer.unknown_fields: expected \"keep\", \"drop\" or \"reject\"; "
            "sources.customer.fields.id.required: expected true or false; "
            "sources.customer.fields.id.max_length: expected a positive integer");
  EXPECT_EQ(errorOf(R"(
[sources."bad name".fields.id]
type = "string"
)"),
            "sources.bad name: source name must be 1-64 characters of [A-Za-z0-9_-]");
  EXPECT_EQ(errorOf(R"(
[sources.s]
key = ["id"]
[sources.s.fields.id]
type = "string"
)"),
            "sources.s.key: field `id` must be required = true");
  EXPECT_EQ(errorOf(R"(
[sources.s.fields.kind]
type = "enum"
[sources.s.fields.p]
region = "GB"
)"),
            "sources.s.fields.kind.values: missing: enum needs values; "
            "sources.s.fields.p.region: only for type \"phone\"");
  EXPECT_EQ(errorOf("[sources.s]\nunknown_fields = \"drop\"\n"),
            "sources.s.fields: missing: a source declares its fields");
}

TEST(RuleEngine, ConcurrentApplyMatchesSingleThreaded) {
  auto engine = mustCreate({defaultCustomerSchema()});
  const CompiledSchema& customer = *engine->find("customer");
  const std::vector<json::object> records = makeCustomers(2000);
  std::vector<std::string> expected;
  for (const json::object& r : records) {
    Outcome o = engine->apply(customer, r);
    ASSERT_TRUE(o.ok()) << errorsText(o);
    expected.push_back(o.record->key + "|" + o.record->payload);
  }
  std::atomic<size_t> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < records.size(); ++i) {
        const size_t k = (i + static_cast<size_t>(t) * 500) % records.size();
        Outcome o = engine->apply(customer, records[k]);
        if (!o.ok() || o.record->key + "|" + o.record->payload != expected[k]) ++mismatches;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0u);
}

}  // namespace
}  // namespace branchline::rules
