#include "shared/rules/rule_engine.h"

#include <phonenumbers/phonenumberutil.h>
#include <unicode/bytestream.h>
#include <unicode/casemap.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
// GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s regex compiler
// when built with sanitizers (a known GCC 12 false positive); the pragma covers only
// that header.
#if defined(__GNUC__) && !defined(__clang__)  // clang has no such warning
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>
#pragma GCC diagnostic pop
#else
#include <regex>
#endif
#include <unordered_map>
#include <utility>

#include "shared/core/clock.h"
#include "shared/crypto/hash.h"

namespace branchline::rules {
namespace {

namespace json = boost::json;
using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

constexpr std::string_view kMissing = "required field is missing";
constexpr std::string_view kControl = "contains control characters";
constexpr std::string_view kBadUtf8 = "not valid UTF-8";
constexpr std::string_view kExpectedString = "expected a string";
constexpr std::string_view kExpectedInteger = "expected an integer";
constexpr std::string_view kExpectedDecimal = "expected a number or a numeric string";
constexpr std::string_view kExpectedBoolean = "expected a boolean";
constexpr std::string_view kNotEmail = "not an email address";
constexpr std::string_view kNotPhone = "not a valid phone number";
constexpr std::string_view kNotTimestamp = "not an RFC 3339 timestamp";
constexpr std::string_view kNotInteger = "not an integer";
constexpr std::string_view kIntegerRange = "integer out of range (64-bit signed)";
constexpr std::string_view kNotDecimal = "not a decimal number";
constexpr std::string_view kDecimalRange = "decimal out of range";
constexpr std::string_view kNotBoolean = "not a boolean (true/false/yes/no/1/0)";
constexpr std::string_view kUnknownField = "unknown field";
constexpr std::string_view kNumberRange = "number out of range (not a finite double)";
constexpr std::string_view kNumberInexact = "number cannot be kept exactly (send it as a string)";

// libstdc++'s regex matcher recurses once or more per input character: ~11k
// characters overflow an 8 MiB stack (~3k under ASan). Values checked against a
// pattern are bounded well below that, so a client cannot crash an ingest thread.
constexpr size_t kMaxPatternInput = 1024;
constexpr std::string_view kTooLongForPattern =
    "longer than 1024 bytes, the limit for pattern checks";
constexpr std::string_view kPatternFailed = "pattern check failed (pattern too complex)";
// The regex compiler recurses per character and per group too: a pattern of
// ~20k characters overflows the stack under ASan when the config is loaded
// (found by fuzz_config). Real patterns are short; longer ones are refused.
constexpr size_t kMaxPatternBytes = 1024;

// A decimal's canonical text may add at most this many zeros to the digits it was
// given ("1e400" is 401 characters); past it the value is refused rather than
// letting a 10-byte input produce a megabyte.
constexpr int64_t kMaxDecimalScale = 400;

// ---------------------------------------------------------------------------------
// UTF-8 and text helpers

// Decodes one code point at p; returns its length, or 0 for malformed UTF-8
// (overlong forms, surrogates and values past U+10FFFF are malformed).
int decodeUtf8(const unsigned char* p, const unsigned char* end, char32_t& cp) {
  const unsigned char c = *p;
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  int len;
  char32_t min;
  if ((c & 0xE0) == 0xC0) {
    len = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (end - p < len) return 0;
  for (int i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

enum class TextKind { kAscii, kUnicode, kControl, kBadUtf8 };

// One pass: refuses control characters (C0 but \t \n \r, DEL, C1) and malformed
// UTF-8, and tells whether the text is pure ASCII (which is already NFC).
TextKind scanText(std::string_view s) {
  auto p = reinterpret_cast<const unsigned char*>(s.data());
  const auto end = p + s.size();
  bool ascii = true;
  while (p < end) {
    const unsigned char c = *p;
    if (c < 0x80) {
      if (c < 0x20 ? (c != '\t' && c != '\n' && c != '\r') : c == 0x7F) return TextKind::kControl;
      ++p;
      continue;
    }
    ascii = false;
    char32_t cp;
    const int len = decodeUtf8(p, end, cp);
    if (len == 0) return TextKind::kBadUtf8;
    if (cp >= 0x80 && cp <= 0x9F) return TextKind::kControl;
    p += len;
  }
  return ascii ? TextKind::kAscii : TextKind::kUnicode;
}

bool isAsciiSpace(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// Unicode White_Space, plus U+FEFF: a byte-order mark glued to a field by a
// spreadsheet export is never part of the value.
bool isSpace(char32_t cp) {
  if (cp < 0x80) return isAsciiSpace(static_cast<unsigned char>(cp));
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000 ||
         cp == 0xFEFF;
}

// REQUIRES: s is valid UTF-8.
std::string_view trimSpace(std::string_view s, bool ascii) {
  if (ascii) {
    size_t b = 0, e = s.size();
    while (b < e && isAsciiSpace(static_cast<unsigned char>(s[b]))) ++b;
    while (e > b && isAsciiSpace(static_cast<unsigned char>(s[e - 1]))) --e;
    return s.substr(b, e - b);
  }
  auto data = reinterpret_cast<const unsigned char*>(s.data());
  size_t b = 0, e = s.size();
  while (b < e) {
    char32_t cp;
    const int len = decodeUtf8(data + b, data + e, cp);
    if (len == 0 || !isSpace(cp)) break;
    b += static_cast<size_t>(len);
  }
  while (e > b) {
    size_t start = e - 1;
    while (start > b && (data[start] & 0xC0) == 0x80) --start;
    char32_t cp;
    if (decodeUtf8(data + start, data + e, cp) == 0 || !isSpace(cp)) break;
    e = start;
  }
  return s.substr(b, e - b);
}

size_t countCodePoints(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool isAscii(std::string_view s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

char asciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

const icu::Normalizer2* nfcInstance() {
  static const icu::Normalizer2* const nfc = [] {
    UErrorCode ec = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(ec);
    assert(U_SUCCESS(ec) && n != nullptr && "ICU NFC data is part of libicudata");
    return n;
  }();
  return nfc;
}

// NFC of non-ASCII text: a view of `s` when already normalized, else of `buf`.
std::string_view toNfc(std::string_view s, std::string& buf) {
  const icu::Normalizer2* nfc = nfcInstance();
  UErrorCode ec = U_ZERO_ERROR;
  const icu::StringPiece sp(s.data(), static_cast<int32_t>(s.size()));
  if (nfc->isNormalizedUTF8(sp, ec) && U_SUCCESS(ec)) return s;
  ec = U_ZERO_ERROR;
  buf.clear();
  icu::StringByteSink<std::string> sink(&buf);
  nfc->normalizeUTF8(0, sp, sink, nullptr, ec);
  assert(U_SUCCESS(ec));
  return buf;
}

// Case folding for case-insensitive comparison (enum values).
void caseFold(std::string_view s, std::string& out) {
  out.clear();
  if (isAscii(s)) {
    out.resize(s.size());
    std::transform(s.begin(), s.end(), out.begin(), asciiLower);
    return;
  }
  UErrorCode ec = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(&out);
  icu::CaseMap::utf8Fold(0, icu::StringPiece(s.data(), static_cast<int32_t>(s.size())), sink,
                         nullptr, ec);
  assert(U_SUCCESS(ec));
}

void appendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    out.push_back('\\');
    switch (c) {
      case '"':
        out.push_back('"');
        break;
      case '\\':
        out.push_back('\\');
        break;
      case '\b':
        out.push_back('b');
        break;
      case '\f':
        out.push_back('f');
        break;
      case '\n':
        out.push_back('n');
        break;
      case '\r':
        out.push_back('r');
        break;
      case '\t':
        out.push_back('t');
        break;
      default:
        out.append("u00");
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xF]);
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

// ---------------------------------------------------------------------------------
// Type checks and normalizations

// Kept numbers. A number too large for a double ("1e400") parses as infinity,
// which boost::json serializes as `Infinity`: not JSON. And boost::json 1.81
// parses numbers without correct rounding: "2.5e91" reads as a double whose
// text ("2.4999999999999997E91") reads back as yet another double, so the
// payload would change each time the engine ran on its own output. Both found
// by fuzz_ingest. Each kept double is settled on a value its own text reads
// back as; one that is infinite or does not settle refuses the record.
bool hasDouble(const json::value& v) {
  if (v.is_double()) return true;
  if (const json::array* a = v.if_array()) {
    for (const json::value& e : *a) {
      if (hasDouble(e)) return true;
    }
  } else if (const json::object* o = v.if_object()) {
    for (const json::key_value_pair& m : *o) {
      if (hasDouble(m.value())) return true;
    }
  }
  return false;
}

// kNumberRange / kNumberInexact, or "" once every double in `v` is settled.
// Depth is bounded by the parser that built `v`.
std::string_view settleDoubles(json::value& v) {
  if (v.is_double()) {
    double& d = v.get_double();
    for (int step = 0; step < 8; ++step) {
      if (!std::isfinite(d)) return kNumberRange;
      json::error_code ec;
      json::value back = json::parse(json::serialize(v), ec);
      if (ec || !back.is_double()) return kNumberInexact;
      if (back.get_double() == d) return {};
      d = back.get_double();
    }
    return kNumberInexact;
  }
  if (json::array* a = v.if_array()) {
    for (json::value& e : *a) {
      if (auto why = settleDoubles(e); !why.empty()) return why;
    }
  } else if (json::object* o = v.if_object()) {
    for (json::key_value_pair& m : *o) {
      if (auto why = settleDoubles(m.value()); !why.empty()) return why;
    }
  }
  return {};
}

bool isAtext(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-/=?^_`{|}~", c) != nullptr && c != 0;
}

bool isLabelChar(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '-';
  }
  const int8_t t = u_charType(static_cast<UChar32>(cp));
  return u_isalpha(static_cast<UChar32>(cp)) || t == U_DECIMAL_DIGIT_NUMBER ||
         t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK;
}

// REQUIRES: s is valid UTF-8, trimmed and lower-cased.
bool isEmail(std::string_view s) {
  if (s.size() > 254) return false;
  const size_t at = s.find('@');
  if (at == std::string_view::npos || s.find('@', at + 1) != std::string_view::npos) return false;
  const std::string_view local = s.substr(0, at), domain = s.substr(at + 1);
  // Local part: RFC 5321 dot-atom, with RFC 6531 UTF-8 characters (but no spaces).
  if (local.empty() || local.size() > 64 || local.front() == '.' || local.back() == '.')
    return false;
  auto lp = reinterpret_cast<const unsigned char*>(local.data());
  const auto lend = lp + local.size();
  for (unsigned char prev = 0; lp < lend;) {
    const unsigned char c = *lp;
    if (c < 0x80) {
      if (c == '.' ? prev == '.' : !isAtext(c)) return false;
      prev = c;
      ++lp;
      continue;
    }
    char32_t cp;
    const int len = decodeUtf8(lp, lend, cp);
    if (len == 0 || isSpace(cp)) return false;
    prev = c;
    lp += len;
  }
  // Domain: at least two labels of letters, digits and inner hyphens.
  size_t labels = 0;
  auto dp = reinterpret_cast<const unsigned char*>(domain.data());
  const auto dend = dp + domain.size();
  while (true) {
    const unsigned char* label = dp;
    while (dp < dend && *dp != '.') {
      char32_t cp;
      const int len = decodeUtf8(dp, dend, cp);
      if (len == 0 || !isLabelChar(cp)) return false;
      dp += len;
    }
    const size_t n = static_cast<size_t>(dp - label);
    if (n == 0 || n > 63 || label[0] == '-' || dp[-1] == '-') return false;
    ++labels;
    if (dp == dend) break;
    ++dp;  // the dot; a trailing dot leaves an empty label, refused above
  }
  return labels >= 2;
}

// libphonenumber's Parse costs ~10 us (a dozen ICU regex passes); IsValidNumber a
// few more. For the commonest CRM input, a North American number written as digits
// and the usual separators, Parse's answer is known without it: country code 1 and
// the 10 digits after an optional "+1"/"1". Only numbers whose national part starts
// 2-9 take this path: no national or trunk prefix can be stripped from them in any
// NANP region, so the result is the one Parse gives (rule_engine_test checks this
// against Parse over generated numbers). Validity is still IsValidNumber's.
bool nanpNationalNumber(std::string_view text, bool region_is_nanp, uint64_t& national) {
  char digits[11];
  size_t n = 0;
  bool plus = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      if (n == sizeof digits) return false;
      digits[n++] = c;
    } else if (c == '+' && i == 0) {
      plus = true;
    } else if (c != ' ' && c != '(' && c != ')' && c != '-' && c != '.') {
      return false;
    }
  }
  size_t start;
  if (n == 11 && digits[0] == '1' && (plus || region_is_nanp)) {
    start = 1;
  } else if (n == 10 && !plus && region_is_nanp) {
    start = 0;
  } else {
    return false;
  }
  if (digits[start] < '2') return false;
  national = 0;
  for (size_t i = start; i < n; ++i)
    national = national * 10 + static_cast<uint64_t>(digits[i] - '0');
  return true;
}

// IsValidNumber first looks for the number's region among all that share its
// country code (~25 for +1, a dozen regex passes each until one fits), then
// checks it against that region: about twice the regex work of asking the
// field's own region directly. A number valid there is valid (IsValidNumber
// would settle on that region, the first of +1's list, or on one whose
// patterns accept it just the same), so that question comes first and the
// full search only runs for numbers from elsewhere. rule_engine_test checks
// the answers against Parse + IsValidNumber over generated numbers.
bool validPhone(const PhoneNumberUtil* util, const PhoneNumber& phone,
                const std::string& default_region) {
  return util->IsValidNumberForRegion(phone, default_region) || util->IsValidNumber(phone);
}

// Days since 1970-01-01 to civil date (Howard Hinnant's civil_from_days).
void civilFromDays(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
}

void putDigits(char* p, int64_t v, int n) {
  for (int i = n - 1; i >= 0; --i, v /= 10) p[i] = static_cast<char>('0' + v % 10);
}

// UTC "YYYY-MM-DDTHH:MM:SS[.fraction]Z", fraction without trailing zeros.
bool formatUtc(int64_t micros, std::string& out) {
  int64_t secs = micros / 1000000, frac = micros % 1000000;
  if (frac < 0) frac += 1000000, secs -= 1;
  int64_t days = secs / 86400, sod = secs % 86400;
  if (sod < 0) sod += 86400, days -= 1;
  int64_t y;
  unsigned m, d;
  civilFromDays(days, y, m, d);
  if (y < 0 || y > 9999) return false;  // an offset pushed the instant out of RFC 3339
  char buf[32] = "0000-00-00T00:00:00";
  putDigits(buf, y, 4);
  putDigits(buf + 5, m, 2);
  putDigits(buf + 8, d, 2);
  putDigits(buf + 11, sod / 3600, 2);
  putDigits(buf + 14, sod / 60 % 60, 2);
  putDigits(buf + 17, sod % 60, 2);
  size_t n = 19;
  if (frac != 0) {
    buf[n++] = '.';
    putDigits(buf + n, frac, 6);
    n += 6;
    while (buf[n - 1] == '0') --n;
  }
  buf[n++] = 'Z';
  out.assign(buf, n);
  return true;
}

// Canonical decimal text from a numeric literal ([+-]digits[.digits][e[+-]digits],
// ".5" and "5." allowed): no exponent, no leading or trailing zeros, "0" for zero.
std::string_view canonicalDecimal(std::string_view s, std::string& out) {
  size_t pos = 0;
  bool negative = false;
  if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) negative = s[pos++] == '-';
  auto isDigit = [](char c) { return c >= '0' && c <= '9'; };
  const size_t int_begin = pos;
  while (pos < s.size() && isDigit(s[pos])) ++pos;
  const std::string_view int_part = s.substr(int_begin, pos - int_begin);
  std::string_view frac_part;
  if (pos < s.size() && s[pos] == '.') {
    const size_t frac_begin = ++pos;
    while (pos < s.size() && isDigit(s[pos])) ++pos;
    frac_part = s.substr(frac_begin, pos - frac_begin);
  }
  if (int_part.empty() && frac_part.empty()) return kNotDecimal;
  int64_t exponent = 0;
  if (pos < s.size() && (s[pos] == 'e' || s[pos] == 'E')) {
    ++pos;
    bool exp_negative = false;
    if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) exp_negative = s[pos++] == '-';
    if (pos == s.size()) return kNotDecimal;
    for (; pos < s.size() && isDigit(s[pos]); ++pos) {
      if (exponent < 1000000) exponent = exponent * 10 + (s[pos] - '0');
    }
    if (exp_negative) exponent = -exponent;
  }
  if (pos != s.size()) return kNotDecimal;

  // digits = int_part + frac_part; the decimal point sits `point` digits in.
  out.clear();
  out.append(int_part).append(frac_part);
  int64_t point = static_cast<int64_t>(int_part.size()) + exponent;
  size_t lead = 0;
  while (lead < out.size() && out[lead] == '0') ++lead;
  out.erase(0, lead);
  point -= static_cast<int64_t>(lead);
  while (!out.empty() && out.back() == '0') out.pop_back();
  if (out.empty()) {
    out = "0";
    return {};
  }
  const int64_t digits = static_cast<int64_t>(out.size());
  if (point < -kMaxDecimalScale || point - digits > kMaxDecimalScale) return kDecimalRange;
  if (point <= 0) {
    out.insert(0, static_cast<size_t>(2 - point), '0');
    out[1] = '.';
  } else if (point >= digits) {
    out.append(static_cast<size_t>(point - digits), '0');
  } else {
    out.insert(static_cast<size_t>(point), 1, '.');
  }
  if (negative) out.insert(0, 1, '-');
  return {};
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (asciiLower(a[i]) != asciiLower(b[i])) return false;
  return true;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Per-thread buffers reused across records, so apply() allocates only what it returns.
struct Scratch {
  std::string nfc;    // text after NFC, when it was not already NFC
  std::string typed;  // the type's normalized form (lower-cased email, E.164...)
  std::string aux;    // second buffer (NFC after lower-casing, phone input)
  PhoneNumber phone;
  std::vector<std::pair<size_t, size_t>> key_spans;  // key values' JSON text in payload
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

const char* fieldTypeName(FieldType type) {
  switch (type) {
    case FieldType::kString:
      return "string";
    case FieldType::kEmail:
      return "email";
    case FieldType::kPhone:
      return "phone";
    case FieldType::kTimestamp:
      return "timestamp";
    case FieldType::kEnum:
      return "enum";
    case FieldType::kInteger:
      return "integer";
    case FieldType::kDecimal:
      return "decimal";
    case FieldType::kBoolean:
      return "boolean";
  }
  return "?";
}

// ---------------------------------------------------------------------------------
// CompiledSchema

class CompiledSchema {
 public:
  struct Field {
    FieldRule rule;
    std::string json_name;  // "\"name\":", ready to append
    std::optional<std::regex> pattern;
    std::string pattern_reason;
    std::string length_reason;
    std::vector<std::string> folded_values;  // enum values, case-folded
    std::string enum_reason;
    int key_slot = -1;         // position in key_fields, or -1
    bool nanp_region = false;  // kPhone: default region uses country code 1
  };

  enum class Verdict { kOk, kAbsent, kError };

  SourceSchema schema;
  std::vector<Field> fields;
  std::unordered_map<std::string, size_t, StringHash, std::equal_to<>> index;

  // Normalizes one present value into *out (text, and whether it is a JSON string).
  Verdict normalize(const Field& f, const json::value& v, Scratch& s, std::string_view& out,
                    bool& quoted, std::string_view& reason) const;

 private:
  Verdict normalizeText(std::string_view raw, Scratch& s, std::string_view& out,
                        std::string_view& reason) const;
};

CompiledSchema::Verdict CompiledSchema::normalizeText(std::string_view raw, Scratch& s,
                                                      std::string_view& out,
                                                      std::string_view& reason) const {
  const TextKind kind = scanText(raw);
  if (kind == TextKind::kControl) return reason = kControl, Verdict::kError;
  if (kind == TextKind::kBadUtf8) return reason = kBadUtf8, Verdict::kError;
  out = trimSpace(raw, kind == TextKind::kAscii);
  if (out.empty()) return Verdict::kAbsent;
  if (kind == TextKind::kUnicode) out = toNfc(out, s.nfc);
  return Verdict::kOk;
}

CompiledSchema::Verdict CompiledSchema::normalize(const Field& f, const json::value& v, Scratch& s,
                                                  std::string_view& out, bool& quoted,
                                                  std::string_view& reason) const {
  quoted = true;
  std::string_view text;
  const bool is_string = v.is_string();
  if (is_string) {
    const json::string& js = v.get_string();
    const Verdict verdict = normalizeText({js.data(), js.size()}, s, text, reason);
    if (verdict != Verdict::kOk) return verdict;
  }

  switch (f.rule.type) {
    case FieldType::kString:
      if (!is_string) return reason = kExpectedString, Verdict::kError;
      out = text;
      break;

    case FieldType::kEmail: {
      if (!is_string) return reason = kExpectedString, Verdict::kError;
      s.typed.clear();
      if (isAscii(text)) {
        s.typed.resize(text.size());
        std::transform(text.begin(), text.end(), s.typed.begin(), asciiLower);
        out = s.typed;
      } else {
        UErrorCode ec = U_ZERO_ERROR;
        icu::StringByteSink<std::string> sink(&s.typed);
        icu::CaseMap::utf8ToLower("", 0,
                                  icu::StringPiece(text.data(), static_cast<int32_t>(text.size())),
                                  sink, nullptr, ec);
        assert(U_SUCCESS(ec));
        out = toNfc(s.typed, s.aux);  // lower-casing can undo NFC in rare cases
      }
      if (!isEmail(out)) return reason = kNotEmail, Verdict::kError;
      break;
    }

    case FieldType::kPhone: {
      if (!is_string) return reason = kExpectedString, Verdict::kError;
      const PhoneNumberUtil* util = PhoneNumberUtil::GetInstance();
      s.phone.Clear();
      uint64_t national;
      if (nanpNationalNumber(text, f.nanp_region, national)) {
        s.phone.set_country_code(1);
        s.phone.set_national_number(national);
        if (!validPhone(util, s.phone, f.rule.default_region))
          return reason = kNotPhone, Verdict::kError;
        char buf[16] = "+1";
        const auto r = std::to_chars(buf + 2, buf + sizeof buf, national);
        s.typed.assign(buf, r.ptr);
      } else {
        s.aux.assign(text);
        if (util->Parse(s.aux, f.rule.default_region, &s.phone) !=
                PhoneNumberUtil::NO_PARSING_ERROR ||
            !validPhone(util, s.phone, f.rule.default_region))
          return reason = kNotPhone, Verdict::kError;
        s.typed.clear();
        util->Format(s.phone, PhoneNumberUtil::E164, &s.typed);
      }
      out = s.typed;
      break;
    }

    case FieldType::kTimestamp: {
      if (!is_string) return reason = kExpectedString, Verdict::kError;
      const std::optional<int64_t> micros = parseRfc3339Micros(text);
      if (!micros || !formatUtc(*micros, s.typed)) return reason = kNotTimestamp, Verdict::kError;
      out = s.typed;
      break;
    }

    case FieldType::kEnum: {
      if (!is_string) return reason = kExpectedString, Verdict::kError;
      caseFold(text, s.typed);
      const auto it = std::find(f.folded_values.begin(), f.folded_values.end(), s.typed);
      if (it == f.folded_values.end()) return reason = f.enum_reason, Verdict::kError;
      out = f.rule.enum_values[static_cast<size_t>(it - f.folded_values.begin())];
      break;
    }

    case FieldType::kInteger: {
      quoted = false;
      int64_t value;
      if (v.is_int64()) {
        value = v.get_int64();
      } else if (v.is_uint64()) {
        if (v.get_uint64() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          return reason = kIntegerRange, Verdict::kError;
        value = static_cast<int64_t>(v.get_uint64());
      } else if (is_string) {
        std::string_view digits = text;
        const bool negative = digits.front() == '-';
        if (digits.front() == '+' || digits.front() == '-') digits.remove_prefix(1);
        if (digits.empty() ||
            !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
          return reason = kNotInteger, Verdict::kError;
        uint64_t magnitude;
        const auto [end, ec] =
            std::from_chars(digits.data(), digits.data() + digits.size(), magnitude);
        const uint64_t limit =
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + (negative ? 1 : 0);
        if (ec != std::errc() || magnitude > limit) return reason = kIntegerRange, Verdict::kError;
        value = negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
      } else {
        return reason = kExpectedInteger, Verdict::kError;
      }
      char buf[24];
      const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
      assert(ec == std::errc());
      s.typed.assign(buf, end);
      out = s.typed;
      break;
    }

    case FieldType::kDecimal: {
      char buf[32];
      std::string_view literal;
      if (is_string) {
        literal = text;
      } else if (v.is_int64() || v.is_uint64() || v.is_double()) {
        std::to_chars_result r;
        if (v.is_int64()) {
          r = std::to_chars(buf, buf + sizeof buf, v.get_int64());
        } else if (v.is_uint64()) {
          r = std::to_chars(buf, buf + sizeof buf, v.get_uint64());
        } else {
          if (!std::isfinite(v.get_double())) return reason = kNotDecimal, Verdict::kError;
          // Shortest text that reads back as the same double: 0.1 stays "0.1".
          r = std::to_chars(buf, buf + sizeof buf, v.get_double());
        }
        assert(r.ec == std::errc());
        literal = std::string_view(buf, static_cast<size_t>(r.ptr - buf));
      } else {
        return reason = kExpectedDecimal, Verdict::kError;
      }
      reason = canonicalDecimal(literal, s.typed);
      if (!reason.empty()) return Verdict::kError;
      out = s.typed;
      break;
    }

    case FieldType::kBoolean: {
      quoted = false;
      bool value;
      if (v.is_bool()) {
        value = v.get_bool();
      } else if (is_string) {
        if (equalsIgnoreCase(text, "true") || equalsIgnoreCase(text, "yes") || text == "1") {
          value = true;
        } else if (equalsIgnoreCase(text, "false") || equalsIgnoreCase(text, "no") || text == "0") {
          value = false;
        } else {
          return reason = kNotBoolean, Verdict::kError;
        }
      } else {
        return reason = kExpectedBoolean, Verdict::kError;
      }
      out = value ? "true" : "false";
      break;
    }
  }

  if (f.rule.max_length && countCodePoints(out) > *f.rule.max_length)
    return reason = f.length_reason, Verdict::kError;
  if (f.pattern) {
    if (out.size() > kMaxPatternInput) return reason = kTooLongForPattern, Verdict::kError;
    bool matched = false;
    try {
      matched = std::regex_match(out.begin(), out.end(), *f.pattern);
    } catch (const std::regex_error&) {  // error_complexity / error_stack
      return reason = kPatternFailed, Verdict::kError;
    }
    if (!matched) return reason = f.pattern_reason, Verdict::kError;
  }
  return Verdict::kOk;
}

// ---------------------------------------------------------------------------------
// RuleEngine

struct RuleEngine::Impl {
  std::map<std::string, std::unique_ptr<CompiledSchema>, std::less<>> sources;
};

RuleEngine::RuleEngine() : impl_(std::make_unique<Impl>()) {}
RuleEngine::~RuleEngine() = default;

namespace {

bool validSourceName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

Result<std::unique_ptr<CompiledSchema>> compile(SourceSchema schema) {
  const std::string where = "source `" + schema.name + "`";
  if (!validSourceName(schema.name))
    return Status::invalid(where + ": name must be 1-64 characters of [A-Za-z0-9_-]");
  if (schema.fields.empty()) return Status::invalid(where + ": declares no fields");

  auto cs = std::make_unique<CompiledSchema>();
  cs->fields.reserve(schema.fields.size());
  for (const FieldRule& rule : schema.fields) {
    const std::string at = where + ": field `" + rule.name + "`";
    if (rule.name.empty()) return Status::invalid(where + ": a field has an empty name");
    if (scanText(rule.name) == TextKind::kControl || scanText(rule.name) == TextKind::kBadUtf8)
      return Status::invalid(where + ": a field name has control characters or bad UTF-8");
    if (!cs->index.emplace(rule.name, cs->fields.size()).second)
      return Status::invalid(at + ": declared twice");

    CompiledSchema::Field f;
    f.rule = rule;
    appendJsonString(f.json_name, rule.name);
    f.json_name.push_back(':');
    if (rule.max_length) {
      if (*rule.max_length == 0) return Status::invalid(at + ": max_length must be at least 1");
      f.length_reason = "longer than " + std::to_string(*rule.max_length) + " characters";
    }
    if (rule.pattern) {
      if (rule.pattern->size() > kMaxPatternBytes) {
        return Status::invalid(at + ": pattern of " + std::to_string(rule.pattern->size()) +
                               " bytes is longer than the limit of " +
                               std::to_string(kMaxPatternBytes));
      }
      try {
        f.pattern.emplace(*rule.pattern, std::regex::ECMAScript | std::regex::optimize);
      } catch (const std::regex_error& e) {
        return Status::invalid(at + ": invalid pattern `" + *rule.pattern + "`: " + e.what());
      }
      f.pattern_reason = "does not match the pattern `" + *rule.pattern + "`";
    }
    if (rule.type == FieldType::kEnum) {
      if (rule.enum_values.empty()) return Status::invalid(at + ": enum declares no values");
      f.enum_reason = "not one of: ";
      for (const std::string& value : rule.enum_values) {
        const TextKind kind = scanText(value);
        if (kind == TextKind::kControl || kind == TextKind::kBadUtf8)
          return Status::invalid(at + ": enum value has control characters or bad UTF-8");
        std::string nfc;
        const std::string_view trimmed = trimSpace(value, kind == TextKind::kAscii);
        if (trimmed.empty() || trimmed.size() != value.size() ||
            (kind == TextKind::kUnicode && toNfc(trimmed, nfc) != trimmed))
          return Status::invalid(at + ": enum value `" + value +
                                 "` is empty, has surrounding white space or is not NFC");
        std::string folded;
        caseFold(value, folded);
        if (std::find(f.folded_values.begin(), f.folded_values.end(), folded) !=
            f.folded_values.end())
          return Status::invalid(at + ": enum value `" + value +
                                 "` repeats another value (matching ignores case)");
        f.folded_values.push_back(std::move(folded));
        if (f.folded_values.size() > 1) f.enum_reason += ", ";
        f.enum_reason += value;
      }
    } else if (!rule.enum_values.empty()) {
      return Status::invalid(at + ": values are only for enum fields");
    }
    if (rule.type == FieldType::kPhone) {
      std::string region = rule.default_region;
      std::transform(region.begin(), region.end(), region.begin(),
                     [](char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 32) : c; });
      if (PhoneNumberUtil::GetInstance()->GetCountryCodeForRegion(region) == 0)
        return Status::invalid(at + ": unknown phone region `" + rule.default_region +
                               "` (use an ISO 3166 code such as US)");
      f.nanp_region = PhoneNumberUtil::GetInstance()->IsNANPACountry(region);
      f.rule.default_region = std::move(region);
    }
    cs->fields.push_back(std::move(f));
  }

  for (size_t i = 0; i < schema.key_fields.size(); ++i) {
    const std::string& name = schema.key_fields[i];
    const auto it = cs->index.find(name);
    if (it == cs->index.end())
      return Status::invalid(where + ": key field `" + name + "` is not declared");
    CompiledSchema::Field& f = cs->fields[it->second];
    if (!f.rule.required)
      return Status::invalid(where + ": key field `" + name + "` must be required");
    if (f.key_slot >= 0) return Status::invalid(where + ": key field `" + name + "` repeats");
    f.key_slot = static_cast<int>(i);
  }
  cs->schema = std::move(schema);
  return cs;
}

}  // namespace

Result<std::shared_ptr<const RuleEngine>> RuleEngine::create(std::vector<SourceSchema> sources) {
  // Warm the singletons here, not on the first record of a busy HTTP thread.
  nfcInstance();
  PhoneNumberUtil::GetInstance();
  std::shared_ptr<RuleEngine> engine(new RuleEngine());
  for (SourceSchema& schema : sources) {
    std::string name = schema.name;
    Result<std::unique_ptr<CompiledSchema>> compiled = compile(std::move(schema));
    if (!compiled.isOk()) return compiled.status();
    if (!engine->impl_->sources.emplace(name, std::move(compiled.value())).second)
      return Status::invalid("source `" + name + "`: declared twice");
  }
  return std::shared_ptr<const RuleEngine>(std::move(engine));
}

const CompiledSchema* RuleEngine::find(std::string_view source) const {
  const auto it = impl_->sources.find(source);
  return it == impl_->sources.end() ? nullptr : it->second.get();
}

std::vector<std::string> RuleEngine::sourceNames() const {
  std::vector<std::string> names;
  for (const auto& [name, schema] : impl_->sources) names.push_back(name);
  return names;
}

Outcome RuleEngine::apply(const CompiledSchema& cs, const json::object& record) const {
  using Verdict = CompiledSchema::Verdict;
  Scratch& s = scratch();
  Outcome outcome;
  std::string payload;
  payload.reserve(64 + 48 * cs.fields.size());
  payload.push_back('{');
  const size_t key_count = cs.schema.key_fields.size();
  s.key_spans.assign(key_count, {0, 0});
  std::string single_key;
  size_t seen = 0;  // record members that are declared fields

  for (const CompiledSchema::Field& f : cs.fields) {
    const auto it = record.find(f.rule.name);
    if (it != record.end()) ++seen;
    std::string_view text, reason;
    bool quoted = true;
    Verdict verdict = Verdict::kAbsent;
    if (it != record.end() && !it->value().is_null())
      verdict = cs.normalize(f, it->value(), s, text, quoted, reason);
    if (verdict == Verdict::kAbsent) {
      if (f.rule.required) outcome.errors.push_back({f.rule.name, std::string(kMissing)});
      continue;
    }
    if (verdict == Verdict::kError) {
      outcome.errors.push_back({f.rule.name, std::string(reason)});
      continue;
    }
    if (!outcome.errors.empty()) continue;  // keep checking, but stop building
    if (payload.size() > 1) payload.push_back(',');
    payload.append(f.json_name);
    const size_t value_begin = payload.size();
    if (quoted) {
      appendJsonString(payload, text);
    } else {
      payload.append(text);
    }
    if (f.key_slot >= 0) {
      s.key_spans[static_cast<size_t>(f.key_slot)] = {value_begin, payload.size() - value_begin};
      if (key_count == 1) single_key.assign(text);
    }
  }

  if (seen < record.size()) {
    for (const json::key_value_pair& member : record) {
      if (cs.index.find(member.key()) != cs.index.end()) continue;
      switch (cs.schema.unknown_fields) {
        case UnknownFieldPolicy::kDrop:
          break;
        case UnknownFieldPolicy::kReject:
          outcome.errors.push_back({std::string(member.key()), std::string(kUnknownField)});
          break;
        case UnknownFieldPolicy::kKeep: {
          // Only values holding a double are copied (to settle them).
          std::optional<json::value> settled;
          if (hasDouble(member.value())) {
            settled.emplace(member.value());
            if (auto why = settleDoubles(*settled); !why.empty()) {
              outcome.errors.push_back({std::string(member.key()), std::string(why)});
              break;
            }
          }
          if (!outcome.errors.empty()) break;
          if (payload.size() > 1) payload.push_back(',');
          appendJsonString(payload, member.key());
          payload.push_back(':');
          payload.append(json::serialize(settled ? *settled : member.value()));
          break;
        }
      }
    }
  }
  if (!outcome.errors.empty()) return outcome;
  payload.push_back('}');

  Normalized& n = outcome.record.emplace();
  if (key_count == 1) {
    n.key = std::move(single_key);
  } else if (key_count > 1) {
    n.key.push_back('[');
    for (size_t i = 0; i < key_count; ++i) {
      if (i > 0) n.key.push_back(',');
      n.key.append(payload, s.key_spans[i].first, s.key_spans[i].second);
    }
    n.key.push_back(']');
  } else {
    n.key = "sha256:" + crypto::toHex(crypto::sha256(payload));
  }
  n.payload = std::move(payload);
  return outcome;
}

SourceSchema defaultCustomerSchema() {
  SourceSchema s;
  s.name = "customer";
  s.unknown_fields = UnknownFieldPolicy::kReject;
  s.key_fields = {"external_id"};
  auto add = [&s](std::string name, FieldType type, bool required) -> FieldRule& {
    FieldRule& f = s.fields.emplace_back();
    f.name = std::move(name);
    f.type = type;
    f.required = required;
    return f;
  };
  add("external_id", FieldType::kString, true).max_length = 128;
  add("name", FieldType::kString, true).max_length = 256;
  add("email", FieldType::kEmail, true);
  add("channel", FieldType::kEnum, true).enum_values = {"web", "mobile", "partner", "office"};
  add("created_at", FieldType::kTimestamp, true);
  add("phone", FieldType::kPhone, false).default_region = "US";
  add("consent_marketing", FieldType::kBoolean, false);
  add("notes", FieldType::kString, false).max_length = 4096;
  return s;
}

}  // namespace branchline::rules
