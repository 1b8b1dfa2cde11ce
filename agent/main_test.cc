// Runs the real branchline-agent binary: what an operator sees at startup and
// shutdown (exit codes, the message naming the problem, the agent_started line).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent/spool/testing/name_swapper.h"
#include "cli/net/http_client.h"
#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/core/atomic_file.h"
#include "shared/http/http_test_tls.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/mqtt/testing/mosquitto_process.h"
#include "shared/pki/pki.h"

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

std::string readFile(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Subscribes to the test agent's batch topic and keeps every payload that
// arrives; with `ack`, also acks each batch `stored`, as an aggregator does
// after its commit (the test agent does not seal, so acks carry no tag).
class BatchListener {
 public:
  BatchListener(const std::string& broker_uri, const std::string& client_id, bool ack = false)
      : ack_(ack),
        client_(
            options(broker_uri, client_id),
            [this](branchline::mqtt::Message&& m) {
              if (ack_) ackBatch(m.payload);
              std::lock_guard lock(mu_);
              payloads_.push_back(std::move(m.payload));
              cv_.notify_all();
            },
            [this](bool connected) {
              std::lock_guard lock(mu_);
              up_ = connected;
              cv_.notify_all();
            }) {}

  // Subscribes, connects and waits (10 s at most) for the connection.
  bool start() {
    if (!client_.subscribe("branchline/v1/agents/main-test/batch", 1).isOk()) return false;
    if (!client_.start().isOk()) return false;
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, 10s, [&] { return up_; });
  }
  void stop() { client_.stop(); }

  // Waits until more than `count` payloads have arrived; false after `timeout`.
  bool waitForMoreThan(size_t count, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return payloads_.size() > count; });
  }
  std::vector<std::string> payloads() {
    std::lock_guard lock(mu_);
    return payloads_;
  }

 private:
  static branchline::mqtt::ClientOptions options(const std::string& uri, const std::string& id) {
    branchline::mqtt::ClientOptions o;
    o.broker_uris = {uri};
    o.client_id = id;
    return o;
  }

  // On Paho's thread: decode and publish, nothing that blocks.
  void ackBatch(const std::string& payload) {
    auto batch = branchline::protocol::decodeBatch(payload);
    if (!batch.isOk()) return;
    branchline::protocol::WireAck ack;
    ack.agent_id = batch->agent_id;
    ack.batch_seq = batch->seq;
    ack.aggregator = "main-test";
    (void)client_.publish("branchline/v1/agents/" + batch->agent_id + "/ack",
                          branchline::protocol::encodeAck(ack), 1);
  }

  const bool ack_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> payloads_;
  bool up_ = false;
  branchline::mqtt::Client client_;  // last: its callbacks use the members above
};

class AgentMainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* bin = std::getenv("BRANCHLINE_BIN_DIR");
    binary_ = fs::path(bin ? bin : "bin") / "branchline-agent";
    ASSERT_TRUE(fs::exists(binary_)) << binary_ << " not built";
    char tmpl[] = "/tmp/bl-agent-main-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  fs::path writeConfig(const std::string& body) {
    const fs::path p = dir_ / "agent.toml";
    std::ofstream(p) << body;
    return p;
  }

  std::string baseConfig(const std::string& listen, const std::string& broker) {
    return "[agent]\nid = \"main-test\"\ndata_dir = \"" + (dir_ / "data").string() +
           "\"\n[http]\nlisten = \"" + listen + "\"\n[mqtt]\nbrokers = [\"" + broker + "\"]\n";
  }

  void spawn(const fs::path& config) {
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      const int err = ::open((dir_ / "stderr").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(err, STDERR_FILENO);
      ::execl(binary_.c_str(), "branchline-agent", "--config", config.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }

  // Exit code, or -1 if it did not exit within `timeout`.
  int waitExit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

  int runToExit(const fs::path& config) {
    spawn(config);
    return waitExit(20s);
  }

  std::string stderrText() { return readFile(dir_ / "stderr"); }

  // Waits for the agent_started line; returns the HTTP port it bound (0: none).
  int waitStartedPort() {
    const std::regex started(R"re("event":"agent_started".*"http_port":(\d+))re");
    std::smatch m;
    std::string text;
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      text = stderrText();
      if (std::regex_search(text, m, started)) return std::stoi(m[1].str());
      if (::waitpid(pid_, nullptr, WNOHANG) != 0) break;
      std::this_thread::sleep_for(50ms);
    }
    ADD_FAILURE() << "no agent_started line:\n" << text;
    return 0;
  }

  // POSTs `body` (JSON) to the agent on 127.0.0.1:port; the whole answer.
  static std::string post(int port, const std::string& path, const std::string& body,
                          const std::string& token = "") {
    return http(port, "POST", path, body, token);
  }

  // One request on its own connection; the whole answer (status line, headers, body).
  static std::string http(int port, const std::string& method, const std::string& path,
                          const std::string& body = "", const std::string& token = "") {
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
    if (!token.empty()) req += "Authorization: Bearer " + token + "\r\n";
    if (!body.empty()) {
      req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
             "\r\n";
    }
    req += "\r\n" + body;
    return exchange(port, req);
  }

  // Sends `request` as written (it should say `Connection: close`) and returns
  // the whole answer; "" when the port does not connect.
  static std::string exchange(int port, const std::string& request) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      return "";
    }
    std::string answer;
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
        answer.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    return answer;
  }

  // Runs the binary with `args` to completion (20 s at most); its stdout and stderr
  // go to *output. Returns the exit code, or -1 when it did not exit in time.
  int runCommand(const std::vector<std::string>& args, std::string* output,
                 std::string* stdout_only = nullptr) {
    return runBinary(binary_, args, output, stdout_only);
  }
  // runCommand for another executable of build/bin (`branchline`).
  int runBinary(const fs::path& binary, const std::vector<std::string>& args, std::string* output,
                std::string* stdout_only = nullptr) {
    const fs::path out = dir_ / "command.out";
    const fs::path out_only = dir_ / "command.stdout";
    const pid_t pid = ::fork();
    if (pid < 0) return -1;
    if (pid == 0) {
      const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      ::dup2(fd, STDERR_FILENO);
      if (stdout_only != nullptr) {
        ::dup2(::open(out_only.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600), STDOUT_FILENO);
      } else {
        ::dup2(fd, STDOUT_FILENO);
      }
      const std::string name = binary.filename().string();
      std::vector<char*> argv = {const_cast<char*>(name.c_str())};
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(binary.c_str(), argv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        *output = readFile(out);
        return -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    *output = readFile(out);
    if (stdout_only != nullptr) *stdout_only = readFile(out_only);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  // `token add` for the sources; the printed token ("" on failure, reported).
  std::string addToken(const fs::path& config,
                       const std::vector<std::string>& sources = {"customer"}) {
    std::vector<std::string> args = {"token", "add", "--config", config.string()};
    for (const auto& s : sources) {
      args.push_back("--source");
      args.push_back(s);
    }
    std::string err, out;
    const int code = runCommand(args, &err, &out);
    EXPECT_EQ(code, 0) << err;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    EXPECT_EQ(out.rfind("blt_", 0), 0u) << out;
    return out;
  }

  // GET `path` until its answer contains `needle` (within 30 s); the last answer.
  static std::string pollFor(int port, const std::string& path, const std::string& needle) {
    std::string answer;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
      answer = http(port, "GET", path);
      if (answer.find(needle) != std::string::npos) break;
      std::this_thread::sleep_for(100ms);
    }
    return answer;
  }

  // The body of a whole answer (after the header).
  static std::string bodyOf(const std::string& answer) {
    const size_t at = answer.find("\r\n\r\n");
    return at == std::string::npos ? "" : answer.substr(at + 4);
  }

  // Starts the agent with `config` and waits for its port (0: it failed, reported).
  int startAgent(const fs::path& config) {
    spawn(config);
    return waitStartedPort();
  }

  // Polls GET /health until it names `reason`; then it must be 503 with that
  // reason alone, while GET /healthz (liveness) stays 200.
  static void expectDegradedBy(int port, const std::string& reason) {
    const std::string health = pollFor(port, "/health", reason);
    EXPECT_EQ(health.rfind("HTTP/1.1 503", 0), 0u) << health;
    EXPECT_EQ(bodyOf(health), R"({"status":"degraded","reasons":[")" + reason + R"("]})") << health;
    EXPECT_EQ(http(port, "GET", "/healthz").rfind("HTTP/1.1 200", 0), 0u);
  }

  void stopAgent() {
    ::kill(pid_, SIGTERM);
    EXPECT_EQ(waitExit(15s), 0) << stderrText();
  }

  // Posts one `customer` record; it must be accepted.
  static void postRecord(int port, const std::string& token, const std::string& id) {
    const std::string answer = post(port, "/v1/records/customer", customerRecord(id), token);
    EXPECT_NE(answer.find(R"("accepted":1)"), std::string::npos) << answer;
  }

  // A record of the built-in `customer` source.
  static std::string customerRecord(const std::string& id) {
    return R"({"external_id":")" + id +
           R"(","name":"Ada Health","email":"ada@example.com","channel":"web",)"
           R"("created_at":"2026-11-25T10:00:00Z"})";
  }

  fs::path binary_;
  fs::path dir_;
  pid_t pid_ = -1;
};

TEST_F(AgentMainTest, BadConfigExits2NamingTheKey) {
  auto cfg =
      writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + "[batch]\nmax_records = 0\n");
  EXPECT_EQ(runToExit(cfg), 2);
  EXPECT_NE(stderrText().find("batch.max_records: must be between 1 and 100000"), std::string::npos)
      << stderrText();
}

TEST_F(AgentMainTest, UnknownKeyAndMissingFileExit2) {
  auto cfg = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + "[bufer]\n");
  EXPECT_EQ(runToExit(cfg), 2);
  EXPECT_NE(stderrText().find("unknown key `bufer`"), std::string::npos) << stderrText();
  EXPECT_EQ(runToExit(dir_ / "missing.toml"), 2);
  EXPECT_NE(stderrText().find("missing.toml"), std::string::npos) << stderrText();
}

TEST_F(AgentMainTest, PortTakenExits1) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string listen = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  auto cfg = writeConfig(baseConfig(listen, "tcp://127.0.0.1:1"));
  EXPECT_EQ(runToExit(cfg), 1);
  ::close(fd);
  EXPECT_NE(stderrText().find("http.listen " + listen), std::string::npos) << stderrText();
}

TEST_F(AgentMainTest, UnusableDataDirExits1) {
  std::ofstream(dir_ / "a-file") << "x";
  auto cfg =
      writeConfig("[agent]\nid = \"m\"\ndata_dir = \"" + (dir_ / "a-file" / "data").string() +
                  "\"\n[http]\nlisten = \"127.0.0.1:0\"\n");
  EXPECT_EQ(runToExit(cfg), 1);
  EXPECT_NE(stderrText().find("agent.data_dir"), std::string::npos) << stderrText();
}

TEST_F(AgentMainTest, StartsServesAndStopsCleanlyOnSigterm) {
  branchline::mqtt::testing::MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  spawn(writeConfig(baseConfig("127.0.0.1:0", broker.uri())));

  // The agent_started line names the agent and the port actually bound.
  const std::regex started(
      R"re("event":"agent_started".*"agent":"main-test".*"http_port":(\d+))re");
  std::smatch m;
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    text = stderrText();
    if (std::regex_search(text, m, started)) break;
    ASSERT_EQ(::waitpid(pid_, nullptr, WNOHANG), 0) << "agent exited:\n" << text;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(m.size() == 2) << "no agent_started line:\n" << text;
  const int port = std::stoi(m[1].str());
  ASSERT_GT(port, 0);

  // It answers on that port.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string req = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;

  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0) << stderrText();
  EXPECT_NE(stderrText().find("\"event\":\"agent_stopped\""), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "data" / "buffer.db"));
}

// A copied office disk must not reveal customer data: after a record is accepted
// (committed to the buffer) and the agent has stopped, neither buffer.db nor its
// WAL holds the record's email, name or phone in clear; the key file is 0600.
TEST_F(AgentMainTest, AcceptedRecordIsNotInTheBufferFilesInClear) {
  // No broker answers: the record stays in the buffer.
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1"));
  const std::string token = addToken(config);
  spawn(config);
  const int port = waitStartedPort();
  ASSERT_GT(port, 0);

  const std::string email = "wilhelmina.quenzeldorf@pii-marker.example";
  const std::string name = "Wilhelmina Quenzeldorf";
  const std::string phone = "+14155550199";
  const std::string body = R"({"external_id":"qz-ext-88121","name":")" + name + R"(","email":")" +
                           email +
                           R"(","channel":"web",)"
                           R"("created_at":"2026-11-25T10:00:00Z","phone":")" +
                           phone + R"("})";
  const std::string answer = post(port, "/v1/records/customer", body, token);
  ASSERT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
  ASSERT_NE(answer.find(R"("accepted":1)"), std::string::npos) << answer;

  // While running (rows in the WAL) and after a clean stop (checkpointed).
  const fs::path data = dir_ / "data";
  for (int phase = 0; phase < 2; ++phase) {
    if (phase == 1) {
      ::kill(pid_, SIGTERM);
      ASSERT_EQ(waitExit(15s), 0) << stderrText();
    }
    std::string bytes;
    for (const char* f : {"buffer.db", "buffer.db-wal"}) {
      if (fs::exists(data / f)) bytes += readFile(data / f);
    }
    ASSERT_GT(bytes.size(), 0u);
    for (const std::string& marker : {email, name, phone, std::string("qz-ext-88121")}) {
      EXPECT_EQ(bytes.find(marker), std::string::npos)
          << marker << " in clear in the buffer files (phase " << phase << ")";
    }
  }
  // As an auditor would look at a copied disk: the `sqlite3` shell's full dump
  // (every table, every row) shows the rows but none of the record's content.
  {
    const std::string cmd = "sqlite3 -readonly '" + (data / "buffer.db").string() + "' .dump";
    FILE* pipe = ::popen(cmd.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string dump;
    char chunk[4096];
    for (size_t n; (n = std::fread(chunk, 1, sizeof chunk, pipe)) > 0;) dump.append(chunk, n);
    ASSERT_EQ(::pclose(pipe), 0) << "sqlite3 shell failed: " << dump;
    ASSERT_NE(dump.find("INSERT INTO records"), std::string::npos) << dump.substr(0, 2000);
    for (const std::string& marker : {email, name, phone, std::string("qz-ext-88121")}) {
      EXPECT_EQ(dump.find(marker), std::string::npos) << marker << " in the sqlite3 .dump";
    }
  }
  EXPECT_EQ(stderrText().find(email), std::string::npos) << "record content in the log";
  const fs::perms perms = fs::status(data / "buffer.key").permissions();
  EXPECT_EQ(perms & (fs::perms::group_all | fs::perms::others_all), fs::perms::none);
  EXPECT_EQ(fs::file_size(data / "buffer.key"), 32u);
}

// README "Broker access policy": the broker knows a TLS client only by its certificate's
// CN, so an agent.id that is not that CN is refused before the agent accepts
// anything, naming both and the fix; with the matching id the same files start.
TEST_F(AgentMainTest, AgentIdThatIsNotTheCertificateCnIsRefused) {
  namespace pki = branchline::pki;
  auto ca = pki::createAuthority({.common_name = "test CA", .role = pki::CertRole::kAuthority});
  ASSERT_TRUE(ca.isOk()) << ca.status().toString();
  auto cert = pki::issueCertificate(*ca, {.common_name = "agent-1"});  // a client certificate
  ASSERT_TRUE(cert.isOk()) << cert.status().toString();
  ASSERT_TRUE(branchline::writeFileAtomically(dir_ / "ca.crt", ca->certificate_pem, 0644).isOk());
  ASSERT_TRUE(branchline::writeFileAtomically(dir_ / "a.crt", cert->certificate_pem, 0644).isOk());
  ASSERT_TRUE(branchline::writeFileAtomically(dir_ / "a.key", cert->private_key_pem, 0600).isOk());
  const std::string tls = "ca_file = \"ca.crt\"\ncert_file = \"a.crt\"\nkey_file = \"a.key\"\n";
  const std::string body = baseConfig("127.0.0.1:0", "ssl://127.0.0.1:1") + tls;

  EXPECT_EQ(runToExit(writeConfig(body)), 2);  // id "main-test", CN "agent-1"
  const std::string err = stderrText();
  EXPECT_NE(err.find("agent.id `main-test` is not the identity in mqtt.cert_file " +
                     (dir_ / "a.crt").string() + " (CN `agent-1`)"),
            std::string::npos)
      << err;
  EXPECT_NE(err.find("Set agent.id = \"agent-1\""), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(dir_ / "data" / "buffer.db")) << "started before checking its identity";

  std::string fixed = body;
  fixed.replace(fixed.find("main-test"), 9, "agent-1");
  spawn(writeConfig(fixed));
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline &&
         (text = stderrText()).find("\"event\":\"agent_started\"") == std::string::npos) {
    ASSERT_EQ(::waitpid(pid_, nullptr, WNOHANG), 0) << "agent exited:\n" << text;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_NE(text.find("\"event\":\"agent_started\""), std::string::npos) << text;
}

// README "Sealed batches": the key files are checked before the agent accepts
// anything; a private key readable by group/other, or a missing file, is a
// config error naming the key and the file.
TEST_F(AgentMainTest, SealKeyFilesAreCheckedAtStartup) {
  namespace protocol = branchline::protocol;
  const auto agent_key = *protocol::generateSealKeyPair();
  const auto aggregator_key = *protocol::generateSealKeyPair();
  const fs::path key = dir_ / "pki" / "agents" / "main-test.seal.key";
  const fs::path pub = dir_ / "pki" / "aggregators" / "seal.pub";
  ASSERT_TRUE(protocol::writeSealPrivateKey(key, agent_key).isOk());
  const std::string security =
      "[security]\nseal_key_file = \"pki/agents/main-test.seal.key\"\n"
      "aggregator_key_file = \"pki/aggregators/seal.pub\"\n";
  const auto cfg = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + security);

  EXPECT_EQ(runToExit(cfg), 2);  // seal.pub does not exist yet
  EXPECT_NE(stderrText().find("security.aggregator_key_file"), std::string::npos) << stderrText();
  EXPECT_NE(stderrText().find(pub.string()), std::string::npos) << stderrText();

  ASSERT_TRUE(protocol::writeSealPublicKey(pub, aggregator_key.public_key).isOk());
  fs::permissions(key, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                           fs::perms::others_read);
  EXPECT_EQ(runToExit(cfg), 2);
  EXPECT_NE(stderrText().find("security.seal_key_file"), std::string::npos) << stderrText();
  EXPECT_NE(stderrText().find("chmod 600 " + key.string()), std::string::npos) << stderrText();
  EXPECT_FALSE(fs::exists(dir_ / "data" / "buffer.db")) << "started before checking its keys";
}

// With [security] set every batch leaves sealed: a subscriber on the broker sees
// no record content, and only the aggregators' key (with the agent's enrolled
// public key) opens it.
TEST_F(AgentMainTest, SealedAgentPublishesOnlySealedBatches) {
  namespace protocol = branchline::protocol;
  branchline::mqtt::testing::MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  const auto agent_key = *protocol::generateSealKeyPair();
  const auto aggregator_key = *protocol::generateSealKeyPair();
  ASSERT_TRUE(protocol::writeSealPrivateKey(dir_ / "agent.seal.key", agent_key).isOk());
  ASSERT_TRUE(protocol::writeSealPublicKey(dir_ / "seal.pub", aggregator_key.public_key).isOk());

  BatchListener listener(broker.uri(), "sealed-main-test-listener");
  ASSERT_TRUE(listener.start());

  const fs::path config =
      writeConfig(baseConfig("127.0.0.1:0", broker.uri()) +
                  "[batch]\nlinger_ms = 10\n[security]\nseal_key_file = \"agent.seal.key\"\n"
                  "aggregator_key_file = \"seal.pub\"\n");
  const std::string token = addToken(config);
  spawn(config);
  const std::regex started(R"re("event":"agent_started".*"http_port":(\d+).*"sealed":true)re");
  std::smatch m;
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    text = stderrText();
    if (std::regex_search(text, m, started)) break;
    ASSERT_EQ(::waitpid(pid_, nullptr, WNOHANG), 0) << "agent exited:\n" << text;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(m.size(), 2u) << "no sealed agent_started line:\n" << text;
  const int port = std::stoi(m[1].str());

  const std::string email = "sealed.marker@pii-marker.example";
  const std::string body = R"({"external_id":"sealed-1","name":"Ottilie Sealwright","email":")" +
                           email + R"(","channel":"web","created_at":"2026-11-25T10:00:00Z"})";
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string req =
      "POST /v1/records/customer HTTP/1.1\r\nHost: x\r\n"
      "Content-Type: application/json\r\nConnection: close\r\n"
      "Authorization: Bearer " +
      token +
      "\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(::write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  ASSERT_NE(answer.find(R"("accepted":1)"), std::string::npos) << answer;

  ASSERT_TRUE(listener.waitForMoreThan(0, 20s)) << stderrText();
  const std::string payload = listener.payloads().front();
  listener.stop();
  EXPECT_EQ(payload.find(email), std::string::npos) << "record content in clear on the broker";
  auto header = protocol::peekHeader(payload);
  ASSERT_TRUE(header.isOk()) << header.status().toString();
  EXPECT_TRUE(header->sealed);
  EXPECT_EQ(header->key_id, protocol::sealKeyId(aggregator_key.public_key));
  protocol::AggregatorKeyRing ring;
  ring.by_key_id[header->key_id] = {aggregator_key, INT64_MAX};
  protocol::OpenOptions open;
  open.ring = &ring;
  open.agent_public_key = [&](const std::string& id) -> branchline::Result<protocol::X25519Key> {
    if (id != "main-test") return branchline::Status::notFound(id);
    return agent_key.public_key;
  };
  auto batch = protocol::openBatch(payload, {}, open);
  ASSERT_TRUE(batch.isOk()) << batch.status().toString();
  ASSERT_EQ(batch->records.size(), 1u);
  EXPECT_NE(batch->records[0].payload.find(email), std::string::npos);

  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0) << stderrText();
}

// README "[buffer] key_file": `rotate-data-key` runs offline. While the agent runs
// it is refused and changes nothing; once the agent has stopped it re-seals the
// buffer under a new key, the old key no longer opens the buffer, and the agent
// started again delivers every buffered record (and the quarantined one) to the broker.
TEST_F(AgentMainTest, RotateDataKeyOfflineKeepsBufferedRecordsDeliverable) {
  const fs::path key = dir_ / "data" / "buffer.key";
  // No broker answers: the records stay in the buffer.
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1"));
  const std::string token = addToken(config);
  spawn(config);
  const int port = waitStartedPort();
  ASSERT_GT(port, 0);
  std::string body = "[";
  for (int i = 1; i <= 3; ++i) {
    body += R"({"external_id":"rot-)" + std::to_string(i) +
            R"(","name":"Rotation Test","email":"rot)" + std::to_string(i) +
            R"(@example.com","channel":"web","created_at":"2026-11-25T10:00:00Z"},)";
  }
  body += R"({"external_id":"rot-bad","name":"Bad","email":"not-an-email","channel":"web",)"
          R"("created_at":"2026-11-25T10:00:00Z"}])";
  const std::string answer = post(port, "/v1/records/customer", body, token);
  ASSERT_NE(answer.find(R"("accepted":3,"rejected":1)"), std::string::npos) << answer;

  const std::string old_key = readFile(key);
  ASSERT_EQ(old_key.size(), 32u);
  std::string out;
  EXPECT_EQ(runCommand({"rotate-data-key", "--config", config.string()}, &out), 1) << out;
  EXPECT_NE(out.find("stop the agent first"), std::string::npos) << out;
  EXPECT_EQ(readFile(key), old_key) << "a refused rotation changes nothing";

  ::kill(pid_, SIGTERM);
  ASSERT_EQ(waitExit(15s), 0) << stderrText();
  ASSERT_EQ(runCommand({"rotate-data-key", "--config", config.string()}, &out), 0) << out;
  EXPECT_NE(out.find("3 records and 1 quarantined rejects re-sealed"), std::string::npos) << out;
  const std::string new_key = readFile(key);
  EXPECT_EQ(new_key.size(), 32u);
  EXPECT_NE(new_key, old_key);
  EXPECT_FALSE(fs::exists(dir_ / "data" / "buffer.key.next"));

  // The old key no longer opens the buffer: startup fails naming the problem.
  {
    std::ofstream(dir_ / "old.key", std::ios::binary) << old_key;
    fs::permissions(dir_ / "old.key", fs::perms::owner_read | fs::perms::owner_write);
    const fs::path old_config = dir_ / "old-key.toml";
    std::ofstream(old_config) << baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1")
                              << "[buffer]\nkey_file = \"old.key\"\n";
    EXPECT_EQ(runToExit(old_config), 1) << stderrText();
    EXPECT_NE(stderrText().find("different data key"), std::string::npos) << stderrText();
  }

  // With the new key and a broker, every buffered record reaches it.
  branchline::mqtt::testing::MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  BatchListener listener(broker.uri(), "rotation-main-test-listener");
  ASSERT_TRUE(listener.start());
  spawn(writeConfig(baseConfig("127.0.0.1:0", broker.uri()) + "[batch]\nlinger_ms = 10\n"));
  std::set<std::string> ids;
  size_t rejects = 0;
  for (size_t seen = 0; ids.size() < 3 || rejects < 1;) {
    ASSERT_TRUE(listener.waitForMoreThan(seen, 20s))
        << "delivered " << ids.size() << " records, " << rejects << " rejects\n"
        << stderrText();
    const std::vector<std::string> payloads = listener.payloads();
    for (; seen < payloads.size(); ++seen) {
      auto batch = branchline::protocol::decodeBatch(payloads[seen]);
      ASSERT_TRUE(batch.isOk()) << batch.status().toString();
      for (const auto& r : batch->records) {
        const std::regex id(R"re("external_id":"(rot-\d)")re");
        std::smatch m;
        if (std::regex_search(r.payload, m, id)) ids.insert(m[1].str());
      }
      rejects += batch->rejects.size();
    }
  }
  listener.stop();
  EXPECT_EQ(ids, (std::set<std::string>{"rot-1", "rot-2", "rot-3"}));
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0) << stderrText();
}

// README "MQTT 5": the agent speaks MQTT 5, so a batch the broker's ACL will
// not take comes back as PUBACK 0x87 and is logged, counted and on /health
// (503 degraded; /healthz stays 200), instead of being resent into silence forever.
TEST_F(AgentMainTest, PublishRefusedByTheBrokerIsLoggedCountedAndOnHealth) {
  branchline::mqtt::testing::MosquittoProcess broker;
  broker.useAnonymousAcl("topic read branchline/v1/#\n");  // no writes at all
  ASSERT_TRUE(broker.start()) << broker.error();
  const fs::path config =
      writeConfig(baseConfig("127.0.0.1:0", broker.uri()) + "[batch]\nlinger_ms = 10\n");
  const std::string token = addToken(config);
  spawn(config);
  const int port = waitStartedPort();
  ASSERT_GT(port, 0) << stderrText();
  const std::string healthy = http(port, "GET", "/health");
  EXPECT_EQ(healthy.rfind("HTTP/1.1 200", 0), 0u) << healthy;
  EXPECT_EQ(bodyOf(healthy), R"({"status":"ok"})") << healthy;

  const std::string answer =
      http(port, "POST", "/v1/records/customer",
           R"({"external_id":"refused-1","name":"Ada Refused","email":"ada@example.com",)"
           R"("channel":"web","created_at":"2026-11-25T10:00:00Z"})",
           token);
  ASSERT_NE(answer.find(R"("accepted":1)"), std::string::npos) << answer;

  const std::string health = pollFor(port, "/health", "last_publish_refused");
  EXPECT_EQ(health.rfind("HTTP/1.1 503", 0), 0u) << health;
  EXPECT_NE(health.find(R"({"status":"degraded","reasons":["publish_refused"],)"),
            std::string::npos)
      << health;
  EXPECT_NE(health.find(R"("last_publish_refused":{"reason":"Not authorized","code":135,)"
                        R"("topic":"branchline/v1/agents/main-test/batch")"),
            std::string::npos)
      << health << "\n"
      << stderrText();
  const std::string live = http(port, "GET", "/healthz");
  EXPECT_EQ(live.rfind("HTTP/1.1 200", 0), 0u) << live;
  EXPECT_NE(live.find(R"({"status":"ok",)"), std::string::npos) << live;
  EXPECT_EQ(live.find("publish_refused"), std::string::npos) << "liveness only: " << live;
  const std::string metrics = http(port, "GET", "/metrics");
  EXPECT_NE(metrics.find(R"(bl_agent_publish_refused_total{reason="not_authorized"} )"),
            std::string::npos)
      << metrics;
  const std::string log = stderrText();
  EXPECT_NE(log.find(R"("event":"publish_refused")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("reason_code":135)"), std::string::npos) << log;
  EXPECT_NE(broker.log().find("as branchline-agent-main-test (p5, c0"), std::string::npos)
      << "not an MQTT 5 persistent session:\n"
      << broker.log();
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0) << stderrText();
}

// Two live copies of one agent (a cloned config): the broker hands the
// session back and forth; the agent says duplicate_identity in its log, on
// /health (503; /healthz stays 200) and in a counter. The second copy here is a client under the
// agent's MQTT client id.
TEST_F(AgentMainTest, SecondLiveCopyOfTheIdentityIsReported) {
  branchline::mqtt::testing::MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  spawn(writeConfig(baseConfig("127.0.0.1:0", broker.uri())));
  const int port = waitStartedPort();
  ASSERT_GT(port, 0) << stderrText();
  ASSERT_NE(pollFor(port, "/metrics", "bl_agent_mqtt_connected 1").find("connected 1"),
            std::string::npos)
      << stderrText();
  branchline::mqtt::ClientOptions o;
  o.broker_uris = {broker.uri()};
  o.client_id = "branchline-agent-main-test";
  o.min_reconnect = 250ms;
  branchline::mqtt::Client twin(o, nullptr, nullptr);
  ASSERT_TRUE(twin.start().isOk());

  const std::string health = pollFor(port, "/health", R"("duplicate_identity")");
  const std::string live = http(port, "GET", "/healthz");
  twin.stop();
  EXPECT_EQ(health.rfind("HTTP/1.1 503", 0), 0u) << health;
  EXPECT_NE(health.find(R"("status":"degraded")"), std::string::npos) << health;
  EXPECT_NE(health.find(R"("reasons":["duplicate_identity"])"), std::string::npos) << health << "\n"
                                                                                   << stderrText();
  EXPECT_EQ(live.rfind("HTTP/1.1 200", 0), 0u) << live;
  const std::string metrics = http(port, "GET", "/metrics");
  EXPECT_EQ(metrics.find("bl_agent_duplicate_identity_total 0"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("bl_agent_duplicate_identity_total "), std::string::npos) << metrics;
  const std::string log = stderrText();
  EXPECT_NE(log.find(R"("event":"duplicate_identity","client_id":"branchline-agent-main-test")"),
            std::string::npos)
      << log;
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0) << stderrText();
}

// README "Health": GET /health says whether the agent can forward, and why
// not; GET /healthz is liveness and stays 200 throughout.
TEST_F(AgentMainTest, HealthIsOkWhileBatchesAreAcked) {
  branchline::mqtt::testing::MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  BatchListener aggregator(broker.uri(), "main-test-aggregator", /*ack=*/true);
  ASSERT_TRUE(aggregator.start());
  // Thresholds small enough that a stall or an outage would show within the test.
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", broker.uri()) +
                                      "[batch]\nlinger_ms = 10\n[health]\n"
                                      "broker_unreachable_ms = 500\nacks_stalled_ms = 500\n");
  const std::string token = addToken(config);
  const int port = startAgent(config);
  ASSERT_GT(port, 0) << stderrText();
  // One append, so one batch.
  const std::string answer = post(port, "/v1/records/customer",
                                  "[" + customerRecord("ok-1") + "," + customerRecord("ok-2") +
                                      "," + customerRecord("ok-3") + "]",
                                  token);
  ASSERT_NE(answer.find(R"("accepted":3)"), std::string::npos) << answer;
  ASSERT_NE(pollFor(port, "/metrics", "bl_agent_batches_acked_total 1").find("acked_total 1"),
            std::string::npos)
      << stderrText();
  // Past both thresholds: still ok, because acks keep coming and the link is up.
  std::this_thread::sleep_for(700ms);
  const std::string health = http(port, "GET", "/health");
  EXPECT_EQ(health.rfind("HTTP/1.1 200", 0), 0u) << health;
  EXPECT_EQ(bodyOf(health), R"({"status":"ok"})") << health;
  EXPECT_NE(http(port, "GET", "/metrics").find("bl_agent_health_degraded 0"), std::string::npos);
  EXPECT_EQ(http(port, "GET", "/healthz").rfind("HTTP/1.1 200", 0), 0u);
  aggregator.stop();
  stopAgent();
}

TEST_F(AgentMainTest, HealthSaysBrokerUnreachableOnceTheBrokerIsGone) {
  branchline::mqtt::testing::MosquittoProcess broker;
  ASSERT_TRUE(broker.start()) << broker.error();
  const int port = startAgent(writeConfig(baseConfig("127.0.0.1:0", broker.uri()) +
                                          "[health]\nbroker_unreachable_ms = 300\n"));
  ASSERT_GT(port, 0) << stderrText();
  ASSERT_NE(pollFor(port, "/metrics", "bl_agent_mqtt_connected 1").find("connected 1"),
            std::string::npos)
      << stderrText();
  EXPECT_EQ(bodyOf(http(port, "GET", "/health")), R"({"status":"ok"})");
  broker.kill9();
  expectDegradedBy(port, "broker_unreachable");
  EXPECT_NE(http(port, "GET", "/metrics").find("bl_agent_health_degraded 1"), std::string::npos);
  // Back: ok again.
  ASSERT_TRUE(broker.restart()) << broker.error();
  EXPECT_EQ(bodyOf(pollFor(port, "/health", R"("ok")")), R"({"status":"ok"})") << stderrText();
  stopAgent();
}

TEST_F(AgentMainTest, HealthSaysAcksStalledWhenNoAggregatorAcks) {
  branchline::mqtt::testing::MosquittoProcess broker;  // and no aggregator
  ASSERT_TRUE(broker.start()) << broker.error();
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", broker.uri()) +
                                      "[batch]\nlinger_ms = 10\n[health]\nacks_stalled_ms = 300\n");
  const std::string token = addToken(config);
  const int port = startAgent(config);
  ASSERT_GT(port, 0) << stderrText();
  ASSERT_NE(pollFor(port, "/metrics", "bl_agent_mqtt_connected 1").find("connected 1"),
            std::string::npos);
  // Nothing waits yet: no ack is due.
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(bodyOf(http(port, "GET", "/health")), R"({"status":"ok"})");
  postRecord(port, token, "stall-1");
  expectDegradedBy(port, "acks_stalled");
  stopAgent();
}

TEST_F(AgentMainTest, HealthSaysBufferNearlyFullPastTheRatio) {
  // No broker is needed: the default broker_unreachable_ms (30 s) outlasts the test.
  // 1 MiB is the smallest max_bytes; 0.00005 of it is about 52 bytes, less than a record.
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") +
                                      "[buffer]\nmax_bytes = 1048576\n"
                                      "[health]\nbuffer_full_ratio = 0.00005\n");
  const std::string token = addToken(config);
  const int port = startAgent(config);
  ASSERT_GT(port, 0) << stderrText();
  EXPECT_EQ(bodyOf(http(port, "GET", "/health")), R"({"status":"ok"})");
  postRecord(port, token, "full-1");
  expectDegradedBy(port, "buffer_nearly_full");
  stopAgent();
}

TEST_F(AgentMainTest, BadHealthTableExits2NamingTheKey) {
  auto cfg = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") +
                         "[health]\nbuffer_full_ratio = 2\n");
  EXPECT_EQ(runToExit(cfg), 2);
  EXPECT_NE(stderrText().find("health.buffer_full_ratio: must be greater than 0 and at most 1"),
            std::string::npos)
      << stderrText();
  cfg = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + "[health]\nstall_ms = 5\n");
  EXPECT_EQ(runToExit(cfg), 2);
  EXPECT_NE(stderrText().find("unknown key `health.stall_ms`"), std::string::npos) << stderrText();
}

}  // namespace

// README "Authenticated ingest" (Browsers) and "Web forms", with the real
// binary: a preflight from the listed origin is answered with the CORS headers
// and from any other origin refused; a form post from the listed page is
// stored and redirected, one carrying another Origin stores nothing.
TEST_F(AgentMainTest, CorsPreflightOriginsAndFormRedirectWithTheRealBinary) {
  const std::string sources = R"(
[sources.webform]
auth = "none"
rate_limit_per_minute = 100
cors_origins = ["https://forms.example.com"]
form_redirect = "https://forms.example.com/thanks"
key = ["external_id"]
[sources.webform.fields.external_id]
type = "string"
required = true
)";
  spawn(writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + sources));
  const int port = waitStartedPort();
  ASSERT_GT(port, 0) << stderrText();
  const auto preflight = [&](const std::string& origin) {
    return exchange(port, "OPTIONS /v1/records/webform HTTP/1.1\r\nHost: x\r\nOrigin: " + origin +
                              "\r\nAccess-Control-Request-Method: POST\r\n"
                              "Access-Control-Request-Headers: content-type\r\n"
                              "Connection: close\r\n\r\n");
  };
  const std::string allowed = preflight("https://forms.example.com");
  EXPECT_EQ(allowed.rfind("HTTP/1.1 204", 0), 0u) << allowed;
  EXPECT_NE(allowed.find("Access-Control-Allow-Origin: https://forms.example.com\r\n"),
            std::string::npos)
      << allowed;
  EXPECT_NE(allowed.find("Access-Control-Allow-Methods: POST"), std::string::npos) << allowed;
  EXPECT_NE(allowed.find("Access-Control-Max-Age: 600"), std::string::npos) << allowed;
  for (const std::string other : {"https://evil.example.com", "http://forms.example.com",
                                  "https://forms.example.com:8443", "null"}) {
    const std::string refused = preflight(other);
    EXPECT_EQ(refused.rfind("HTTP/1.1 403", 0), 0u) << other << ": " << refused;
    EXPECT_EQ(refused.find("Access-Control-Allow-Origin"), std::string::npos) << refused;
  }

  const auto formPost = [&](const std::string& origin, const std::string& id) {
    const std::string body = "external_id=" + id;
    return exchange(port, "POST /v1/records/webform HTTP/1.1\r\nHost: x\r\nOrigin: " + origin +
                              "\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                              "Content-Length: " +
                              std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
  };
  const std::string posted = formPost("https://forms.example.com", "cors-ok");
  EXPECT_EQ(posted.rfind("HTTP/1.1 303", 0), 0u) << posted;
  EXPECT_NE(posted.find("Location: https://forms.example.com/thanks\r\n"), std::string::npos)
      << posted;
  EXPECT_NE(posted.find("Access-Control-Allow-Origin: https://forms.example.com\r\n"),
            std::string::npos)
      << posted;
  const std::string foreign = formPost("https://evil.example.com", "cors-evil");
  EXPECT_EQ(foreign.rfind("HTTP/1.1 403", 0), 0u) << foreign;

  // Accepted: the listed page's record, not the other one.
  const std::string metrics = http(port, "GET", "/metrics");
  EXPECT_NE(metrics.find("bl_agent_records_accepted_total 1\n"), std::string::npos) << metrics;
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0);
}

// README "Authenticated ingest", with the real binary: `token add|list|revoke`
// change the hash file (0600, never the token), every change is logged with the
// id only, the running agent follows them within a second, and refused posts
// store nothing and log the client address, never the token.
TEST_F(AgentMainTest, TokenCommandsAuthenticateIngestAndAreLogged) {
  const std::string sources = R"(
[sources.customer]
key = ["external_id"]
[sources.customer.fields.external_id]
type = "string"
required = true
[sources.lead]
key = ["external_id"]
[sources.lead.fields.external_id]
type = "string"
required = true
[sources.webform]
auth = "none"
rate_limit_per_minute = 2
key = ["external_id"]
[sources.webform.fields.external_id]
type = "string"
required = true
)";
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + sources);
  const std::string customer = addToken(config, {"customer"});
  const std::string lead = addToken(config, {"lead"});
  ASSERT_FALSE(customer.empty());
  const fs::path file = dir_ / "data" / "ingest_tokens";
  EXPECT_EQ(fs::status(file).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ(readFile(file).find(customer), std::string::npos) << "a token in clear on disk";
  std::string out, listed;
  ASSERT_EQ(runCommand({"token", "list", "--config", config.string()}, &out, &listed), 0) << out;
  const std::string customer_id = customer.substr(4, 8);
  EXPECT_NE(listed.find(customer_id), std::string::npos) << listed;
  EXPECT_NE(listed.find("lead"), std::string::npos) << listed;
  EXPECT_EQ(listed.find(customer), std::string::npos) << "list shows a token";
  EXPECT_EQ(runCommand({"token", "add", "--config", config.string(), "--source", "nope"}, &out), 2)
      << out;

  spawn(config);
  const int port = waitStartedPort();
  ASSERT_GT(port, 0);
  const std::string log_before = stderrText();
  EXPECT_NE(log_before.find(R"("event":"ingest_source_public")"), std::string::npos) << log_before;
  EXPECT_NE(log_before.find(R"("source":"webform")"), std::string::npos);

  const std::string body = R"({"external_id":"tok-1"})";
  EXPECT_EQ(post(port, "/v1/records/customer", body).rfind("HTTP/1.1 401", 0), 0u);
  EXPECT_NE(post(port, "/v1/records/customer", body).find("WWW-Authenticate: Bearer"),
            std::string::npos);
  EXPECT_EQ(post(port, "/v1/records/customer", body, lead).rfind("HTTP/1.1 403", 0), 0u);
  EXPECT_EQ(post(port, "/v1/records/customer", body, customer).rfind("HTTP/1.1 200", 0), 0u);
  EXPECT_EQ(post(port, "/v1/records/webform", body).rfind("HTTP/1.1 200", 0), 0u);
  EXPECT_EQ(post(port, "/v1/records/webform", body).rfind("HTTP/1.1 200", 0), 0u);
  EXPECT_EQ(post(port, "/v1/records/webform", body).rfind("HTTP/1.1 429", 0), 0u);
  EXPECT_EQ(http(port, "GET", "/healthz").rfind("HTTP/1.1 200", 0), 0u);

  ASSERT_EQ(runCommand({"token", "revoke", "--config", config.string(), "--source", "customer",
                        customer_id},
                       &out),
            0)
      << out;
  EXPECT_NE(out.find(R"("event":"ingest_token_revoked")"), std::string::npos) << out;
  EXPECT_NE(out.find(customer_id), std::string::npos);
  std::string answer;
  for (int i = 0; i < 60; ++i) {  // the agent rereads the file at most once a second
    answer = post(port, "/v1/records/customer", body, customer);
    if (answer.rfind("HTTP/1.1 401", 0) == 0) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(answer.rfind("HTTP/1.1 401", 0), 0u) << "revoked token still works: " << answer;
  EXPECT_EQ(post(port, "/v1/records/lead", body, lead).rfind("HTTP/1.1 200", 0), 0u);

  const std::string metrics = http(port, "GET", "/metrics");
  EXPECT_NE(metrics.find("bl_agent_http_refused_total{reason=\"forbidden\"} 1\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("bl_agent_http_refused_total{reason=\"rate_limited\"} 1\n"),
            std::string::npos);
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0);
  const std::string log = stderrText();
  EXPECT_NE(log.find(R"("event":"ingest_refused","reason":"unauthenticated","client":"127.0.0.1")"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find(R"("reason":"forbidden")"), std::string::npos);
  EXPECT_NE(log.find(R"("reason":"rate_limited")"), std::string::npos);
  EXPECT_NE(log.find(R"("event":"ingest_tokens_reloaded")"), std::string::npos);
  for (const std::string& t : {customer, lead}) {
    EXPECT_EQ(log.find(t.substr(13)), std::string::npos) << "a token secret in the log";
  }
}

TEST_F(AgentMainTest, MetricsTokenFileGuardsMetrics) {
  const fs::path token_file = dir_ / "metrics.token";
  std::ofstream(token_file) << "scrape-me-9f2c\n";
  fs::permissions(token_file, fs::perms::owner_read | fs::perms::owner_write);
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") +
                                      "metrics_token_file = \"" + token_file.string() + "\"\n");
  std::string text = readFile(config);
  // The key belongs to [http]: move it there.
  text.erase(text.find("metrics_token_file"));
  const size_t http_at = text.find("[http]\n") + 7;
  text.insert(http_at, "metrics_token_file = \"" + token_file.string() + "\"\n");
  std::ofstream(config) << text;
  spawn(config);
  const int port = waitStartedPort();
  ASSERT_GT(port, 0) << stderrText();
  EXPECT_EQ(http(port, "GET", "/metrics").rfind("HTTP/1.1 401", 0), 0u);
  EXPECT_EQ(http(port, "GET", "/metrics", "", "wrong").rfind("HTTP/1.1 401", 0), 0u);
  const std::string ok = http(port, "GET", "/metrics", "", "scrape-me-9f2c");
  EXPECT_EQ(ok.rfind("HTTP/1.1 200", 0), 0u) << ok;
  EXPECT_NE(ok.find("bl_agent_"), std::string::npos);
  EXPECT_EQ(http(port, "GET", "/healthz").rfind("HTTP/1.1 200", 0), 0u);
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0);
}

// README "Authenticated ingest": HTTPS on the ingest port against a test CA,
// and with http.client_ca_file a client without a certificate never gets a
// request in, while one with a certificate from that CA (and a token) posts.
TEST_F(AgentMainTest, HttpsIngestAndClientCertificatesWithTheRealBinary) {
  branchline::http::testing::TestPki tls;
  ASSERT_TRUE(tls.status().isOk()) << tls.status().toString();
  const fs::path config =
      writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + "[http_tls_placeholder]\n");
  std::string text = readFile(config);
  text.erase(text.find("[http_tls_placeholder]"));
  text.insert(text.find("[http]\n") + 7,
              "tls_cert_file = \"" + tls.file("server.pem") + "\"\ntls_key_file = \"" +
                  tls.file("server.key") + "\"\nclient_ca_file = \"" + tls.file("ca.pem") + "\"\n");
  std::ofstream(config) << text;
  const std::string token = addToken(config);
  spawn(config);
  const int port = waitStartedPort();
  ASSERT_GT(port, 0) << stderrText();
  EXPECT_NE(stderrText().find(R"("https":true,"client_certificates":true)"), std::string::npos);

  const std::string body = R"({"external_id":"tls-1","name":"Ada","email":"ada@example.com",)"
                           R"("channel":"web","created_at":"2026-11-25T10:00:00Z"})";
  const std::string request =
      "POST /v1/records/customer HTTP/1.1\r\nHost: x\r\n"
      "Authorization: Bearer " +
      token +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n\r\n" + body;
  {
    branchline::http::testing::TlsTestClient with_cert(tls.file("ca.pem"), tls.file("client.pem"),
                                                       tls.file("client.key"));
    ASSERT_EQ(with_cert.setupError(), "");
    ASSERT_FALSE(with_cert.open(static_cast<uint16_t>(port)));
    ASSERT_FALSE(with_cert.writeRaw(request));
    auto r = with_cert.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_NE(r->body.find(R"("accepted":1)"), std::string::npos) << r->body;
  }
  {
    branchline::http::testing::TlsTestClient no_cert(tls.file("ca.pem"));
    bool refused = static_cast<bool>(no_cert.open(static_cast<uint16_t>(port)));
    if (!refused) {  // TLS 1.3 may report the refusal on the first read instead
      no_cert.writeRaw(request);
      refused = !no_cert.read().has_value();
    }
    EXPECT_TRUE(refused) << "a client without a certificate got in";
  }
  {
    branchline::http::testing::TlsTestClient other(tls.file("ca.pem"), tls.file("other-client.pem"),
                                                   tls.file("other-client.key"));
    bool refused = static_cast<bool>(other.open(static_cast<uint16_t>(port)));
    if (!refused) {
      other.writeRaw(request);
      refused = !other.read().has_value();
    }
    EXPECT_TRUE(refused) << "a certificate from another CA got in";
  }
  // The `branchline` command's client (loadgen, chaos, bench) over HTTPS: with
  // the CA and a client certificate it posts; it refuses a server its CA does
  // not vouch for, and the agent refuses it without a certificate.
  {
    branchline::cli::HttpConnection c(
        "127.0.0.1", static_cast<uint16_t>(port),
        branchline::cli::HttpClientOptions{.bearer_token = token,
                                           .tls = true,
                                           .ca_file = tls.file("ca.pem"),
                                           .cert_file = tls.file("client.pem"),
                                           .key_file = tls.file("client.key")});
    const std::string two = R"({"external_id":"tls-2","name":"Ada","email":"ada@example.com",)"
                            R"("channel":"web","created_at":"2026-11-25T10:00:00Z"})";
    for (int i = 0; i < 2; ++i) {  // the second request reuses the kept-alive connection
      auto r = c.request("POST", "/v1/records/customer", "application/json", two, 10s);
      ASSERT_TRUE(r.isOk()) << r.status().toString();
      EXPECT_EQ(r->status, 200) << r->body;
    }
    branchline::cli::HttpConnection untrusted(
        "127.0.0.1", static_cast<uint16_t>(port),
        branchline::cli::HttpClientOptions{.tls = true,
                                           .ca_file = tls.file("other-ca.pem"),
                                           .cert_file = tls.file("client.pem"),
                                           .key_file = tls.file("client.key")});
    auto u = untrusted.request("GET", "/healthz", "", "", 10s);
    ASSERT_FALSE(u.isOk());
    EXPECT_NE(u.status().message().find("certificate verify failed"), std::string::npos)
        << u.status().toString();
    branchline::cli::HttpConnection anonymous(
        "127.0.0.1", static_cast<uint16_t>(port),
        branchline::cli::HttpClientOptions{.tls = true, .ca_file = tls.file("ca.pem")});
    EXPECT_FALSE(anonymous.request("GET", "/healthz", "", "", 10s).isOk());
  }
  {
    std::string out;
    const fs::path branchline = binary_.parent_path() / "branchline";
    const int rc =
        runBinary(branchline,
                  {"loadgen", "--url", "https://127.0.0.1:" + std::to_string(port), "--token",
                   token, "--ca-file", tls.file("ca.pem"), "--cert-file", tls.file("client.pem"),
                   "--key-file", tls.file("client.key"), "--records", "20", "--batch", "10",
                   "--invalid", "0", "--duplicates", "0"},
                  &out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find(R"("accepted":20)"), std::string::npos) << out;
  }
  // Plain HTTP on the HTTPS port is not served.
  EXPECT_EQ(post(port, "/v1/records/customer", body, token).find("HTTP/1.1 200"),
            std::string::npos);
  const std::string metrics_ok = [&] {
    branchline::http::testing::TlsTestClient c(tls.file("ca.pem"), tls.file("client.pem"),
                                               tls.file("client.key"));
    if (c.open(static_cast<uint16_t>(port))) return std::string();
    auto r = c.request("GET", "/metrics");
    return r ? r->body : std::string();
  }();
  EXPECT_NE(metrics_ok.find("bl_agent_records_accepted_total 23\n"), std::string::npos)
      << metrics_ok;
  EXPECT_NE(metrics_ok.find(R"(bl_agent_http_refused_total{reason="tls_handshake_failed"})"),
            std::string::npos)
      << metrics_ok;
  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0);
}

TEST_F(AgentMainTest, HttpsWithAKeyThatIsNotTheCertificatesExits2) {
  branchline::http::testing::TestPki tls;
  ASSERT_TRUE(tls.status().isOk());
  const fs::path config = writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1"));
  std::string text = readFile(config);
  text.insert(text.find("[http]\n") + 7, "tls_cert_file = \"" + tls.file("server.pem") +
                                             "\"\ntls_key_file = \"" + tls.file("client.key") +
                                             "\"\n");
  std::ofstream(config) << text;
  EXPECT_EQ(runToExit(config), 2) << stderrText();
  EXPECT_NE(stderrText().find("tls_key_file"), std::string::npos) << stderrText();
}

// Issue 14: an attacker with write access to the spool folder swaps the name
// the spool saw as a regular file for a symlink to a private file or for a
// FIFO. The spool reads nothing through either, never blocks, and SIGTERM
// still stops the agent within its grace time. A file in an undeclared folder
// is logged once and counted. The data directory ends up 0700.
TEST_F(AgentMainTest, SpoolSwapsReadNothingBlockNothingAndSigtermStillStops) {
  const fs::path data = dir_ / "data";
  const fs::path spool = data / "spool" / "customer";
  fs::create_directories(spool);
  fs::create_directories(data / "spool" / "orders");
  fs::permissions(data, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec);
  std::ofstream(data / "spool" / "orders" / "o1.ndjson") << "{}\n";
  const std::string marker = "secret-marker-91c2@example.com";
  const fs::path secret = dir_ / "secret.ndjson";
  std::ofstream(secret) << R"({"external_id":"s-1","name":"Secret","email":")" << marker
                        << R"(","channel":"web","created_at":"2026-11-25T10:00:00Z"})"
                        << "\n";
  const fs::path decoy = dir_ / "decoy.ndjson";
  std::ofstream(decoy) << R"({"external_id":"d-1","name":"Decoy","email":"d@example.com",)"
                       << R"("channel":"web","created_at":"2026-11-25T10:00:00Z"})"
                       << "\n";

  spawn(writeConfig(baseConfig("127.0.0.1:0", "tcp://127.0.0.1:1") + "[spool]\npoll_ms = 10\n"));
  const int port = waitStartedPort();
  ASSERT_GT(port, 0);
  EXPECT_EQ(fs::status(data).permissions() & fs::perms::mask, fs::perms::owner_all);
  EXPECT_NE(stderrText().find("\"event\":\"data_dir_mode_narrowed\""), std::string::npos);

  const fs::path target = spool / "x.ndjson";
  for (int i = 0; i < 6000; ++i) branchline::agent::testing::swapName(target, decoy, secret, i);
  // The decoy left in place is taken; the secret never was (it would count
  // as a second accepted record).
  ::unlink(target.c_str());
  ASSERT_EQ(::link(decoy.c_str(), target.c_str()), 0);
  const std::string taken =
      pollFor(port, "/metrics", "bl_agent_spool_records_total{result=\"accepted\"} 1\n");
  EXPECT_NE(taken.find("bl_agent_spool_records_total{result=\"accepted\"} 1\n"), std::string::npos)
      << taken;
  const bool none_rejected =
      taken.find("bl_agent_spool_records_total{result=\"rejected\"}") == std::string::npos ||
      taken.find("bl_agent_spool_records_total{result=\"rejected\"} 0\n") != std::string::npos;
  EXPECT_TRUE(none_rejected) << taken;
  // A FIFO left in place, stable: the spool must not wait for a writer.
  for (int i = 0; i < 100 && fs::exists(target); ++i) std::this_thread::sleep_for(20ms);
  ::unlink(target.c_str());
  ASSERT_EQ(::mkfifo(target.c_str(), 0600), 0);
  std::this_thread::sleep_for(300ms);

  const std::string metrics = pollFor(port, "/metrics", "bl_agent_spool_undeclared_files_total 1");
  EXPECT_NE(metrics.find("bl_agent_spool_undeclared_files_total 1\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("bl_agent_spool_refused_total{reason=\"not_regular_file\"}"),
            std::string::npos)
      << metrics;

  ::kill(pid_, SIGTERM);
  EXPECT_EQ(waitExit(15s), 0) << "SIGTERM did not stop the agent\n" << stderrText();
  const std::string log = stderrText();
  EXPECT_NE(log.find("\"event\":\"agent_stopped\""), std::string::npos);
  // Logged once, not at every poll.
  size_t reports = 0;
  for (size_t at = log.find("spool_undeclared_source"); at != std::string::npos;
       at = log.find("spool_undeclared_source", at + 1)) {
    ++reports;
  }
  EXPECT_EQ(reports, 1u) << log;
  EXPECT_EQ(log.find(marker), std::string::npos) << "the secret reached the log";
  for (const fs::path& d : {spool / "done", spool / "failed"}) {
    for (const auto& e : fs::directory_iterator(d)) {
      if (!fs::is_regular_file(e.symlink_status())) continue;
      EXPECT_EQ(readFile(e.path()).find(marker), std::string::npos) << e.path();
    }
  }
}
