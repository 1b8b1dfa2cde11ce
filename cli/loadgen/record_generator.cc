#include "cli/loadgen/record_generator.h"

#include <array>
#include <cassert>
#include <cstdio>
#include <string_view>

#include "shared/core/log.h"

namespace branchline::loadgen {
namespace {

// splitmix64: a fast, well-mixed stream from any 64-bit state. Written out (not
// <random>) so the records are the same with every standard library.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n).
  uint64_t below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  bool chance(double p) { return unit() < p; }
  template <typename T, size_t N>
  const T& pick(const std::array<T, N>& items) {
    return items[below(N)];
  }
};

Rng rngFor(uint64_t seed, uint64_t index, uint64_t stream) {
  Rng r{seed * 0x2545f4914f6cdd1dULL ^ (index + 1) * 0x9e3779b97f4a7c15ULL ^ stream};
  r.next();
  return r;
}

constexpr uint64_t kStreamKind = 0x6b696e64;
constexpr uint64_t kStreamDup = 0x647570;
constexpr uint64_t kStreamBody = 0x626f6479;

struct NamePart {
  std::string_view display;
  std::string_view ascii;  // for the email address
};

constexpr std::array<NamePart, 26> kFirst = {{
    {"Anna", "anna"},       {"Zoë", "zoe"},         {"José", "jose"},   {"Mohammed", "mohammed"},
    {"Wei", "wei"},         {"Aoife", "aoife"},     {"Søren", "soren"}, {"Chloé", "chloe"},
    {"Jürgen", "jurgen"},   {"Priya", "priya"},     {"Olga", "olga"},   {"Kwame", "kwame"},
    {"María", "maria"},     {"Liam", "liam"},       {"Emma", "emma"},   {"Noah", "noah"},
    {"Fatima", "fatima"},   {"Hiroshi", "hiroshi"}, {"Ngozi", "ngozi"}, {"Björn", "bjorn"},
    {"Élodie", "elodie"},   {"Łukasz", "lukasz"},   {"Thảo", "thao"},   {"Mary-Kate", "marykate"},
    {"Siobhán", "siobhan"}, {"Dmitri", "dmitri"},
}};

constexpr std::array<NamePart, 24> kLast = {{
    {"Smith", "smith"},
    {"Müller", "muller"},
    {"Nguyễn", "nguyen"},
    {"O'Brien", "obrien"},
    {"García", "garcia"},
    {"Kowalski", "kowalski"},
    {"Johansson", "johansson"},
    {"Dubois", "dubois"},
    {"Rossi", "rossi"},
    {"Okafor", "okafor"},
    {"Tanaka", "tanaka"},
    {"Patel", "patel"},
    {"Ivanova", "ivanova"},
    {"Schröder", "schroder"},
    {"da Silva", "dasilva"},
    {"van der Berg", "vanderberg"},
    {"李", "li"},
    {"Öztürk", "ozturk"},
    {"Haddad", "haddad"},
    {"Jones", "jones"},
    {"Williams", "williams"},
    {"Brown", "brown"},
    {"Kim", "kim"},
    {"Łęcka", "lecka"},
}};

constexpr std::array<std::string_view, 8> kDomains = {
    "example.com", "gmail.com", "outlook.com",      "yahoo.co.uk",
    "web.de",      "acme.io",   "mail.example.org", "fastmail.fm"};

// Written as the channel arrives from different client software.
constexpr std::array<std::string_view, 10> kChannels = {
    "web", "mobile", "partner", "office", "web", "mobile", "Web", "MOBILE", "Partner", "office"};

// Area codes whose numbers libphonenumber accepts with any exchange 200-999.
constexpr std::array<std::string_view, 16> kAreaCodes = {"212", "213", "312", "415", "617", "646",
                                                         "702", "718", "206", "303", "404", "512",
                                                         "602", "713", "214", "503"};

// International numbers in national layout; `#` is replaced by a random digit.
constexpr std::array<std::string_view, 9> kInternational = {
    "+44 20 7946 0###", "+33 1 42 68 53 0#", "+33 6 12 34 56 7#",
    "+61 2 9876 54##",  "+81 90-1234-56##",  "+49 30 901820##",
    "+52 55 1234 56##", "+34 912 34 56 ##",  "+353 1 234 56##"};

constexpr std::array<std::string_view, 12> kNotes = {
    "Prefers email contact.",
    "Called twice about Jose\xCC\x81's account.",  // combining acute accent
    "Kunde wünscht Rückruf am Vormittag.",
    "顧客は電話での連絡を希望しています。",
    "Met at the café 👍",
    "Línea fija: no llamar después de las 18h.",
    "Ｆｕｌｌｗｉｄｔｈ note from the kiosk.",
    "Moved from branch 12.\nNew address on file.",
    "Asked about \"premium\" plan; send brochure.",
    "VIP — handle with care.",
    "Spouse: Zoe\xCC\x88 (same household).",  // combining diaeresis
    "Wants paper statements.",
};

// Days since 1970-01-01 to civil date (H. Hinnant's algorithm).
void civilFromDays(int64_t z, int& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t yy = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int>(yy + (m <= 2));
}

// RFC 3339 with the given UTC offset (minutes) and 0..6 fraction digits.
void appendTimestamp(std::string& out, int64_t unix_micros, int offset_min, int frac_digits,
                     bool z_for_utc) {
  int64_t local = unix_micros + int64_t{offset_min} * 60'000'000;
  int64_t secs = local / 1'000'000;
  int64_t micros = local % 1'000'000;
  int64_t days = secs / 86400;
  int64_t sod = secs % 86400;
  int y;
  unsigned mo, d;
  civilFromDays(days, y, mo, d);
  char buf[64];
  int n = std::snprintf(buf, sizeof(buf), "%04d-%02u-%02uT%02d:%02d:%02d", y, mo, d,
                        static_cast<int>(sod / 3600), static_cast<int>(sod / 60 % 60),
                        static_cast<int>(sod % 60));
  out.append(buf, static_cast<size_t>(n));
  if (frac_digits > 0) {
    std::snprintf(buf, sizeof(buf), "%06d", static_cast<int>(micros));
    out.push_back('.');
    out.append(buf, static_cast<size_t>(frac_digits));
  }
  if (offset_min == 0 && z_for_utc) {
    out.push_back('Z');
  } else {
    int a = offset_min < 0 ? -offset_min : offset_min;
    n = std::snprintf(buf, sizeof(buf), "%c%02d:%02d", offset_min < 0 ? '-' : '+', a / 60, a % 60);
    out.append(buf, static_cast<size_t>(n));
  }
}

void appendDigits(std::string& out, Rng& rng, int count) {
  for (int i = 0; i < count; ++i) out.push_back(static_cast<char>('0' + rng.below(10)));
}

void appendUsPhone(std::string& out, Rng& rng) {
  std::string_view area = rng.pick(kAreaCodes);
  // Exchange 200-999, never N11 (those are service codes, not subscriber numbers).
  unsigned exchange;
  do {
    exchange = 200 + static_cast<unsigned>(rng.below(800));
  } while (exchange % 100 == 11);
  char ex[4];
  std::snprintf(ex, sizeof(ex), "%03u", exchange);
  std::string line;
  appendDigits(line, rng, 4);
  std::string a(area);
  switch (rng.below(8)) {
    case 0:
      out += "(" + a + ") " + ex + "-" + line;
      break;
    case 1:
      out += a + "-" + ex + "-" + line;
      break;
    case 2:
      out += a + "." + ex + "." + line;
      break;
    case 3:
      out += "+1 " + a + " " + ex + " " + line;
      break;
    case 4:
      out += "1-" + a + "-" + ex + "-" + line;
      break;
    case 5:
      out += a + ex + line;
      break;
    case 6:
      out += "+1" + a + ex + line;
      break;
    default:
      out += "+1 (" + a + ") " + ex + "-" + line;
      break;
  }
}

void appendInternationalPhone(std::string& out, Rng& rng) {
  for (char c : rng.pick(kInternational)) {
    out.push_back(c == '#' ? static_cast<char>('0' + rng.below(10)) : c);
  }
}

void appendEmail(std::string& out, Rng& rng, const NamePart& first, const NamePart& last) {
  std::string local;
  switch (rng.below(5)) {
    case 0:
      local = std::string(first.ascii) + "." + std::string(last.ascii);
      break;
    case 1:
      local = std::string(first.ascii) + std::string(last.ascii);
      break;
    case 2:
      local = std::string(first.ascii.substr(0, 1)) + "." + std::string(last.ascii);
      break;
    case 3:
      local = std::string(first.ascii) + "_" + std::string(last.ascii) + "+crm";
      break;
    default:
      local = std::string(first.ascii) + "." + std::string(last.ascii);
      appendDigits(local, rng, 2);
      break;
  }
  std::string email = local + "@" + std::string(rng.pick(kDomains));
  const uint64_t style = rng.below(20);
  if (style < 4) {  // "Anna.Smith@Example.com": capitalized by a form's autocorrect
    bool cap = true;
    for (char& c : email) {
      if (cap && c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
      cap = (c == '.' || c == '@' || c == '_');
    }
  } else if (style == 4) {
    for (char& c : email) {
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    }
  }
  if (rng.chance(0.08)) email = "  " + email + " ";  // pasted with surrounding blanks
  log::appendJsonString(out, email);
}

enum class Defect {
  kBrokenEmail,
  kMissingName,
  kMissingEmail,
  kMissingCreatedAt,
  kMissingExternalId,
  kBadChannel,
  kBadTimestamp,
  kUnknownField,
  kBadPhone,
  kNameNotString,
  kBadConsent,
  kExternalIdTooLong,
  kNotesTooLong,
  kCount,
};

const char* defectField(Defect d) {
  switch (d) {
    case Defect::kBrokenEmail:
    case Defect::kMissingEmail:
      return "email";
    case Defect::kMissingName:
    case Defect::kNameNotString:
      return "name";
    case Defect::kMissingCreatedAt:
    case Defect::kBadTimestamp:
      return "created_at";
    case Defect::kMissingExternalId:
    case Defect::kExternalIdTooLong:
      return "external_id";
    case Defect::kBadChannel:
      return "channel";
    case Defect::kUnknownField:
      return "favourite_colour";
    case Defect::kBadPhone:
      return "phone";
    case Defect::kBadConsent:
      return "consent_marketing";
    case Defect::kNotesTooLong:
      return "notes";
    case Defect::kCount:
      break;
  }
  return "";
}

constexpr std::array<std::string_view, 5> kBrokenEmails = {
    "jane.doe@", "jane doe@example.com", "jane.example.com", "@example.com", "jane@@example.com"};
constexpr std::array<std::string_view, 4> kBadChannels = {"fax", "carrier-pigeon", "", "telex"};
constexpr std::array<std::string_view, 5> kBadTimestamps = {
    "2025-13-01T10:00:00Z", "2025-02-30T10:00:00Z", "yesterday", "12/03/2025 10:00",
    "2025-06-01T25:61:00+02:00"};
constexpr std::array<std::string_view, 3> kBadPhones = {"12345", "call me maybe",
                                                        "+1 (000) 000-0000"};

// Builds the JSON object of record `index`. `defect` = kCount for a valid record.
void buildRecord(uint64_t seed, uint64_t index, Defect defect, std::string& out,
                 std::string& external_id) {
  Rng rng = rngFor(seed, index, kStreamBody);
  out.clear();
  out.push_back('{');
  bool first_field = true;
  auto key = [&](std::string_view k) {
    if (!first_field) out.push_back(',');
    first_field = false;
    out.push_back('"');
    out.append(k);
    out += "\":";
  };

  // Valid and invalid records live in separate id spaces so a rejected record
  // never shares an identity with a stored one.
  external_id = (defect == Defect::kCount ? "cus-" : "bad-") + std::to_string(seed) + "-" +
                std::to_string(index);
  if (defect == Defect::kExternalIdTooLong) external_id += "-" + std::string(130, 'x');
  if (defect == Defect::kMissingExternalId) {
    external_id.clear();
  } else {
    key("external_id");
    log::appendJsonString(out, external_id);
  }

  const NamePart& first = rng.pick(kFirst);
  const NamePart& last = rng.pick(kLast);
  if (defect == Defect::kNameNotString) {
    key("name");
    out += "42";
  } else if (defect != Defect::kMissingName) {
    std::string name(first.display);
    if (rng.chance(0.1)) {
      name += " ";
      name.push_back(static_cast<char>('A' + rng.below(26)));
      name += ".";
    }
    name += " ";
    name += last.display;
    key("name");
    log::appendJsonString(out, name);
  }

  if (defect == Defect::kBrokenEmail) {
    key("email");
    log::appendJsonString(out, rng.pick(kBrokenEmails));
  } else if (defect != Defect::kMissingEmail) {
    key("email");
    appendEmail(out, rng, first, last);
  }

  key("channel");
  log::appendJsonString(
      out, defect == Defect::kBadChannel ? rng.pick(kBadChannels) : rng.pick(kChannels));

  if (defect == Defect::kBadTimestamp) {
    key("created_at");
    log::appendJsonString(out, rng.pick(kBadTimestamps));
  } else if (defect != Defect::kMissingCreatedAt) {
    // 2023-01-01 .. 2026-06-30, at an office somewhere in the world.
    constexpr int64_t kFrom = 1672531200LL * 1'000'000;
    constexpr int64_t kSpan = 1277L * 86400 * 1'000'000;
    constexpr std::array<int, 10> kOffsets = {0, 0, 60, 120, -300, -240, 330, 540, -480, 600};
    constexpr std::array<int, 5> kFracDigits = {0, 0, 3, 6, 2};
    int64_t t = kFrom + static_cast<int64_t>(rng.below(kSpan));
    std::string ts;
    appendTimestamp(ts, t, rng.pick(kOffsets), rng.pick(kFracDigits), rng.chance(0.8));
    key("created_at");
    log::appendJsonString(out, ts);
  }

  if (defect == Defect::kBadPhone) {
    key("phone");
    log::appendJsonString(out, rng.pick(kBadPhones));
  } else if (rng.chance(0.7)) {
    std::string phone;
    if (rng.chance(0.85)) {
      appendUsPhone(phone, rng);
    } else {
      appendInternationalPhone(phone, rng);
    }
    key("phone");
    log::appendJsonString(out, phone);
  }

  if (defect == Defect::kBadConsent) {
    key("consent_marketing");
    log::appendJsonString(out, "maybe");
  } else if (rng.chance(0.8)) {
    key("consent_marketing");
    const uint64_t c = rng.below(20);
    out += c < 9 ? "true" : c < 18 ? "false" : c == 18 ? "\"yes\"" : "\"no\"";
  }

  if (defect == Defect::kNotesTooLong) {
    key("notes");
    std::string notes;
    while (notes.size() < 4200) notes += "Lorem ipsum dolor sit amet. ";
    log::appendJsonString(out, notes);
  } else if (rng.chance(0.25)) {
    std::string notes(rng.pick(kNotes));
    if (rng.chance(0.3)) {
      notes += " ";
      notes += rng.pick(kNotes);
    }
    key("notes");
    log::appendJsonString(out, notes);
  }

  if (defect == Defect::kUnknownField) {
    key("favourite_colour");
    log::appendJsonString(out, "blue");
  }
  out.push_back('}');
}

}  // namespace

CustomerGenerator::CustomerGenerator(GeneratorOptions options) : options_(options) {
  assert(options_.duplicate_share >= 0 && options_.invalid_share >= 0 &&
         options_.duplicate_share + options_.invalid_share <= 1.0 &&
         "duplicate and invalid shares must be fractions that sum to at most 1");
}

RecordKind CustomerGenerator::kindOf(uint64_t index) const {
  Rng rng = rngFor(options_.seed, index, kStreamKind);
  const double u = rng.unit();
  if (u < options_.invalid_share) return RecordKind::kInvalid;
  if (u < options_.invalid_share + options_.duplicate_share) {
    return originalOf(index) == index ? RecordKind::kValid : RecordKind::kDuplicate;
  }
  return RecordKind::kValid;
}

uint64_t CustomerGenerator::originalOf(uint64_t index) const {
  Rng kind_rng = rngFor(options_.seed, index, kStreamKind);
  const double u = kind_rng.unit();
  if (u < options_.invalid_share || u >= options_.invalid_share + options_.duplicate_share) {
    return index;
  }
  // A duplicate repeats a random earlier record whose drawn kind is valid;
  // walk back (deterministically) until one is found. None: it is valid itself.
  Rng rng = rngFor(options_.seed, index, kStreamDup);
  uint64_t j = index;
  while (j > 0) {
    j = rng.below(j);
    Rng r = rngFor(options_.seed, j, kStreamKind);
    const double uj = r.unit();
    if (uj >= options_.invalid_share + options_.duplicate_share) return j;
  }
  return index;
}

std::string CustomerGenerator::externalId(uint64_t index) const {
  return "cus-" + std::to_string(options_.seed) + "-" + std::to_string(index);
}

void CustomerGenerator::generate(uint64_t index, GeneratedRecord& out) const {
  out.index = index;
  const RecordKind kind = kindOf(index);
  out.valid = kind != RecordKind::kInvalid;
  out.duplicate = kind == RecordKind::kDuplicate;
  out.original = kind == RecordKind::kDuplicate ? originalOf(index) : index;
  out.defect.clear();
  Defect defect = Defect::kCount;
  if (kind == RecordKind::kInvalid) {
    Rng rng = rngFor(options_.seed, index, kStreamDup);
    defect = static_cast<Defect>(rng.below(static_cast<uint64_t>(Defect::kCount)));
    out.defect = defectField(defect);
  }
  buildRecord(options_.seed, out.original, defect, out.json, out.external_id);
}

GeneratedRecord CustomerGenerator::generate(uint64_t index) const {
  GeneratedRecord r;
  generate(index, r);
  return r;
}

std::vector<std::string> CustomerGenerator::validUniqueIds(uint64_t count) const {
  std::vector<std::string> ids;
  for (uint64_t i = 0; i < count; ++i) {
    if (kindOf(i) == RecordKind::kValid) ids.push_back(externalId(i));
  }
  return ids;
}

}  // namespace branchline::loadgen
