// Trust through the broker (README "Security / Authenticated acks"): whoever
// can publish on an agent's ack topic (the broker, a bridge, a holder of an
// aggregator's TLS certificate) cannot make the agent delete a batch. Only an
// ack tagged by an aggregator that holds the sealing key, for the seq and the
// content held, does.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "cli/pki/fleet_pki.h"
#include "protocol/ack_auth.h"
#include "protocol/batch_codec.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/mqtt/testing/publish.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using namespace std::chrono_literals;

class ForgedAckTest : public PipelineTest {};

// Waits until `pred` holds or `timeout` passes; returns whether it held.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

TEST_F(ForgedAckTest, AcksFromAnAggregatorsTlsIdentityWithoutItsSealKeyDeleteNothing) {
  // Short resends, so a deleted batch would be noticed as missing, not just late.
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1, {{"batch.ack_timeout_ms", "1000"}}));
  ASSERT_TRUE(pipeline_->sealsBatches());
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());

  loadgen::GeneratorOptions gen;
  gen.seed = 13;
  gen.duplicate_share = 0;
  gen.invalid_share = 0;
  loadgen::LoadOptions load = loadOptions(4000, gen);
  auto stats = loadgen::runLoad(load);
  ASSERT_TRUE(stats.isOk()) << stats.status().toString();
  ASSERT_EQ(stats->failed_records, 0u);
  const int64_t accepted = static_cast<int64_t>(stats->accepted_unique.size());
  ASSERT_EQ(accepted, 4000);
  ASSERT_TRUE(eventually([&] { return agentMetric(0, "bl_agent_batches_sent_total") >= 2; }, 20s))
      << "the agent formed no batches";

  // The attacker: an MQTT client with agg-1's TLS certificate and key (so the
  // broker's ACL lets it write every agent's ack topic), but not its seal key.
  const cli::PkiLayout pki{pipeline_->pkiDir()};
  mqtt::ClientOptions co;
  co.broker_uris = {pipeline_->brokerUri()};
  co.client_id = "aggregator.agg-1";
  co.ca_file = pki.caCert().string();
  co.cert_file = pki.aggregatorCert("agg-1").string();
  co.key_file = pki.aggregatorKey("agg-1").string();
  std::atomic<bool> up{false};
  mqtt::Client attacker(
      co, [](mqtt::Message&&) {}, [&](bool is_up) { up = is_up; });
  ASSERT_TRUE(attacker.start().isOk());
  ASSERT_TRUE(eventually([&] { return up.load(); }, 20s)) << "attacker could not connect";

  const std::string topic = "branchline/v1/agents/agent-1/ack";
  auto publish = [&](const protocol::WireAck& a) {
    return mqtt::testing::publishWaitingForRoom(attacker, topic, protocol::encodeAck(a));
  };
  auto ack = [](uint64_t seq) {
    protocol::WireAck a;
    a.agent_id = "agent-1";
    a.batch_seq = seq;
    a.status = protocol::AckStatus::kStored;
    a.stored_records = 2000;
    a.aggregator = "agg-1";
    return a;
  };
  // 1. Acks built from the schema alone, for every seq the agent could hold.
  for (uint64_t seq = 0; seq <= 200; ++seq) {
    ASSERT_TRUE(publish(ack(seq)).isOk());
  }
  // 2. Genuine acks (made with the real aggregator key, as an insider who once
  // saw one), replayed for other content and moved to another seq.
  auto aggregator_pair = protocol::readSealPrivateKey(*cli::currentSealPrivateKey(pki.dir));
  auto agent_public = protocol::readSealPublicKey(pki.agentSealPublic("agent-1"));
  ASSERT_TRUE(aggregator_pair.isOk() && agent_public.isOk());
  const protocol::AckKey real_key = *protocol::aggregatorAckKey(*aggregator_pair, *agent_public);
  for (uint64_t seq = 0; seq <= 4; ++seq) {
    protocol::WireAck other_content = ack(seq);
    other_content.digest = std::string(64, 'a');
    protocol::signAck(real_key, other_content);
    ASSERT_TRUE(publish(other_content).isOk());
    protocol::WireAck moved = other_content;
    moved.batch_seq = seq + 1;
    ASSERT_TRUE(publish(moved).isOk());
  }

  const std::string refused = "bl_agent_acks_refused_total{reason=\"";
  ASSERT_TRUE(eventually([&] { return agentMetric(0, refused + "forged\"}") >= 201; }, 20s))
      << "forged acks were not refused (or never arrived)";
  EXPECT_TRUE(eventually([&] { return agentMetric(0, refused + "tampered\"}") >= 5; }, 10s));
  EXPECT_GE(agentMetric(0, refused + "replayed\"}") + agentMetric(0, refused + "unknown_batch\"}"),
            5);
  EXPECT_EQ(agentMetric(0, "bl_agent_batches_acked_total"), 0);
  EXPECT_EQ(agentBufferRecords(), 4000) << "an unauthentic ack deleted buffered records";

  // 3. Announcements the same identity can publish but not sign: an unsigned
  // "agg-1 is offline" notice, and one signed by a key outside the fleet CA.
  const std::string online_topic = "branchline/v1/aggregators/agg-1/online";
  protocol::WireAnnouncement forged;
  forged.aggregator = "agg-1";
  forged.online = false;
  ASSERT_TRUE(mqtt::testing::publishWaitingForRoom(attacker, online_topic,
                                                   protocol::encodeAnnouncement(forged))
                  .isOk());
  const std::string refused_notice = "bl_agent_announcements_refused_total{reason=\"";
  EXPECT_TRUE(eventually([&] { return agentMetric(0, refused_notice + "unsigned\"}") >= 1; }, 10s));
  attacker.stop();

  // The aggregator returns: everything is stored, exactly once.
  Status s = pipeline_->restart("agg-1");
  ASSERT_TRUE(s.isOk()) << s.toString();
  ASSERT_TRUE(waitForDrain(accepted, 0, 120))
      << "store holds " << queryInt(store(), "SELECT COUNT(*) FROM records") << " of " << accepted;
  expectExactlyAccepted(*stats, gen);
  EXPECT_GT(agentMetric(0, "bl_agent_batches_acked_total"), 0);
  // The real aggregator's signed announcements were taken.
  for (const char* reason : {"untrusted_certificate", "bad_signature"}) {
    EXPECT_EQ(agentMetric(0, refused_notice + reason + "\"}"), -1) << reason;
  }
}

}  // namespace
}  // namespace branchline::testing
