// `branchline pki revoke` and `renew` against a real Mosquitto 2.0 with the
// folder's crlfile and real Paho clients: after a revoke and a reload, the
// revoked certificate's TLS handshake is refused; a renewed certificate connects.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "cli/pki/fleet_pki.h"
#include "shared/core/testing/wait_until.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/mqtt/testing/mosquitto_process.h"
#include "shared/pki/pki.h"

namespace branchline::cli {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using branchline::testing::waitUntil;

std::string text(const fs::path& p) {
  auto r = pki::readFile(p);
  return r.isOk() ? *r : "";
}

TEST(FleetPkiBrokerTest, RevokedCertificateIsRefusedAfterReloadAndRenewedOneConnects) {
  char tmpl[] = "/tmp/bl-fleet-pki-broker-test.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const fs::path root = tmpl;
  std::shared_ptr<void> remove_root(nullptr, [&root](void*) { fs::remove_all(root); });
  PkiInitOptions init;
  init.dir = (root / "pki").string();
  init.aggregators = {"agg-1"};
  ASSERT_TRUE(initPki(init).isOk());
  ASSERT_TRUE(enrollAgent(init.dir, "agent-1").isOk());
  ASSERT_TRUE(enrollAgent(init.dir, "agent-2", 30).isOk());
  const PkiLayout layout{init.dir};

  mqtt::testing::MosquittoProcess broker;
  broker.useTls(layout.caCert().string(), layout.brokerCert().string(), layout.brokerKey().string(),
                text(layout.brokerPolicy()), layout.revocationList().string());
  ASSERT_TRUE(broker.start()) << broker.error();
  const fs::path log = broker.dir() / "mosquitto.log";
  int clients = 0;
  auto options = [&](const std::string& agent) {
    mqtt::ClientOptions o;
    o.broker_uris = {broker.uri()};
    o.client_id = "fleet-pki-test-" + std::to_string(++clients);
    o.min_reconnect = 100ms;
    o.max_reconnect = 500ms;
    o.ca_file = layout.caCert().string();
    o.cert_file = layout.agentCert(agent).string();
    o.key_file = layout.agentKey(agent).string();
    return o;
  };
  auto connected = [](mqtt::Client& c) { return [&c] { return c.connected(); }; };

  mqtt::Client agent1(options("agent-1"), nullptr, nullptr);
  mqtt::Client agent2(options("agent-2"), nullptr, nullptr);
  ASSERT_TRUE(agent1.start().isOk());
  ASSERT_TRUE(agent2.start().isOk());
  ASSERT_TRUE(waitUntil(connected(agent1), 20s)) << "see " << log;
  ASSERT_TRUE(waitUntil(connected(agent2), 20s)) << "see " << log;

  ASSERT_TRUE(revokeIdentity(init.dir, "agent-1", IdentityRole::kAgent).isOk());
  broker.reload();  // SIGHUP: Mosquitto rebuilds the listener's TLS context with the new CRL
  ASSERT_TRUE(
      waitUntil([&] { return text(log).find("Reloading config.") != std::string::npos; }, 10s))
      << text(log);

  // Renewed: new key and certificate in the same files, no broker change.
  const std::string old_cert = text(layout.agentCert("agent-2"));
  ASSERT_TRUE(renewIdentity(init.dir, "agent-2", IdentityRole::kAgent, 60).isOk());
  ASSERT_NE(text(layout.agentCert("agent-2")), old_cert);
  agent2.stop();
  mqtt::Client renewed(options("agent-2"), nullptr, nullptr);
  mqtt::Client revoked(options("agent-1"), nullptr, nullptr);
  ASSERT_TRUE(renewed.start().isOk());
  ASSERT_TRUE(revoked.start().isOk());
  ASSERT_TRUE(waitUntil(connected(renewed), 20s)) << "the renewed certificate connects; " << log;
  std::this_thread::sleep_for(2s);  // several reconnect rounds (100-500 ms) to fail in
  EXPECT_FALSE(revoked.connected()) << "a revoked certificate's handshake is refused";
  EXPECT_NE(text(log).find("certificate verify failed"), std::string::npos) << text(log);
  // What the README says: a reload does not cut a connection already open.
  EXPECT_TRUE(agent1.connected());

  // A broker restart does: the revoked agent cannot come back, the renewed one can.
  ASSERT_TRUE(broker.restart()) << broker.error();
  ASSERT_TRUE(waitUntil([&] { return !agent1.connected(); }, 10s));
  ASSERT_TRUE(waitUntil(connected(renewed), 20s)) << log;
  std::this_thread::sleep_for(2s);
  EXPECT_FALSE(agent1.connected()) << "the revoked agent cannot reconnect after a restart";
  EXPECT_FALSE(revoked.connected());
  for (mqtt::Client* c : {&agent1, &renewed, &revoked}) c->stop();
}

}  // namespace
}  // namespace branchline::cli
