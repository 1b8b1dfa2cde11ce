// Damage costs only the damaged record (issue 15, README "Damaged buffer
// rows"), with the real binaries: 3,000 records wait in an agent while the
// aggregator is down; with the agent stopped, one byte of one sealed
// records.payload is flipped in buffer.db. After both restart, the other
// 2,999 and every record posted later reach the central store, and the store's
// audit trail names the damaged row (`buffer_damaged`).
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <chrono>
#include <string>
#include <thread>

#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using namespace std::chrono_literals;

// Flips one bit of the payload of the `offset`-th record row (by id) in the
// agent's buffer; returns that row's id, or -1.
int64_t flipOnePayloadByte(const std::string& buffer_path, int offset) {
  sqlite3* db = nullptr;
  if (sqlite3_open(buffer_path.c_str(), &db) != SQLITE_OK) {
    ADD_FAILURE() << buffer_path << ": " << sqlite3_errmsg(db);
    sqlite3_close(db);
    return -1;
  }
  int64_t id = -1;
  std::string payload;
  sqlite3_stmt* q = nullptr;
  const std::string sql =
      "SELECT id, payload FROM records ORDER BY id LIMIT 1 OFFSET " + std::to_string(offset);
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &q, nullptr) == SQLITE_OK &&
      sqlite3_step(q) == SQLITE_ROW) {
    id = sqlite3_column_int64(q, 0);
    payload.assign(static_cast<const char*>(sqlite3_column_blob(q, 1)),
                   size_t(sqlite3_column_bytes(q, 1)));
  }
  sqlite3_finalize(q);
  if (id > 0 && payload.size() > 40) {
    payload[payload.size() / 2] = char(payload[payload.size() / 2] ^ 0x04);
    sqlite3_stmt* u = nullptr;
    sqlite3_prepare_v2(db, "UPDATE records SET payload = ? WHERE id = ?", -1, &u, nullptr);
    sqlite3_bind_blob(u, 1, payload.data(), int(payload.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(u, 2, id);
    EXPECT_EQ(sqlite3_step(u), SQLITE_DONE) << sqlite3_errmsg(db);
    sqlite3_finalize(u);
  } else {
    ADD_FAILURE() << "no record row at offset " << offset << " in " << buffer_path;
  }
  sqlite3_close(db);
  return id;
}

TEST_F(PipelineTest, OneFlippedPayloadByteCostsOnlyThatRecord) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());
  const std::string agent_url = pipeline_->agentUrls().at(0);
  const std::string token = pipeline_->agentTokens().at(0);
  for (int i = 0; i < 6; ++i) postCustomerRecords(agent_url, token, "w" + std::to_string(i), 500);
  // The buffer gauge follows the forwarder's loop: wait for it to count them all.
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  while (agentBufferRecords() != 3000 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(agentBufferRecords(), 3000);

  cli::Process* agent = pipeline_->process("agent-1");
  ASSERT_NE(agent, nullptr);
  ASSERT_TRUE(agent->signal(SIGTERM).isOk());
  ASSERT_TRUE(agent->waitFor(20s)) << "the agent did not stop on SIGTERM";
  const std::string buffer = pipeline_->member("agent-1")->data_dir + "/buffer.db";
  const int64_t row = flipOnePayloadByte(buffer, 1234);
  ASSERT_GT(row, 0);

  ASSERT_TRUE(pipeline_->restart("agent-1").isOk());
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());
  postCustomerRecords(agent_url, token, "after", 500);
  EXPECT_TRUE(waitForDrain(3499, 0, 120))
      << "stored " << queryInt(store(), "SELECT count(*) FROM records") << " of 3499; buffer holds "
      << agentBufferRecords();
  EXPECT_EQ(queryInt(store(), "SELECT count(*) FROM records"), 3499);
  EXPECT_EQ(queryInt(store(), "SELECT count(*) FROM records WHERE record_key LIKE 'after-%'"), 500);
  EXPECT_EQ(queryInt(store(),
                     "SELECT count(*) FROM audit WHERE action = 'buffer_damaged' AND agent_id = "
                     "'agent-1' AND batch_seq IS NOT NULL AND detail LIKE '%records#" +
                         std::to_string(row) + " %'"),
            1);
  EXPECT_EQ(agentMetric(0, "bl_agent_buffer_damaged_total"), 1);
  EXPECT_EQ(agentMetric(0, "bl_agent_buffer_damaged_rows"), 1);
}

}  // namespace
}  // namespace branchline::testing
