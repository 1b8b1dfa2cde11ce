#include "cli/pipeline/process.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/net/http_client.h"
#include "shared/core/clock.h"

namespace branchline::cli {
namespace {
namespace fs = std::filesystem;
using namespace std::chrono_literals;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/bl-process-test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ProcessSpec shell(const std::string& script, const std::string& log = "") {
  ProcessSpec spec;
  spec.executable = "/bin/sh";
  spec.args = {"-c", script};
  spec.log_path = log;
  return spec;
}

TEST(ProcessTest, RunsWithArgvEnvDirAndLogsBothStreams) {
  TempDir tmp;
  ProcessSpec spec =
      shell("echo out:$BL_TEST_VAR; echo err:$(pwd) >&2; exit 3", tmp.path() + "/child.log");
  spec.env = {{"BL_TEST_VAR", "hello world"}};
  spec.working_dir = tmp.path();
  auto p = Process::spawn(spec);
  ASSERT_TRUE(p.isOk()) << p.status().toString();
  ASSERT_TRUE(p->waitFor(10s));
  ASSERT_TRUE(p->waitStatus().has_value());
  EXPECT_EQ(describeWaitStatus(*p->waitStatus()), "exited with status 3");
  EXPECT_EQ(readFile(tmp.path() + "/child.log"),
            "out:hello world\nerr:" + fs::canonical(tmp.path()).string() + "\n");
  EXPECT_FALSE(p->isRunning());
  EXPECT_EQ(p->signal(SIGTERM).code(), Code::kNotFound);
}

TEST(ProcessTest, MissingExecutableIsReportedNotFound) {
  ProcessSpec spec;
  spec.executable = "/nonexistent/branchline-agent";
  auto p = Process::spawn(spec);
  ASSERT_FALSE(p.isOk());
  EXPECT_EQ(p.status().code(), Code::kNotFound);
  EXPECT_NE(p.status().message().find("/nonexistent/branchline-agent"), std::string::npos);
}

TEST(ProcessTest, BadWorkingDirIsReported) {
  ProcessSpec spec = shell("true");
  spec.working_dir = "/nonexistent-dir-for-test";
  auto p = Process::spawn(spec);
  ASSERT_FALSE(p.isOk());
  EXPECT_NE(p.status().message().find("chdir /nonexistent-dir-for-test"), std::string::npos);
}

TEST(ProcessTest, TerminateEscalatesToKillWhenTermIsIgnored) {
  TempDir tmp;
  // The child ignores SIGTERM, so only SIGKILL after the grace period ends it.
  auto p = Process::spawn(
      shell("trap '' TERM; echo ready; while true; do sleep 0.05; done", tmp.path() + "/log"));
  ASSERT_TRUE(p.isOk());
  const int64_t deadline = steadyMicros() + 10'000'000;
  while (readFile(tmp.path() + "/log").find("ready") == std::string::npos &&
         steadyMicros() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  const int64_t t0 = steadyMicros();
  int status = p->terminate(300ms);
  EXPECT_GE(steadyMicros() - t0, 250'000);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
}

TEST(ProcessTest, TerminateUsesSigtermFirst) {
  auto p = Process::spawn(shell("exec sleep 30"));
  ASSERT_TRUE(p.isOk());
  EXPECT_TRUE(p->isRunning());
  int status = p->terminate(5s);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
}

TEST(ProcessTest, KillingOneChildLeavesItsSiblingRunning) {
  auto a = Process::spawn(shell("exec sleep 30"));
  auto b = Process::spawn(shell("exec sleep 30"));
  ASSERT_TRUE(a.isOk() && b.isOk());
  a->kill();
  EXPECT_FALSE(a->isRunning());
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(b->isRunning());
}

TEST(ProcessTest, DestructorKillsAndReapsTheChild) {
  pid_t pid;
  {
    auto p = Process::spawn(shell("exec sleep 30"));
    ASSERT_TRUE(p.isOk());
    pid = p->pid();
  }
  // Reaped: the pid is no longer our child.
  EXPECT_EQ(::waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(ProcessTest, ChildDoesNotInheritBlockedSignals) {
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, &old);
  auto p = Process::spawn(shell("exec sleep 30"));
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ASSERT_TRUE(p.isOk());
  ASSERT_TRUE(p->signal(SIGTERM).isOk());
  ASSERT_TRUE(p->waitFor(5s)) << "SIGTERM was blocked in the child";
  EXPECT_EQ(WTERMSIG(*p->waitStatus()), SIGTERM);
}

TEST(NetTest, ParseUrl) {
  auto u = parseUrl("http://127.0.0.1:8080/healthz");
  ASSERT_TRUE(u.isOk());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->target, "/healthz");
  auto v = parseUrl("http://localhost");
  ASSERT_TRUE(v.isOk());
  EXPECT_EQ(v->port, 80);
  EXPECT_EQ(v->target, "/");
  auto w = parseUrl("https://agent.example.com/x");
  ASSERT_TRUE(w.isOk());
  EXPECT_TRUE(w->tls);
  EXPECT_EQ(w->port, 443);
  EXPECT_EQ(w->target, "/x");
  EXPECT_FALSE(u->tls);
  EXPECT_EQ(parseUrl("https://x:1")->port, 1);
  EXPECT_FALSE(parseUrl("ftp://x:1").isOk());
  EXPECT_FALSE(parseUrl("https:/x:1").isOk());
  EXPECT_FALSE(parseUrl("http://x:99999").isOk());
  EXPECT_FALSE(parseUrl("http://:80").isOk());
}

TEST(NetTest, WaitForTcpAndHttpGet) {
  auto port = freeLoopbackPort();
  ASSERT_TRUE(port.isOk());
  EXPECT_EQ(waitForTcp(*port, 100ms).code(), Code::kUnavailable);
  EXPECT_FALSE(httpGet("http://127.0.0.1:" + std::to_string(*port) + "/", 500ms).isOk());

  namespace asio = boost::asio;
  namespace http = boost::beast::http;
  asio::io_context ioc;
  asio::ip::tcp::acceptor acceptor(ioc, {asio::ip::make_address("127.0.0.1"), *port});
  std::jthread server([&] {
    // The first connection is waitForTcp's probe, which sends nothing.
    while (true) {
      asio::ip::tcp::socket sock(ioc);
      boost::beast::error_code ec;
      acceptor.accept(sock, ec);
      if (ec) return;
      boost::beast::flat_buffer buf;
      http::request<http::string_body> req;
      http::read(sock, buf, req, ec);
      if (ec) continue;
      http::response<http::string_body> res{http::status::ok, 11};
      res.body() = "{\"status\":\"ok\",\"path\":\"" + std::string(req.target()) + "\"}";
      res.prepare_payload();
      http::write(sock, res, ec);
      return;
    }
  });
  EXPECT_TRUE(waitForTcp(*port, 2s).isOk());
  auto res = httpGet("http://127.0.0.1:" + std::to_string(*port) + "/healthz", 5s);
  ASSERT_TRUE(res.isOk()) << res.status().toString();
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "{\"status\":\"ok\",\"path\":\"/healthz\"}");
}

TEST(NetTest, HttpGetTimesOutOnASilentServer) {
  auto port = freeLoopbackPort();
  ASSERT_TRUE(port.isOk());
  namespace asio = boost::asio;
  asio::io_context ioc;
  asio::ip::tcp::acceptor acceptor(ioc, {asio::ip::make_address("127.0.0.1"), *port});
  // Accepts (via the backlog) but never answers.
  const int64_t t0 = steadyMicros();
  auto res = httpGet("http://127.0.0.1:" + std::to_string(*port) + "/", 300ms);
  EXPECT_FALSE(res.isOk());
  EXPECT_EQ(res.status().code(), Code::kUnavailable);
  EXPECT_LT(steadyMicros() - t0, 3'000'000);
}

}  // namespace
}  // namespace branchline::cli
