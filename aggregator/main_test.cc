// Runs the real branchline-aggregator binary (from BRANCHLINE_BIN_DIR) against
// a private Mosquitto: exit codes, /healthz, /metrics, a batch stored and acked.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/http/http_test_client.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/mqtt/testing/mosquitto_process.h"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using branchline::mqtt::testing::MosquittoProcess;

fs::path binary() {
  const char* dir = std::getenv("BRANCHLINE_BIN_DIR");
  return fs::path(dir ? dir : "bin") / "branchline-aggregator";
}

// One child process with stderr captured to a file; killed if still running at the end.
class Process {
 public:
  Process(std::vector<std::string> args, const fs::path& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::freopen(log.c_str(), "w", stderr);
      (void)f;
      std::vector<char*> argv;
      std::string bin = binary().string();
      argv.push_back(bin.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
  }
  pid_t pid() const { return pid_; }
  ~Process() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Exit code, or nullopt when it did not exit in time.
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(10ms);
    }
    return std::nullopt;
  }
  void signal(int sig) { kill(pid_, sig); }
  std::string stderrText() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  fs::path log_;
  pid_t pid_ = -1;
};

class AggregatorMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/bl_aggmain_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path writeConfig(const std::string& text) {
    fs::path p = dir_ / "aggregator.toml";
    std::ofstream(p) << text;
    return p;
  }
  std::string config(const std::string& broker_uri, uint16_t http_port) {
    return "[aggregator]\nname = \"agg-main\"\ndata_dir = \"" + (dir_ / "data").string() +
           "\"\n[http]\nlisten = \"127.0.0.1:" + std::to_string(http_port) +
           "\"\n[mqtt]\nbrokers = [\"" + broker_uri + "\"]\n[store]\nurl = \"sqlite://" +
           (dir_ / "central.db").string() + "\"\n[commit]\nmax_batches = 8\n";
  }
  std::optional<branchline::http::testing::ClientResponse> get(uint16_t port,
                                                               const std::string& target) {
    branchline::http::testing::TestClient client(2s);
    if (client.connect(port)) return std::nullopt;
    if (client.send("GET", target)) return std::nullopt;
    return client.read();
  }
  // Polls until GET /healthz answers `status`.
  std::optional<branchline::http::testing::ClientResponse> waitHealth(uint16_t port, int status) {
    std::optional<branchline::http::testing::ClientResponse> r;
    for (int i = 0; i < 300; ++i) {
      r = get(port, "/healthz");
      if (r && r->status == status) return r;
      std::this_thread::sleep_for(50ms);
    }
    return r;
  }

  fs::path dir_;
};

TEST_F(AggregatorMainTest, BadCommandLineOrConfigExitsTwoNamingTheKey) {
  {
    Process p({}, dir_ / "noargs.log");
    EXPECT_EQ(p.wait(10s), 2);
  }
  {
    fs::path cfg = writeConfig(config("tcp://127.0.0.1:1", 0) + "[limits]\nmax_inflate = 5\n");
    Process p({"--config", cfg.string()}, dir_ / "bad.log");
    EXPECT_EQ(p.wait(10s), 2);
    EXPECT_NE(p.stderrText().find("limits.max_inflate"), std::string::npos) << p.stderrText();
  }
  {
    Process p({"--config", (dir_ / "missing.toml").string()}, dir_ / "missing.log");
    EXPECT_EQ(p.wait(10s), 2);
    EXPECT_NE(p.stderrText().find("missing.toml"), std::string::npos) << p.stderrText();
  }
}

TEST_F(AggregatorMainTest, UnopenableStoreExitsOne) {
  std::ofstream(dir_ / "a-file") << "x";
  std::string text = config("tcp://127.0.0.1:1", 0);
  std::string from = "sqlite://" + (dir_ / "central.db").string();
  text.replace(text.find(from), from.size(),
               "sqlite://" + (dir_ / "a-file" / "central.db").string());
  Process p({"--config", writeConfig(text).string()}, dir_ / "store.log");
  EXPECT_EQ(p.wait(10s), 1);
  EXPECT_NE(p.stderrText().find("startup_failed"), std::string::npos) << p.stderrText();
}

TEST_F(AggregatorMainTest, ServesHealthAndMetricsStoresABatchAndStopsCleanly) {
  MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  const uint16_t http_port = MosquittoProcess::freePort();
  Process agg({"--config", writeConfig(config(broker.uri(), http_port)).string()},
              dir_ / "agg.log");

  auto health = waitHealth(http_port, 200);
  ASSERT_TRUE(health.has_value()) << agg.stderrText();
  ASSERT_EQ(health->status, 200) << health->body;
  EXPECT_NE(health->body.find("\"status\":\"ok\""), std::string::npos) << health->body;
  EXPECT_NE(health->body.find("\"store\":\"ready\""), std::string::npos) << health->body;

  // A fake agent publishes one batch and gets its ack.
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<branchline::protocol::WireAck> acks;
  bool up = false;
  branchline::mqtt::ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "main-test-agent";
  branchline::mqtt::Client agent(
      o,
      [&](branchline::mqtt::Message&& m) {
        auto ack = branchline::protocol::decodeAck(m.payload);
        std::lock_guard lock(mutex);
        if (ack) acks.push_back(*ack);
        cv.notify_all();
      },
      [&](bool connected) {
        std::lock_guard lock(mutex);
        up = connected;
        cv.notify_all();
      });
  ASSERT_TRUE(agent.subscribe("branchline/v1/agents/office-7/ack", 1).isOk());
  ASSERT_TRUE(agent.start().isOk());
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return up; }));
  }
  branchline::protocol::WireBatch batch;
  batch.agent_id = "office-7";
  batch.seq = 1;
  for (int i = 0; i < 25; ++i) {
    batch.records.push_back({"customer", "k" + std::to_string(i), 1, "{}"});
  }
  ASSERT_TRUE(agent
                  .publish("branchline/v1/agents/office-7/batch",
                           branchline::protocol::encodeBatch(batch), 1)
                  .isOk());
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, 15s, [&] { return !acks.empty(); })) << agg.stderrText();
    EXPECT_EQ(acks[0].status, branchline::protocol::AckStatus::kStored);
    EXPECT_EQ(acks[0].stored_records, 25u);
    EXPECT_EQ(acks[0].aggregator, "agg-main");
  }
  agent.stop();

  auto metrics = get(http_port, "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("bl_aggregator_records_stored_total 25\n"), std::string::npos)
      << metrics->body;
  auto missing = get(http_port, "/nope");
  ASSERT_TRUE(missing.has_value());
  EXPECT_EQ(missing->status, 404);

  // Without its broker the aggregator reports itself not ready.
  broker.stop();
  health = waitHealth(http_port, 503);
  ASSERT_TRUE(health.has_value());
  EXPECT_EQ(health->status, 503) << health->body;
  EXPECT_NE(health->body.find("\"broker\":\"disconnected\""), std::string::npos) << health->body;

  agg.signal(SIGTERM);
  EXPECT_EQ(agg.wait(15s), 0) << agg.stderrText();
  EXPECT_NE(agg.stderrText().find("aggregator_stopped"), std::string::npos);

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2((dir_ / "central.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr),
            SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM records WHERE agent_id='office-7'", -1,
                               &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 25);
  sqlite3_finalize(st);
  sqlite3_close_v2(db);
}

// README "Sealed batches": the aggregator refuses to start with a key file that
// group/other can read (exit 2, naming the file), and once running it stores a
// sealed batch from an enrolled agent and refuses a plain one.
TEST_F(AggregatorMainTest, SealedConfigChecksKeyFilesAndOpensSealedBatches) {
  namespace protocol = branchline::protocol;
  MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  const auto aggregator_key = *protocol::generateSealKeyPair();
  const auto agent_key = *protocol::generateSealKeyPair();
  const fs::path key = dir_ / "pki" / "aggregators" / "seal-current.key";
  ASSERT_TRUE(protocol::writeSealPrivateKey(key, aggregator_key).isOk());
  ASSERT_TRUE(protocol::writeSealPublicKey(dir_ / "pki" / "agents" / "office-7.seal.pub",
                                           agent_key.public_key)
                  .isOk());
  const uint16_t http_port = MosquittoProcess::freePort();
  const fs::path cfg =
      writeConfig(config(broker.uri(), http_port) +
                  "[security]\nseal_keys = [\"pki/aggregators/seal-current.key\"]\n"
                  "agents_dir = \"pki/agents\"\n");
  fs::permissions(key, fs::perms::owner_read | fs::perms::owner_write | fs::perms::others_read);
  {
    Process p({"--config", cfg.string()}, dir_ / "open-key.log");
    EXPECT_EQ(p.wait(10s), 2);
    EXPECT_NE(p.stderrText().find("chmod 600 " + key.string()), std::string::npos)
        << p.stderrText();
  }
  fs::permissions(key, fs::perms::owner_read | fs::perms::owner_write);
  Process agg({"--config", cfg.string()}, dir_ / "agg.log");
  ASSERT_TRUE(waitHealth(http_port, 200).has_value()) << agg.stderrText();

  std::mutex mutex;
  std::condition_variable cv;
  std::vector<protocol::WireAck> acks;
  bool up = false;
  branchline::mqtt::ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "sealed-main-test-agent";
  branchline::mqtt::Client agent(
      o,
      [&](branchline::mqtt::Message&& m) {
        auto ack = protocol::decodeAck(m.payload);
        std::lock_guard lock(mutex);
        if (ack) acks.push_back(*ack);
        cv.notify_all();
      },
      [&](bool connected) {
        std::lock_guard lock(mutex);
        up = connected;
        cv.notify_all();
      });
  ASSERT_TRUE(agent.subscribe("branchline/v1/agents/office-7/ack", 1).isOk());
  ASSERT_TRUE(agent.start().isOk());
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, 10s, [&] { return up; }));
  }
  protocol::WireBatch batch;
  batch.agent_id = "office-7";
  batch.seq = 1;
  for (int i = 0; i < 25; ++i)
    batch.records.push_back({"customer", "k" + std::to_string(i), 1, "{}"});
  const std::string topic = "branchline/v1/agents/office-7/batch";
  ASSERT_TRUE(agent.publish(topic, protocol::encodeBatch(batch), 1).isOk());
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, 15s, [&] { return acks.size() == 1; })) << agg.stderrText();
    EXPECT_EQ(acks[0].status, protocol::AckStatus::kRefused);
    EXPECT_NE(acks[0].message.find("not sealed"), std::string::npos) << acks[0].message;
  }
  auto sealed = protocol::sealBatch(batch, {agent_key, aggregator_key.public_key});
  ASSERT_TRUE(sealed.isOk());
  ASSERT_TRUE(agent.publish(topic, *sealed, 1).isOk());
  {
    std::unique_lock lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, 15s, [&] { return acks.size() == 2; })) << agg.stderrText();
    EXPECT_EQ(acks[1].status, protocol::AckStatus::kStored);
    EXPECT_EQ(acks[1].stored_records, 25u);
  }
  agent.stop();
  auto metrics = get(http_port, "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_NE(metrics->body.find("bl_aggregator_batches_refused_total{reason=\"not_sealed\"} 1\n"),
            std::string::npos)
      << metrics->body;
  agg.signal(SIGTERM);
  EXPECT_EQ(agg.wait(15s), 0) << agg.stderrText();
}

}  // namespace

namespace {

// Collects what arrives on the aggregators' `online` topic.
struct OnlineWatcher {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::string> payloads;
  bool up = false;
  std::unique_ptr<branchline::mqtt::Client> client;

  explicit OnlineWatcher(const std::string& broker_uri) {
    branchline::mqtt::ClientOptions o;
    o.broker_uris = {broker_uri};
    o.client_id = "online-watcher";
    client = std::make_unique<branchline::mqtt::Client>(
        o,
        [this](branchline::mqtt::Message&& m) {
          std::lock_guard lock(mutex);
          payloads.push_back(m.payload);
          cv.notify_all();
        },
        [this](bool connected) {
          std::lock_guard lock(mutex);
          up = connected;
          cv.notify_all();
        });
  }
  bool start() {
    if (!client->subscribe("branchline/v1/aggregators/+/online", 1).isOk()) return false;
    if (!client->start().isOk()) return false;
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, 10s, [&] { return up; });
  }
  // Waits for a well-formed announcement by `aggregator` saying `online`.
  bool waitFor(const std::string& aggregator, bool online, std::chrono::seconds timeout) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, timeout, [&] {
      for (const auto& p : payloads) {
        auto a = branchline::protocol::decodeAnnouncement(p);
        if (a && a->aggregator == aggregator && a->online == online) return true;
      }
      return false;
    });
  }
};

// Two live processes under this aggregator's client id: it says
// duplicate_identity on /healthz (degraded, still 200) and in its counter,
// as an agent does (README "MQTT 5").
TEST_F(AggregatorMainTest, SecondLiveCopyOfTheIdentityIsReported) {
  MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  const uint16_t http_port = MosquittoProcess::freePort();
  Process agg({"--config", writeConfig(config(broker.uri(), http_port)).string()},
              dir_ / "agg.log");
  auto health = waitHealth(http_port, 200);
  ASSERT_TRUE(health.has_value()) << agg.stderrText();
  EXPECT_NE(health->body.find(R"("duplicate_identity":false)"), std::string::npos) << health->body;

  branchline::mqtt::ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "agg-main-" + std::to_string(agg.pid());
  o.min_reconnect = 250ms;
  branchline::mqtt::Client twin(o, nullptr, nullptr);
  ASSERT_TRUE(twin.start().isOk());
  std::string body;
  for (int i = 0; i < 400 && body.find(R"("duplicate_identity":true)") == std::string::npos; ++i) {
    auto r = get(http_port, "/healthz");
    if (r) body = r->body;
    std::this_thread::sleep_for(50ms);
  }
  twin.stop();
  EXPECT_NE(body.find(R"("status":"degraded")"), std::string::npos) << body;
  EXPECT_NE(body.find(R"("duplicate_identity":true)"), std::string::npos) << body << "\n"
                                                                          << agg.stderrText();
  auto metrics = get(http_port, "/metrics");
  ASSERT_TRUE(metrics.has_value());
  EXPECT_EQ(metrics->body.find("bl_aggregator_duplicate_identity_total 0"), std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("bl_aggregator_duplicate_identity_total "), std::string::npos);
}

}  // namespace

// An aggregator that dies takes the batches in flight to it along; the broker
// publishes its will on the `online` topic at once, so agents resend them to
// the survivor without waiting for their ack timeout. A clean stop says the same.
TEST_F(AggregatorMainTest, KilledOrStoppedItSaysItIsOfflineOnItsOnlineTopic) {
  MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  OnlineWatcher watcher(broker.uri());
  ASSERT_TRUE(watcher.start());
  const auto cfg = writeConfig(config(broker.uri(), MosquittoProcess::freePort()));
  {
    Process agg({"--config", cfg.string()}, dir_ / "agg-1.log");
    ASSERT_TRUE(watcher.waitFor("agg-main", true, 20s)) << agg.stderrText();
    EXPECT_FALSE(watcher.waitFor("agg-main", false, 0s));
    const auto killed = std::chrono::steady_clock::now();
    agg.signal(SIGKILL);
    ASSERT_TRUE(watcher.waitFor("agg-main", false, 10s)) << "no will after SIGKILL";
    std::printf("[ will ] offline announced %.0f ms after SIGKILL\n",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - killed)
                    .count());
  }
  {
    std::lock_guard lock(watcher.mutex);
    watcher.payloads.clear();
  }
  Process agg({"--config", cfg.string()}, dir_ / "agg-2.log");
  ASSERT_TRUE(watcher.waitFor("agg-main", true, 20s)) << agg.stderrText();
  agg.signal(SIGTERM);
  EXPECT_TRUE(watcher.waitFor("agg-main", false, 10s)) << "no offline announcement on a clean stop";
}
