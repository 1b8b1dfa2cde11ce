// openCentralStore against a real PostgreSQL that is down when the aggregator
// starts: the store still opens, answers kUnavailable while the server is away,
// and starts storing by itself once the server is up (issue 4: "reports
// not-ready, and resumes by itself").
#include "aggregator/store/central_store.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "aggregator/store/testing/postgres_server.h"
#include "shared/core/clock.h"

namespace branchline::aggregator {
namespace {

protocol::WireBatch oneRecordBatch(uint64_t seq) {
  protocol::WireBatch b;
  b.agent_id = "office-1";
  b.seq = seq;
  b.created_at_us = 1'790'000'000'000'000;
  b.records.push_back(
      {"customer", "k-" + std::to_string(seq), 1'790'000'000'000'001, "{\"external_id\":\"k\"}"});
  return b;
}

TEST(CentralStoreTest, PostgresDownAtStartupIsWaitedForNotFatal) {
  auto server = testing::PostgresServer::create();
  ASSERT_TRUE(server.isOk()) << server.status().toString();
  ASSERT_TRUE((*server)->stop().isOk());

  auto store = openCentralStore((*server)->url());
  ASSERT_TRUE(store.isOk()) << store.status().toString();
  Status health = (*store)->health();
  EXPECT_EQ(health.code(), Code::kUnavailable) << health.toString();
  auto refused = (*store)->commit({oneRecordBatch(1)}, "agg-1");
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(refused.status().code(), Code::kUnavailable);

  ASSERT_TRUE((*server)->start().isOk());
  const int64_t deadline = steadyMicros() + 15'000'000;
  while (!(*store)->health().isOk() && steadyMicros() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_TRUE((*store)->health().isOk()) << "store did not connect after the server came up";
  auto stored = (*store)->commit({oneRecordBatch(1)}, "agg-1");
  ASSERT_TRUE(stored.isOk()) << stored.status().toString();
  ASSERT_EQ(stored->size(), 1u);
  EXPECT_EQ((*stored)[0].stored_records, 1u);
  auto rows = (*server)->count("postgres", "SELECT COUNT(*) FROM records");
  ASSERT_TRUE(rows.isOk()) << rows.status().toString();
  EXPECT_EQ(*rows, 1);
}

TEST(CentralStoreTest, BadUrlsAreStillRefusedAtOnce) {
  EXPECT_FALSE(openCentralStore("mysql://x").isOk());
  EXPECT_FALSE(openCentralStore("sqlite://relative.db").isOk());
}

}  // namespace
}  // namespace branchline::aggregator
