// Broker failover with real processes: two Mosquitto brokers bridged to each
// other (LocalPipeline brokers = 2), 2 aggregators and 2 agents over mutual TLS,
// under a steady load. SIGKILL the first broker: records the agents accept
// afterwards must reach the central store while it is still down (the clients
// moved to the second). Restart it; an agent started then connects to the first
// broker while the aggregators stay on the second, so its records cross the
// bridge. Then SIGKILL the second broker: the same the other way. At the end
// every accepted record is in the store exactly once.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <thread>

#include "shared/core/clock.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// The first column of the first row as text ("" when there is none).
std::string queryText(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  std::string out;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0) != nullptr) {
      out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
  }
  sqlite3_close(db);
  return out;
}

class BrokerFailoverTest : public PipelineTest {
 protected:
  void startTwoBrokers() {
    dir_ = cli::makePipelineTempDir("branchline-failover");
    ASSERT_FALSE(dir_.empty());
    const char* bin = std::getenv("BRANCHLINE_BIN_DIR");
    ASSERT_NE(bin, nullptr) << "BRANCHLINE_BIN_DIR must point at build/bin";
    cli::PipelineOptions o;
    o.dir = dir_ + "/pipeline";
    o.brokers = 2;
    o.agents = 2;
    o.aggregators = 2;
    o.secure = true;
    o.bin_dir = std::filesystem::absolute(bin).string();
    // A batch lost with a broker is resent soon even if no aggregator announces itself.
    o.agent_overrides = {{"batch.ack_timeout_ms", "2000"}};
    store_ = o.dir + "/central.db";
    pipeline_ = std::make_unique<cli::LocalPipeline>(o);
    Status s = pipeline_->start();
    ASSERT_TRUE(s.isOk()) << s.toString();
    ASSERT_EQ(pipeline_->brokerUris().size(), 2u);
  }

  // `WHERE ...` for records the agents accepted after `since_us` (optionally one agent's).
  static std::string acceptedAfter(int64_t since_us, const std::string& agent = "") {
    std::string where = " WHERE ingested_at > '" + formatRfc3339Micros(since_us) + "'";
    if (!agent.empty()) where += " AND agent_id = '" + agent + "'";
    return where;
  }

  // Waits up to 30 s for a record accepted after `since_us` to be stored, while
  // `down` stays down. Returns the ms from `since_us` to the first one's commit.
  double waitStoredAfter(int64_t since_us, const std::string& down, const std::string& agent = "") {
    const auto deadline = std::chrono::steady_clock::now() + seconds(30);
    const std::string where = acceptedAfter(since_us, agent);
    while (std::chrono::steady_clock::now() < deadline) {
      if (queryInt(store(), "SELECT COUNT(*) FROM records" + where) > 0) {
        EXPECT_FALSE(down.empty() ? false : pipeline_->process(down)->isRunning()) << down;
        auto first =
            parseRfc3339Micros(queryText(store(), "SELECT MIN(stored_at) FROM records" + where));
        EXPECT_TRUE(first.has_value());
        return first ? static_cast<double>(*first - since_us) / 1000.0 : -1;
      }
      std::this_thread::sleep_for(milliseconds(50));
    }
    ADD_FAILURE() << "no record accepted after the fault was stored within 30 s"
                  << (agent.empty() ? "" : " (agent " + agent + ")");
    return -1;
  }
};

TEST_F(BrokerFailoverTest, EitherBrokerDiesAndRecordsFlowThroughTheOther) {
  ASSERT_NO_FATAL_FAILURE(startTwoBrokers());
  loadgen::GeneratorOptions gen;
  gen.seed = 404;
  gen.duplicate_share = 0.05;
  gen.invalid_share = 0.02;
  loadgen::LoadOptions load = loadOptions(0, gen);
  load.seconds = 50;  // an upper bound: cancelled once the faults are done
  load.rate = 2000;
  load.batch = 50;
  std::atomic<bool> cancel{false};
  load.cancel = &cancel;
  auto running = std::async(std::launch::async, [load] { return loadgen::runLoad(load); });
  struct StopLoad {
    std::atomic<bool>& c;
    ~StopLoad() { c = true; }
  } stop_load{cancel};
  std::this_thread::sleep_for(milliseconds(1500));
  ASSERT_GT(queryInt(store(), "SELECT COUNT(*) FROM records"), 0) << "records flow before faults";

  // 1. The first broker dies: every client moves to mosquitto-2.
  int64_t kill_us = nowMicros();
  ASSERT_TRUE(pipeline_->kill9("mosquitto").isOk());
  const double first_ms = waitStoredAfter(kill_us, "mosquitto");
  ASSERT_GE(first_ms, 0);
  std::fprintf(stderr, "mosquitto killed: first record through mosquitto-2 stored %.0f ms later\n",
               first_ms);

  // 2. It comes back (restart() waits for the bridge); the clients stay where they are.
  const std::string first_log = pipeline_->member("mosquitto")->log_path;
  const uintmax_t log_from = std::filesystem::file_size(first_log);
  Status s = pipeline_->restart("mosquitto");
  ASSERT_TRUE(s.isOk()) << s.toString();
  // An agent starting now connects to the first broker in its list; the
  // aggregators are on the second, so its batches and their acks cross the bridge.
  const int64_t agent_us = nowMicros();
  s = pipeline_->restart("agent-1");
  ASSERT_TRUE(s.isOk()) << s.toString();
  const double bridged_ms = waitStoredAfter(agent_us, "", "agent-1");
  ASSERT_GE(bridged_ms, 0);
  const std::string since_restart =
      cli::tailOfFile(first_log, std::filesystem::file_size(first_log) - log_from);
  EXPECT_NE(since_restart.find("u'agent-1'"), std::string::npos)
      << "agent-1 is on the first broker:\n"
      << since_restart;
  EXPECT_EQ(since_restart.find("u'aggregator."), std::string::npos)
      << "the aggregators stayed on mosquitto-2:\n"
      << since_restart;
  std::fprintf(stderr, "agent-1 on mosquitto, aggregators on mosquitto-2: stored in %.0f ms\n",
               bridged_ms);

  // 3. The second broker dies: everyone on it moves back to the first.
  kill_us = nowMicros();
  ASSERT_TRUE(pipeline_->kill9("mosquitto-2").isOk());
  const double second_ms = waitStoredAfter(kill_us, "mosquitto-2");
  ASSERT_GE(second_ms, 0);
  std::fprintf(stderr, "mosquitto-2 killed: first record through mosquitto stored %.0f ms later\n",
               second_ms);
  s = pipeline_->restart("mosquitto-2");
  ASSERT_TRUE(s.isOk()) << s.toString();
  std::this_thread::sleep_for(milliseconds(500));

  cancel = true;
  auto stats = running.get();
  ASSERT_TRUE(stats.isOk()) << stats.status().toString();
  std::fprintf(stderr, "load: %s\n", stats->toJson().c_str());
  EXPECT_EQ(stats->failed_records, 0u);
  EXPECT_GT(stats->accepted, 10000u);
  const int64_t unique = static_cast<int64_t>(stats->accepted_unique.size());
  ASSERT_TRUE(waitForDrain(unique, 0, 30))
      << "store holds " << queryInt(store(), "SELECT COUNT(*) FROM records") << " of " << unique
      << " records";
  // Exactly once: as many rows as distinct keys, and exactly the accepted ones.
  EXPECT_EQ(queryInt(store(), "SELECT COUNT(*) FROM records"), unique);
  EXPECT_EQ(queryInt(store(), "SELECT COUNT(DISTINCT source || '/' || record_key) FROM records"),
            unique);
  expectExactlyAccepted(*stats, gen);
}

}  // namespace
}  // namespace branchline::testing
