// Aimed crash windows (issue 15 part 5, README "Failpoints"), with the real
// binaries: each run arms one failpoint in one process, which SIGKILLs itself
// there under load; the test restarts it unarmed and checks that nothing was
// lost or doubled, and counts what was recovered (delivered although the
// answer that would have said so was lost). The windows:
//   agent.after_commit_before_reply   the records are durable, the HTTP answer never left
//   agent.after_publish_before_ack    the batch is on its way, its ack not yet in
//   agent.after_ack_before_delete     the ack is in, the batch not yet deleted
//   aggregator.after_commit_before_ack  committed centrally, the ack never left
// Needs a build with -DBRANCHLINE_FAILPOINTS=ON (ci/build turns it on).
#include "shared/core/failpoint.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <string>
#include <thread>

#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using namespace std::chrono_literals;

struct Window {
  const char* member;  // the process armed
  const char* point;
  int pass;               // which pass kills it
  bool recovery_certain;  // whether the window always leaves something to recover
};

class FailpointTest : public PipelineTest, public ::testing::WithParamInterface<Window> {};

TEST_P(FailpointTest, CrashInTheWindowLosesAndDoublesNothing) {
  if (!failpoint::kCompiledIn) {
    GTEST_SKIP() << "built without -DBRANCHLINE_FAILPOINTS=ON (ci/build turns it on)";
  }
  const Window w = GetParam();
  ASSERT_NO_FATAL_FAILURE(
      startPipeline(1, 1, {{"batch.ack_timeout_ms", "2000"}, {"batch.linger_ms", "20"}}));
  cli::Member* m = pipeline_->member(w.member);
  ASSERT_NE(m, nullptr);
  const auto unarmed_env = m->spec.env;
  m->spec.env.emplace_back("BRANCHLINE_FAILPOINTS",
                           std::string(w.point) + "@" + std::to_string(w.pass));
  ASSERT_TRUE(pipeline_->restart(w.member).isOk());

  loadgen::GeneratorOptions gen;
  gen.seed = 1515;
  gen.duplicate_share = 0.05;
  gen.invalid_share = 0.02;
  loadgen::LoadOptions load = loadOptions(4000, gen);
  load.rate = 1500;
  load.batch = 50;
  auto running = std::async(std::launch::async, [load] { return loadgen::runLoad(load); });

  // The armed process dies in its window; it comes back unarmed.
  bool died = false;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (running.wait_for(20ms) != std::future_status::ready || !died) {
    if (!died && !pipeline_->process(w.member)->isRunning()) {
      died = true;
      m->spec.env = unarmed_env;
      ASSERT_TRUE(pipeline_->restart(w.member).isOk());
    }
    if (std::chrono::steady_clock::now() > deadline) break;
  }
  ASSERT_TRUE(died) << w.point << " was never reached";
  EXPECT_NE(cli::tailOfFile(m->log_path, 1 << 20).find("\"failpoint_hit\""), std::string::npos)
      << "the process died, but not at its failpoint: see " << m->log_path;
  auto stats = running.get();
  ASSERT_TRUE(stats.isOk()) << stats.status().toString();
  EXPECT_EQ(stats->failed_records, 0u) << stats->toJson();

  const int64_t unique = static_cast<int64_t>(stats->accepted_unique.size());
  ASSERT_TRUE(waitForDrain(unique, 0, 120))
      << "store holds " << queryInt(store(), "SELECT COUNT(*) FROM records") << " of " << unique;
  // Lost 0 and nothing unexpected: exactly the accepted records, byte for byte.
  expectExactlyAccepted(*stats, gen);
  const int64_t rows = queryInt(store(), "SELECT COUNT(*) FROM records");
  // Doubling counted without the UNIQUE constraint: record deliveries the
  // ledger committed against what the agent can have taken in.
  const int64_t deliveries =
      queryInt(store(),
               "SELECT (SELECT COALESCE(SUM(records), 0) FROM batch_ledger) + "
               "(SELECT COALESCE(SUM(records), 0) FROM batch_conflicts)");
  const int64_t allowed =
      static_cast<int64_t>(stats->accepted + stats->failed_records + stats->resent_after_error);
  const int64_t doubled = (rows - unique) + std::max<int64_t>(0, deliveries - allowed);
  const int64_t lost = unique - rows;
  // Recovered: records delivered beyond the acceptances (committed by an
  // attempt whose answer was lost), and batches the aggregator found already
  // stored (committed by a delivery whose ack was lost).
  const int64_t recovered_records =
      std::max<int64_t>(0, deliveries - static_cast<int64_t>(stats->accepted));
  const double recovered_batches =
      scrapeMetric(pipeline_->member("agg-1")->url, "bl_aggregator_batches_duplicate_total");
  std::printf(
      "failpoint %s@%d: lost %lld doubled %lld recovered_records %lld recovered_batches %.0f "
      "(accepted %llu, deliveries %lld, transport errors %llu)\n",
      w.point, w.pass, static_cast<long long>(lost), static_cast<long long>(doubled),
      static_cast<long long>(recovered_records), recovered_batches,
      static_cast<unsigned long long>(stats->accepted), static_cast<long long>(deliveries),
      static_cast<unsigned long long>(stats->transport_errors));
  EXPECT_EQ(lost, 0);
  EXPECT_EQ(doubled, 0);
  if (w.recovery_certain) {
    EXPECT_GT(recovered_records + static_cast<int64_t>(recovered_batches), 0)
        << "the crash left nothing to recover: did it hit the window?";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Windows, FailpointTest,
    ::testing::Values(Window{"agent-1", "agent.after_commit_before_reply", 5, true},
                      Window{"agent-1", "agent.after_publish_before_ack", 3, false},
                      // The ack may come again after the restart (the agent died
                      // before its PUBACK; its session is persistent): then the
                      // batch is deleted with no resend, and nothing is recovered.
                      Window{"agent-1", "agent.after_ack_before_delete", 3, false},
                      Window{"agg-1", "aggregator.after_commit_before_ack", 3, true}),
    [](const ::testing::TestParamInfo<Window>& info) {
      std::string name = info.param.point;
      for (char& c : name) {
        if (c == '.') c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace branchline::testing
