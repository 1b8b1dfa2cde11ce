// Hostile and malformed input against a real agent process: each gets its
// documented status and error, nothing is half-accepted, and the agent stays up.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
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
  cli::HttpConnection conn(url->host, url->port,
                           cli::HttpClientOptions{.bearer_token = pipeline_->agentTokens().at(0)});

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

mode_t modeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// README "Private files" on a fresh `branchline up` pipeline: a spool file with
// one bad record is committed, deleted from the spool, and leaves only its
// errors file (0600); the agent's data directory is 0700; the SQLite central
// store and its -wal and -shm are 0600.
TEST_F(PipelineTest, SpoolAndStoreFilesArePrivateOnAFreshPipeline) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  const std::string agent_dir = dir_ + "/pipeline/agent-1";
  const std::string spool = agent_dir + "/spool/customer";
  {
    std::ofstream out(spool + "/.drop.part");
    out << R"({"external_id":"sp-1","name":"Ada","email":"ada@example.com","channel":"web",)"
        << R"("created_at":"2026-11-25T10:00:00Z"})"
        << "\n"
        << R"({"external_id":"sp-2","name":"Bob","email":"bob-not-an-email","channel":"web",)"
        << R"("created_at":"2026-11-25T10:00:00Z"})"
        << "\n";
  }
  std::filesystem::rename(spool + "/.drop.part", spool + "/drop.ndjson");
  ASSERT_TRUE(waitForDrain(1, 1, 60));

  EXPECT_FALSE(std::filesystem::exists(spool + "/drop.ndjson"));
  std::vector<std::string> done;
  for (const auto& e : std::filesystem::directory_iterator(spool + "/done")) {
    done.push_back(e.path().filename().string());
  }
  EXPECT_EQ(done, std::vector<std::string>{"drop.ndjson.errors.json"});
  EXPECT_EQ(modeOf(spool + "/done/drop.ndjson.errors.json"), 0600u);
  EXPECT_EQ(modeOf(spool + "/done"), 0700u);
  EXPECT_EQ(modeOf(agent_dir), 0700u);
  if (store().rfind("postgres", 0) != 0) {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      const std::string f = store() + suffix;
      ASSERT_TRUE(std::filesystem::exists(f)) << f;
      EXPECT_EQ(modeOf(f), 0600u) << f;
    }
  }
}

}  // namespace
}  // namespace branchline::testing
