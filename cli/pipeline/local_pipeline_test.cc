#include "cli/pipeline/local_pipeline.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <cstdlib>
#include <filesystem>

#include "cli/net/http_client.h"

namespace branchline::cli {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/bl-pipeline-test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string binDir() {
  const char* d = std::getenv("BRANCHLINE_BIN_DIR");
  return d == nullptr ? "" : d;
}

std::string tmpFileContents(const std::string& path) { return tailOfFile(path, 1 << 20); }

bool haveBinaries() {
  const std::string d = binDir();
  return !d.empty() && fs::exists(d + "/branchline-agent") &&
         fs::exists(d + "/branchline-aggregator");
}

// Without the agent/aggregator binaries, start() must fail naming what is
// missing, leave no process behind, and write no topology.json; the broker
// part (config, port, readiness) still runs for real.
TEST(LocalPipelineTest, MissingBinaryFailsCleanlyAfterRealBrokerStart) {
  TempDir tmp, empty_bin;
  PipelineOptions o;
  o.dir = tmp.path() + "/run";
  o.agents = 2;
  o.aggregators = 2;
  o.bin_dir = empty_bin.path();
  o.agent_overrides = {{"batch.linger_ms", "20"}, {"buffer.max_bytes", "1048576"}};
  o.aggregator_overrides = {{"commit.max_batches", "4"}};
  LocalPipeline p(o);
  Status s = p.start();
  ASSERT_FALSE(s.isOk());
  EXPECT_EQ(s.code(), Code::kNotFound) << s.toString();
  EXPECT_NE(s.message().find("branchline-aggregator"), std::string::npos) << s.toString();
  EXPECT_FALSE(fs::exists(p.topologyPath()));

  Process* broker = p.process("mosquitto");
  ASSERT_NE(broker, nullptr);
  ASSERT_TRUE(broker->started()) << "the broker was started before the aggregators";
  EXPECT_FALSE(broker->isRunning()) << "a failed start stops what it started";
  EXPECT_TRUE(fs::exists(p.dir() + "/mosquitto/mosquitto.log"));

  // The configs use exactly the README's keys, with absolute paths.
  auto agg = toml::parse_file(p.dir() + "/agg-2/aggregator.toml");
  EXPECT_EQ(agg["aggregator"]["name"].value_or(""), std::string("agg-2"));
  EXPECT_EQ(agg["aggregator"]["data_dir"].value_or(""), p.dir() + "/agg-2");
  EXPECT_EQ(agg["store"]["url"].value_or(""), "sqlite://" + p.dir() + "/central.db");
  EXPECT_EQ(agg["commit"]["max_batches"].value_or(0), 4);
  EXPECT_EQ(agg["mqtt"]["brokers"][0].value_or(""), p.brokerUri());
  EXPECT_EQ(std::string(agg["http"]["listen"].value_or("")).rfind("127.0.0.1:", 0), 0u);

  auto agent = toml::parse_file(p.dir() + "/agent-1/agent.toml");
  EXPECT_EQ(agent["agent"]["id"].value_or(""), std::string("agent-1"));
  EXPECT_EQ(agent["agent"]["data_dir"].value_or(""), p.dir() + "/agent-1");
  EXPECT_EQ(agent["batch"]["linger_ms"].value_or(0), 20);
  EXPECT_EQ(agent["buffer"]["max_bytes"].value_or(0), 1048576);
  EXPECT_EQ(agent["mqtt"]["brokers"][0].value_or(""), p.brokerUri());

  // Secured by default: every member has its own certificate from DIR/pki.
  const std::string pki = p.dir() + "/pki";
  EXPECT_EQ(p.brokerUri().rfind("ssl://127.0.0.1:", 0), 0u) << p.brokerUri();
  EXPECT_EQ(agent["mqtt"]["ca_file"].value_or(""), pki + "/ca.crt");
  EXPECT_EQ(agent["mqtt"]["cert_file"].value_or(""), pki + "/agents/agent-1.crt");
  EXPECT_EQ(agent["mqtt"]["key_file"].value_or(""), pki + "/agents/agent-1.key");
  EXPECT_EQ(agg["mqtt"]["ca_file"].value_or(""), pki + "/ca.crt");
  EXPECT_EQ(agg["mqtt"]["cert_file"].value_or(""), pki + "/aggregators/agg-2.crt");
  EXPECT_EQ(agg["mqtt"]["key_file"].value_or(""), pki + "/aggregators/agg-2.key");
  // ... and seals its batches.
  EXPECT_EQ(agent["security"]["seal_key_file"].value_or(""), pki + "/agents/agent-1.seal.key");
  EXPECT_EQ(agent["security"]["aggregator_key_file"].value_or(""), pki + "/aggregators/seal.pub");
  const std::string seal_key = agg["security"]["seal_keys"][0].value_or("");
  EXPECT_EQ(seal_key.rfind(pki + "/aggregators/seal-", 0), 0u) << seal_key;
  EXPECT_TRUE(fs::exists(seal_key)) << seal_key;
  EXPECT_EQ(agg["security"]["agents_dir"].value_or(""), pki + "/agents");
  EXPECT_TRUE(agg["security"]["require_sealed"].value_or(false));
  for (const char* f : {"/ca.key", "/broker/broker.key", "/aggregators/agg-1.key",
                        "/agents/agent-2.key", "/agents/agent-2.seal.key"}) {
    EXPECT_EQ(fs::status(pki + f).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write)
        << f;
  }
  const std::string conf = tmpFileContents(p.dir() + "/mosquitto/mosquitto.conf");
  EXPECT_NE(conf.find("require_certificate true\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("allow_anonymous false\n"), std::string::npos) << conf;
  EXPECT_EQ(conf.find("allow_anonymous true"), std::string::npos) << conf;
  EXPECT_NE(tmpFileContents(p.dir() + "/mosquitto/acl").find("user aggregator.agg-2\n"),
            std::string::npos);
}

// A second start in the same directory reuses its PKI (enrolling members added
// since); `secure = false` is the plain, anonymous pipeline of old.
TEST(LocalPipelineTest, ReusesItsPkiAndHasAnInsecureMode) {
  TempDir tmp, empty_bin;
  PipelineOptions o;
  o.dir = tmp.path();
  o.agents = 1;
  o.aggregators = 1;
  o.bin_dir = empty_bin.path();
  {
    LocalPipeline p(o);
    EXPECT_EQ(p.start().code(), Code::kNotFound);
  }
  const std::string ca = tmpFileContents(tmp.path() + "/pki/ca.crt");
  ASSERT_FALSE(ca.empty());
  o.agents = 2;
  {
    LocalPipeline p(o);
    Status s = p.start();
    EXPECT_EQ(s.code(), Code::kNotFound) << "fails on the binaries, not the PKI: " << s.toString();
  }
  EXPECT_EQ(tmpFileContents(tmp.path() + "/pki/ca.crt"), ca) << "the CA is reused";
  EXPECT_TRUE(fs::exists(tmp.path() + "/pki/agents/agent-2.crt"));

  TempDir plain;
  o.dir = plain.path();
  o.secure = false;
  LocalPipeline p(o);
  EXPECT_EQ(p.start().code(), Code::kNotFound);
  EXPECT_EQ(p.brokerUri().rfind("tcp://127.0.0.1:", 0), 0u);
  EXPECT_FALSE(fs::exists(plain.path() + "/pki"));
  EXPECT_NE(
      tmpFileContents(plain.path() + "/mosquitto/mosquitto.conf").find("allow_anonymous true"),
      std::string::npos);
  auto agent = toml::parse_file(plain.path() + "/agent-1/agent.toml");
  EXPECT_FALSE(agent["mqtt"]["ca_file"]);
  EXPECT_FALSE(agent["security"]);
}

TEST(LocalPipelineTest, FixedBasePortLayout) {
  TempDir tmp, empty_bin;
  auto free = freeLoopbackPort();
  ASSERT_TRUE(free.isOk());
  // Keep the whole range well away from the ephemeral port just handed out.
  const uint16_t base = static_cast<uint16_t>(20000 + (*free % 20000));
  PipelineOptions o;
  o.dir = tmp.path();
  o.agents = 3;
  o.aggregators = 2;
  o.base_port = base;
  o.bin_dir = empty_bin.path();
  LocalPipeline p(o);
  ASSERT_FALSE(p.start().isOk());
  EXPECT_EQ(p.member("mosquitto")->port, base);
  EXPECT_EQ(p.member("agg-1")->port, base + 10);
  EXPECT_EQ(p.member("agg-2")->port, base + 11);
  EXPECT_EQ(p.member("agent-1")->port, base + 20);
  EXPECT_EQ(p.member("agent-3")->url, "http://127.0.0.1:" + std::to_string(base + 22));
}

TEST(LocalPipelineTest, RejectsBadOptions) {
  TempDir tmp;
  PipelineOptions o;
  o.dir = tmp.path();
  o.aggregators = 0;
  EXPECT_EQ(LocalPipeline(o).start().code(), Code::kInvalidArgument);
  o.aggregators = 1;
  o.agent_overrides = {{"nodot", "1"}};
  o.bin_dir = tmp.path();
  EXPECT_EQ(LocalPipeline(o).start().code(), Code::kInvalidArgument);
}

// The whole pipeline with the real binaries (skipped until they are built).
TEST(LocalPipelineTest, StartsEverythingWritesTopologyAndSurvivesAKilledAgent) {
  ASSERT_TRUE(haveBinaries()) << "branchline-agent/-aggregator not built in " << binDir();
  TempDir tmp;
  PipelineOptions o;
  o.dir = tmp.path();
  o.agents = 2;
  o.aggregators = 2;
  o.bin_dir = binDir();
  LocalPipeline p(o);
  Status s = p.start();
  ASSERT_TRUE(s.isOk()) << s.toString();

  auto topo = boost::json::parse(tmpFileContents(p.topologyPath())).as_object();
  EXPECT_EQ(topo.at("store").as_string(), "sqlite://" + p.dir() + "/central.db");
  EXPECT_TRUE(topo.at("secure").as_bool());
  EXPECT_EQ(topo.at("pki_dir").as_string(), p.dir() + "/pki");
  const auto& procs = topo.at("processes").as_array();
  ASSERT_EQ(procs.size(), 5u);
  for (const auto& v : procs) {
    const auto& proc = v.as_object();
    const std::string name(proc.at("name").as_string());
    EXPECT_EQ(proc.at("pid").as_int64(), p.process(name)->pid());
    EXPECT_TRUE(fs::exists(std::string(proc.at("config").as_string())));
    if (proc.at("role").as_string() == "broker") {
      EXPECT_EQ(proc.at("url").as_string(),
                "mqtts://127.0.0.1:" + std::to_string(p.member(name)->port));
    } else {
      auto h = httpGet(std::string(proc.at("url").as_string()) + "/healthz", 5s);
      ASSERT_TRUE(h.isOk()) << name;
      EXPECT_EQ(h->status, 200) << name;
    }
  }

  ASSERT_TRUE(p.process("agent-1")->signal(SIGKILL).isOk());
  ASSERT_TRUE(p.process("agent-1")->waitFor(5s));
  auto exits = p.pollExits();
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[0].first, "agent-1");
  EXPECT_EQ(exits[0].second, "killed by signal 9 (Killed)");
  EXPECT_TRUE(p.process("agent-2")->isRunning());
  EXPECT_TRUE(p.pollExits().empty());

  ASSERT_TRUE(p.restart("agent-1").isOk());
  auto h = httpGet(p.member("agent-1")->url + "/healthz", 5s);
  ASSERT_TRUE(h.isOk());
  EXPECT_EQ(h->status, 200);
  ASSERT_TRUE(p.brokerRestart().isOk());
  p.stop();
  for (const auto& m : p.members()) EXPECT_FALSE(m->process.isRunning()) << m->name;
}

}  // namespace
}  // namespace branchline::cli
