// What a stolen fleet certificate can still do to a secured `branchline up`
// pipeline (issue 13, parts 3 and 4), with the real binaries, the broker as
// `branchline up` configures it and real MQTT clients as the intruders: it
// cannot join the aggregators' share group (refused at SUBSCRIBE, so delivery
// is as prompt as without it), and it cannot take over an agent's or an
// aggregator's client id (the agent stays connected and keeps delivering).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "cli/net/http_client.h"
#include "protocol/batch_codec.h"
#include "shared/mqtt/mqtt_client.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {
using namespace std::chrono_literals;

class BrokerTrustTest : public PipelineTest {
 protected:
  // A client of the pipeline's broker with enrolled agent `id`'s certificate.
  mqtt::ClientOptions intruder(const std::string& id) const {
    const std::string pki = pipeline_->dir() + "/pki";
    mqtt::ClientOptions o;
    o.broker_uris = {pipeline_->brokerUri()};
    o.ca_file = pki + "/ca.crt";
    o.cert_file = pki + "/agents/" + id + ".crt";
    o.key_file = pki + "/agents/" + id + ".key";
    o.min_reconnect = 100ms;
    o.max_reconnect = 500ms;
    return o;
  }
  static bool waitConnected(const mqtt::Client& c, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!c.connected() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(20ms);
    }
    return c.connected();
  }
  // Sends `records` valid, distinct records to agent-1 and checks that the
  // store holds exactly them within `timeout_s`.
  void deliverThroughAgent1(uint64_t records, int timeout_s) {
    loadgen::GeneratorOptions gen;
    gen.seed = 13;
    gen.duplicate_share = 0;
    gen.invalid_share = 0;
    loadgen::LoadOptions load = loadOptions(records, gen);
    load.urls = {pipeline_->member("agent-1")->url};
    load.tokens = {pipeline_->member("agent-1")->ingest_token};
    load.concurrency = 2;
    load.batch = 10;
    auto stats = loadgen::runLoad(load);
    ASSERT_TRUE(stats.isOk()) << stats.status().toString();
    ASSERT_EQ(stats->failed_records, 0u);
    const int64_t unique = static_cast<int64_t>(stats->accepted_unique.size());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    while (queryInt(store(), "SELECT COUNT(*) FROM records") < unique &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(50ms);
    }
    ASSERT_EQ(queryInt(store(), "SELECT COUNT(*) FROM records"), unique)
        << "not all records stored within " << timeout_s << " s";
    expectExactlyAccepted(*stats, gen);
  }
};

// Three agent certificates ask for the aggregators' shared subscription (and
// for every batch directly): the broker refuses each SUBSCRIBE, and 200
// records from agent-1 are all stored within seconds (before the fix: 62 s,
// 19 missing).
TEST_F(BrokerTrustTest, AgentCertificatesCannotJoinTheAggregatorsShareGroup) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(4, 1));
  // Their agents are stopped: a certificate in use by its agent would only
  // replace that agent's connection (one identity per connection).
  for (const char* id : {"agent-2", "agent-3", "agent-4"}) ASSERT_TRUE(pipeline_->kill9(id).isOk());
  std::vector<std::unique_ptr<mqtt::Client>> intruders;
  for (const char* id : {"agent-2", "agent-3", "agent-4"}) {
    intruders.push_back(std::make_unique<mqtt::Client>(intruder(id), nullptr, nullptr));
    ASSERT_TRUE(intruders.back()->start().isOk());
    ASSERT_TRUE(waitConnected(*intruders.back(), 20s)) << id;
    for (const std::string filter : {"$share/branchline-aggregators/branchline/v1/agents/+/batch",
                                     "branchline/v1/agents/+/batch"}) {
      EXPECT_FALSE(intruders.back()->subscribe(filter).isOk()) << id << " was granted " << filter;
    }
  }
  deliverThroughAgent1(200, 10);
}

// For 10 s a client with agent-2's certificate keeps connecting under agent-1's
// client id and under the aggregator's, while agent-1 takes records: agent-1
// never reports itself disconnected and everything it took is stored.
TEST_F(BrokerTrustTest, AnotherCertificateCannotTakeOverAnAgentOrAggregatorClientId) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 1));
  ASSERT_TRUE(pipeline_->kill9("agent-2").isOk());
  const std::string agent1_metrics = pipeline_->member("agent-1")->url + "/metrics";
  const std::string aggregator_id = "agg-1-" + std::to_string(pipeline_->process("agg-1")->pid());
  // Ready (/healthz) comes before the first MQTT connect: start from a connected agent.
  const auto connect_deadline = std::chrono::steady_clock::now() + 20s;
  while (scrapeMetric(pipeline_->member("agent-1")->url, "bl_agent_mqtt_connected") != 1 &&
         std::chrono::steady_clock::now() < connect_deadline) {
    std::this_thread::sleep_for(50ms);
  }
  std::atomic<bool> attacking{true};
  std::atomic<int> takeovers{0};
  std::thread attacker([&] {
    for (int round = 0; attacking.load(); ++round) {
      mqtt::ClientOptions o = intruder("agent-2");
      o.client_id = round % 2 == 0 ? "branchline-agent-agent-1" : aggregator_id;
      mqtt::Client c(o, nullptr, nullptr);
      if (c.start().isOk() && waitConnected(c, 5s)) ++takeovers;
    }
  });
  int samples = 0, disconnected = 0;
  std::thread sampler([&] {
    while (attacking.load()) {
      auto m = cli::httpGet(agent1_metrics, 2s);
      if (m.isOk() && m->status == 200) {
        ++samples;
        if (metricValue(m->body, "bl_agent_mqtt_connected") != 1) ++disconnected;
      }
      std::this_thread::sleep_for(200ms);
    }
  });
  const auto started = std::chrono::steady_clock::now();
  deliverThroughAgent1(500, 20);
  std::this_thread::sleep_until(started + 10s);
  attacking = false;
  attacker.join();
  sampler.join();
  EXPECT_GE(takeovers.load(), 3) << "the intruder must really have connected";
  EXPECT_GE(samples, 20);
  EXPECT_EQ(disconnected, 0) << "of " << samples << " samples of bl_agent_mqtt_connected";
}

// Two live copies of agent-1 (here: a second client with agent-1's own
// certificate, as a cloned config would run): the agent reports
// `duplicate_identity` on its status topic, tagged with its ack key, and the
// aggregator writes an audit row for it. A status that agent-1's certificate
// alone can make (no seal key: a forged tag) is refused and audits nothing.
TEST_F(BrokerTrustTest, TwoLiveCopiesOfAnAgentAreAuditedCentrally) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  const std::string agent1 = pipeline_->member("agent-1")->url;
  const auto connect_deadline = std::chrono::steady_clock::now() + 20s;
  while (scrapeMetric(agent1, "bl_agent_mqtt_connected") != 1 &&
         std::chrono::steady_clock::now() < connect_deadline) {
    std::this_thread::sleep_for(50ms);
  }
  // A forged status first: the certificate may publish there, but it has no tag key.
  {
    mqtt::Client forger(intruder("agent-1"), nullptr, nullptr);
    ASSERT_TRUE(forger.start().isOk());
    ASSERT_TRUE(waitConnected(forger, 5s));
    protocol::WireAgentStatus forged;
    forged.agent_id = "agent-1";
    forged.events.push_back({"duplicate_identity", 1, "forged by the test"});
    forged.key_id = "0000000000000000";
    forged.tag = std::string(32, 'x');
    ASSERT_TRUE(
        forger
            .publish("branchline/v1/agents/agent-1/status", protocol::encodeAgentStatus(forged), 1)
            .isOk());
    std::this_thread::sleep_for(300ms);
  }
  const auto deadline = std::chrono::steady_clock::now() + 40s;
  int64_t audited = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    {
      // Each twin connection takes agent-1's session; agent-1 takes it back.
      mqtt::Client twin(intruder("agent-1"), nullptr, nullptr);
      if (twin.start().isOk()) (void)waitConnected(twin, 3s);
      std::this_thread::sleep_for(300ms);
    }
    audited = queryInt(store(),
                       "SELECT COUNT(*) FROM audit WHERE action = 'duplicate_identity' AND "
                       "agent_id = 'agent-1' AND detail LIKE '%reported by the copy on host%'");
    if (audited > 0) break;
  }
  EXPECT_EQ(audited, 1) << "no duplicate_identity audit row for agent-1";
  EXPECT_GE(scrapeMetric(agent1, "bl_agent_duplicate_identity_total"), 1);
  EXPECT_EQ(
      queryInt(store(), "SELECT COUNT(*) FROM audit WHERE detail LIKE '%forged by the test%'"), 0);
  const std::string agg = pipeline_->member("agg-1")->url;
  EXPECT_EQ(scrapeMetric(agg, "bl_aggregator_agent_status_refused_total{reason=\"unknown_key\"}"),
            1);
  EXPECT_EQ(
      scrapeMetric(agg, "bl_aggregator_agent_events_audited_total{kind=\"duplicate_identity\"}"),
      1);
}

}  // namespace
}  // namespace branchline::testing
