#include "cli/pipeline/local_pipeline.h"

#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <boost/json/parse.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cli/net/http_client.h"

namespace branchline::cli {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

class TempDir {
 public:
  TempDir() : path_(makePipelineTempDir("bl-pipeline-test")) {}
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

// Options for a pipeline in `dir` of the binaries in `bin_dir` (the real ones
// by default; an empty folder to stop after the broker part).
PipelineOptions pipelineOptions(const std::string& dir, int agents, int aggregators,
                                const std::string& bin_dir = binDir()) {
  PipelineOptions o;
  o.dir = dir;
  o.agents = agents;
  o.aggregators = aggregators;
  o.bin_dir = bin_dir;
  return o;
}

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
  PipelineOptions o = pipelineOptions(tmp.path() + "/run", 2, 2, empty_bin.path());
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
  EXPECT_NE(conf.find("use_username_as_clientid true\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("plugin_opt_config_file " + p.dir() + "/mosquitto/dynamic-security.json\n"),
            std::string::npos)
      << conf;
  EXPECT_NE(conf.find("max_packet_size 16781312\n"), std::string::npos) << conf;
  EXPECT_EQ(conf.find("max_queued_bytes 0\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("persistent_client_expiration 7d\n"), std::string::npos) << conf;
  // The access policy names every member: agents and aggregators.
  const std::string policy = tmpFileContents(p.dir() + "/mosquitto/dynamic-security.json");
  for (const char* who : {"\"aggregator.agg-2\"", "\"agent-1\"", "\"agent-2\""}) {
    EXPECT_NE(policy.find(std::string("\"username\":") + who), std::string::npos) << who << policy;
  }
}

// A second start in the same directory reuses its PKI (enrolling members added
// since); `secure = false` is the plain, anonymous pipeline of old.
TEST(LocalPipelineTest, ReusesItsPkiAndHasAnInsecureMode) {
  TempDir tmp, empty_bin;
  PipelineOptions o = pipelineOptions(tmp.path(), 1, 1, empty_bin.path());
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
  PipelineOptions o = pipelineOptions(tmp.path(), 3, 2, empty_bin.path());
  o.base_port = base;
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
  o.agent_overrides.clear();
  for (int brokers : {0, 3}) {
    o.brokers = brokers;
    Status s = LocalPipeline(o).start();
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << brokers;
    EXPECT_NE(s.message().find("brokers must be 1 or 2"), std::string::npos) << s.toString();
  }
}

// Two brokers, for real (the agent and aggregator binaries are missing on
// purpose): the second is bridged to the first over TLS with its own identity,
// start() gets past the bridge (so it fails on the binaries), and every config
// lists both brokers, the first first.
TEST(LocalPipelineTest, SecondBrokerIsBridgedAndListedInEveryConfig) {
  TempDir tmp, empty_bin;
  auto free = freeLoopbackPort();
  ASSERT_TRUE(free.isOk());
  const uint16_t base = static_cast<uint16_t>(20000 + (*free % 20000));
  PipelineOptions o = pipelineOptions(tmp.path(), 1, 2, empty_bin.path());
  o.brokers = 2;
  o.base_port = base;
  o.agent_overrides = {{"mqtt.topic_prefix", "\"fleet/v9\""}};
  o.aggregator_overrides = {{"mqtt.topic_prefix", "\"fleet/v9\""}};
  LocalPipeline p(o);
  Status s = p.start();
  ASSERT_EQ(s.code(), Code::kNotFound) << "fails on the binaries, not the bridge: " << s.toString();
  EXPECT_NE(s.message().find("branchline-aggregator"), std::string::npos) << s.toString();

  EXPECT_EQ(p.member("mosquitto")->port, base);
  EXPECT_EQ(p.member("mosquitto-2")->port, base + 1);
  EXPECT_EQ(p.member("mosquitto-2")->role, Role::kBroker);
  EXPECT_EQ(p.member("mosquitto-2")->url, "mqtts://127.0.0.1:" + std::to_string(base + 1));
  const std::vector<std::string> uris = {"ssl://127.0.0.1:" + std::to_string(base),
                                         "ssl://127.0.0.1:" + std::to_string(base + 1)};
  EXPECT_EQ(p.brokerUris(), uris);
  EXPECT_EQ(p.brokerUri(), uris[0]);
  for (const std::string config : {"/agg-1/aggregator.toml", "/agent-1/agent.toml"}) {
    auto doc = toml::parse_file(p.dir() + config);
    const auto* brokers = doc["mqtt"]["brokers"].as_array();
    ASSERT_NE(brokers, nullptr) << config;
    ASSERT_EQ(brokers->size(), 2u) << config;
    EXPECT_EQ((*brokers)[0].value_or(""), uris[0]) << config;
    EXPECT_EQ((*brokers)[1].value_or(""), uris[1]) << config;
  }

  // The bridge: its own certificate (CN bridge.mosquitto-2) and ACL entry.
  const std::string pki = p.dir() + "/pki";
  const std::string conf = tmpFileContents(p.dir() + "/mosquitto-2/mosquitto.conf");
  for (const std::string& line : std::vector<std::string>{
           "listener " + std::to_string(base + 1) + " 127.0.0.1\n", "connection to-mosquitto\n",
           "address 127.0.0.1:" + std::to_string(base) + "\n", "topic fleet/v9/# both 1\n",
           "cleansession false\n", "bridge_protocol_version mqttv311\n", "try_private true\n",
           "bridge_cafile " + pki + "/ca.crt\n",
           "bridge_certfile " + pki + "/bridges/mosquitto-2.crt\n",
           "bridge_keyfile " + pki + "/bridges/mosquitto-2.key\n", "bridge_insecure false\n",
           "require_certificate true\n", "persistence_location " + p.dir() + "/mosquitto-2/\n"}) {
    EXPECT_NE(conf.find(line), std::string::npos) << line << " not in\n" << conf;
  }
  EXPECT_EQ(tmpFileContents(p.dir() + "/mosquitto/mosquitto.conf").find("connection "),
            std::string::npos)
      << "only the second broker bridges";
  for (const char* broker :
       {"/mosquitto/dynamic-security.json", "/mosquitto-2/dynamic-security.json"}) {
    const std::string policy = tmpFileContents(p.dir() + broker);
    EXPECT_NE(policy.find("\"username\":\"bridge.mosquitto-2\""), std::string::npos) << policy;
    EXPECT_NE(policy.find("\"acltype\":\"publishClientSend\",\"topic\":\"fleet/v9/#\""),
              std::string::npos)
        << policy;
  }
  // The first broker admitted the bridge under that identity, and its subscription.
  const std::string log = tmpFileContents(p.dir() + "/mosquitto/mosquitto.log");
  EXPECT_NE(log.find("u'bridge.mosquitto-2'"), std::string::npos) << log;
  EXPECT_NE(log.find(": bridge.mosquitto-2 1 fleet/v9/#\n"), std::string::npos) << log;
  for (const char* name : {"mosquitto", "mosquitto-2"}) {
    EXPECT_FALSE(p.process(name)->isRunning()) << name << ": a failed start stops what it started";
  }
}

TEST(LocalPipelineTest, InsecureSecondBrokerBridgesOverPlainTcp) {
  TempDir tmp, empty_bin;
  PipelineOptions o = pipelineOptions(tmp.path(), 1, 1, empty_bin.path());
  o.brokers = 2;
  o.secure = false;
  LocalPipeline p(o);
  Status s = p.start();
  ASSERT_EQ(s.code(), Code::kNotFound) << s.toString();
  ASSERT_EQ(p.brokerUris().size(), 2u);
  EXPECT_EQ(p.brokerUris()[1].rfind("tcp://127.0.0.1:", 0), 0u);
  const std::string conf = tmpFileContents(p.dir() + "/mosquitto-2/mosquitto.conf");
  EXPECT_NE(conf.find("allow_anonymous true\n"), std::string::npos) << conf;
  EXPECT_NE(conf.find("connection to-mosquitto\n"), std::string::npos) << conf;
  EXPECT_EQ(conf.find("bridge_cafile"), std::string::npos) << conf;
  EXPECT_NE(tmpFileContents(p.dir() + "/mosquitto/mosquitto.log").find(": bridge.mosquitto-2 1 "),
            std::string::npos);
}

// The whole pipeline with the real binaries (skipped until they are built).
TEST(LocalPipelineTest, StartsEverythingWritesTopologyAndSurvivesAKilledAgent) {
  ASSERT_TRUE(haveBinaries()) << "branchline-agent/-aggregator not built in " << binDir();
  TempDir tmp;
  PipelineOptions o = pipelineOptions(tmp.path(), 2, 2);
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
    if (proc.at("role").as_string() == "agent") {
      // The documented contract: each agent's own ingest token, and only it works there.
      const std::string token(proc.at("ingest_token").as_string());
      EXPECT_EQ(token, p.member(name)->ingest_token);
      const std::string body =
          R"({"external_id":"topo-)" + name +
          R"(","name":"Ada","email":"ada@example.com","channel":"web","created_at":"2026-11-25T10:00:00Z"})";
      HttpConnection with(std::string("127.0.0.1"), p.member(name)->port,
                          HttpClientOptions{.bearer_token = token});
      auto ok = with.request("POST", "/v1/records/customer", "application/json", body, 10s);
      ASSERT_TRUE(ok.isOk()) << name;
      EXPECT_EQ(ok->status, 200) << ok->body;
      HttpConnection without(std::string("127.0.0.1"), p.member(name)->port);
      auto refused = without.request("POST", "/v1/records/customer", "application/json", body, 10s);
      ASSERT_TRUE(refused.isOk()) << name;
      EXPECT_EQ(refused->status, 401) << refused->body;
    } else {
      EXPECT_FALSE(proc.contains("ingest_token")) << name;
    }
  }
  const std::string agent1_token = p.member("agent-1")->ingest_token;
  EXPECT_NE(agent1_token, p.member("agent-2")->ingest_token);
  HttpConnection other(std::string("127.0.0.1"), p.member("agent-2")->port,
                       HttpClientOptions{.bearer_token = agent1_token});
  auto cross = other.request("POST", "/v1/records/customer", "application/json", "{}", 10s);
  ASSERT_TRUE(cross.isOk());
  EXPECT_EQ(cross->status, 401) << "agent-1's token must not work at agent-2: " << cross->body;
  struct stat topo_stat {};
  ASSERT_EQ(::stat(p.topologyPath().c_str(), &topo_stat), 0);
  EXPECT_EQ(topo_stat.st_mode & 0777, 0600u) << "topology.json holds the tokens";

  // As root, the broker does not keep root: it runs as `mosquitto` (README
  // "Local pipeline"), which owns its data dir and its key.
  if (::geteuid() == 0) {
    const passwd* mosquitto = ::getpwnam("mosquitto");
    ASSERT_NE(mosquitto, nullptr);
    std::ifstream status("/proc/" + std::to_string(p.process("mosquitto")->pid()) + "/status");
    std::string line;
    while (std::getline(status, line) && line.rfind("Uid:", 0) != 0) {
    }
    ASSERT_EQ(line.rfind("Uid:", 0), 0u) << "no Uid line";
    EXPECT_EQ(std::stoul(line.substr(4)), mosquitto->pw_uid) << line;
    struct stat st {};
    ASSERT_EQ(::stat((p.dir() + "/pki/broker/broker.key").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, mosquitto->pw_uid);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
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
  if (::geteuid() == 0) {
    struct stat st {};
    ASSERT_EQ(::stat((p.dir() + "/mosquitto/mosquitto.db").c_str(), &st), 0)
        << "the broker saves its state on a clean stop, as `mosquitto`";
    EXPECT_EQ(st.st_uid, ::getpwnam("mosquitto")->pw_uid);
  }
}

// With the real binaries: topology.json lists both brokers in the same format,
// and restarting the first waits until the second's bridge is back.
TEST(LocalPipelineTest, TwoBrokersInTopologyAndBrokerRestartWaitsForTheBridge) {
  ASSERT_TRUE(haveBinaries()) << "branchline-agent/-aggregator not built in " << binDir();
  TempDir tmp;
  PipelineOptions o = pipelineOptions(tmp.path(), 1, 1);
  o.brokers = 2;
  LocalPipeline p(o);
  Status s = p.start();
  ASSERT_TRUE(s.isOk()) << s.toString();
  auto topo = boost::json::parse(tmpFileContents(p.topologyPath())).as_object();
  const auto& procs = topo.at("processes").as_array();
  ASSERT_EQ(procs.size(), 4u);
  std::vector<std::string> brokers;
  for (const auto& v : procs) {
    const auto& proc = v.as_object();
    if (proc.at("role").as_string() != "broker") continue;
    const std::string name(proc.at("name").as_string());
    brokers.push_back(name);
    EXPECT_EQ(proc.at("pid").as_int64(), p.process(name)->pid());
    EXPECT_EQ(proc.at("config").as_string(), p.dir() + "/" + name + "/mosquitto.conf");
    EXPECT_EQ(proc.at("data").as_string(), p.dir() + "/" + name);
    EXPECT_EQ(proc.at("url").as_string(),
              "mqtts://127.0.0.1:" + std::to_string(p.member(name)->port));
  }
  EXPECT_EQ(brokers, (std::vector<std::string>{"mosquitto", "mosquitto-2"}));

  const std::string log = p.dir() + "/mosquitto/mosquitto.log";
  const size_t before = tmpFileContents(log).size();
  ASSERT_TRUE(p.brokerRestart().isOk());
  EXPECT_NE(tmpFileContents(log).substr(before).find(": bridge.mosquitto-2 1 branchline/v1/#\n"),
            std::string::npos)
      << "restart() returned before the bridge was back";
  p.stop();
  for (const auto& m : p.members()) EXPECT_FALSE(m->process.isRunning()) << m->name;
}

}  // namespace
}  // namespace branchline::cli

namespace branchline::cli {
namespace {

// Rows in the central SQLite store's `records`; -1 when it cannot be read.
int64_t storedRows(const LocalPipeline& p) {
  sqlite3* db = nullptr;
  int64_t n = -1;
  if (sqlite3_open_v2(p.storePath().c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM records", -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      n = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return n;
}

bool waitStored(const LocalPipeline& p, int64_t rows, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (storedRows(p) == rows) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

// With the real binaries, where network namespaces are permitted: an isolated
// agent is reached on its local link, forwards over its uplink, keeps
// accepting while the uplink is cut (nothing leaves it meanwhile) and drains
// once it is healed.
TEST(LocalPipelineTest, IsolatedAgentAcceptsWhileItsUplinkIsCutAndDrainsAfter) {
  ASSERT_TRUE(haveBinaries()) << "branchline-agent/-aggregator not built in " << binDir();
  {
    auto probe = NetworkNamespace::create(119);
    // Skipped only where no namespace can be made at all; a failure after
    // that (links, addresses) fails the test.
    if (!probe.isOk() && probe.status().code() == Code::kPermissionDenied) {
      GTEST_SKIP() << "network namespaces not permitted here: " << probe.status().toString();
    }
    ASSERT_TRUE(probe.isOk()) << probe.status().toString();
  }
  TempDir tmp;
  PipelineOptions o = pipelineOptions(tmp.path(), 1, 1);
  o.isolate_agents = true;
  LocalPipeline p(o);
  Status s = p.start();
  ASSERT_TRUE(s.isOk()) << s.toString();
  Member* agent = p.member("agent-1");
  ASSERT_NE(agent, nullptr);
  ASSERT_NE(agent->netns, nullptr);
  const std::string inner = agent->netns->localInnerAddress();
  EXPECT_EQ(agent->url, "http://" + inner + ":" + std::to_string(agent->port));
  const std::string conf = tmpFileContents(agent->config_path);
  EXPECT_NE(conf.find("ssl://" + agent->netns->uplinkHostAddress() + ":"), std::string::npos)
      << conf;
  EXPECT_EQ(p.cutNetwork("agg-1").code(), Code::kInvalidArgument);

  HttpConnection conn(inner, agent->port, HttpClientOptions{.bearer_token = agent->ingest_token});
  auto post = [&](const std::string& id) {
    const std::string body = R"({"external_id":")" + id +
                             R"(","name":"Ada","email":"ada@example.com","channel":"web",)"
                             R"("created_at":"2026-11-25T10:00:00Z"})";
    auto r = conn.request("POST", "/v1/records/customer", "application/json", body, 10s);
    return r.isOk() ? r->status : 0;
  };
  ASSERT_EQ(post("iso-1"), 200);
  ASSERT_TRUE(waitStored(p, 1, 30s)) << "not forwarded over the uplink";

  ASSERT_TRUE(p.cutNetwork("agent-1").isOk());
  EXPECT_EQ(post("iso-2"), 200) << "the office keeps accepting while its line is down";
  std::this_thread::sleep_for(3s);
  EXPECT_EQ(storedRows(p), 1) << "a record left over a cut uplink";

  ASSERT_TRUE(p.healNetwork("agent-1").isOk());
  EXPECT_TRUE(waitStored(p, 2, 60s)) << "not stored after the heal";
  p.stop();
}

}  // namespace
}  // namespace branchline::cli
