#include "aggregator/config/aggregator_config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace branchline::aggregator {
namespace {

constexpr const char* kMinimal = R"(
[aggregator]
name = "agg-a"
data_dir = "/var/lib/branchline/aggregator"
[store]
url = "sqlite:///var/lib/branchline/central.db"
)";

// README "Configuration / Aggregator", verbatim.
constexpr const char* kReadmeExample = R"(
[aggregator]
name = "agg-a"               # required; stamped on acks and the ledger
data_dir = "/var/lib/branchline/aggregator"   # required

[http]
listen = "127.0.0.1:9090"

[mqtt]
brokers = ["tcp://127.0.0.1:1883"]
topic_prefix = "branchline/v1"
share_group = "branchline-aggregators"

[store]
url = "sqlite:///var/lib/branchline/central.db"   # required

[limits]
max_message_bytes = 16777216    # MQTT payload
max_inflated_bytes = 67108864   # body after decompression
max_records_per_batch = 100000

[commit]
max_batches = 16             # batches committed in one store transaction
)";

std::string errorOf(const std::string& text) {
  auto c = parseAggregatorConfig(text, "agg.toml");
  EXPECT_FALSE(c.isOk()) << text;
  if (c.isOk()) return "";
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
  return c.status().message();
}

TEST(AggregatorConfig, MinimalConfigTakesDocumentedDefaults) {
  auto c = parseAggregatorConfig(kMinimal, "agg.toml");
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  EXPECT_EQ(c->name, "agg-a");
  EXPECT_EQ(c->data_dir, "/var/lib/branchline/aggregator");
  EXPECT_EQ(c->store_url, "sqlite:///var/lib/branchline/central.db");
  EXPECT_EQ(c->http_host, "127.0.0.1");
  EXPECT_EQ(c->http_port, 9090);
  EXPECT_EQ(c->brokers, std::vector<std::string>{"tcp://127.0.0.1:1883"});
  EXPECT_EQ(c->topic_prefix, "branchline/v1");
  EXPECT_EQ(c->share_group, "branchline-aggregators");
  EXPECT_EQ(c->max_message_bytes, 16777216u);
  EXPECT_EQ(c->max_inflated_bytes, 67108864u);
  EXPECT_EQ(c->max_records_per_batch, 100000u);
  EXPECT_EQ(c->commit_max_batches, 16u);
  protocol::DecodeLimits l = c->decodeLimits();
  EXPECT_EQ(l.max_message_bytes, 16777216u);
  EXPECT_EQ(l.max_inflated_bytes, 67108864u);
  EXPECT_EQ(l.max_records, 100000u);
}

TEST(AggregatorConfig, ReadmeExampleParses) {
  auto c = parseAggregatorConfig(kReadmeExample, "agg.toml");
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  EXPECT_EQ(c->commit_max_batches, 16u);
}

TEST(AggregatorConfig, ReadsEveryKey) {
  auto c = parseAggregatorConfig(R"(
[aggregator]
name = "agg-b"
data_dir = "/tmp/x"
[http]
listen = "0.0.0.0:0"
[mqtt]
brokers = ["tcp://10.0.0.1:1883", "ssl://10.0.0.2:8883"]
topic_prefix = "acme/v1"
share_group = "pair"
[store]
url = "sqlite:///tmp/x/central.db"
[limits]
max_message_bytes = 1000
max_inflated_bytes = 2000
max_records_per_batch = 30
[commit]
max_batches = 4
)",
                                 "agg.toml");
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  EXPECT_EQ(c->http_host, "0.0.0.0");
  EXPECT_EQ(c->http_port, 0);
  EXPECT_EQ(c->brokers.size(), 2u);
  EXPECT_EQ(c->brokers[1], "ssl://10.0.0.2:8883");
  EXPECT_EQ(c->topic_prefix, "acme/v1");
  EXPECT_EQ(c->share_group, "pair");
  EXPECT_EQ(c->max_message_bytes, 1000u);
  EXPECT_EQ(c->max_inflated_bytes, 2000u);
  EXPECT_EQ(c->max_records_per_batch, 30u);
  EXPECT_EQ(c->commit_max_batches, 4u);
}

TEST(AggregatorConfig, MissingRequiredKeysAreNamed) {
  EXPECT_NE(errorOf("[aggregator]\ndata_dir = \"/d\"\n[store]\nurl = \"sqlite:///a.db\"\n")
                .find("`aggregator.name` is required"),
            std::string::npos);
  EXPECT_NE(errorOf("[aggregator]\nname = \"a\"\n[store]\nurl = \"sqlite:///a.db\"\n")
                .find("`aggregator.data_dir` is required"),
            std::string::npos);
  EXPECT_NE(
      errorOf("[aggregator]\nname = \"a\"\ndata_dir = \"/d\"\n").find("`store.url` is required"),
      std::string::npos);
}

TEST(AggregatorConfig, UnknownKeysAreErrorsNamingThePath) {
  std::string e = errorOf(std::string(kMinimal) + "[commit]\nmax_batch = 4\n");
  EXPECT_NE(e.find("`commit.max_batch` is not a known key"), std::string::npos) << e;
  EXPECT_NE(e.find("agg.toml:8"), std::string::npos) << e;  // the line of the typo
  e = errorOf(std::string(kMinimal) + "[storage]\nurl = \"x\"\n");
  EXPECT_NE(e.find("`storage`"), std::string::npos) << e;
  e = errorOf(std::string("verbose = true\n") + kMinimal);
  EXPECT_NE(e.find("`verbose`"), std::string::npos) << e;
}

TEST(AggregatorConfig, WrongTypesAndRangesAreErrorsNamingTheKey) {
  auto with = [](const std::string& extra) { return std::string(kMinimal) + extra; };
  EXPECT_NE(errorOf(with("[commit]\nmax_batches = \"16\"\n"))
                .find("`commit.max_batches` must be an integer"),
            std::string::npos);
  EXPECT_NE(
      errorOf(with("[commit]\nmax_batches = 0\n")).find("`commit.max_batches` must be between"),
      std::string::npos);
  EXPECT_NE(errorOf(with("[limits]\nmax_message_bytes = -5\n")).find("`limits.max_message_bytes`"),
            std::string::npos);
  EXPECT_NE(
      errorOf(with("[mqtt]\nbrokers = \"tcp://x:1\"\n")).find("`mqtt.brokers` must be an array"),
      std::string::npos);
  EXPECT_NE(errorOf(with("[mqtt]\nbrokers = []\n")).find("`mqtt.brokers`"), std::string::npos);
  EXPECT_NE(errorOf(with("[mqtt]\nbrokers = [\"localhost\"]\n")).find("`mqtt.brokers`"),
            std::string::npos);
  EXPECT_NE(errorOf(with("[mqtt]\ntopic_prefix = \"a/+/b\"\n")).find("`mqtt.topic_prefix`"),
            std::string::npos);
  EXPECT_NE(errorOf(with("[mqtt]\nshare_group = \"a/b\"\n")).find("`mqtt.share_group`"),
            std::string::npos);
  EXPECT_NE(errorOf(with("[http]\nlisten = \"9090\"\n")).find("`http.listen`"), std::string::npos);
  EXPECT_NE(errorOf(with("[http]\nlisten = \"127.0.0.1:70000\"\n")).find("`http.listen`"),
            std::string::npos);
  std::string e =
      errorOf("[aggregator]\nname = \"a\"\ndata_dir = \"/d\"\n[store]\nurl = \"mysql://db/x\"\n");
  EXPECT_NE(e.find("`store.url`"), std::string::npos) << e;
  EXPECT_NE(e.find("sqlite:///"), std::string::npos) << e;
  EXPECT_NE(e.find("postgresql://"), std::string::npos) << e;
  // A PostgreSQL URL libpq cannot parse is refused without echoing its password.
  e = errorOf(
      "[aggregator]\nname = \"a\"\ndata_dir = \"/d\"\n[store]\n"
      "url = \"postgresql://u:hunter2@db/x?bogus=1\"\n");
  EXPECT_NE(e.find("`store.url`"), std::string::npos) << e;
  EXPECT_EQ(e.find("hunter2"), std::string::npos) << e;
  e = errorOf(
      "[aggregator]\nname = \"agg a\"\ndata_dir = \"/d\"\n[store]\nurl = \"sqlite:///a\"\n");
  EXPECT_NE(e.find("`aggregator.name`"), std::string::npos) << e;
}

TEST(AggregatorConfig, AcceptsPostgresStoreUrls) {
  for (const char* url : {"postgresql://branchline@db.example:5432/central",
                          "postgres://branchline:secret@db/central?sslmode=require"}) {
    auto c = parseAggregatorConfig(
        std::string("[aggregator]\nname = \"a\"\ndata_dir = \"/d\"\n[store]\nurl = \"") + url +
            "\"\n",
        "agg.toml");
    ASSERT_TRUE(c.isOk()) << url << ": " << c.status().toString();
    EXPECT_EQ(c->store_url, url);
  }
}

TEST(AggregatorConfig, BrokenTomlIsAnErrorWithTheLine) {
  std::string e = errorOf("[aggregator]\nname = \"a\n");
  EXPECT_NE(e.find("agg.toml:2"), std::string::npos) << e;
  EXPECT_NE(e.find("not valid TOML"), std::string::npos) << e;
}

TEST(AggregatorConfig, LoadsFromFileAndReportsAMissingFile) {
  std::string tmpl = "/tmp/bl_aggcfg_test_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  std::filesystem::path dir = tmpl;
  { std::ofstream(dir / "aggregator.toml") << kMinimal; }
  auto c = loadAggregatorConfig(dir / "aggregator.toml");
  EXPECT_TRUE(c.isOk()) << c.status().toString();
  auto missing = loadAggregatorConfig(dir / "nope.toml");
  ASSERT_FALSE(missing.isOk());
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.toml"), std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace branchline::aggregator
