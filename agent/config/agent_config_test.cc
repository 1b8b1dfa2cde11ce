#include "agent/config/agent_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace branchline::agent {
namespace {

using namespace std::chrono_literals;

// The agent example from README "Configuration / Agent", verbatim.
constexpr std::string_view kReadmeExample = R"toml(
[agent]
id = "office-1"              # required; [A-Za-z0-9_-]{1,64}; names its MQTT topics
data_dir = "/var/lib/branchline/agent"   # required; buffer.db and spool/ live here

[http]
listen = "127.0.0.1:8080"    # host:port; port 0 picks a free one
max_body_bytes = 8388608     # past it: 413
max_depth = 32               # JSON nesting past it: 400
max_records_per_request = 10000
max_record_bytes = 262144    # one record; past it that record is rejected
max_field_bytes = 65536      # one string value; past it its record is rejected
max_header_bytes = 16384     # past it: 431
header_timeout_ms = 10000    # the whole header must arrive within this: else 408
body_timeout_ms = 60000      # the whole body must arrive within this: else 408
min_body_bytes_per_second = 1024   # after the body's first second; 0: no floor
idle_timeout_ms = 30000      # a kept-alive connection with no request is closed
max_connections = 256        # past it: 503
max_connections_per_client = 128   # from one address; 0: no cap

[mqtt]
brokers = ["tcp://127.0.0.1:1883"]   # tried in order on failure
topic_prefix = "branchline/v1"

[buffer]
max_bytes = 1073741824       # past it: 503 with Retry-After (counts plaintext bytes)
key_file = ""                # default: <data_dir>/buffer.key ; relative to this file's folder.

[batch]
max_records = 2000
max_bytes = 524288           # uncompressed payload bytes per batch
linger_ms = 100              # a partial batch leaves after this long
window_batches = 8           # unacked batches in flight
window_bytes = 1048576       # compressed bytes in flight
ack_timeout_ms = 10000       # resend an unacked batch after this
zstd_level = 1

[spool]
enabled = true
dir = ""                     # default: <data_dir>/spool ; files go in spool/<source>/
poll_ms = 500
max_file_bytes = 67108864    # a file past any of these three goes to failed/
max_line_bytes = 1048576
max_records_per_file = 200000
owner = ""                   # user name or uid spool files must be owned by; default: the agent's user
keep_done = false            # true: keep committed files in done/ (mode 0600); default: delete them

[health]                     # when GET /health answers 503 degraded (GET /healthz stays 200)
broker_unreachable_ms = 30000   # no MQTT connection for longer: broker_unreachable
acks_stalled_ms = 60000      # batches wait and no ack for longer: acks_stalled
buffer_full_ratio = 0.9      # buffer bytes past this share of [buffer] max_bytes: buffer_nearly_full

# Sources. Without any [sources.*] table the built-in `customer` source is used.
[sources.customer]
key = ["external_id"]        # record key fields; empty: hash of the normalized record
unknown_fields = "reject"    # keep | drop | reject
[sources.customer.fields.external_id]
type = "string"              # string|email|phone|timestamp|enum|integer|decimal|boolean
required = true
max_length = 128
# pattern = "^[A-Za-z0-9-]+$"   # regex the whole value must match
# values = ["web","mobile"]     # for enum
# region = "US"                 # for phone: default region
)toml";

constexpr std::string_view kMinimal = "[agent]\nid = \"a1\"\ndata_dir = \"/d\"\n";

Status parseError(std::string_view text) {
  auto r = parseAgentConfig(text, "/etc/branchline");
  EXPECT_FALSE(r.isOk()) << "expected an error for:\n" << text;
  return r.status();
}

std::string withMinimal(std::string_view extra) {
  return std::string(kMinimal) + std::string(extra);
}

TEST(AgentConfigTest, ReadmeExampleParses) {
  auto r = parseAgentConfig(kReadmeExample, "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  const AgentConfig& c = *r;
  EXPECT_EQ(c.id, "office-1");
  EXPECT_EQ(c.data_dir, "/var/lib/branchline/agent");
  EXPECT_EQ(c.http.host, "127.0.0.1");
  EXPECT_EQ(c.http.port, 8080);
  EXPECT_EQ(c.http.max_body_bytes, 8388608u);
  EXPECT_EQ(c.mqtt.brokers, std::vector<std::string>{"tcp://127.0.0.1:1883"});
  EXPECT_EQ(c.batch.window_bytes, 1048576u);
  EXPECT_EQ(c.batch.ack_timeout, 10000ms);
  EXPECT_EQ(c.spool.dir, "/var/lib/branchline/agent/spool");
  EXPECT_EQ(c.buffer.key_file, "/var/lib/branchline/agent/buffer.key");
  EXPECT_EQ(c.health.broker_unreachable, 30000ms);
  EXPECT_EQ(c.health.acks_stalled, 60000ms);
  EXPECT_EQ(c.health.buffer_full_ratio, 0.9);
  ASSERT_EQ(c.sources.size(), 1u);
  EXPECT_EQ(c.sources[0].name, "customer");
  EXPECT_EQ(c.sources[0].key_fields, std::vector<std::string>{"external_id"});
}

TEST(AgentConfigTest, BufferKeyFileResolvesAgainstTheConfigFolder) {
  auto r =
      parseAgentConfig(withMinimal("[buffer]\nkey_file = \"keys/agent.key\"\n"), "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->buffer.key_file, "/etc/branchline/keys/agent.key");
  auto abs = parseAgentConfig(withMinimal("[buffer]\nkey_file = \"/secure/k\"\n"), "/etc/x");
  ASSERT_TRUE(abs.isOk()) << abs.status().toString();
  EXPECT_EQ(abs->buffer.key_file, "/secure/k");
}

TEST(AgentConfigTest, DefaultsForEverythingButTheRequiredKeys) {
  auto r = parseAgentConfig(kMinimal, "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  const AgentConfig& c = *r;
  const AgentConfig d;  // the struct's defaults are the README's
  EXPECT_EQ(c.http.port, 8080);
  EXPECT_EQ(c.http.max_depth, 32);
  EXPECT_EQ(c.http.max_records_per_request, 10000u);
  EXPECT_EQ(c.mqtt.topic_prefix, "branchline/v1");
  EXPECT_EQ(c.buffer.max_bytes, 1ull << 30);
  EXPECT_EQ(c.batch.max_records, 2000u);
  EXPECT_EQ(c.batch.max_bytes, 524288u);
  EXPECT_EQ(c.batch.linger, 100ms);
  EXPECT_EQ(c.batch.window_batches, 8u);
  EXPECT_EQ(c.batch.zstd_level, d.batch.zstd_level);
  EXPECT_TRUE(c.spool.enabled);
  EXPECT_EQ(c.spool.poll, 500ms);
  EXPECT_EQ(c.spool.dir, "/d/spool");
  EXPECT_EQ(c.spool.owner, "");
  EXPECT_FALSE(c.spool.keep_done);
  // No [sources.*]: the built-in customer source.
  ASSERT_EQ(c.sources.size(), 1u);
  EXPECT_EQ(c.sources[0].name, "customer");
  EXPECT_FALSE(c.sources[0].fields.empty());
}

TEST(AgentConfigTest, HealthThresholdsHaveDefaultsAndAreChecked) {
  auto d = parseAgentConfig(kMinimal, "/etc/branchline");
  ASSERT_TRUE(d.isOk()) << d.status().toString();
  EXPECT_EQ(d->health.broker_unreachable, 30s);
  EXPECT_EQ(d->health.acks_stalled, 60s);
  EXPECT_EQ(d->health.buffer_full_ratio, 0.9);

  auto r = parseAgentConfig(withMinimal("[health]\nbroker_unreachable_ms = 250\n"
                                        "acks_stalled_ms = 400\nbuffer_full_ratio = 1\n"),
                            "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->health.broker_unreachable, 250ms);
  EXPECT_EQ(r->health.acks_stalled, 400ms);
  EXPECT_EQ(r->health.buffer_full_ratio, 1.0);

  EXPECT_EQ(parseError(withMinimal("[health]\nbroker_unreachable = 5\n")).message(),
            "unknown key `health.broker_unreachable`");
  EXPECT_EQ(parseError(withMinimal("[health]\nacks_stalled_ms = 50\n")).message(),
            "health.acks_stalled_ms: must be between 100 and 86400000");
  EXPECT_EQ(parseError(withMinimal("[health]\nbroker_unreachable_ms = \"30s\"\n")).message(),
            "health.broker_unreachable_ms: must be an integer");
  EXPECT_EQ(parseError(withMinimal("[health]\nbuffer_full_ratio = \"90%\"\n")).message(),
            "health.buffer_full_ratio: must be a number");
  for (const char* bad : {"0", "0.0", "-0.5", "1.5", "nan"}) {
    EXPECT_EQ(parseError(withMinimal(std::string("[health]\nbuffer_full_ratio = ") + bad + "\n"))
                  .message(),
              "health.buffer_full_ratio: must be greater than 0 and at most 1")
        << bad;
  }
  EXPECT_EQ(parseError("health = 3\n" + std::string(kMinimal)).message(),
            "health: must be a table");
}

TEST(AgentConfigTest, SpoolOwnerAndKeepDone) {
  auto r = parseAgentConfig(withMinimal("[spool]\nowner = \"partner\"\nkeep_done = true\n"),
                            "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->spool.owner, "partner");
  EXPECT_TRUE(r->spool.keep_done);
  EXPECT_EQ(parseError(withMinimal("[spool]\nkeep_done = \"yes\"\n")).message(),
            "spool.keep_done: must be true or false");
  EXPECT_EQ(parseError(withMinimal("[spool]\nowner = 1000\n")).message(),
            "spool.owner: must be a string");
}

TEST(AgentConfigTest, RelativePathsResolveAgainstTheConfigFolder) {
  auto r = parseAgentConfig("[agent]\nid = \"a\"\ndata_dir = \"data\"\n[spool]\ndir = \"../in\"\n",
                            "/etc/bl");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->data_dir, "/etc/bl/data");
  EXPECT_EQ(r->spool.dir, "/etc/in");
}

TEST(AgentConfigTest, ListenForms) {
  auto r = parseAgentConfig(withMinimal("[http]\nlisten = \"[::1]:0\"\n"), "/");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->http.host, "::1");
  EXPECT_EQ(r->http.port, 0);
  for (const char* bad : {"127.0.0.1", "127.0.0.1:http", ":80", "1.2.3.4:70000", "::1:80"}) {
    Status s = parseError(withMinimal(std::string("[http]\nlisten = \"") + bad + "\"\n"));
    EXPECT_NE(s.message().find("http.listen"), std::string::npos) << s.toString();
  }
}

TEST(AgentConfigTest, MissingRequiredKeysAreNamed) {
  EXPECT_NE(parseError("").message().find("agent.id: required"), std::string::npos);
  EXPECT_NE(parseError("[agent]\ndata_dir = \"/d\"\n").message().find("agent.id: required"),
            std::string::npos);
  EXPECT_NE(parseError("[agent]\nid = \"a\"\n").message().find("agent.data_dir: required"),
            std::string::npos);
}

TEST(AgentConfigTest, AgentIdIsValidated) {
  for (std::string bad : {std::string(""), std::string("has space"), std::string("a/b"),
                          std::string("ünï"), std::string(65, 'x')}) {
    Status s = parseError("[agent]\nid = \"" + bad + "\"\ndata_dir = \"/d\"\n");
    EXPECT_EQ(s.code(), Code::kInvalidArgument);
    EXPECT_NE(s.message().find("agent.id"), std::string::npos) << s.toString();
  }
  EXPECT_TRUE(
      parseAgentConfig("[agent]\nid = \"" + std::string(64, 'x') + "\"\ndata_dir = \"/d\"", "/")
          .isOk());
}

TEST(AgentConfigTest, UnknownKeysAreErrorsNamingThePath) {
  EXPECT_EQ(parseError(withMinimal("[batch]\nmax_record = 5\n")).message(),
            "unknown key `batch.max_record`");
  EXPECT_EQ(parseError(withMinimal("[htp]\nlisten = \"x:1\"\n")).message(), "unknown key `htp`");
  EXPECT_EQ(parseError("[agent]\nid = \"a\"\ndata_dir = \"/d\"\nname = \"x\"\n").message(),
            "unknown key `agent.name`");
  EXPECT_EQ(parseError(withMinimal("[spool]\nenabled = true\n[spool.extra]\nx = 1\n")).message(),
            "unknown key `spool.extra`");
}

TEST(AgentConfigTest, WrongTypesNameTheKey) {
  EXPECT_EQ(parseError(withMinimal("[batch]\nmax_records = \"2000\"\n")).message(),
            "batch.max_records: must be an integer");
  EXPECT_EQ(parseError(withMinimal("[spool]\nenabled = 1\n")).message(),
            "spool.enabled: must be true or false");
  EXPECT_EQ(parseError(withMinimal("[mqtt]\nbrokers = \"tcp://h:1\"\n")).message(),
            "mqtt.brokers: must be an array of strings");
  EXPECT_EQ(parseError(withMinimal("[mqtt]\nbrokers = [\"tcp://h:1\", 2]\n")).message(),
            "mqtt.brokers[1]: must be a string");
  EXPECT_EQ(parseError("agent = 5\n").message(), "agent: must be a table");
  EXPECT_EQ(parseError("[agent]\nid = 7\ndata_dir = \"/d\"\n").message(),
            "agent.id: must be a string");
}

TEST(AgentConfigTest, OutOfRangeValuesNameTheKeyAndTheBound) {
  EXPECT_EQ(parseError(withMinimal("[batch]\nmax_records = 0\n")).message(),
            "batch.max_records: must be between 1 and 100000");
  EXPECT_EQ(parseError(withMinimal("[batch]\nmax_records = 100001\n")).message(),
            "batch.max_records: must be between 1 and 100000");
  EXPECT_NE(
      parseError(withMinimal("[batch]\nzstd_level = 30\n")).message().find("batch.zstd_level"),
      std::string::npos);
  EXPECT_NE(parseError(withMinimal("[batch]\nack_timeout_ms = -1\n"))
                .message()
                .find("batch.ack_timeout_ms: must be between"),
            std::string::npos);
  EXPECT_NE(
      parseError(withMinimal("[buffer]\nmax_bytes = 10\n")).message().find("buffer.max_bytes"),
      std::string::npos);
  EXPECT_NE(parseError(withMinimal("[http]\nmax_depth = 0\n")).message().find("http.max_depth"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[mqtt]\nbrokers = []\n")).message().find("mqtt.brokers"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[mqtt]\nbrokers = [\"localhost:1883\"]\n"))
                .message()
                .find("mqtt.brokers[0]"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[mqtt]\ntopic_prefix = \"a/#\"\n"))
                .message()
                .find("mqtt.topic_prefix"),
            std::string::npos);
}

TEST(AgentConfigTest, SyntaxErrorsGiveTheLine) {
  Status s = parseError("[agent]\nid = \"a\"\ndata_dir = \n");
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("line 3"), std::string::npos) << s.toString();
}

TEST(AgentConfigTest, SourceErrorsComeFromTheRuleParserWithTheirKey) {
  Status s = parseError(withMinimal(
      "[sources.customer]\nkey = [\"id\"]\n[sources.customer.fields.id]\ntype = \"mail\"\n"));
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("sources.customer.fields.id.type"), std::string::npos) << s.toString();
}

TEST(AgentConfigTest, LoadReadsAFileAndNamesItOnError) {
  char tmpl[] = "/tmp/bl-config-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::filesystem::path dir = tmpl;
  {
    std::ofstream(dir / "agent.toml") << "[agent]\nid = \"o\"\ndata_dir = \"state\"\n";
    std::ofstream(dir / "bad.toml") << "[agent]\nid = \"o\"\ndata_dir = \"state\"\n[x]\n";
  }
  auto ok = loadAgentConfig(dir / "agent.toml");
  ASSERT_TRUE(ok.isOk()) << ok.status().toString();
  EXPECT_EQ(ok->data_dir, dir / "state");
  auto bad = loadAgentConfig(dir / "bad.toml");
  ASSERT_FALSE(bad.isOk());
  EXPECT_NE(bad.status().message().find("bad.toml"), std::string::npos);
  EXPECT_NE(bad.status().message().find("unknown key `x`"), std::string::npos);
  auto missing = loadAgentConfig(dir / "nope.toml");
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  std::filesystem::remove_all(dir);
}

// README "Input limits": every HTTP and spool limit is a key, with its default.
TEST(AgentConfigTest, InputLimitsAreKeysWithDefaults) {
  auto d = parseAgentConfig(kMinimal, "/etc/branchline");
  ASSERT_TRUE(d.isOk()) << d.status().toString();
  EXPECT_EQ(d->http.max_record_bytes, 262144u);
  EXPECT_EQ(d->http.max_field_bytes, 65536u);
  EXPECT_EQ(d->http.max_header_bytes, 16384u);
  EXPECT_EQ(d->http.header_timeout, 10000ms);
  EXPECT_EQ(d->http.body_timeout, 60000ms);
  EXPECT_EQ(d->http.min_body_bytes_per_second, 1024u);
  EXPECT_EQ(d->http.idle_timeout, 30000ms);
  EXPECT_EQ(d->http.max_connections, 256u);
  EXPECT_EQ(d->http.max_connections_per_client, 128u);
  EXPECT_EQ(d->spool.max_file_bytes, 64u << 20);
  EXPECT_EQ(d->spool.max_line_bytes, 1u << 20);
  EXPECT_EQ(d->spool.max_records_per_file, 200000u);

  auto r = parseAgentConfig(withMinimal("[http]\nmax_record_bytes = 4096\nmax_field_bytes = 512\n"
                                        "max_header_bytes = 8192\nheader_timeout_ms = 2000\n"
                                        "body_timeout_ms = 5000\nmin_body_bytes_per_second = 0\n"
                                        "idle_timeout_ms = 1000\nmax_connections = 10\n"
                                        "max_connections_per_client = 0\n"
                                        "[spool]\nmax_file_bytes = 2048\nmax_line_bytes = 100\n"
                                        "max_records_per_file = 7\n"),
                            "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->http.max_record_bytes, 4096u);
  EXPECT_EQ(r->http.max_field_bytes, 512u);
  EXPECT_EQ(r->http.max_header_bytes, 8192u);
  EXPECT_EQ(r->http.header_timeout, 2000ms);
  EXPECT_EQ(r->http.body_timeout, 5000ms);
  EXPECT_EQ(r->http.min_body_bytes_per_second, 0u);
  EXPECT_EQ(r->http.idle_timeout, 1000ms);
  EXPECT_EQ(r->http.max_connections, 10u);
  EXPECT_EQ(r->http.max_connections_per_client, 0u);
  EXPECT_EQ(r->spool.max_file_bytes, 2048u);
  EXPECT_EQ(r->spool.max_line_bytes, 100u);
  EXPECT_EQ(r->spool.max_records_per_file, 7u);

  EXPECT_EQ(parseError(withMinimal("[http]\nmax_header_bytes = 10\n")).message(),
            "http.max_header_bytes: must be between 1024 and 1048576");
  EXPECT_EQ(parseError(withMinimal("[http]\nheader_timeout_ms = 0\n")).message(),
            "http.header_timeout_ms: must be between 100 and 3600000");
  EXPECT_EQ(parseError(withMinimal("[spool]\nmax_records_per_file = 0\n")).message(),
            "spool.max_records_per_file: must be between 1 and 100000000");
}

// A config file is bounded before it is parsed, and hostile TOML (deep
// nesting of every kind) is an error naming the problem, never a crash.
TEST(AgentConfigTest, HugeOrDeepConfigsAreRefusedGracefully) {
  char tmpl[] = "/tmp/bl-config-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::filesystem::path dir = tmpl;
  {
    std::ofstream big(dir / "big.toml");
    big << kMinimal << "# " << std::string(2 << 20, 'x') << "\n";
  }
  auto big = loadAgentConfig(dir / "big.toml");
  ASSERT_FALSE(big.isOk());
  EXPECT_EQ(big.status().code(), Code::kInvalidArgument);
  EXPECT_NE(big.status().message().find("is larger than 1048576 bytes"), std::string::npos)
      << big.status().toString();
  auto capped = loadAgentConfig(dir / "big.toml", 100);
  ASSERT_FALSE(capped.isOk());
  EXPECT_NE(capped.status().message().find("larger than 100 bytes"), std::string::npos);
  std::filesystem::remove_all(dir);

  std::string dotted = "a";
  for (int i = 0; i < 300000; ++i) dotted += ".a";
  EXPECT_NE(
      parseError(withMinimal(dotted + " = 1\n")).message().find("line 4: a dotted key deeper"),
      std::string::npos);
  EXPECT_NE(parseError(withMinimal("[" + dotted + "]\n")).message().find("dotted key deeper"),
            std::string::npos);
  EXPECT_NE(
      parseError(withMinimal("x = " + std::string(200000, '[') + std::string(200000, ']') + "\n"))
          .message()
          .find("nested value depth"),
      std::string::npos);
  std::string inline_tables = "x = ";
  for (int i = 0; i < 100000; ++i) inline_tables += "{a=";
  EXPECT_NE(parseError(withMinimal(inline_tables + "1" + std::string(100000, '}') + "\n"))
                .message()
                .find("nested value depth"),
            std::string::npos);
  // Dots inside strings and comments are not keys.
  const std::string many_dots(5000, '.');
  auto ok = parseAgentConfig("# " + many_dots + "\n[agent]\nid = \"a1\"\ndata_dir = \"/d/" +
                                 many_dots + "\"\n[mqtt]\ntopic_prefix = 'p" + many_dots +
                                 "'\n[batch] # " + many_dots + "\nmax_records = 10\n",
                             "/etc/branchline");
  ASSERT_TRUE(ok.isOk()) << ok.status().toString();
  EXPECT_EQ(ok->batch.max_records, 10u);
}

// README "Security": ssl:// brokers need all three files, resolved against the
// config's folder; TLS files with plain brokers, or a mix, are refused.
TEST(AgentConfigTest, MqttTlsFilesGoWithSslBrokers) {
  auto r = parseAgentConfig(withMinimal("[mqtt]\nbrokers = [\"ssl://127.0.0.1:8883\"]\n"
                                        "ca_file = \"pki/ca.crt\"\n"
                                        "cert_file = \"pki/agents/a1.crt\"\n"
                                        "key_file = \"/abs/a1.key\"\n"),
                            "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->mqtt.ca_file, "/etc/branchline/pki/ca.crt");
  EXPECT_EQ(r->mqtt.cert_file, "/etc/branchline/pki/agents/a1.crt");
  EXPECT_EQ(r->mqtt.key_file, "/abs/a1.key");

  EXPECT_NE(parseError(withMinimal("[mqtt]\nbrokers = [\"ssl://h:8883\"]\n"
                                   "ca_file = \"ca.crt\"\ncert_file = \"a.crt\"\n"))
                .message()
                .find("mqtt.key_file: required with ssl://"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[mqtt]\nca_file = \"ca.crt\"\n"))
                .message()
                .find("no broker URI is ssl://"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[mqtt]\nbrokers = [\"ssl://a:8883\", \"tcp://b:1883\"]\n"
                                   "ca_file = \"c\"\ncert_file = \"d\"\nkey_file = \"e\"\n"))
                .message()
                .find("mixes TLS"),
            std::string::npos);
}

// README "Security / Sealed batches": both [security] keys or neither; relative
// paths resolve against the config's folder.
TEST(AgentConfigTest, SecuritySealKeysComeInPairs) {
  auto plain = parseAgentConfig(kMinimal, "/etc/branchline");
  ASSERT_TRUE(plain.isOk());
  EXPECT_TRUE(plain->security.seal_key_file.empty());
  EXPECT_TRUE(plain->security.aggregator_key_file.empty());
  auto r = parseAgentConfig(withMinimal("[security]\nseal_key_file = \"pki/agents/a1.seal.key\"\n"
                                        "aggregator_key_file = \"/pki/aggregators/seal.pub\"\n"),
                            "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->security.seal_key_file, "/etc/branchline/pki/agents/a1.seal.key");
  EXPECT_EQ(r->security.aggregator_key_file, "/pki/aggregators/seal.pub");
  EXPECT_NE(parseError(withMinimal("[security]\naggregator_key_file = \"s.pub\"\n"))
                .message()
                .find("security.seal_key_file: required when security.aggregator_key_file"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[security]\nseal_key_file = \"a.key\"\n"))
                .message()
                .find("security.aggregator_key_file: required"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[security]\nseal_key = \"a.key\"\n"))
                .message()
                .find("security.seal_key"),
            std::string::npos);
  EXPECT_NE(parseError(withMinimal("[security]\nseal_key_file = 3\n"))
                .message()
                .find("security.seal_key_file: must be a string"),
            std::string::npos);
}

// README "Authenticated ingest": the access keys of a source, and HTTPS.
TEST(AgentConfigTest, SourceAccessKeysAndIngestTls) {
  auto plain = parseAgentConfig(kMinimal, "/etc/branchline");
  ASSERT_TRUE(plain.isOk());
  ASSERT_EQ(plain->access.size(), 1u);
  EXPECT_EQ(plain->access[0].source, "customer");
  EXPECT_FALSE(plain->access[0].open) << "a token is needed by default";
  EXPECT_EQ(plain->tokenFile(), plain->data_dir / "ingest_tokens");

  const std::string form = R"(
[sources.intake]
auth = "none"
rate_limit_per_minute = 30
cors_origins = ["https://forms.example.com", "http://localhost:8000"]
form_redirect = "https://example.com/thanks"
key = ["ref"]
[sources.intake.fields.ref]
type = "string"
required = true
[sources.partner]
key = ["ref"]
[sources.partner.fields.ref]
type = "string"
required = true
)";
  auto r = parseAgentConfig(withMinimal(form), "/etc/branchline");
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  ASSERT_EQ(r->access.size(), 2u);
  ASSERT_EQ(r->sources.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(r->access[i].source, r->sources[i].name);
  const auto& intake = r->access[0].source == "intake" ? r->access[0] : r->access[1];
  const auto& partner = r->access[0].source == "intake" ? r->access[1] : r->access[0];
  EXPECT_TRUE(intake.open);
  EXPECT_EQ(intake.rate_limit_per_minute, 30u);
  EXPECT_EQ(intake.cors_origins.size(), 2u);
  EXPECT_EQ(intake.form_redirect, "https://example.com/thanks");
  EXPECT_FALSE(partner.open);

  auto error = [](const std::string& body) { return parseError(withMinimal(body)).message(); };
  const std::string fields =
      "key = [\"ref\"]\n[sources.s.fields.ref]\ntype = \"string\"\nrequired = true\n";
  EXPECT_NE(error("[sources.s]\nauth = \"open\"\n" + fields).find("sources.s.auth"),
            std::string::npos);
  EXPECT_NE(error("[sources.s]\nrate_limit_per_minute = 5\n" + fields)
                .find("applies only to a source with auth = \"none\""),
            std::string::npos);
  EXPECT_NE(error("[sources.s]\ncors_origins = [\"https://x.example/form\"]\n" + fields)
                .find("sources.s.cors_origins[0]"),
            std::string::npos);
  EXPECT_NE(error("[sources.s]\nform_redirect = \"javascript:alert(1)\"\n" + fields)
                .find("sources.s.form_redirect"),
            std::string::npos);
  EXPECT_NE(error("[sources.s]\nauth_typo = 1\n" + fields).find("unknown key"), std::string::npos);

  auto tls = parseAgentConfig(
      withMinimal("[http]\ntls_cert_file = \"tls/agent.crt\"\ntls_key_file = \"tls/agent.key\"\n"
                  "client_ca_file = \"tls/clients.pem\"\nmetrics_token_file = \"metrics.token\"\n"),
      "/etc/branchline");
  ASSERT_TRUE(tls.isOk()) << tls.status().toString();
  EXPECT_EQ(tls->http.tls_cert_file, "/etc/branchline/tls/agent.crt");
  EXPECT_EQ(tls->http.client_ca_file, "/etc/branchline/tls/clients.pem");
  EXPECT_EQ(tls->http.metrics_token_file, "/etc/branchline/metrics.token");
  EXPECT_NE(error("[http]\ntls_cert_file = \"a.crt\"\n").find("http.tls_key_file: required"),
            std::string::npos);
  EXPECT_NE(error("[http]\nclient_ca_file = \"ca.pem\"\n").find("need HTTPS"), std::string::npos);
}

}  // namespace
}  // namespace branchline::agent
