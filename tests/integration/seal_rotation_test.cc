// `branchline pki rotate-seal-key` on a running secured pipeline (real
// Mosquitto, aggregator and agent), in the order the command prints: batches an
// agent holds sealed to the old key drain at an aggregator that holds both
// keys (and only because it does), and after the agent's restart new batches
// use the new key.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <string>

#include "cli/pki/fleet_pki.h"
#include "shared/core/clock.h"
#include "shared/core/testing/wait_until.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {
using namespace std::chrono_literals;

// The aggregator config's [security] sealing keys replaced by these (the
// lines `rotate-seal-key` prints), every other line kept.
void setSealKeys(const std::string& config, const std::string& current,
                 const std::string& retired_line) {
  std::ifstream in(config);
  std::string out, line;
  while (std::getline(in, line)) {
    if (line.rfind("retired_seal_keys", 0) == 0) continue;
    if (line.rfind("seal_keys", 0) == 0) {
      out += "seal_keys = [\"" + current + "\"]\n";
      if (!retired_line.empty()) out += retired_line + "\n";
      continue;
    }
    out += line + "\n";
  }
  in.close();
  std::ofstream(config, std::ios::trunc) << out;
}

TEST_F(PipelineTest, RotatedSealKeyDrainsOldBatchesAndNewOnesUseTheNewKey) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1, {{"batch.ack_timeout_ms", "1000"}}));
  const std::string agent = pipeline_->agentUrls().at(0);
  const std::string token = pipeline_->agentTokens().at(0);
  const std::string config = pipeline_->member("agg-1")->config_path;
  auto records = [&] { return queryInt(store(), "SELECT COUNT(*) FROM records"); };
  const std::string unknown_key_sql =
      "SELECT COUNT(*) FROM audit WHERE action = 'batch_refused' AND detail LIKE "
      "'%unknown aggregator key id%'";

  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent, token, "before", 5));
  ASSERT_TRUE(waitForDrain(5, 0, 60));

  // The aggregator away, the agent holds a batch sealed to the current key.
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());
  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent, token, "held", 5));
  auto rotation = cli::rotateSealKey(pipeline_->pkiDir());
  ASSERT_TRUE(rotation.isOk()) << rotation.status().toString();

  // Control: with the new key alone, the held batch (old key) is refused.
  setSealKeys(config, rotation->new_private_key.string(), "");
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());
  ASSERT_TRUE(waitUntil([&] { return queryInt(store(), unknown_key_sql) >= 1; }, 30s))
      << "the held batch should be sealed to the old key";
  EXPECT_EQ(records(), 5);

  // Both keys, as printed: the held batch drains.
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());
  const std::string until = formatRfc3339Micros(nowMicros() + 86400LL * 1000000);
  setSealKeys(config, rotation->new_private_key.string(),
              "retired_seal_keys = [{ file = \"" + rotation->old_private_key.string() +
                  "\", until = \"" + until + "\" }]");
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());
  ASSERT_TRUE(waitForDrain(10, 0, 60)) << "records: " << records();

  // The agent restarted on the new seal.pub; the aggregator drops the old key:
  // new batches are stored, none refused for an unknown key.
  const int64_t refused_before = queryInt(store(), unknown_key_sql);
  ASSERT_TRUE(pipeline_->restart("agent-1").isOk());
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());
  setSealKeys(config, rotation->new_private_key.string(), "");
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());
  ASSERT_NO_FATAL_FAILURE(postCustomerRecords(agent, token, "after", 5));
  ASSERT_TRUE(waitForDrain(15, 0, 60)) << "records: " << records();
  EXPECT_EQ(queryInt(store(), unknown_key_sql), refused_before);
}

}  // namespace
}  // namespace branchline::testing
