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
max_inflate_ratio = 1000        # inflated / received body bytes; 0: no ratio bound
max_records_per_batch = 100000
max_traversal_words = 0         # Cap'n Proto read budget; 0: max_inflated_bytes / 4 + 1024
max_nesting = 16                # Cap'n Proto pointer nesting

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
brokers = ["ssl://10.0.0.1:8883", "ssl://10.0.0.2:8883"]
topic_prefix = "acme/v1"
share_group = "pair"
ca_file = "/pki/ca.crt"
cert_file = "/pki/aggregators/agg-b.crt"
key_file = "/pki/aggregators/agg-b.key"
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
  EXPECT_EQ(c->ca_file, "/pki/ca.crt");
  EXPECT_EQ(c->cert_file, "/pki/aggregators/agg-b.crt");
  EXPECT_EQ(c->key_file, "/pki/aggregators/agg-b.key");
  EXPECT_EQ(c->topic_prefix, "acme/v1");
  EXPECT_EQ(c->share_group, "pair");
  EXPECT_EQ(c->max_message_bytes, 1000u);
  EXPECT_EQ(c->max_inflated_bytes, 2000u);
  EXPECT_EQ(c->max_records_per_batch, 30u);
  EXPECT_EQ(c->commit_max_batches, 4u);
}

// README "Input limits": the decode limits, including Cap'n Proto's, are keys.
TEST(AggregatorConfig, InputLimitsAreKeysAndReachTheDecodeLimits) {
  auto d = parseAggregatorConfig(kMinimal, "agg.toml");
  ASSERT_TRUE(d.isOk()) << d.status().toString();
  EXPECT_EQ(d->max_inflate_ratio, 1000u);
  EXPECT_EQ(d->max_traversal_words, 0u);
  EXPECT_EQ(d->max_nesting, 16u);
  protocol::DecodeLimits dl = d->decodeLimits();
  EXPECT_EQ(dl.max_inflate_ratio, 1000.0);
  EXPECT_EQ(dl.max_traversal_words, 67108864u / 8 * 2 + 1024);  // derived from the inflated bound
  EXPECT_EQ(dl.max_nesting, 16);

  auto c = parseAggregatorConfig(std::string(kMinimal) +
                                     "[limits]\nmax_inflate_ratio = 50\nmax_traversal_words = "
                                     "123456\nmax_nesting = 8\nmax_records_per_batch = 9\n",
                                 "agg.toml");
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  protocol::DecodeLimits l = c->decodeLimits();
  EXPECT_EQ(l.max_inflate_ratio, 50.0);
  EXPECT_EQ(l.max_traversal_words, 123456u);
  EXPECT_EQ(l.max_nesting, 8);
  EXPECT_EQ(l.max_records, 9u);
  auto off = parseAggregatorConfig(std::string(kMinimal) + "[limits]\nmax_inflate_ratio = 0\n",
                                   "agg.toml");
  ASSERT_TRUE(off.isOk()) << off.status().toString();
  EXPECT_EQ(off->decodeLimits().max_inflate_ratio, 0.0);

  EXPECT_NE(errorOf(std::string(kMinimal) + "[limits]\nmax_nesting = 2\n")
                .find("`limits.max_nesting` must be between 4 and 1024"),
            std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) + "[limits]\nmax_inflate_ratio = -1\n")
                .find("`limits.max_inflate_ratio`"),
            std::string::npos);
}

// A config file is bounded before it is parsed; hostile TOML is an error, never a crash.
TEST(AggregatorConfig, HugeOrDeepConfigsAreRefusedGracefully) {
  std::string tmpl = "/tmp/bl_aggcfg_test_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  std::filesystem::path dir = tmpl;
  { std::ofstream(dir / "big.toml") << kMinimal << "# " << std::string(2 << 20, 'x') << "\n"; }
  auto big = loadAggregatorConfig(dir / "big.toml");
  ASSERT_FALSE(big.isOk());
  EXPECT_EQ(big.status().code(), Code::kInvalidArgument);
  EXPECT_NE(big.status().message().find("is larger than 1048576 bytes"), std::string::npos)
      << big.status().toString();
  std::filesystem::remove_all(dir);

  std::string dotted = "a";
  for (int i = 0; i < 300000; ++i) dotted += ".a";
  std::string e = errorOf(std::string(kMinimal) + "[" + dotted + "]\n");
  EXPECT_NE(e.find("agg.toml: line 7: a dotted key deeper than 32 levels"), std::string::npos) << e;
  e = errorOf(std::string(kMinimal) + "x = " + std::string(100000, '[') + std::string(100000, ']') +
              "\n");
  EXPECT_NE(e.find("not valid TOML"), std::string::npos) << e;
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

// README "Security": ssl:// brokers need all three files (relative ones resolve
// against the config's folder); TLS files with plain brokers, or a mix, are refused.
TEST(AggregatorConfig, MqttTlsFilesGoWithSslBrokers) {
  const std::string base = std::string(kMinimal) + "[mqtt]\n";
  EXPECT_NE(errorOf(base + "brokers = [\"ssl://h:8883\"]\nca_file = \"c\"\ncert_file = \"d\"\n")
                .find("mqtt.key_file` is required with ssl://"),
            std::string::npos);
  EXPECT_NE(errorOf(base + "ca_file = \"c\"\n").find("no broker URI is ssl://"), std::string::npos);
  EXPECT_NE(errorOf(base + "brokers = [\"ssl://a:1\", \"tcp://b:2\"]\nca_file = \"c\"\n"
                           "cert_file = \"d\"\nkey_file = \"e\"\n")
                .find("mixes TLS"),
            std::string::npos);

  std::string tmpl = "/tmp/bl_aggcfg_tls_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  std::filesystem::path dir = tmpl;
  {
    std::ofstream(dir / "aggregator.toml")
        << base << "brokers = [\"ssl://h:8883\"]\nca_file = \"pki/ca.crt\"\n"
        << "cert_file = \"pki/aggregators/a.crt\"\nkey_file = \"/abs/a.key\"\n";
  }
  auto c = loadAggregatorConfig(dir / "aggregator.toml");
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  EXPECT_EQ(c->ca_file, (dir / "pki/ca.crt").string());
  EXPECT_EQ(c->cert_file, (dir / "pki/aggregators/a.crt").string());
  EXPECT_EQ(c->key_file, "/abs/a.key");
  std::filesystem::remove_all(dir);
}

// README "Security / Sealed batches": [security] keys, their defaults, the
// combinations refused (naming key and file) and paths resolved like the others.
TEST(AggregatorConfig, SecuritySealKeys) {
  auto plain = parseAggregatorConfig(kMinimal, "agg.toml");
  ASSERT_TRUE(plain.isOk());
  EXPECT_TRUE(plain->seal_keys.empty());
  EXPECT_FALSE(plain->require_sealed);

  const std::string sealed = std::string(kMinimal) + R"(
[security]
seal_keys = ["pki/aggregators/seal-new.key"]
retired_seal_keys = [{ file = "/pki/aggregators/seal-old.key", until = "2026-12-31T00:00:00Z" }]
agents_dir = "pki/agents"
)";
  auto c = parseAggregatorConfig(sealed, "agg.toml");
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  EXPECT_TRUE(c->require_sealed);  // the default once seal_keys is set
  ASSERT_EQ(c->retired_seal_keys.size(), 1u);
  EXPECT_EQ(c->retired_seal_keys[0].until_us, 1798675200000000);
  auto lax = parseAggregatorConfig(sealed + "require_sealed = false\n", "agg.toml");
  ASSERT_TRUE(lax.isOk()) << lax.status().toString();
  EXPECT_FALSE(lax->require_sealed);

  EXPECT_NE(
      errorOf(std::string(kMinimal) + "[security]\nseal_keys = [\"a.key\"]\n").find("agg.toml:"),
      std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) + "[security]\nseal_keys = [\"a.key\"]\n")
                .find("`security.agents_dir` is required with security.seal_keys"),
            std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) + "[security]\nrequire_sealed = true\n")
                .find("`security.require_sealed` is true but security.seal_keys is empty"),
            std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) +
                    "[security]\nretired_seal_keys = [{ file = \"o.key\", until = "
                    "\"2026-01-01T00:00:00Z\" }]\n")
                .find("`security.seal_keys` is required with security.retired_seal_keys"),
            std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) +
                    "[security]\nseal_keys = [\"a.key\"]\nagents_dir = \"d\"\n"
                    "retired_seal_keys = [{ file = \"o.key\", until = \"next week\" }]\n")
                .find("`until` must be an RFC 3339 time"),
            std::string::npos);
  EXPECT_NE(
      errorOf(std::string(kMinimal) + "[security]\nseal_keys = [\"a.key\"]\nagents_dir = \"d\"\n"
                                      "retired_seal_keys = [{ file = \"o.key\" }]\n")
          .find("security.retired_seal_keys"),
      std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) + "[security]\nseal_key = [\"a.key\"]\n")
                .find("security.seal_key"),
            std::string::npos);
  EXPECT_NE(errorOf(std::string(kMinimal) + "[security]\nrequire_sealed = \"yes\"\n")
                .find("`security.require_sealed` must be true or false"),
            std::string::npos);

  std::string tmpl = "/tmp/bl_aggcfg_seal_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  std::filesystem::path dir = tmpl;
  { std::ofstream(dir / "aggregator.toml") << sealed; }
  auto loaded = loadAggregatorConfig(dir / "aggregator.toml");
  ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
  EXPECT_EQ(loaded->seal_keys[0], (dir / "pki/aggregators/seal-new.key").string());
  EXPECT_EQ(loaded->retired_seal_keys[0].file, "/pki/aggregators/seal-old.key");
  EXPECT_EQ(loaded->agents_dir, (dir / "pki/agents").string());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace branchline::aggregator
