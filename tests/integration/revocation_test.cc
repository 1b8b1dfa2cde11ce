// `branchline pki revoke` and `renew` on a running secured pipeline (real
// Mosquitto, aggregator and agents): a revoked agent's batches are refused and
// audited at the aggregator, and after a broker restart it cannot connect; a
// renewed agent restarts on its new certificate and delivers. The certificate
// expiry gauges of the real processes show the certificates they hold.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "cli/pki/fleet_pki.h"
#include "shared/core/testing/wait_until.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {
using namespace std::chrono_literals;

std::string readFileText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_F(PipelineTest, RevokedAgentIsRefusedAndAuditedRenewedAgentDelivers) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 1));
  const std::string agent1 = pipeline_->agentUrls().at(0);
  const std::string agent2 = pipeline_->agentUrls().at(1);
  const std::string token1 = pipeline_->agentTokens().at(0);
  const std::string token2 = pipeline_->agentTokens().at(1);
  const std::string aggregator = pipeline_->aggregatorUrls().at(0);
  const std::string pki = pipeline_->pkiDir();
  auto records = [&] { return queryInt(store(), "SELECT COUNT(*) FROM records"); };

  // Every process with a certificate says how long it has (825 days from `up`).
  for (const auto& [url, name] : {std::pair{agent1, "bl_agent_certificate_expiry_days"},
                                  std::pair{aggregator, "bl_aggregator_certificate_expiry_days"}}) {
    const double days = scrapeMetric(url, name);
    EXPECT_GT(days, 824.9) << url << " " << name;
    EXPECT_LE(days, 825.05) << url << " " << name;
  }

  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent1, token1, "a1", 5));
  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent2, token2, "a2", 5));
  ASSERT_TRUE(waitForDrain(10, 0, 60));

  // Revoked while connected: the broker still carries its batches (no reload
  // yet), the aggregator refuses them, audited.
  ASSERT_TRUE(cli::revokeIdentity(pki, "agent-1", cli::IdentityRole::kAgent).isOk());
  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent1, token1, "a1-late", 5));
  const std::string audit_sql =
      "SELECT COUNT(*) FROM audit WHERE action = 'batch_refused' AND agent_id = 'agent-1' AND "
      "detail LIKE '%agent `agent-1` is revoked%'";
  ASSERT_TRUE(waitUntil([&] { return queryInt(store(), audit_sql) >= 1; }, 30s))
      << "no audit row for the revoked agent's batch";
  EXPECT_GE(scrapeMetric(aggregator, "bl_aggregator_batches_refused_total{reason=\"revoked\"}"), 1);
  EXPECT_EQ(records(), 10) << "nothing of a revoked agent's batch is stored";

  // After a broker restart (crlfile read at start) it cannot connect again:
  // its handshakes fail, in the broker's own words.
  const std::string broker_log = pipeline_->member("mosquitto")->log_path;
  const size_t log_offset = readFileText(broker_log).size();
  auto handshakesRefused = [&] {
    const std::string text = readFileText(broker_log);
    return text.find("certificate verify failed", log_offset) != std::string::npos;
  };
  ASSERT_TRUE(pipeline_->brokerRestart().isOk());
  ASSERT_TRUE(waitUntil([&] { return scrapeMetric(agent2, "bl_agent_mqtt_connected") == 1; }, 30s));
  ASSERT_TRUE(waitUntil(handshakesRefused, 30s)) << "agent-1 never tried? see " << broker_log;
  EXPECT_EQ(scrapeMetric(agent1, "bl_agent_mqtt_connected"), 0)
      << "a revoked certificate must not connect";

  // Renewed for 60 days, agent-2 restarts on its new certificate and delivers.
  ASSERT_TRUE(cli::renewIdentity(pki, "agent-2", cli::IdentityRole::kAgent, 60).isOk());
  ASSERT_TRUE(pipeline_->restart("agent-2").isOk());
  ASSERT_TRUE(waitUntil([&] { return scrapeMetric(agent2, "bl_agent_mqtt_connected") == 1; }, 30s));
  EXPECT_NEAR(scrapeMetric(agent2, "bl_agent_certificate_expiry_days"), 60.0, 0.05)
      << "the renewed certificate is the one in use";
  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent2, token2, "a2-renewed", 5));
  EXPECT_TRUE(waitUntil([&] { return records() == 15; }, 60s)) << records();
  EXPECT_EQ(scrapeMetric(agent1, "bl_agent_mqtt_connected"), 0);

  // `pki list` shows both.
  auto rows = cli::listIdentities(pki);
  ASSERT_TRUE(rows.isOk());
  for (const auto& r : *rows) {
    if (r.name == "agent-1") {
      EXPECT_TRUE(r.revoked);
    } else if (r.name == "agent-2") {
      EXPECT_FALSE(r.revoked);
      EXPECT_NEAR(r.days_left, 60.0, 0.05);
    }
  }
}

}  // namespace
}  // namespace branchline::testing
