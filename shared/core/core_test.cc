#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "shared/core/clock.h"
#include "shared/core/metrics.h"
#include "shared/core/private_path.h"
#include "shared/core/status.h"

namespace branchline {
namespace {

TEST(StatusTest, CarriesCodeMessageAndContext) {
  Status s = Status::invalid("field `email`: not an email address").withContext("record 17");
  EXPECT_FALSE(s.isOk());
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.toString(), "invalid_argument: record 17: field `email`: not an email address");
  Result<int> r = Status::notFound("no such source");
  EXPECT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  Result<int> v = 5;
  ASSERT_TRUE(v.isOk());
  EXPECT_EQ(*v, 5);
}

mode_t modeOf(const std::filesystem::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

TEST(PrivatePathTest, CreatesPrivateAndNarrowsWiderModes) {
  char tmpl[] = "/tmp/bl-private-path-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::filesystem::path root = tmpl;
  auto created = makePrivateDirectory(root / "a" / "data");
  ASSERT_TRUE(created.isOk()) << created.status().toString();
  EXPECT_FALSE(*created);
  EXPECT_EQ(modeOf(root / "a" / "data"), 0700u);
  ASSERT_EQ(::chmod((root / "a" / "data").c_str(), 0755), 0);
  auto narrowed = makePrivateDirectory(root / "a" / "data");
  ASSERT_TRUE(narrowed.isOk());
  EXPECT_TRUE(*narrowed);
  EXPECT_EQ(modeOf(root / "a" / "data"), 0700u);

  const std::filesystem::path file = root / "store.db";
  EXPECT_FALSE(*narrowToPrivateFile(file));  // absent
  std::ofstream(file) << "x";
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  EXPECT_TRUE(*narrowToPrivateFile(file));
  EXPECT_EQ(modeOf(file), 0600u);
  EXPECT_FALSE(*narrowToPrivateFile(file));
  EXPECT_EQ(makePrivateDirectory(file).status().code(), Code::kInvalidArgument);
  std::filesystem::remove_all(root);
}

TEST(ClockTest, FormatsAndParsesRfc3339) {
  EXPECT_EQ(formatRfc3339Micros(0), "1970-01-01T00:00:00.000000Z");
  auto t = parseRfc3339Micros("2026-11-25T12:30:00.5+01:00");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(formatRfc3339Micros(*t), "2026-11-25T11:30:00.500000Z");
  EXPECT_EQ(parseRfc3339Micros("2024-02-29T00:00:00Z").has_value(), true);
  EXPECT_FALSE(parseRfc3339Micros("2023-02-29T00:00:00Z").has_value());
  EXPECT_FALSE(parseRfc3339Micros("2023-01-01 12:00").has_value());
  EXPECT_FALSE(parseRfc3339Micros("2023-01-01T12:00:00").has_value());  // no offset
  EXPECT_FALSE(parseRfc3339Micros("yesterday").has_value());
}

TEST(ClockTest, FormatterMatchesFormatRfc3339AcrossSeconds) {
  Rfc3339Formatter formatter;
  for (int64_t us :
       {int64_t{1764000000000000}, int64_t{1764000000000001}, int64_t{1764000000999999},
        int64_t{1764000001000000}, int64_t{-1}, int64_t{1764000001123456}}) {
    EXPECT_EQ(formatter.format(us), formatRfc3339Micros(us)) << us;
  }
}

TEST(MetricsTest, RendersPrometheusText) {
  MetricsRegistry reg;
  reg.counter("bl_records_accepted_total", "Records accepted").inc(3);
  reg.labeledCounter("bl_records_rejected_total", "Records rejected", "reason").with("email").inc();
  reg.callbackGauge("bl_buffer_records", "Records buffered", [] { return 42.0; });
  std::string text = reg.renderPrometheus();
  EXPECT_NE(text.find("bl_records_accepted_total 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("bl_records_rejected_total{reason=\"email\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("bl_buffer_records 42\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE bl_records_accepted_total counter"), std::string::npos);
}

}  // namespace
}  // namespace branchline
