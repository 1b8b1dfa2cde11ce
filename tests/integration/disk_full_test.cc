// Full disks (issue 15 part 3), with the real binaries. At the agent: the
// real binaries: the agent's data folder is a small tmpfs the test mounts
// (skipped, with the reason, where mounting is not permitted). While the
// aggregator is down the buffer grows until the disk is full: ingest answers
// 503 with Retry-After and stores nothing of that request; once space is freed
// the agent takes records again by itself, and every record answered 200
// reaches the central store. Space is freed the way an operator would: a
// file that filled the disk is removed. At the central SQLite store (also on
// a small tmpfs): a commit that finds the disk full acks nothing, the agent
// keeps buffering, and once space is freed everything drains by itself.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "cli/net/http_client.h"
#include "tests/integration/pipeline_fixture.h"

namespace branchline::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// Records of ~400 bytes, so the small disks fill in a few requests.
std::string ndjson(const std::string& prefix, int n) {
  return customerNdjson(prefix, n, std::string(300, 'n'));
}

// Unmounts the tmpfs (lazily: the agent may still hold files) when the test ends.
struct Mount {
  std::string path;
  ~Mount() {
    if (!path.empty()) ::umount2(path.c_str(), MNT_DETACH);
  }
};

TEST_F(PipelineTest, FullDiskAnswers503AndRecoversByItselfLosingNothingAccepted) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  cli::Member* agent = pipeline_->member("agent-1");
  ASSERT_NE(agent, nullptr);
  // Move the agent's data folder onto an 8 MiB tmpfs.
  ASSERT_TRUE(pipeline_->process("agent-1")->signal(SIGTERM).isOk());
  ASSERT_TRUE(pipeline_->process("agent-1")->waitFor(20s));
  const fs::path data = agent->data_dir;
  const fs::path saved = data.string() + ".saved";
  fs::rename(data, saved);
  fs::create_directory(data);
  Mount mount;
  if (::mount("tmpfs", data.c_str(), "tmpfs", 0, "size=8m,mode=0700") != 0) {
    const std::string why = std::strerror(errno);
    fs::remove(data);
    fs::rename(saved, data);
    GTEST_SKIP() << "cannot mount a tmpfs here (" << why << "); needs root";
  }
  mount.path = data.string();
  fs::copy(saved, data, fs::copy_options::recursive);
  ASSERT_TRUE(pipeline_->kill9("agg-1").isOk());
  ASSERT_TRUE(pipeline_->restart("agent-1").isOk());
  // Something else on the same disk takes most of it.
  const fs::path filler = data / "filler";
  {
    std::ofstream f(filler, std::ios::binary);
    const std::string mib(1 << 20, 'x');
    for (int i = 0; i < 5; ++i) f << mib;
  }

  auto url = cli::parseUrl(pipeline_->agentUrls().at(0));
  ASSERT_TRUE(url.isOk());
  cli::HttpConnection conn(url->host, url->port,
                           cli::HttpClientOptions{.bearer_token = pipeline_->agentTokens().at(0)});
  int accepted = 0;
  cli::HttpResponse full;
  for (int i = 0; i < 400 && full.status == 0; ++i) {
    auto r = conn.request("POST", "/v1/records/customer", "application/x-ndjson",
                          ndjson("fill" + std::to_string(i), 100), 30s);
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    if (r->status == 200) {
      accepted += 100;
    } else {
      full = *r;
    }
  }
  ASSERT_EQ(full.status, 503) << "the disk never filled, or another answer: " << full.body;
  EXPECT_FALSE(full.retry_after.empty()) << "503 without Retry-After";
  EXPECT_NE(full.body.find("disk"), std::string::npos) << full.body;
  EXPECT_NE(full.body.find("nothing was accepted"), std::string::npos) << full.body;
  EXPECT_GE(agentMetric(0, "bl_agent_http_requests_total{status=\"503\"}"), 1);
  std::printf("disk full after %d accepted records: %s\n", accepted, full.body.c_str());

  // Space comes back: the agent takes records again without a restart.
  fs::remove(filler);
  int after = 0;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (after == 0 && std::chrono::steady_clock::now() < deadline) {
    auto r = conn.request("POST", "/v1/records/customer", "application/x-ndjson",
                          ndjson("after", 100), 30s);
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    if (r->status == 200) {
      after = 100;
    } else {
      ASSERT_EQ(r->status, 503) << r->body;
      std::this_thread::sleep_for(200ms);
    }
  }
  ASSERT_EQ(after, 100) << "the agent did not recover once space was freed";
  EXPECT_TRUE(pipeline_->process("agent-1")->isRunning()) << "recovered without a restart";
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());
  EXPECT_TRUE(waitForDrain(accepted + after, 0, 120))
      << "stored " << queryInt(store(), "SELECT count(*) FROM records") << " of "
      << accepted + after;
  EXPECT_EQ(queryInt(store(), "SELECT count(*) FROM records"), accepted + after);
  pipeline_->stop();
}

TEST_F(PipelineTest, FullCentralDiskAcksNothingAndDrainsOnceSpaceIsFreed) {
  ASSERT_NO_FATAL_FAILURE(startPipeline(1, 1));
  cli::Member* agg = pipeline_->member("agg-1");
  ASSERT_NE(agg, nullptr);
  ASSERT_TRUE(pipeline_->process("agg-1")->signal(SIGTERM).isOk());
  ASSERT_TRUE(pipeline_->process("agg-1")->waitFor(20s));
  // The central store moves to a 4 MiB tmpfs of its own.
  const fs::path central = fs::path(dir_) / "central-disk";
  fs::create_directory(central);
  Mount mount;
  if (::mount("tmpfs", central.c_str(), "tmpfs", 0, "size=4m,mode=0755") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(errno) << "); needs root";
  }
  mount.path = central.string();
  const std::string old_store = store();
  const std::string new_store = (central / "central.db").string();
  for (const char* suffix : {"", "-wal", "-shm"}) {
    if (fs::exists(old_store + suffix)) fs::copy_file(old_store + suffix, new_store + suffix);
  }
  std::string config = cli::tailOfFile(agg->config_path, 1 << 20);
  const size_t at = config.find(old_store);
  ASSERT_NE(at, std::string::npos) << config;
  config.replace(at, old_store.size(), new_store);
  std::ofstream(agg->config_path) << config;
  store_ = new_store;
  // Something else takes most of that disk.
  const fs::path filler = central / "filler";
  {
    std::ofstream f(filler, std::ios::binary);
    const std::string mib(1 << 20, 'x');
    for (int i = 0; i < 3; ++i) f << mib;
  }
  ASSERT_TRUE(pipeline_->restart("agg-1").isOk());

  auto url = cli::parseUrl(pipeline_->agentUrls().at(0));
  ASSERT_TRUE(url.isOk());
  cli::HttpConnection conn(url->host, url->port,
                           cli::HttpClientOptions{.bearer_token = pipeline_->agentTokens().at(0)});
  int accepted = 0;
  double failures = 0;
  for (int i = 0; i < 60 && failures < 1; ++i) {
    auto r = conn.request("POST", "/v1/records/customer", "application/x-ndjson",
                          ndjson("c" + std::to_string(i), 100), 30s);
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    ASSERT_EQ(r->status, 200) << "the agent refused while only the central disk is full: "
                              << r->body;
    accepted += 100;
    std::this_thread::sleep_for(100ms);
    failures = scrapeMetric(agg->url, "bl_aggregator_commit_failures_total");
  }
  ASSERT_GE(failures, 1) << "the central disk never filled";
  std::this_thread::sleep_for(1s);
  const int64_t stored_when_full = queryInt(store(), "SELECT count(*) FROM records");
  const int64_t held = agentBufferRecords();
  std::printf("central disk full: %lld of %d records stored, the agent holds %lld\n",
              static_cast<long long>(stored_when_full), accepted, static_cast<long long>(held));
  EXPECT_LT(stored_when_full, accepted);
  EXPECT_EQ(held, accepted - stored_when_full) << "acked without a commit, or lost";
  EXPECT_EQ(scrapeMetric(agg->url, "bl_aggregator_store_ready"), 0);

  fs::remove(filler);
  EXPECT_TRUE(waitForDrain(accepted, 0, 120))
      << "stored " << queryInt(store(), "SELECT count(*) FROM records") << " of " << accepted;
  EXPECT_EQ(queryInt(store(), "SELECT count(*) FROM records"), accepted);
  EXPECT_TRUE(pipeline_->process("agg-1")->isRunning()) << "recovered without a restart";
  pipeline_->stop();
}

}  // namespace
}  // namespace branchline::testing
