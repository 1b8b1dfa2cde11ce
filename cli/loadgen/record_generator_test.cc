#include "cli/loadgen/record_generator.h"

#include <gtest/gtest.h>
#include <phonenumbers/phonenumberutil.h>

#include <boost/json/parse.hpp>
#include <set>

#include "shared/core/clock.h"

namespace branchline::loadgen {
namespace {

TEST(RecordGeneratorTest, SameSeedSameRecordsOtherSeedOthers) {
  CustomerGenerator a({.seed = 7, .duplicate_share = 0.1, .invalid_share = 0.1});
  CustomerGenerator b({.seed = 7, .duplicate_share = 0.1, .invalid_share = 0.1});
  CustomerGenerator c({.seed = 8, .duplicate_share = 0.1, .invalid_share = 0.1});
  int differing = 0;
  for (uint64_t i = 0; i < 2000; ++i) {
    GeneratedRecord ra = a.next();
    EXPECT_EQ(ra.json, b.generate(i).json) << i;
    differing += ra.json != c.generate(i).json;
  }
  EXPECT_EQ(differing, 2000);
}

TEST(RecordGeneratorTest, SharesOfDuplicatesAndInvalidRecords) {
  CustomerGenerator gen({.seed = 3, .duplicate_share = 0.05, .invalid_share = 0.02});
  const int n = 50000;
  int dups = 0, invalid = 0;
  for (int i = 0; i < n; ++i) {
    RecordKind k = gen.kindOf(static_cast<uint64_t>(i));
    dups += k == RecordKind::kDuplicate;
    invalid += k == RecordKind::kInvalid;
  }
  EXPECT_NEAR(dups / double(n), 0.05, 0.005);
  EXPECT_NEAR(invalid / double(n), 0.02, 0.003);

  CustomerGenerator clean({.seed = 3});
  for (uint64_t i = 0; i < 1000; ++i) EXPECT_EQ(clean.kindOf(i), RecordKind::kValid);
}

TEST(RecordGeneratorTest, DuplicatesRepeatAnEarlierValidRecordByteForByte) {
  CustomerGenerator gen({.seed = 11, .duplicate_share = 0.3, .invalid_share = 0.1});
  int seen = 0;
  for (uint64_t i = 0; i < 5000; ++i) {
    GeneratedRecord r = gen.generate(i);
    if (!r.duplicate) {
      EXPECT_EQ(r.original, i);
      continue;
    }
    ++seen;
    ASSERT_LT(r.original, i);
    ASSERT_EQ(gen.kindOf(r.original), RecordKind::kValid);
    GeneratedRecord orig = gen.generate(r.original);
    EXPECT_EQ(r.json, orig.json);
    EXPECT_EQ(r.external_id, orig.external_id);
    EXPECT_TRUE(r.valid);
  }
  EXPECT_GT(seen, 1000);
}

TEST(RecordGeneratorTest, ValidRecordsAreWellFormedAndVaried) {
  auto* phones = i18n::phonenumbers::PhoneNumberUtil::GetInstance();
  CustomerGenerator gen({.seed = 5, .duplicate_share = 0.05, .invalid_share = 0.0});
  std::set<std::string> ids, offsets, channels;
  int upper_emails = 0, spaced_emails = 0, non_ascii_names = 0, intl_phones = 0, yes = 0, notes = 0,
      combining = 0;
  for (uint64_t i = 0; i < 5000; ++i) {
    GeneratedRecord r = gen.generate(i);
    ASSERT_TRUE(r.valid);
    boost::system::error_code ec;
    auto v = boost::json::parse(r.json, ec);  // also checks UTF-8
    ASSERT_FALSE(ec) << r.json;
    const auto& o = v.as_object();
    for (const char* f : {"external_id", "name", "email", "channel", "created_at"}) {
      ASSERT_TRUE(o.contains(f) && o.at(f).is_string()) << f << " in " << r.json;
    }
    EXPECT_EQ(o.at("external_id").as_string(), r.external_id);
    if (!r.duplicate) {
      EXPECT_TRUE(ids.insert(r.external_id).second) << "id reused: " << r.external_id;
    }
    std::string ts(o.at("created_at").as_string());
    EXPECT_TRUE(parseRfc3339Micros(ts).has_value()) << ts;
    offsets.insert(ts.back() == 'Z' ? "Z" : ts.substr(ts.size() - 6));
    channels.insert(std::string(o.at("channel").as_string()));
    std::string email(o.at("email").as_string());
    upper_emails += email.find_first_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ") != std::string::npos;
    spaced_emails += email.front() == ' ';
    std::string name(o.at("name").as_string());
    non_ascii_names += std::any_of(name.begin(), name.end(), [](char c) { return c & 0x80; });
    if (o.contains("phone")) {
      std::string phone(o.at("phone").as_string());
      i18n::phonenumbers::PhoneNumber parsed;
      ASSERT_EQ(phones->Parse(phone, "US", &parsed),
                i18n::phonenumbers::PhoneNumberUtil::NO_PARSING_ERROR)
          << phone;
      EXPECT_TRUE(phones->IsValidNumber(parsed)) << phone;
      intl_phones += parsed.country_code() != 1;
    }
    if (o.contains("consent_marketing")) yes += o.at("consent_marketing").is_string();
    if (o.contains("notes")) {
      ++notes;
      combining += std::string(o.at("notes").as_string()).find("\xCC\x81") != std::string::npos;
    }
  }
  EXPECT_GE(offsets.size(), 6u);
  EXPECT_GE(channels.size(), 6u);  // the four channels in several spellings
  EXPECT_GT(upper_emails, 100);
  EXPECT_GT(spaced_emails, 100);
  EXPECT_GT(non_ascii_names, 1000);
  EXPECT_GT(intl_phones, 100);
  EXPECT_GT(yes, 20);
  EXPECT_GT(notes, 800);
  EXPECT_GT(combining, 10);
}

TEST(RecordGeneratorTest, InvalidRecordsNameTheirDefectAndCoverEveryKind) {
  CustomerGenerator gen({.seed = 9, .duplicate_share = 0.0, .invalid_share = 1.0});
  std::set<std::string> defects;
  for (uint64_t i = 0; i < 2000; ++i) {
    GeneratedRecord r = gen.generate(i);
    ASSERT_FALSE(r.valid);
    ASSERT_FALSE(r.defect.empty());
    defects.insert(r.defect);
    boost::system::error_code ec;
    boost::json::parse(r.json, ec);
    EXPECT_FALSE(ec) << "invalid records are still parseable JSON: " << r.json;
    EXPECT_EQ(r.external_id.rfind("cus-", 0), std::string::npos) << "separate id space";
  }
  EXPECT_EQ(defects,
            (std::set<std::string>{"email", "name", "created_at", "external_id", "channel",
                                   "favourite_colour", "phone", "consent_marketing", "notes"}));
}

TEST(RecordGeneratorTest, ValidUniqueIdsMatchTheStream) {
  CustomerGenerator gen({.seed = 21, .duplicate_share = 0.2, .invalid_share = 0.1});
  std::vector<std::string> expected;
  for (uint64_t i = 0; i < 3000; ++i) {
    GeneratedRecord r = gen.generate(i);
    if (r.valid && !r.duplicate) expected.push_back(r.external_id);
  }
  EXPECT_EQ(gen.validUniqueIds(3000), expected);
}

}  // namespace
}  // namespace branchline::loadgen
