#include "cli/pki/fleet_pki.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <boost/json/parse.hpp>
#include <ctime>
#include <filesystem>
#include <set>

#include "protocol/seal.h"
#include "shared/core/clock.h"
#include "shared/pki/crl.h"
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
  EXPECT_NE(conf.find("persistent_client_expiration 7d\n"), std::string::npos) << conf;

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

// A folder with a CA, aggregator agg-1 and agents agent-1, agent-2.
PkiLayout fleetWithTwoAgents(const TempDir& tmp) {
  PkiInitOptions o;
  o.dir = tmp.path();
  o.aggregators = {"agg-1"};
  EXPECT_TRUE(initPki(o).isOk());
  EXPECT_TRUE(enrollAgent(o.dir, "agent-1").isOk());
  EXPECT_TRUE(enrollAgent(o.dir, "agent-2", 30).isOk());
  return PkiLayout{o.dir};
}

Status verifyAgainstCrl(const PkiLayout& layout, const fs::path& cert) {
  return pki::verifyCertificate(text(cert), text(layout.caCert()), text(layout.revocationList()));
}

TEST(FleetPkiTest, InitWritesAnEmptyCaSignedRevocationListTheBrokerReads) {
  TempDir tmp;
  const PkiLayout layout = fleetWithTwoAgents(tmp);
  EXPECT_EQ(modeOf(layout.revocationList()), 0644u);
  auto list = pki::readRevocationList(text(layout.revocationList()), text(layout.caCert()));
  ASSERT_TRUE(list.isOk()) << list.status().toString();
  EXPECT_TRUE(list->revoked.empty());
  EXPECT_TRUE(verifyAgainstCrl(layout, layout.agentCert("agent-1")).isOk());
  const std::string conf = text(layout.brokerConf());
  EXPECT_NE(conf.find("crlfile " + fs::absolute(layout.revocationList()).string() + "\n"),
            std::string::npos)
      << conf;
  // A folder from before revocation existed gets one; an existing one is kept.
  const std::string before = text(layout.revocationList());
  ASSERT_TRUE(ensureRevocationList(layout.dir).isOk());
  EXPECT_EQ(text(layout.revocationList()), before);
  fs::remove(layout.revocationList());
  ASSERT_TRUE(ensureRevocationList(layout.dir).isOk());
  EXPECT_TRUE(pki::readRevocationList(text(layout.revocationList()), text(layout.caCert())).isOk());
}

TEST(FleetPkiTest, RevokeListsTheCertificateAndWithdrawsTheAgentsSealingKey) {
  TempDir tmp;
  const PkiLayout layout = fleetWithTwoAgents(tmp);
  const std::string seal_pub = text(layout.agentSealPublic("agent-1"));
  auto report = revokeIdentity(layout.dir, "agent-1", IdentityRole::kAgent);
  ASSERT_TRUE(report.isOk()) << report.status().toString();
  EXPECT_EQ(report->common_name, "agent-1");

  Status revoked = verifyAgainstCrl(layout, layout.agentCert("agent-1"));
  EXPECT_EQ(revoked.code(), Code::kPermissionDenied);
  EXPECT_NE(revoked.message().find("revoked"), std::string::npos) << revoked.message();
  EXPECT_TRUE(verifyAgainstCrl(layout, layout.agentCert("agent-2")).isOk());
  // The aggregators' view: no seal.pub (not enrolled), the marker with the same key.
  EXPECT_FALSE(fs::exists(layout.agentSealPublic("agent-1")));
  EXPECT_EQ(text(layout.agentSealRevoked("agent-1")), seal_pub);
  EXPECT_TRUE(fs::exists(layout.agentSealPublic("agent-2")));

  // Once only; an aggregator's certificate goes on the same list.
  EXPECT_EQ(revokeIdentity(layout.dir, "agent-1", IdentityRole::kAgent).status().code(),
            Code::kAlreadyExists);
  ASSERT_TRUE(revokeIdentity(layout.dir, "agg-1", IdentityRole::kAggregator).isOk());
  EXPECT_EQ(verifyAgainstCrl(layout, layout.aggregatorCert("agg-1")).code(),
            Code::kPermissionDenied);
  EXPECT_TRUE(verifyAgainstCrl(layout, layout.agentCert("agent-2")).isOk());
  auto list = pki::readRevocationList(text(layout.revocationList()), text(layout.caCert()));
  ASSERT_TRUE(list.isOk());
  EXPECT_EQ(list->revoked.size(), 2u);
  EXPECT_EQ(list->crl_number, 3) << "init's list is 1; each revocation issues the next";

  Status unknown = revokeIdentity(layout.dir, "agent-9", IdentityRole::kAgent).status();
  EXPECT_EQ(unknown.code(), Code::kNotFound);
  EXPECT_NE(unknown.message().find("not enrolled"), std::string::npos) << unknown.message();
  // Renewal would re-admit a revoked identity: refused, saying so.
  Status renew = renewIdentity(layout.dir, "agent-1", IdentityRole::kAgent).status();
  EXPECT_EQ(renew.code(), Code::kPermissionDenied);
  EXPECT_NE(renew.message().find("revoked"), std::string::npos) << renew.message();
}

TEST(FleetPkiTest, RenewReplacesCertificateAndKeyForTheSameIdentity) {
  TempDir tmp;
  const PkiLayout layout = fleetWithTwoAgents(tmp);
  const std::string old_cert = text(layout.agentCert("agent-2"));
  const std::string old_key = text(layout.agentKey("agent-2"));
  const std::string seal_key = text(layout.agentSealKey("agent-2"));
  auto report = renewIdentity(layout.dir, "agent-2", IdentityRole::kAgent, 90);
  ASSERT_TRUE(report.isOk()) << report.status().toString();

  EXPECT_NE(text(layout.agentCert("agent-2")), old_cert);
  EXPECT_NE(text(layout.agentKey("agent-2")), old_key);
  EXPECT_EQ(modeOf(layout.agentKey("agent-2")), 0600u);
  EXPECT_EQ(text(layout.agentSealKey("agent-2")), seal_key) << "the sealing key is not a cert";
  EXPECT_TRUE(pki::loadCredential(layout.agentCert("agent-2"), layout.agentKey("agent-2")).isOk())
      << "the new key is the new certificate's";
  EXPECT_EQ(verifiedCommonName(layout, layout.agentCert("agent-2")), "agent-2");
  auto info = pki::inspectCertificate(text(layout.agentCert("agent-2")));
  EXPECT_EQ(pki::canonicalSerial(info->serial_hex), report->new_serial);
  EXPECT_NE(report->new_serial, report->old_serial);
  EXPECT_NEAR(static_cast<double>(info->not_after - ::time(nullptr)), 90.0 * 86400, 10.0);
  // Not revoked: the old certificate still verifies until it expires.
  EXPECT_TRUE(pki::verifyCertificate(old_cert, text(layout.caCert()), text(layout.revocationList()))
                  .isOk());

  ASSERT_TRUE(renewIdentity(layout.dir, "agg-1", IdentityRole::kAggregator, 10).isOk());
  EXPECT_EQ(verifiedCommonName(layout, layout.aggregatorCert("agg-1")), "aggregator.agg-1");
  EXPECT_EQ(renewIdentity(layout.dir, "agent-9", IdentityRole::kAgent).status().code(),
            Code::kNotFound);
  EXPECT_EQ(renewIdentity(layout.dir, "agent-2", IdentityRole::kAgent, 0).status().code(),
            Code::kInvalidArgument);
}

TEST(FleetPkiTest, ListShowsEveryIdentityWithExpiryAndRevocation) {
  TempDir tmp;
  const PkiLayout layout = fleetWithTwoAgents(tmp);
  ASSERT_TRUE(enrollBridge(layout.dir, "mosquitto-2").isOk());
  ASSERT_TRUE(revokeIdentity(layout.dir, "agent-1", IdentityRole::kAgent).isOk());
  ASSERT_TRUE(renewIdentity(layout.dir, "agent-2", IdentityRole::kAgent, 60).isOk());
  const int64_t now = ::time(nullptr);
  auto rows = listIdentities(layout.dir, now);
  ASSERT_TRUE(rows.isOk()) << rows.status().toString();
  std::vector<std::string> order;
  for (const auto& r : *rows) order.push_back(r.role + ":" + r.name);
  EXPECT_EQ(order,
            (std::vector<std::string>{"ca:ca", "broker:broker", "aggregator:agg-1",
                                      "bridge:mosquitto-2", "agent:agent-1", "agent:agent-2"}));
  for (const auto& r : *rows) {
    auto info = pki::inspectCertificate(text(r.certificate_file));
    ASSERT_TRUE(info.isOk());
    EXPECT_EQ(r.common_name, info->common_name);
    EXPECT_EQ(r.serial, pki::canonicalSerial(info->serial_hex));
    EXPECT_EQ(r.not_after, info->not_after);
    EXPECT_EQ(r.revoked, r.name == "agent-1") << r.name;
  }
  EXPECT_NEAR(rows->back().days_left, 60.0, 0.01) << "agent-2, renewed for 60 days";
  EXPECT_EQ(rows->at(4).common_name, "agent-1");
  EXPECT_NEAR(rows->at(4).days_left, 825.0, 0.1);
  // Ten days on, every identity has ten days less.
  auto later = listIdentities(layout.dir, now + 10 * 86400);
  ASSERT_TRUE(later.isOk());
  EXPECT_NEAR(later->back().days_left, 50.0, 0.01);
  EXPECT_EQ(listIdentities(tmp.path() + "-none").status().code(), Code::kNotFound);
}

TEST(FleetPkiTest, RotatedSealKeyKeepsOldBatchesOpenableAndNewOnesUseTheNewKey) {
  TempDir tmp;
  const PkiLayout layout = fleetWithTwoAgents(tmp);
  auto agent = protocol::readSealPrivateKey(layout.agentSealKey("agent-1"));
  ASSERT_TRUE(agent.isOk());
  auto old_pub = protocol::readSealPublicKey(layout.currentSealPublicKey());
  ASSERT_TRUE(old_pub.isOk());
  protocol::WireBatch batch;
  batch.agent_id = "agent-1";
  batch.seq = 1;
  batch.records.push_back({"customer", "r-1", 1, R"({"email":"a@example.org"})"});
  auto before = protocol::sealBatch(batch, {*agent, *old_pub});  // held by an agent, unsent
  ASSERT_TRUE(before.isOk());

  auto report = rotateSealKey(layout.dir);
  ASSERT_TRUE(report.isOk()) << report.status().toString();
  EXPECT_EQ(report->old_key_id, protocol::sealKeyId(*old_pub));
  EXPECT_NE(report->new_key_id, report->old_key_id);
  EXPECT_EQ(report->old_private_key, layout.sealPrivateKey(report->old_key_id));
  EXPECT_TRUE(fs::exists(report->old_private_key)) << "kept for the grace period";
  EXPECT_EQ(modeOf(report->new_private_key), 0600u);
  auto new_pub = protocol::readSealPublicKey(layout.currentSealPublicKey());
  ASSERT_TRUE(new_pub.isOk());
  EXPECT_EQ(protocol::sealKeyId(*new_pub), report->new_key_id) << "seal.pub switched";
  EXPECT_EQ(*currentSealPrivateKey(layout.dir), report->new_private_key);

  // An agent restarted on the new seal.pub seals with the new key id.
  batch.seq = 2;
  auto sealer = protocol::BatchSealer::create({*agent, *new_pub});
  ASSERT_TRUE(sealer.isOk());
  EXPECT_EQ((*sealer)->keyId(), report->new_key_id);
  auto after = (*sealer)->seal(batch);
  ASSERT_TRUE(after.isOk());

  // The aggregator config the command prints: new key current, old one retired.
  const int64_t until = nowMicros() + 7LL * 86400 * 1000000;
  protocol::AggregatorKeyRing ring;
  ring.by_key_id[report->new_key_id].pair = *protocol::readSealPrivateKey(report->new_private_key);
  ring.by_key_id[report->old_key_id] = {*protocol::readSealPrivateKey(report->old_private_key),
                                        until};
  protocol::OpenOptions open;
  open.ring = &ring;
  open.agent_public_key = [&](const std::string&) -> Result<protocol::X25519Key> {
    return agent->public_key;
  };
  for (const auto* payload : {&*before, &*after}) {
    auto opened = protocol::openBatch(*payload, protocol::DecodeLimits{}, open);
    ASSERT_TRUE(opened.isOk()) << opened.status().toString();
    EXPECT_EQ(opened->records.size(), 1u);
  }
  // Past `until` the old key's batches are refused, the new ones still open.
  open.now_us = until + 1;
  protocol::OpenFailure failure = protocol::OpenFailure::kNone;
  EXPECT_FALSE(protocol::openBatch(*before, protocol::DecodeLimits{}, open, &failure).isOk());
  EXPECT_EQ(failure, protocol::OpenFailure::kKeyRetired);
  EXPECT_TRUE(protocol::openBatch(*after, protocol::DecodeLimits{}, open).isOk());
}

}  // namespace
}  // namespace branchline::cli
