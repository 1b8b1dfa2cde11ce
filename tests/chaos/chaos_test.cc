// The chaos run of issue 4 in CI: a real pipeline (Mosquitto, 2 aggregators,
// 2 agents, a private PostgreSQL as the central store) under steady load while
// every component is SIGKILLed and restarted at least twice on a random
// schedule; afterwards every accepted record must be in the central store
// exactly once. Each agent also runs in a network namespace of its own and has
// its uplink cut twice (skipped, with the reason printed, where namespaces are
// not permitted). BRANCHLINE_CHAOS_SECONDS sets the length
// of the fault phase (default 300 s; the README documents longer runs).
// Every run draws a new seed and prints it; BRANCHLINE_CHAOS_SEED replays one.
// The verdict is printed and kept in <build>/soak/chaos-verdict.json, passed or not.
#include "cli/chaos/chaos.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace branchline::cli {
namespace {

TEST(ChaosTest, EveryComponentKilledTwiceUnderLoadLosesAndDoublesNothing) {
  const std::string dir = makePipelineTempDir("branchline-chaos");
  ASSERT_FALSE(dir.empty());
  const char* bin = std::getenv("BRANCHLINE_BIN_DIR");
  ASSERT_NE(bin, nullptr) << "BRANCHLINE_BIN_DIR must point at build/bin";

  ChaosOptions options;
  options.pipeline.dir = dir + "/pipeline";
  options.pipeline.agents = 2;
  options.pipeline.aggregators = 2;
  options.pipeline.bin_dir = std::filesystem::absolute(bin).string();
  options.store = "postgresql";
  options.network_cuts = true;
  // Resends come quickly after an aggregator dies, so the survivor takes over.
  options.pipeline.agent_overrides = {{"batch.ack_timeout_ms", "3000"}};
  options.seconds = 300;
  if (const char* s = std::getenv("BRANCHLINE_CHAOS_SECONDS"); s != nullptr) {
    options.seconds = std::stod(s);
  }
  options.rate = 1500;
  if (const char* s = std::getenv("BRANCHLINE_CHAOS_SEED"); s != nullptr) {
    options.seed = std::stoull(s);
  }
  options.min_kills_each = 2;

  auto verdict = runChaos(options);
  ASSERT_TRUE(verdict.isOk()) << verdict.status().toString();
  std::printf("chaos verdict: %s\n", verdict->toJson().c_str());
  std::printf("chaos seed: %llu (replay: BRANCHLINE_CHAOS_SEED=%llu)\n",
              static_cast<unsigned long long>(verdict->seed),
              static_cast<unsigned long long>(verdict->seed));
  {
    const std::filesystem::path out = std::filesystem::path(BRANCHLINE_BUILD_DIR) / "soak";
    std::filesystem::create_directories(out);
    std::ofstream(out / "chaos-verdict.json") << verdict->toJson() << "\n";
  }

  for (const auto& [component, kills] : verdict->kills) {
    EXPECT_GE(kills, 2) << component << " was not killed twice";
  }
  // mosquitto, 2 aggregators, 2 agents, postgresql; and the agents' uplinks
  // where this machine permits network namespaces.
  if (!verdict->network_cuts_skipped.empty()) {
    std::printf("network cuts skipped: %s\n", verdict->network_cuts_skipped.c_str());
    EXPECT_EQ(verdict->kills.size(), 6u);
  } else {
    EXPECT_EQ(verdict->kills.size(), 8u);
    EXPECT_GE(verdict->kills["uplink:agent-1"], 2);
  }
  EXPECT_GE(verdict->kills["postgresql"], 2);
  EXPECT_GT(verdict->accepted, 0u);
  EXPECT_EQ(verdict->lost, 0u);
  EXPECT_EQ(verdict->duplicated, 0u);
  EXPECT_EQ(verdict->unexpected, 0u);
  EXPECT_EQ(verdict->ledger_mismatch, 0u);
  EXPECT_TRUE(verdict->drained);
  EXPECT_TRUE(verdict->errors.empty()) << verdict->toJson();
  EXPECT_TRUE(verdict->passed());
  if (!HasFailure()) {
    std::filesystem::remove_all(dir);
  } else {
    std::fprintf(stderr, "chaos dir kept for inspection: %s\n", dir.c_str());
  }
}

}  // namespace
}  // namespace branchline::cli
