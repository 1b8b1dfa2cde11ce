// Hostile and malformed input against a real agent process: each gets its
// documented status and error, nothing is half-accepted, and the agent stays up.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli/net/http_client.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

struct BadInput {
  std::string name;
  std::string path;
  std::string content_type;
  std::string body;
  int status;
  std::string error_contains;  // in the answer body
};

TEST_F(PipelineTest, BadInputGetsItsDocumentedAnswerAndTheAgentStaysUp) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  auto url = cli::parseUrl(pipeline_->agentUrls().at(0));
  ASSERT_TRUE(url.isOk());
  cli::HttpConnection conn(url->host, url->port);

  const std::string valid =
      R"({"external_id":"bad-1","name":"Ada","email":"ada@example.com","channel":"web",)"
      R"("created_at":"2026-11-25T10:00:00Z"})";
  std::string deep(1000, '[');
  deep += std::string(1000, ']');
  std::vector<BadInput> cases = {
      {"broken JSON", "/v1/records/customer", "application/json", R"({"external_id": "x",)", 400,
       "error"},
      {"invalid UTF-8", "/v1/records/customer", "application/json",
       "{\"external_id\":\"x\xff\xfe\",\"name\":\"a\"}", 400, "error"},
      {"1000-deep nesting", "/v1/records/customer", "application/json", deep, 400, "error"},
      {"20 MB body", "/v1/records/customer", "application/json", std::string(20 << 20, ' '), 413,
       "error"},
      {"wrong content type", "/v1/records/customer", "text/plain", valid, 415, "error"},
      {"unknown source", "/v1/records/no_such_source", "application/json", valid, 404, "error"},
      {"empty body", "/v1/records/customer", "application/json", "", 400, "error"},
      {"NDJSON with one bad line", "/v1/records/customer", "application/x-ndjson",
       valid + "\n{not json\n", 200, "\"accepted\":1"},
  };
  for (const BadInput& c : cases) {
    auto r = conn.request("POST", c.path, c.content_type, c.body, std::chrono::seconds(30));
    if (!r.isOk()) {  // the server may close after a 413; ask again on a new connection
      conn.close();
      r = conn.request("POST", c.path, c.content_type, c.body, std::chrono::seconds(30));
    }
    ASSERT_TRUE(r.isOk()) << c.name << ": " << r.status().toString();
    EXPECT_EQ(r->status, c.status) << c.name << ": " << r->body;
    EXPECT_NE(r->body.find(c.error_contains), std::string::npos) << c.name << ": " << r->body;
    conn.close();
    auto health = cli::httpGet(pipeline_->agentUrls().at(0) + "/healthz", std::chrono::seconds(5));
    ASSERT_TRUE(health.isOk()) << "agent down after " << c.name;
    EXPECT_EQ(health->status, 200) << "after " << c.name;
  }
  // Exactly one record was accepted (the good NDJSON line) and one rejected (the bad line).
  ASSERT_TRUE(waitForDrain(1, 1, 60));
  EXPECT_EQ(queryInt(store(), "SELECT COUNT(*) FROM records"), 1);
  EXPECT_EQ(queryInt(store(), "SELECT COUNT(*) FROM rejects"), 1);
  EXPECT_TRUE(pipeline_->process("agent-1")->isRunning());
}

}  // namespace
}  // namespace branchline::testing
