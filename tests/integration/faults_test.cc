// Real faults under load: kill -9 of an agent (then restarted by hand), kill -9
// of one aggregator (the other carries on alone), a broker restart, and a
// broker killed again and again. In each
// case every record the agents accepted reaches the store exactly once.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class FaultsTest : public PipelineTest {
 protected:
  // Runs `records` records of load (at `rate`/s) and calls `fault` once the load
  // has run for `after`. Then drains and checks exactly-once delivery.
  void runWithFault(uint64_t records, double rate, milliseconds after,
                    const std::function<void()>& fault) {
    loadgen::GeneratorOptions gen;
    gen.seed = 99;
    gen.duplicate_share = 0.05;
    gen.invalid_share = 0.02;
    loadgen::LoadOptions load = loadOptions(records, gen);
    load.rate = rate;
    load.batch = 100;
    auto running = std::async(std::launch::async, [load] { return loadgen::runLoad(load); });
    std::this_thread::sleep_for(after);
    fault();
    auto stats = running.get();
    ASSERT_TRUE(stats.isOk()) << stats.status().toString();
    std::fprintf(stderr, "load: %s\n", stats->toJson().c_str());
    EXPECT_EQ(stats->failed_records, 0u);
    EXPECT_EQ(stats->records_sent, records);
    const int64_t unique = static_cast<int64_t>(stats->accepted_unique.size());
    ASSERT_TRUE(waitForDrain(unique, 0, 300))
        << "store holds " << queryInt(store(), "SELECT COUNT(*) FROM records") << " of " << unique
        << " records";
    expectExactlyAccepted(*stats, gen);
  }
};

TEST_F(FaultsTest, AgentKilledMidStreamAndRestartedLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 2));
  runWithFault(40000, 8000, milliseconds(2000), [this] {
    ASSERT_TRUE(pipeline_->kill9("agent-1").isOk());
    std::this_thread::sleep_for(milliseconds(500));
    // The others carry on while it is down.
    EXPECT_TRUE(pipeline_->process("agent-2")->isRunning());
    EXPECT_TRUE(pipeline_->process("agg-1")->isRunning());
    Status s = pipeline_->restart("agent-1");
    ASSERT_TRUE(s.isOk()) << s.toString();
  });
}

TEST_F(FaultsTest, AggregatorKilledTheOtherCarriesOn) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 2, {{"batch.ack_timeout_ms", "2000"}}));
  runWithFault(40000, 8000, milliseconds(2000),
               [this] { ASSERT_TRUE(pipeline_->kill9("agg-1").isOk()); });
  // agg-1 stayed down: the survivor committed everything after the kill.
  EXPECT_FALSE(pipeline_->process("agg-1")->isRunning());
  EXPECT_GT(queryInt(store(), "SELECT COUNT(*) FROM batch_ledger WHERE aggregator = 'agg-2'"), 0);
}

TEST_F(FaultsTest, BrokerRestartLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 2, {{"batch.ack_timeout_ms", "2000"}}));
  runWithFault(40000, 8000, milliseconds(2000), [this] {
    ASSERT_TRUE(pipeline_->kill9("mosquitto").isOk());
    std::this_thread::sleep_for(milliseconds(1000));
    Status s = pipeline_->restart("mosquitto");
    ASSERT_TRUE(s.isOk()) << s.toString();
  });
}

// A broker that dies again and again under load (kill -9 each time, restored
// from its last autosave): sessions come back half-remembered each time.
TEST_F(FaultsTest, BrokerKilledRepeatedlyLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 2, {{"batch.ack_timeout_ms", "2000"}}));
  runWithFault(60000, 8000, milliseconds(1000), [this] {
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(pipeline_->kill9("mosquitto").isOk());
      std::this_thread::sleep_for(milliseconds(300 + 200 * i));
      Status s = pipeline_->restart("mosquitto");
      ASSERT_TRUE(s.isOk()) << s.toString();
      std::this_thread::sleep_for(milliseconds(700));
    }
  });
}

}  // namespace
}  // namespace branchline::testing
