#include "shared/http/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <mutex>
#include <thread>

#include "shared/core/testing/wait_until.h"
#include "shared/http/http_test_client.h"
#include "shared/http/http_test_tls.h"

namespace branchline::http {
namespace {

using testing::TestClient;
namespace beast = boost::beast;
using namespace std::chrono_literals;

// Echoes what the server handed to the handler, so tests see the parsed request.
void echoHandler(Request&& req, Respond respond) {
  Response r;
  r.content_type = "text/plain";
  if (req.target == "/missing") {
    respond(jsonError(404, "no such path"));
    return;
  }
  r.body = req.method + " " + req.target + " [" + req.content_type + "] " + req.body;
  respond(std::move(r));
}

std::unique_ptr<Server> startServer(ServerOptions options, Handler handler = echoHandler) {
  auto server = Server::start(std::move(options), std::move(handler));
  EXPECT_TRUE(server.isOk()) << server.status().toString();
  return server.isOk() ? std::move(server).value() : nullptr;
}

// A raw socket for byte-at-a-time clients: TestClient cannot read while it writes.
class RawSocket {
 public:
  // `from`: the local address to connect from (127.0.0.2 ... are loopback on Linux).
  explicit RawSocket(uint16_t port, const char* from = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (from != nullptr) {
      sockaddr_in local{};
      local.sin_family = AF_INET;
      ::inet_pton(AF_INET, from, &local.sin_addr);
      if (::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawSocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }
  bool send(std::string_view bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // Waits up to `wait` for the server to answer or close; true when it did,
  // with whatever it sent appended to `received`.
  bool awaitServer(std::chrono::milliseconds wait, std::string& received) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) <= 0) return false;
    char buf[4096];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) return true;
      received.append(buf, static_cast<size_t>(n));
    }
  }
  // Sends `head`, then `filler` over and over up to `total` bytes, until the
  // server answers or closes; what it sent is appended to `received`. The
  // filler is never held whole, like an attacker's endless stream.
  void streamUntilAnswered(std::string_view head, std::string_view filler, size_t total,
                           std::string& received) {
    if (!send(head)) return;
    size_t sent = 0;
    while (sent < total) {
      pollfd p{fd_, POLLIN | POLLOUT, 0};
      if (::poll(&p, 1, 10000) <= 0) return;
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        awaitServer(0ms, received);
        return;
      }
      ssize_t n = ::send(fd_, filler.data(), std::min(filler.size(), total - sent),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN) return;
      if (n > 0) sent += static_cast<size_t>(n);
    }
    awaitServer(10s, received);
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

MetricsRegistry& testMetrics() {
  static MetricsRegistry registry;
  return registry;
}

TEST(HttpServerTest, RoutesRequestsThroughTheHandler) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  EXPECT_NE(server->port(), 0);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  auto r = client.request("POST", "/v1/records/customer", "{\"a\":1}",
                          "Application/JSON; charset=utf-8");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /v1/records/customer [application/json] {\"a\":1}");
  EXPECT_EQ(r->content_type, "text/plain");
  r = client.request("GET", "/missing");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, "{\"error\":\"no such path\"}");
}

TEST(HttpServerTest, SecondServerOnATakenPortIsUnavailable) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  ServerOptions options;
  options.port = server->port();
  auto second = Server::start(options, echoHandler);
  ASSERT_FALSE(second.isOk());
  EXPECT_EQ(second.status().code(), Code::kUnavailable);
}

TEST(HttpServerTest, HandlerMayRespondLaterFromAnotherThread) {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Respond> pending;
  bool quit = false;
  std::thread responder([&] {
    std::unique_lock lock(mu);
    int n = 0;
    while (true) {
      cv.wait(lock, [&] { return quit || !pending.empty(); });
      if (quit) return;
      Respond r = std::move(pending.front());
      pending.pop_front();
      lock.unlock();
      std::this_thread::sleep_for(50ms);  // e.g. waiting for a group commit
      Response resp;
      resp.body = "late " + std::to_string(++n);
      resp.headers.emplace_back("Retry-After", "1");
      r(std::move(resp));
      lock.lock();
    }
  });
  auto server = startServer({}, [&](Request&&, Respond respond) {
    std::lock_guard lock(mu);
    pending.push_back(std::move(respond));
    cv.notify_one();
  });
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  for (int i = 1; i <= 3; ++i) {
    auto r = client.request("GET", "/x");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "late " + std::to_string(i));
    EXPECT_EQ(r->header("Retry-After"), "1");
  }
  {
    std::lock_guard lock(mu);
    quit = true;
  }
  cv.notify_one();
  responder.join();
}

TEST(HttpServerTest, DroppedRespondAnswers500) {
  auto server = startServer({}, [](Request&&, Respond) {});
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  auto r = client.request("GET", "/x");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
}

TEST(HttpServerTest, RespondAfterStopIsHarmless) {
  std::mutex mu;
  std::optional<Respond> kept;
  std::atomic<bool> got{false};
  auto server = startServer({}, [&](Request&&, Respond respond) {
    std::lock_guard lock(mu);
    kept = std::move(respond);
    got = true;
  });
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  ASSERT_FALSE(client.send("GET", "/x"));
  for (int i = 0; i < 500 && !got; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(got);
  server.reset();
  std::lock_guard lock(mu);
  (*kept)(Response{});  // must not touch the destroyed server
  EXPECT_TRUE(client.waitClosed());
}

TEST(HttpServerTest, OversizedBodyGets413WithoutReachingTheHandler) {
  std::atomic<int> calls{0};
  ServerOptions options;
  options.max_body_bytes = 8 << 20;
  LabeledCounter& refused = testMetrics().labeledCounter("t_413_refused_total", "", "reason");
  options.refused = &refused;
  auto server = startServer(options, [&](Request&& req, Respond respond) {
    ++calls;
    echoHandler(std::move(req), std::move(respond));
  });
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  std::string body(20 << 20, 'x');
  client.send("POST", "/v1/records/customer", body, "application/json");  // may be cut
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_NE(r->body.find("larger than 8388608 bytes"), std::string::npos) << r->body;
  EXPECT_EQ(calls.load(), 0);

  // Chunked: no Content-Length up front, so the limit trips while reading.
  TestClient chunked;
  ASSERT_FALSE(chunked.connect(server->port()));
  std::string head =
      "POST /v1/records/customer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  std::string chunk = "100000\r\n" + std::string(0x100000, 'y') + "\r\n";
  std::string all = head;
  for (int i = 0; i < 10; ++i) all += chunk;
  all += "0\r\n\r\n";
  chunked.writeRaw(all);
  r = chunked.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(refused.snapshot()["body_too_large"], 2u);

  // The server keeps answering.
  TestClient after;
  ASSERT_FALSE(after.connect(server->port()));
  r = after.request("GET", "/ok");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, ChunkedBodyWithinTheLimitReachesTheHandlerWhole) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  client.writeRaw(
      "POST /c HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /c [application/x-ndjson] hello world");

  // Strict framing still takes what clients send: upper-case hex, extensions,
  // a trailer, `Chunked` in any case, then a pipelined Content-Length request.
  client.writeRaw(
      "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
      "A;name=\"quoted \\\" value\";flag\r\n0123456789\r\n2\r\nab\r\n0\r\nX-Sum: 1\r\n\r\n"
      "POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz");
  for (const char* expected : {"POST /c [] 0123456789ab", "POST /d [] xyz"}) {
    r = client.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, expected);
  }
}

TEST(HttpServerTest, ExpectContinueIsHonoured) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  client.writeRaw(
      "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 100);
  client.writeRaw("hi");
  r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST /e [] hi");
}

TEST(HttpServerTest, OversizedHeaderGets431) {
  ServerOptions options;
  options.max_header_bytes = 1024;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  client.writeRaw("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(4096, 'a') + "\r\n\r\n");
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  EXPECT_TRUE(client.waitClosed());
}

TEST(HttpServerTest, MalformedRequestGets400AndClose) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  client.writeRaw("THIS IS NOT HTTP\r\n\r\n");
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("malformed HTTP request"), std::string::npos);
  EXPECT_TRUE(client.waitClosed());
}

TEST(HttpServerTest, SlowClientIsCutByTheHeaderTimeout) {
  ServerOptions options;
  options.header_timeout = 300ms;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  TestClient slow(5s);
  ASSERT_FALSE(slow.connect(server->port()));
  auto started = std::chrono::steady_clock::now();
  // Trickle the header, one piece every 100 ms: each piece is in time, the
  // whole header is not.
  const std::string request = "GET /slow HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaa\r\n\r\n";
  for (size_t i = 0; i < request.size(); i += 4) {
    if (slow.writeRaw(request.substr(i, 4))) break;
    std::this_thread::sleep_for(100ms);
  }
  auto r = slow.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 408);
  EXPECT_NE(r->body.find("request header not complete within 300 ms"), std::string::npos)
      << r->body;
  EXPECT_TRUE(slow.waitClosed());
  EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);

  TestClient fast;
  ASSERT_FALSE(fast.connect(server->port()));
  r = fast.request("GET", "/fast");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, SlowLorisIsCutWithinTheHeaderDeadlineWhileOthersAreServed) {
  ServerOptions options;
  options.header_timeout = 2s;
  LabeledCounter& refused = testMetrics().labeledCounter("t_slowloris_refused_total", "", "reason");
  options.refused = &refused;
  auto server = startServer(options);
  ASSERT_TRUE(server);

  // The slow-loris client: one header byte per second, never finishing.
  std::atomic<bool> cut{false};
  std::chrono::steady_clock::duration cut_after{};
  std::string answer;
  std::thread loris([&] {
    RawSocket s(server->port());
    if (!s.connected()) return;
    const std::string header = "GET /loris HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    auto started = std::chrono::steady_clock::now();
    for (size_t i = 0; i < 8; ++i) {  // bounded: 8 s at most
      s.send(std::string(1, header[i % header.size()]));
      if (s.awaitServer(1s, answer)) {
        cut_after = std::chrono::steady_clock::now() - started;
        cut = true;
        return;
      }
    }
  });

  // Meanwhile a normal client is served, many times over.
  int served = 0;
  auto until = std::chrono::steady_clock::now() + 1500ms;
  while (std::chrono::steady_clock::now() < until) {
    TestClient normal(2s);
    ASSERT_FALSE(normal.connect(server->port()));
    auto r = normal.request("POST", "/normal", "hi", "text/plain");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    ++served;
    std::this_thread::sleep_for(50ms);
  }
  loris.join();
  EXPECT_GT(served, 10);
  ASSERT_TRUE(cut) << "the slow-loris client was never cut off";
  EXPECT_GE(cut_after, 1500ms);
  EXPECT_LT(cut_after, 3500ms);
  EXPECT_NE(answer.find("408"), std::string::npos) << answer;
  EXPECT_EQ(refused.snapshot()["header_timeout"], 1u);
}

TEST(HttpServerTest, A64KiBHeaderGets431AndIsCounted) {
  ServerOptions options;  // default max_header_bytes: 16 KiB
  LabeledCounter& refused = testMetrics().labeledCounter("t_431_refused_total", "", "reason");
  options.refused = &refused;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  std::string header = "GET / HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 64; ++i) {
    header += "X-Big-" + std::to_string(i) + ": " + std::string(1024, 'a') + "\r\n";
  }
  header += "\r\n";
  ASSERT_GT(header.size(), 64u << 10);
  client.writeRaw(header);  // may be cut short once the server has answered
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 431);
  EXPECT_EQ(r->body, "{\"error\":\"request header is larger than 16384 bytes\"}");
  EXPECT_TRUE(client.waitClosed());
  EXPECT_EQ(refused.snapshot()["header_too_large"], 1u);

  TestClient after;
  ASSERT_FALSE(after.connect(server->port()));
  r = after.request("GET", "/ok");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, ATricklingBodyIsCutByTheRateFloorAndALongOneByTheBodyTimeout) {
  ServerOptions options;
  options.min_body_bytes_per_second = 1000;
  options.body_timeout = 2500ms;
  LabeledCounter& refused = testMetrics().labeledCounter("t_body_refused_total", "", "reason");
  options.refused = &refused;
  std::atomic<int> calls{0};
  auto server = startServer(options, [&](Request&& req, Respond respond) {
    ++calls;
    echoHandler(std::move(req), std::move(respond));
  });
  ASSERT_TRUE(server);

  // 10 bytes every 100 ms is 100 bytes/s: under the floor once the first second is over.
  {
    RawSocket s(server->port());
    ASSERT_TRUE(s.connected());
    ASSERT_TRUE(s.send("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"));
    auto started = std::chrono::steady_clock::now();
    std::string answer;
    bool cut = false;
    for (int i = 0; i < 60 && !cut; ++i) {  // bounded: 6 s at most
      s.send(std::string(10, 'b'));
      cut = s.awaitServer(100ms, answer);
    }
    ASSERT_TRUE(cut);
    EXPECT_LT(std::chrono::steady_clock::now() - started, 2500ms);
    EXPECT_NE(answer.find("408"), std::string::npos) << answer;
    EXPECT_NE(answer.find("slower than 1000 bytes per second"), std::string::npos) << answer;
  }
  // Fast enough for the floor (2,000 bytes/s) but longer than body_timeout.
  {
    RawSocket s(server->port());
    ASSERT_TRUE(s.connected());
    ASSERT_TRUE(s.send("POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"));
    auto started = std::chrono::steady_clock::now();
    std::string answer;
    bool cut = false;
    for (int i = 0; i < 60 && !cut; ++i) {
      s.send(std::string(200, 'b'));
      cut = s.awaitServer(100ms, answer);
    }
    ASSERT_TRUE(cut);
    auto took = std::chrono::steady_clock::now() - started;
    EXPECT_GE(took, 2s);
    EXPECT_LT(took, 4s);
    EXPECT_NE(answer.find("not complete within 2500 ms"), std::string::npos) << answer;
  }
  EXPECT_EQ(calls.load(), 0);
  auto counts = refused.snapshot();
  EXPECT_EQ(counts["body_too_slow"], 1u);
  EXPECT_EQ(counts["body_timeout"], 1u);

  // A body sent at once is unaffected.
  TestClient fast;
  ASSERT_FALSE(fast.connect(server->port()));
  auto r = fast.request("POST", "/fast", std::string(100000, 'f'), "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(HttpServerTest, AnIdleKeepAliveConnectionIsClosed) {
  ServerOptions options;
  options.idle_timeout = 300ms;
  Gauge& open = testMetrics().gauge("t_idle_connections", "");
  options.connections = &open;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  TestClient client(5s);
  ASSERT_FALSE(client.connect(server->port()));
  auto r = client.request("GET", "/once");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->keep_alive);
  EXPECT_EQ(open.value(), 1);
  auto started = std::chrono::steady_clock::now();
  EXPECT_TRUE(client.waitClosed());
  EXPECT_LT(std::chrono::steady_clock::now() - started, 3s);
  for (int i = 0; i < 100 && open.value() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(open.value(), 0);
}

TEST(HttpServerTest, OneClientCannotTakeEveryConnection) {
  ServerOptions options;
  options.max_connections_per_client = 2;
  LabeledCounter& refused = testMetrics().labeledCounter("t_client_refused_total", "", "reason");
  options.refused = &refused;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<TestClient>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::make_unique<TestClient>());
    ASSERT_FALSE(held.back()->connect(server->port()));
    auto r = held.back()->request("GET", "/hold");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  TestClient third;
  ASSERT_FALSE(third.connect(server->port()));
  auto r = third.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_NE(r->body.find("from this client"), std::string::npos) << r->body;
  EXPECT_EQ(refused.snapshot()["too_many_client_connections"], 1u);
}

TEST(HttpServerTest, KeepAlivePipelineAnswersInOrder) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  std::string pipeline;
  for (int i = 0; i < 5; ++i) {
    std::string body = "body" + std::to_string(i);
    pipeline += "POST /p" + std::to_string(i) +
                " HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                "\r\n\r\n" + body;
  }
  ASSERT_FALSE(client.writeRaw(pipeline));
  for (int i = 0; i < 5; ++i) {
    auto r = client.read();
    ASSERT_TRUE(r) << i;
    EXPECT_EQ(r->status, 200);
    EXPECT_TRUE(r->keep_alive);
    EXPECT_EQ(r->body, "POST /p" + std::to_string(i) + " [] body" + std::to_string(i));
  }
}

TEST(HttpServerTest, ConnectionCloseIsHonoured) {
  auto server = startServer({});
  ASSERT_TRUE(server);
  TestClient client;
  ASSERT_FALSE(client.connect(server->port()));
  ASSERT_FALSE(client.send("GET", "/bye", "", "", /*keep_alive=*/false));
  auto r = client.read();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->keep_alive);
  EXPECT_TRUE(client.waitClosed());
}

TEST(HttpServerTest, ManyConcurrentConnections) {
  ServerOptions options;
  options.threads = 2;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  constexpr int kClients = 32;
  constexpr int kRequests = 20;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      TestClient client;
      if (client.connect(server->port())) return;
      for (int i = 0; i < kRequests; ++i) {
        std::string body = std::to_string(c) + ":" + std::to_string(i);
        auto r = client.request("POST", "/m", body, "text/plain");
        if (r && r->status == 200 && r->body == "POST /m [text/plain] " + body) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients * kRequests);
}

TEST(HttpServerTest, ConnectionsPastTheLimitGet503) {
  ServerOptions options;
  options.max_connections = 4;
  options.reserved_connections = 0;  // see HealthzAnswersWhileSlowClientsHoldEveryIngestSlot
  auto server = startServer(options);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<TestClient>> held;
  for (int i = 0; i < 4; ++i) {
    held.push_back(std::make_unique<TestClient>());
    ASSERT_FALSE(held.back()->connect(server->port()));
    auto r = held.back()->request("GET", "/hold");  // admitted and kept alive
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  TestClient extra;
  ASSERT_FALSE(extra.connect(server->port()));
  auto r = extra.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_TRUE(extra.waitClosed());

  held.pop_back();  // frees a slot once the server notices the close
  bool served = false;
  for (int attempt = 0; attempt < 50 && !served; ++attempt) {
    TestClient again;
    ASSERT_FALSE(again.connect(server->port()));
    auto a = again.request("GET", "/again");
    served = a && a->status == 200;
    if (!served) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(served);
}

// The resident set of this process (the server runs in it), from /proc/self/status.
size_t residentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6)) * 1024;
  }
  ADD_FAILURE() << "no VmRSS in /proc/self/status";
  return 0;
}

// A handler that counts what reaches it and echoes it.
struct CountingHandler {
  std::atomic<int> calls{0};
  Handler handler() {
    return [this](Request&& req, Respond respond) {
      ++calls;
      echoHandler(std::move(req), std::move(respond));
    };
  }
};

TEST(HttpServerTest, AnEndlessChunkExtensionIsRefusedWithinBoundedMemory) {
  CountingHandler counting;
  auto server = startServer({}, counting.handler());
  ASSERT_TRUE(server);
  size_t before = residentBytes();
  RawSocket attacker(server->port());
  ASSERT_TRUE(attacker.connected());
  std::string received;
  attacker.streamUntilAnswered(
      "POST /v1/records/customer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=",
      std::string(64 << 10, 'a'), size_t{256} << 20, received);
  size_t after = residentBytes();
  EXPECT_EQ(received.rfind("HTTP/1.1 400", 0), 0u) << received.substr(0, 200);
  EXPECT_NE(received.find("chunk size line longer than"), std::string::npos) << received;
  EXPECT_LT(after, before + (64 << 20)) << "RSS grew from " << before << " to " << after;
  EXPECT_EQ(counting.calls.load(), 0);
}

// Each of these frames its body ambiguously (RFC 9112 §6.3) and is followed by
// a second request: the server answers 400, closes, and never runs the second.
TEST(HttpServerTest, AmbiguousFramingGets400AndCloseWithoutRunningWhatFollows) {
  CountingHandler counting;
  LabeledCounter& refused = testMetrics().labeledCounter("t_framing_refused_total", "", "reason");
  ServerOptions options;
  options.refused = &refused;
  auto server = startServer(options, counting.handler());
  ASSERT_TRUE(server);
  const std::string smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  const std::string post = "POST /v1/records/customer HTTP/1.1\r\nHost: x\r\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"identity TE", post + "Transfer-Encoding: identity\r\n\r\n" + smuggled},
      {"gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled},
      {"chunked, identity", post + "Transfer-Encoding: chunked, identity\r\n\r\n" + smuggled},
      {"TE twice", post +
                       "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" +
                       smuggled},
      {"CL then TE",
       post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
      {"TE then CL",
       post + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggled},
      {"CL twice, same", post + "Content-Length: 2\r\nContent-Length: 2\r\n\r\nhi" + smuggled},
      {"CL twice, different",
       post + "Content-Length: 2\r\nContent-Length: 60\r\n\r\nhi" + smuggled},
      {"CL list", post + "Content-Length: 2, 2\r\n\r\nhi" + smuggled},
      {"CL signed", post + "Content-Length: +2\r\n\r\nhi" + smuggled},
      {"TE in HTTP/1.0",
       "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled},
      {"obs-fold", post + "X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n" + smuggled},
      {"obs-fold tab", post + "Content-Length: 0\r\nX-Folded: a\r\n\tb\r\n\r\n" + smuggled},
      {"bare LF", post + "X-A: a\nContent-Length: 0\r\n\r\n" + smuggled},
      {"0x10",
       post + "Transfer-Encoding: chunked\r\n\r\n0x10\r\n0123456789abcdef\r\n0\r\n\r\n" + smuggled},
      {"+10",
       post + "Transfer-Encoding: chunked\r\n\r\n+10\r\n0123456789abcdef\r\n0\r\n\r\n" + smuggled},
      {"-0", post + "Transfer-Encoding: chunked\r\n\r\n-0\r\n\r\n" + smuggled},
      {"space before size",
       post + "Transfer-Encoding: chunked\r\n\r\n 2\r\nhi\r\n0\r\n\r\n" + smuggled},
      {"space after size",
       post + "Transfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n" + smuggled},
      {"size overflow",
       post + "Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\nhi\r\n0\r\n\r\n" + smuggled},
      {"17 digits",
       post + "Transfer-Encoding: chunked\r\n\r\n00000000000000002\r\nhi\r\n0\r\n\r\n" + smuggled},
      {"chunk without CRLF",
       post + "Transfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n" + smuggled},
      {"bare LF chunk line",
       post + "Transfer-Encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n" + smuggled},
      {"bad extension",
       post + "Transfer-Encoding: chunked\r\n\r\n2;a b\r\nhi\r\n0\r\n\r\n" + smuggled},
      {"folded trailer",
       post + "Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n" + smuggled},
  };
  for (const auto& [name, bytes] : cases) {
    SCOPED_TRACE(name);
    TestClient client;
    ASSERT_FALSE(client.connect(server->port()));
    client.writeRaw(bytes);
    auto r = client.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << r->body;
    EXPECT_NE(r->body.find("malformed HTTP request"), std::string::npos) << r->body;
    EXPECT_FALSE(r->keep_alive);
    EXPECT_TRUE(client.waitClosed());
  }
  EXPECT_EQ(counting.calls.load(), 0);
  EXPECT_EQ(refused.snapshot()["malformed_http"], cases.size());
}

TEST(HttpServerTest, HealthzAnswersWhileSlowClientsHoldEveryIngestSlot) {
  ServerOptions options;         // defaults: 256 connections, 128 per client, 16 reserved
  options.header_timeout = 60s;  // the slow clients outlast the test
  auto server = startServer(options, [](Request&& req, Respond respond) {
    Response r;
    r.body = req.target == "/healthz" ? "{\"ok\":true}" : "{}";
    respond(std::move(r));
  });
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<RawSocket>> slow;
  for (const char* from : {"127.0.0.2", "127.0.0.3", "127.0.0.4"}) {
    for (int i = 0; i < 100; ++i) {
      slow.push_back(std::make_unique<RawSocket>(server->port(), from));
      ASSERT_TRUE(slow.back()->connected()) << from;
      slow.back()->send("POST /v1/records/customer HTTP/1.1\r\nHost: x\r\n");  // and no more
    }
  }
  std::this_thread::sleep_for(200ms);  // every one accepted (or refused)
  for (int probe = 0; probe < 31; ++probe) {
    SCOPED_TRACE(probe);
    TestClient health;
    ASSERT_FALSE(health.connect(server->port()));
    auto r = health.request("GET", probe % 2 == 0 ? "/healthz" : "/metrics?probe=1");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
  }
  // Only health and metrics: ingest from the reserve is refused.
  TestClient ingest;
  ASSERT_FALSE(ingest.connect(server->port()));
  auto r = ingest.request("POST", "/v1/records/customer", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_TRUE(ingest.waitClosed());
}

// HTTPS: one throwaway PKI (http_test_tls.h) for the suite.
class HttpsServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = new testing::TestPki(); }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(pki_->status().isOk()) << pki_->status().toString(); }

  static std::string file(const std::string& name) { return pki_->file(name); }
  static ServerOptions tlsOptions() {
    ServerOptions o;
    o.tls_cert_file = file("server.pem");
    o.tls_key_file = file("server.key");
    return o;
  }
  static ServerOptions mutualTlsOptions() {
    ServerOptions o = tlsOptions();
    o.client_ca_file = file("ca.pem");
    return o;
  }

  static testing::TestPki* pki_;
};
testing::TestPki* HttpsServerTest::pki_ = nullptr;

// Keeps what reached the handler (its TLS identity, peer, body) and echoes the body.
struct RecordingHandler {
  std::mutex mutex;
  std::vector<Request> seen;
  Handler handler() {
    return [this](Request&& req, Respond respond) {
      Response r;
      r.content_type = "text/plain";
      r.body = req.body;
      {
        std::lock_guard lock(mutex);
        seen.push_back(std::move(req));
      }
      respond(std::move(r));
    };
  }
  std::vector<Request> requests() {
    std::lock_guard lock(mutex);
    return seen;
  }
};

uint64_t refusals(LabeledCounter& refused, const std::string& reason) {
  auto counts = refused.snapshot();
  auto it = counts.find(reason);
  return it == counts.end() ? 0 : it->second;
}

TEST_F(HttpsServerTest, RequestsOverTlsReachTheHandlerWithBodyAndPeer) {
  RecordingHandler recording;
  auto server = startServer(tlsOptions(), recording.handler());
  ASSERT_TRUE(server);
  testing::TlsTestClient client(file("ca.pem"));
  ASSERT_EQ(client.setupError(), "");
  ASSERT_FALSE(client.open(server->port()));
  auto r = client.request("POST", "/v1/records/customer", "{\"a\":1}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "{\"a\":1}");
  EXPECT_TRUE(r->keep_alive);
  // Kept alive, then two pipelined requests in one write: answered in order.
  r = client.request("POST", "/second", "two", "text/plain");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, "two");
  ASSERT_FALSE(
      client.writeRaw("POST /p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\np1"
                      "POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\np2"));
  auto p1 = client.read();
  auto p2 = client.read();
  ASSERT_TRUE(p1 && p2);
  EXPECT_EQ(p1->body, "p1");
  EXPECT_EQ(p2->body, "p2");

  auto seen = recording.requests();
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/v1/records/customer");
  EXPECT_EQ(seen[0].content_type, "application/json");
  EXPECT_EQ(seen[0].body, "{\"a\":1}");
  EXPECT_EQ(seen[0].peer, "127.0.0.1");
  EXPECT_FALSE(seen[0].client_verified);  // no client_ca_file: no client certificate asked for
  EXPECT_EQ(seen[0].client_subject, "");
  EXPECT_EQ(seen[3].target, "/p2");
}

TEST_F(HttpsServerTest, PlainHttpToTheTlsPortNeverReachesTheHandler) {
  ServerOptions options = tlsOptions();
  LabeledCounter& refused = testMetrics().labeledCounter("t_tls_plain_refused_total", "", "reason");
  options.refused = &refused;
  CountingHandler counting;
  auto server = startServer(options, counting.handler());
  ASSERT_TRUE(server);
  TestClient plain(5s);
  ASSERT_FALSE(plain.connect(server->port()));
  beast::error_code error;
  ASSERT_FALSE(plain.send("GET", "/healthz"));
  EXPECT_FALSE(plain.read(&error));  // no HTTP answer: the connection just ends
  EXPECT_NE(error, beast::error::timeout);
  EXPECT_TRUE(branchline::testing::waitUntil(
      [&] { return refusals(refused, "tls_handshake_failed") == 1; }, 5s));
  EXPECT_EQ(counting.calls.load(), 0);
}

TEST_F(HttpsServerTest, WithAClientCaOnlyClientsWithItsCertificatesGetIn) {
  ServerOptions options = mutualTlsOptions();
  LabeledCounter& refused = testMetrics().labeledCounter("t_mtls_refused_total", "", "reason");
  options.refused = &refused;
  RecordingHandler recording;
  auto server = startServer(options, recording.handler());
  ASSERT_TRUE(server);

  // Without a certificate, and with one from another CA. Over TLS 1.3 the
  // client may see its handshake finish before the server's verdict arrives,
  // so the proof is that no answer ever comes and the handler never runs.
  struct Case {
    const char* name;
    std::string cert;
    std::string key;
  };
  for (const Case& c : {Case{"no certificate", "", ""},
                        Case{"another CA's", file("other-client.pem"), file("other-client.key")}}) {
    SCOPED_TRACE(c.name);
    testing::TlsTestClient client(file("ca.pem"), c.cert, c.key, 5s);
    ASSERT_EQ(client.setupError(), "");
    if (!client.open(server->port())) {
      beast::error_code error;
      if (!client.send("GET", "/healthz")) {
        EXPECT_FALSE(client.read(&error));
      }
      EXPECT_NE(error, beast::error::timeout);
    }
  }
  EXPECT_TRUE(branchline::testing::waitUntil(
      [&] { return refusals(refused, "tls_handshake_failed") == 2; }, 5s))
      << refusals(refused, "tls_handshake_failed");
  EXPECT_TRUE(recording.requests().empty());

  testing::TlsTestClient agent(file("ca.pem"), file("client.pem"), file("client.key"));
  ASSERT_EQ(agent.setupError(), "");
  ASSERT_FALSE(agent.open(server->port()));
  auto r = agent.request("POST", "/v1/records/customer", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  auto seen = recording.requests();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_TRUE(seen[0].client_verified);
  EXPECT_EQ(seen[0].client_subject, "agent-1");
  EXPECT_EQ(seen[0].peer, "127.0.0.1");
}

TEST_F(HttpsServerTest, StartRefusesIncompleteOrUnusableTlsFiles) {
  auto refusal = [](ServerOptions o) {
    auto server = Server::start(std::move(o), echoHandler);
    EXPECT_FALSE(server.isOk());
    if (server.isOk()) return std::string();
    EXPECT_EQ(server.status().code(), Code::kInvalidArgument);
    return server.status().message();
  };
  ServerOptions o = tlsOptions();
  o.tls_key_file.clear();
  EXPECT_NE(refusal(o).find("tls_cert_file is set but tls_key_file is not"), std::string::npos);
  o = tlsOptions();
  o.tls_cert_file.clear();
  EXPECT_NE(refusal(o).find("tls_key_file is set but tls_cert_file is not"), std::string::npos);
  o = ServerOptions{};
  o.client_ca_file = file("ca.pem");
  EXPECT_NE(refusal(o).find("client_ca_file is set without"), std::string::npos);

  // Another certificate's key: named, with what is wrong.
  o = tlsOptions();
  o.tls_key_file = file("client.key");
  std::string message = refusal(o);
  EXPECT_NE(message.find("tls_key_file `" + file("client.key") + "`"), std::string::npos)
      << message;
  EXPECT_NE(message.find("mismatch"), std::string::npos) << message;

  o = tlsOptions();
  o.tls_cert_file = file("missing.pem");
  message = refusal(o);
  EXPECT_NE(message.find("tls_cert_file `" + file("missing.pem") + "`: cannot read"),
            std::string::npos)
      << message;
  // Not what the option wants: a certificate as the key, a key as the CA bundle.
  o = tlsOptions();
  o.tls_key_file = file("server.pem");
  message = refusal(o);
  EXPECT_NE(message.find("tls_key_file `" + file("server.pem") + "`: "), std::string::npos)
      << message;
  o = mutualTlsOptions();
  o.client_ca_file = file("server.key");
  message = refusal(o);
  EXPECT_NE(message.find("client_ca_file `" + file("server.key") + "`: "), std::string::npos)
      << message;
}

TEST_F(HttpsServerTest, AClientThatNeverHandshakesIsClosedWithinTheHeaderTimeoutAndCounted) {
  ServerOptions options = tlsOptions();
  options.header_timeout = 300ms;
  LabeledCounter& refused =
      testMetrics().labeledCounter("t_tls_silent_refused_total", "", "reason");
  options.refused = &refused;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  RawSocket silent(server->port());
  ASSERT_TRUE(silent.connected());
  auto started = std::chrono::steady_clock::now();
  std::string received;
  EXPECT_TRUE(silent.awaitServer(5s, received));  // closed, nothing sent
  auto took = std::chrono::steady_clock::now() - started;
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 2s);
  EXPECT_EQ(received, "");
  EXPECT_TRUE(branchline::testing::waitUntil(
      [&] { return refusals(refused, "tls_handshake_failed") == 1; }, 5s));

  testing::TlsTestClient client(file("ca.pem"));
  ASSERT_FALSE(client.open(server->port()));
  auto r = client.request("GET", "/after");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpsServerTest, ASlowHeaderOverTlsGets408AndConnectionCloseIsHonoured) {
  ServerOptions options = tlsOptions();
  options.header_timeout = 300ms;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  {
    testing::TlsTestClient slow(file("ca.pem"), "", "", 5s);
    ASSERT_FALSE(slow.open(server->port()));
    ASSERT_FALSE(slow.writeRaw("GET /slow HTTP/1.1\r\nHost: x\r\n"));  // and no more
    auto r = slow.read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 408);
    EXPECT_NE(r->body.find("request header not complete within 300 ms"), std::string::npos);
    EXPECT_TRUE(slow.waitClosed());
  }
  testing::TlsTestClient once(file("ca.pem"), "", "", 5s);
  ASSERT_FALSE(once.open(server->port()));
  ASSERT_FALSE(once.send("GET", "/once", "", "", /*keep_alive=*/false));
  auto r = once.read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_FALSE(r->keep_alive);
  auto started = std::chrono::steady_clock::now();
  EXPECT_TRUE(once.waitClosed());
  EXPECT_LT(std::chrono::steady_clock::now() - started, 3s);
}

TEST_F(HttpsServerTest, ConnectionsPastTheLimitGet503OverTls) {
  ServerOptions options = tlsOptions();
  options.max_connections = 1;
  options.reserved_connections = 0;
  LabeledCounter& refused = testMetrics().labeledCounter("t_tls_503_refused_total", "", "reason");
  options.refused = &refused;
  auto server = startServer(options);
  ASSERT_TRUE(server);
  testing::TlsTestClient first(file("ca.pem"));
  ASSERT_FALSE(first.open(server->port()));
  testing::TlsTestClient second(file("ca.pem"));
  ASSERT_FALSE(second.open(server->port()));
  auto r = second.read();  // answered unasked, once the handshake is done
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_TRUE(second.waitClosed());
  r = first.request("GET", "/still-served");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(refusals(refused, "too_many_connections"), 1u);
  EXPECT_EQ(refusals(refused, "tls_handshake_failed"), 0u);
}

}  // namespace
}  // namespace branchline::http
