#include "cli/pki/fleet_pki.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <boost/json/parse.hpp>
#include <filesystem>
#include <set>

#include "protocol/seal.h"
#include "shared/pki/pki.h"

namespace branchline::cli {
namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/bl-fleet-pki-test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string path() const { return path_ + "/pki"; }

 private:
  std::string path_;
};

mode_t modeOf(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

std::string text(const fs::path& p) {
  auto r = pki::readFile(p);
  EXPECT_TRUE(r.isOk()) << p;
  return r.isOk() ? *r : "";
}

// What the broker's access policy (dynamic-security JSON) lets `username` do:
// "<acltype> <topic>" for every ACL of its roles; empty when it is not named.
std::set<std::string> grants(const PkiLayout& layout, const std::string& username) {
  const auto doc = boost::json::parse(text(layout.brokerPolicy())).as_object();
  std::set<std::string> role_names, out;
  for (const auto& c : doc.at("clients").as_array()) {
    if (c.at("username").as_string() != username) continue;
    for (const auto& r : c.at("roles").as_array()) {
      role_names.insert(std::string(r.at("rolename").as_string()));
    }
  }
  for (const auto& r : doc.at("roles").as_array()) {
    if (role_names.count(std::string(r.at("rolename").as_string())) == 0) continue;
    for (const auto& a : r.at("acls").as_array()) {
      EXPECT_TRUE(a.at("allow").as_bool());
      out.insert(std::string(a.at("acltype").as_string()) + " " +
                 std::string(a.at("topic").as_string()));
    }
  }
  return out;
}

// The certificate's CN, after checking that it chains to the folder's CA.
std::string verifiedCommonName(const PkiLayout& layout, const fs::path& cert) {
  Status s = pki::verifyCertificate(text(cert), text(layout.caCert()));
  EXPECT_TRUE(s.isOk()) << cert << ": " << s.toString();
  auto info = pki::inspectCertificate(text(cert));
  return info.isOk() ? info->common_name : "";
}

TEST(FleetPkiTest, InitWritesTheDocumentedLayout) {
  TempDir tmp;
  PkiInitOptions o;
  o.dir = tmp.path();
  o.aggregators = {"agg-1", "agg-2"};
  o.broker_hosts = {"10.0.0.5", "mqtt.example.org"};
  auto report = initPki(o);
  ASSERT_TRUE(report.isOk()) << report.status().toString();
  const PkiLayout layout{o.dir};

  for (const fs::path& key :
       {layout.caKey(), layout.brokerKey(), layout.aggregatorKey("agg-1"),
        layout.aggregatorKey("agg-2"), layout.sealPrivateKey(report->seal_key_id)}) {
    EXPECT_EQ(modeOf(key), 0600u) << key;
  }
  for (const fs::path& pub : {layout.caCert(), layout.brokerCert(), layout.aggregatorCert("agg-1"),
                              layout.currentSealPublicKey(), layout.brokerPolicy()}) {
    EXPECT_EQ(modeOf(pub), 0644u) << pub;
  }
  EXPECT_TRUE(pki::inspectCertificate(text(layout.caCert()))->is_authority);
  EXPECT_EQ(verifiedCommonName(layout, layout.aggregatorCert("agg-1")), "aggregator.agg-1");
  EXPECT_EQ(verifiedCommonName(layout, layout.aggregatorCert("agg-2")), "aggregator.agg-2");
  EXPECT_EQ(verifiedCommonName(layout, layout.brokerCert()), "branchline-broker");
  auto broker = pki::inspectCertificate(text(layout.brokerCert()));
  EXPECT_EQ(broker->ip_addresses, (std::vector<std::string>{"127.0.0.1", "10.0.0.5"}));
  EXPECT_EQ(broker->dns_names, (std::vector<std::string>{"localhost", "mqtt.example.org"}));

  // seal.pub is the current key, whose private half is seal-<keyid>.key.
  auto current = protocol::readSealPublicKey(layout.currentSealPublicKey());
  ASSERT_TRUE(current.isOk()) << current.status().toString();
  EXPECT_EQ(protocol::sealKeyId(*current), report->seal_key_id);
  auto pair = protocol::readSealPrivateKey(layout.sealPrivateKey(report->seal_key_id));
  ASSERT_TRUE(pair.isOk()) << pair.status().toString();
  EXPECT_EQ(pair->public_key, *current);
  EXPECT_EQ(text(layout.sealPublicKey(report->seal_key_id)), text(layout.currentSealPublicKey()));
  auto key_file = currentSealPrivateKey(o.dir);
  ASSERT_TRUE(key_file.isOk()) << key_file.status().toString();
  EXPECT_EQ(*key_file, layout.sealPrivateKey(report->seal_key_id));

  // Only aggregators may subscribe to batches, through $share or not.
  const std::set<std::string> aggregator = grants(layout, "aggregator.agg-2");
  for (const char* g : {"subscribePattern $share/+/branchline/v1/agents/+/batch",
                        "subscribePattern branchline/v1/agents/+/batch",
                        "publishClientReceive branchline/v1/agents/+/batch",
                        "publishClientSend branchline/v1/agents/+/ack",
                        "publishClientSend branchline/v1/aggregators/agg-2/online"}) {
    EXPECT_EQ(aggregator.count(g), 1u) << g;
  }
  EXPECT_EQ(aggregator.count("publishClientSend branchline/v1/aggregators/agg-1/online"), 0u);
  EXPECT_TRUE(grants(layout, "agent-1").empty()) << "no agent is enrolled yet";
  const std::string conf = text(layout.brokerConf());
  EXPECT_NE(conf.find("require_certificate true"), std::string::npos);
  EXPECT_NE(conf.find("use_identity_as_username true"), std::string::npos);
  EXPECT_NE(conf.find("use_username_as_clientid true"), std::string::npos);
  EXPECT_NE(conf.find("allow_anonymous false"), std::string::npos);
  EXPECT_NE(conf.find("plugin_opt_config_file " + layout.brokerPolicy().string() + "\n"),
            std::string::npos)
      << conf;
  EXPECT_NE(conf.find("max_packet_size 16781312\n"), std::string::npos) << conf;
  EXPECT_EQ(conf.find("max_queued_bytes 0\n"), std::string::npos) << conf;

  for (const auto& f : report->files) EXPECT_TRUE(fs::exists(f)) << f;
}

TEST(FleetPkiTest, InitRefusesToOverwriteAnAuthority) {
  TempDir tmp;
  PkiInitOptions o;
  o.dir = tmp.path();
  o.aggregators = {"agg-1"};
  ASSERT_TRUE(initPki(o).isOk());
  const std::string ca_key = text(PkiLayout{o.dir}.caKey());
  Status s = initPki(o).status();
  EXPECT_EQ(s.code(), Code::kAlreadyExists);
  EXPECT_NE(s.message().find("ca.crt"), std::string::npos) << s.message();
  EXPECT_EQ(text(PkiLayout{o.dir}.caKey()), ca_key) << "the authority's key is untouched";

  PkiInitOptions bad;
  bad.dir = tmp.path() + "-2";
  bad.aggregators = {"agg.1"};
  EXPECT_EQ(initPki(bad).status().code(), Code::kInvalidArgument);
  bad.aggregators = {"seal-x"};
  EXPECT_EQ(initPki(bad).status().code(), Code::kInvalidArgument);
  EXPECT_FALSE(fs::exists(bad.dir)) << "a refused init writes nothing";
}

TEST(FleetPkiTest, EnrollIssuesAnAgentIdentityOnce) {
  TempDir tmp;
  const std::string dir = tmp.path();
  Status none = enrollAgent(dir, "agent-7").status();
  EXPECT_EQ(none.code(), Code::kNotFound);
  EXPECT_NE(none.message().find("branchline pki init"), std::string::npos) << none.message();

  PkiInitOptions o;
  o.dir = dir;
  o.aggregators = {"agg-1"};
  ASSERT_TRUE(initPki(o).isOk());
  auto report = enrollAgent(dir, "agent-7", 30);
  ASSERT_TRUE(report.isOk()) << report.status().toString();
  const PkiLayout layout{dir};
  EXPECT_EQ(verifiedCommonName(layout, layout.agentCert("agent-7")), "agent-7");
  EXPECT_EQ(modeOf(layout.agentKey("agent-7")), 0600u);
  EXPECT_EQ(modeOf(layout.agentSealKey("agent-7")), 0600u);
  auto pair = protocol::readSealPrivateKey(layout.agentSealKey("agent-7"));
  ASSERT_TRUE(pair.isOk()) << pair.status().toString();
  auto pub = protocol::readSealPublicKey(layout.agentSealPublic("agent-7"));
  ASSERT_TRUE(pub.isOk());
  EXPECT_EQ(pair->public_key, *pub);
  auto info = pki::inspectCertificate(text(layout.agentCert("agent-7")));
  EXPECT_NEAR(static_cast<double>(info->not_after - info->not_before), 30.0 * 86400 + 3600, 5.0);
  // The broker's policy now names it, with its own topics only.
  EXPECT_EQ(grants(layout, "agent-7"),
            (std::set<std::string>{"publishClientSend branchline/v1/agents/agent-7/batch",
                                   "publishClientSend branchline/v1/agents/agent-7/status",
                                   "subscribePattern branchline/v1/agents/agent-7/ack",
                                   "publishClientReceive branchline/v1/agents/agent-7/ack",
                                   "subscribePattern branchline/v1/agents/agent-7/config",
                                   "publishClientReceive branchline/v1/agents/agent-7/config",
                                   "subscribePattern branchline/v1/aggregators/+/online",
                                   "publishClientReceive branchline/v1/aggregators/+/online"}));

  Status again = enrollAgent(dir, "agent-7").status();
  EXPECT_EQ(again.code(), Code::kAlreadyExists);
  EXPECT_NE(again.message().find("already enrolled"), std::string::npos) << again.message();
  // `aggregator.x` is an aggregator's CN; no agent id can take that shape.
  EXPECT_EQ(enrollAgent(dir, "aggregator.agg-1").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(enrollAgent(dir, "").status().code(), Code::kInvalidArgument);

  // A CA key readable by others is refused, with the fix.
  ASSERT_EQ(::chmod(layout.caKey().c_str(), 0644), 0);
  Status open_key = enrollAgent(dir, "agent-8").status();
  EXPECT_EQ(open_key.code(), Code::kPermissionDenied);
  EXPECT_NE(open_key.message().find("chmod 600"), std::string::npos);
}

TEST(FleetPkiTest, EnrollingAnAggregatorExtendsTheBrokerPolicy) {
  TempDir tmp;
  PkiInitOptions o;
  o.dir = tmp.path();
  o.aggregators = {"agg-1"};
  ASSERT_TRUE(initPki(o).isOk());
  const PkiLayout layout{o.dir};
  EXPECT_TRUE(grants(layout, "aggregator.agg-3").empty());
  auto report = enrollAggregator(o.dir, "agg-3");
  ASSERT_TRUE(report.isOk()) << report.status().toString();
  EXPECT_EQ(verifiedCommonName(layout, layout.aggregatorCert("agg-3")), "aggregator.agg-3");
  EXPECT_FALSE(grants(layout, "aggregator.agg-1").empty());
  EXPECT_EQ(
      grants(layout, "aggregator.agg-3").count("publishClientSend branchline/v1/agents/+/ack"), 1u);
  EXPECT_EQ(enrollAggregator(o.dir, "agg-3").status().code(), Code::kAlreadyExists);
}

TEST(FleetPkiTest, EnrollingABridgeGivesItsOwnIdentityAndPolicyEntry) {
  TempDir tmp;
  PkiInitOptions o;
  o.dir = tmp.path();
  o.aggregators = {"agg-1"};
  o.topic_prefix = "fleet/v2";
  ASSERT_TRUE(initPki(o).isOk());
  const PkiLayout layout{o.dir};
  auto report = enrollBridge(o.dir, "mosquitto-2", 825, "fleet/v2");
  ASSERT_TRUE(report.isOk()) << report.status().toString();
  EXPECT_EQ(verifiedCommonName(layout, layout.bridgeCert("mosquitto-2")), "bridge.mosquitto-2");
  EXPECT_EQ(modeOf(layout.bridgeKey("mosquitto-2")), 0600u);
  const std::set<std::string> bridge{"subscribePattern fleet/v2/#",
                                     "publishClientReceive fleet/v2/#",
                                     "publishClientSend fleet/v2/#"};
  EXPECT_EQ(grants(layout, "bridge.mosquitto-2"), bridge);
  EXPECT_FALSE(grants(layout, "aggregator.agg-1").empty());
  // Later enrollments keep the bridge in the policy.
  ASSERT_TRUE(enrollAggregator(o.dir, "agg-2", 825, "fleet/v2").isOk());
  ASSERT_TRUE(enrollAgent(o.dir, "agent-1", 825, "fleet/v2").isOk());
  EXPECT_EQ(grants(layout, "bridge.mosquitto-2"), bridge);
  EXPECT_EQ(grants(layout, "agent-1").count("publishClientSend fleet/v2/agents/agent-1/batch"), 1u);
  EXPECT_EQ(enrollBridge(o.dir, "mosquitto-2").status().code(), Code::kAlreadyExists);
  EXPECT_EQ(enrollBridge(o.dir, "a.b").status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace branchline::cli
