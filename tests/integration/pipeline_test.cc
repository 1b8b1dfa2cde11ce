// The whole pipeline with real parts: 200,000 records through 2 agents, a real
// Mosquitto and 2 aggregators into one central store.
#include <gtest/gtest.h>

#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

TEST_F(PipelineTest, TwoHundredThousandRecordsArriveExactlyOnce) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(2, 2));
  loadgen::GeneratorOptions gen;
  gen.seed = 2026;
  gen.duplicate_share = 0.10;
  gen.invalid_share = 0.05;
  loadgen::LoadOptions load = loadOptions(200000, gen);
  auto stats = loadgen::runLoad(load);
  ASSERT_TRUE(stats.isOk()) << stats.status().toString();
  std::fprintf(stderr, "load: %s\n", stats->toJson().c_str());

  EXPECT_EQ(stats->records_sent, 200000u);
  EXPECT_EQ(stats->failed_records, 0u);
  EXPECT_EQ(stats->unexpected_rejects, 0u);
  EXPECT_EQ(stats->unexpected_accepts, 0u);
  EXPECT_EQ(stats->rejected, stats->invalid_sent);
  EXPECT_GT(stats->invalid_sent, 5000u);
  EXPECT_GT(stats->duplicates_sent, 10000u);

  const int64_t unique = static_cast<int64_t>(stats->accepted_unique.size());
  ASSERT_TRUE(waitForDrain(unique, static_cast<int64_t>(stats->rejected), 600))
      << "store holds " << queryInt(store(), "SELECT COUNT(*) FROM records") << " of " << unique
      << " records";
  expectExactlyAccepted(*stats, gen);

  const std::string db = store();
  // Every invalid record is in `rejects` with its reason; nothing else is.
  EXPECT_EQ(queryInt(db, "SELECT COUNT(*) FROM rejects"), static_cast<int64_t>(stats->rejected));
  EXPECT_EQ(queryInt(db,
                     "SELECT COUNT(*) FROM rejects WHERE reasons NOT LIKE '[{\"field\":%'"
                     " OR raw = '' OR source <> 'customer'"),
            0);
  // Both agents delivered and both aggregators committed (the share split the load).
  EXPECT_EQ(queryInt(db, "SELECT COUNT(DISTINCT agent_id) FROM batch_ledger"), 2);
  EXPECT_EQ(queryInt(db, "SELECT COUNT(DISTINCT aggregator) FROM batch_ledger"), 2);
  // The ledger accounts for every record delivered (duplicates within and across batches).
  EXPECT_EQ(queryInt(db, "SELECT SUM(stored_records) FROM batch_ledger"), unique);
}

}  // namespace
}  // namespace branchline::testing
