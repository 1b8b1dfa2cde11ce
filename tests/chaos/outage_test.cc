// A whole-central-side outage under steady load (issue 4, part 4): both
// aggregators are SIGKILLed and stay down for BRANCHLINE_OUTAGE_SECONDS
// (default 600) while the agents keep taking records. No ingest may be
// refused while the buffers have room; once the aggregators are back the
// backlog drains (oldest first, beside the new load) and every accepted record
// is stored exactly once. Prints the backlog, the drain time and rate, and
// the load's seed (new every run; BRANCHLINE_OUTAGE_SEED replays one); the
// figures are kept in <build>/soak/outage.json, passed or not.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "shared/core/clock.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class OutageTest : public PipelineTest {};

TEST_F(OutageTest, CentralOutageBuffersAtAgentsAndDrainsOnceBack) {
  double outage_s = 600;
  if (const char* s = std::getenv("BRANCHLINE_OUTAGE_SECONDS"); s != nullptr) {
    outage_s = std::stod(s);
  }
  constexpr double kRate = 1000;  // records/s over both agents
  constexpr double kBefore = 20, kAfter = 40;
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 2, {{"batch.ack_timeout_ms", "3000"}}));

  loadgen::GeneratorOptions gen;
  gen.seed = 0;
  if (const char* s = std::getenv("BRANCHLINE_OUTAGE_SEED"); s != nullptr)
    gen.seed = std::stoull(s);
  while (gen.seed == 0) gen.seed = std::random_device{}();
  std::printf("outage seed: %llu (replay: BRANCHLINE_OUTAGE_SEED=%llu)\n",
              static_cast<unsigned long long>(gen.seed), static_cast<unsigned long long>(gen.seed));
  gen.duplicate_share = 0.05;
  gen.invalid_share = 0.02;
  loadgen::LoadOptions load = loadOptions(0, gen);
  load.seconds = kBefore + outage_s + kAfter;
  load.rate = kRate;
  load.batch = 50;
  auto running = std::async(std::launch::async, [load] { return loadgen::runLoad(load); });

  std::this_thread::sleep_for(seconds(static_cast<int>(kBefore)));
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());
  ASSERT_TRUE(pipeline_->kill9("agg-2").isOk());
  const int64_t stored_at_kill = queryInt(store(), "SELECT COUNT(*) FROM records");
  const int64_t killed_at = steadyMicros();
  const int64_t killed_wall = nowMicros();
  while (steadyMicros() - killed_at < static_cast<int64_t>(outage_s * 1e6)) {
    std::this_thread::sleep_for(seconds(std::min(30, std::max(1, static_cast<int>(outage_s)))));
    std::fprintf(stderr, "outage %.0f s: agents buffer %lld records\n",
                 (steadyMicros() - killed_at) / 1e6, static_cast<long long>(agentBufferRecords()));
  }
  // Nothing reached the store while the whole central side was down.
  EXPECT_EQ(queryInt(store(), "SELECT COUNT(*) FROM records"), stored_at_kill);

  const int64_t backlog = agentBufferRecords();
  ASSERT_GT(backlog, static_cast<int64_t>(kRate * outage_s * 0.5));
  const int64_t restarted_at = steadyMicros();
  const int64_t restarted_wall = nowMicros();
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());
  ASSERT_TRUE(pipeline_->restart("agg-2").isOk());
  // Drained: the buffers are back to what the ongoing load keeps in flight
  // (a couple of seconds of records).
  double drain_s = -1;
  while (steadyMicros() - restarted_at < 300'000'000) {
    const int64_t held = agentBufferRecords();
    if (held >= 0 && held <= static_cast<int64_t>(kRate * 2)) {
      drain_s = (steadyMicros() - restarted_at) / 1e6;
      break;
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  ASSERT_GT(drain_s, 0) << "backlog of " << backlog << " records not drained in 300 s";
  std::printf(
      "outage: %.0f s, backlog %lld records, drained in %.1f s (%.0f records/s) while "
      "new load kept arriving\n",
      outage_s, static_cast<long long>(backlog), drain_s, backlog / drain_s);

  auto stats = running.get();
  ASSERT_TRUE(stats.isOk()) << stats.status().toString();
  std::fprintf(stderr, "load: %s\n", stats->toJson().c_str());
  {
    const std::filesystem::path out = std::filesystem::path(BRANCHLINE_BUILD_DIR) / "soak";
    std::filesystem::create_directories(out);
    std::ofstream(out / "outage.json")
        << "{\"seed\":" << gen.seed << ",\"outage_seconds\":" << outage_s
        << ",\"backlog\":" << backlog << ",\"drain_seconds\":" << drain_s
        << ",\"load\":" << stats->toJson() << "}\n";
  }
  // No ingest was refused: the buffers had room the whole time.
  EXPECT_EQ(stats->retries_503, 0u);
  EXPECT_EQ(stats->failed_records, 0u);
  EXPECT_EQ(stats->http_errors, 0u);
  EXPECT_EQ(stats->unexpected_rejects, 0u);
  const int64_t unique = static_cast<int64_t>(stats->accepted_unique.size());
  ASSERT_TRUE(waitForDrain(unique, 0, 300))
      << "store holds " << queryInt(store(), "SELECT COUNT(*) FROM records") << " of " << unique
      << " records";
  expectExactlyAccepted(*stats, gen);

  // Oldest first: at each agent, every record taken in at the start of the
  // outage reached the store before any record taken in after the recovery
  // (those queue behind the backlog; ingest itself was never refused, above).
  const std::string early_from = formatRfc3339Micros(killed_wall);
  const std::string early_to =
      formatRfc3339Micros(killed_wall + static_cast<int64_t>(std::min(60.0, outage_s / 2) * 1e6));
  const std::string late_from = formatRfc3339Micros(restarted_wall);
  for (const std::string agent : {"agent-1", "agent-2"}) {
    const std::string overtaken =
        "SELECT COUNT(*) FROM records WHERE agent_id = '" + agent + "' AND ingested_at > '" +
        late_from + "' AND stored_at < (SELECT MAX(stored_at) FROM records WHERE agent_id = '" +
        agent + "' AND ingested_at >= '" + early_from + "' AND ingested_at < '" + early_to + "')";
    EXPECT_EQ(queryInt(store(), overtaken), 0)
        << agent << ": records taken in after the recovery overtook the backlog";
    EXPECT_GT(queryInt(store(), "SELECT COUNT(*) FROM records WHERE agent_id = '" + agent +
                                    "' AND ingested_at > '" + late_from + "'"),
              0)
        << agent << ": nothing taken in after the recovery (the check above proves nothing)";
  }
}

}  // namespace
}  // namespace branchline::testing
