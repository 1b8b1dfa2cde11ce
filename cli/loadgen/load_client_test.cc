#include "cli/loadgen/load_client.h"

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "shared/core/clock.h"

namespace branchline::loadgen {
namespace {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct Answer {
  int status = 200;
  std::string body;
  std::string retry_after;
};

// A tiny keep-alive HTTP server on loopback: one thread per connection, every
// request handed to `handler`. Stands in for an agent's ingest endpoint.
class TestServer {
 public:
  using Handler = std::function<Answer(const http::request<http::string_body>&)>;
  explicit TestServer(Handler handler)
      : handler_(std::move(handler)), acceptor_(ioc_, {asio::ip::make_address("127.0.0.1"), 0}) {
    accept_thread_ = std::jthread([this] { acceptLoop(); });
  }
  ~TestServer() {
    stopping_ = true;
    // Wake the blocking accept with one last connection.
    beast::error_code ec;
    tcp::socket s(ioc_);
    s.connect(acceptor_.local_endpoint(), ec);
    accept_thread_.join();
    std::lock_guard lock(mutex_);
    connections_.clear();  // joins: clients have closed their connections by now
  }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
  }

 private:
  void acceptLoop() {
    while (!stopping_) {
      tcp::socket sock(ioc_);
      beast::error_code ec;
      acceptor_.accept(sock, ec);
      if (ec || stopping_) return;
      std::lock_guard lock(mutex_);
      connections_.emplace_back([this, s = std::move(sock)]() mutable { serve(std::move(s)); });
    }
  }
  void serve(tcp::socket sock) {
    beast::flat_buffer buf;
    while (true) {
      http::request<http::string_body> req;
      beast::error_code ec;
      http::read(sock, buf, req, ec);
      if (ec) return;
      Answer a = handler_(req);
      http::response<http::string_body> res{static_cast<http::status>(a.status), 11};
      res.set(http::field::content_type, "application/json");
      if (!a.retry_after.empty()) res.set(http::field::retry_after, a.retry_after);
      res.body() = a.body;
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      http::write(sock, res, ec);
      if (ec || !req.keep_alive()) return;
    }
  }

  Handler handler_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::vector<std::jthread> connections_;
  std::jthread accept_thread_;
};

// Behaves like an agent's ingest: rejects records whose id is in the invalid
// id space (or missing), accepts the rest, and remembers everything accepted.
struct FakeIngest {
  std::mutex mutex;
  std::multiset<std::string> accepted_json;
  std::set<std::string> content_types;
  int requests = 0;
  int answer_503_first = 0;

  Answer operator()(const http::request<http::string_body>& req) {
    std::lock_guard lock(mutex);
    ++requests;
    if (req.target() != "/v1/records/customer") return {404, "{\"error\":\"unknown source\"}"};
    content_types.insert(std::string(req[http::field::content_type]));
    if (answer_503_first > 0) {
      --answer_503_first;
      return {503, "{\"error\":\"buffer full\"}", "0"};
    }
    std::vector<std::string> records;
    if (req[http::field::content_type] == "application/x-ndjson") {
      size_t pos = 0;
      while (pos < req.body().size()) {
        size_t nl = req.body().find('\n', pos);
        records.push_back(req.body().substr(pos, nl - pos));
        pos = nl + 1;
      }
    } else {
      const boost::json::value all = boost::json::parse(req.body());
      for (const auto& v : all.as_array()) {
        records.push_back(boost::json::serialize(v));
      }
    }
    std::string errors;
    int rejected = 0;
    for (size_t i = 0; i < records.size(); ++i) {
      auto o = boost::json::parse(records[i]).as_object();
      const auto* id = o.if_contains("external_id");
      if (id == nullptr || std::string(id->as_string()).rfind("bad-", 0) == 0) {
        if (rejected++ > 0) errors += ",";
        errors += "{\"index\":" + std::to_string(i) + ",\"field\":\"x\",\"reason\":\"bad\"}";
      } else {
        accepted_json.insert(records[i]);
      }
    }
    return {200, "{\"accepted\":" + std::to_string(records.size() - rejected) +
                     ",\"rejected\":" + std::to_string(rejected) + ",\"errors\":[" + errors + "]}"};
  }
};

TEST(LoadClientTest, SendsExactlyTheRequestedRecordsOverAllUrls) {
  FakeIngest a, b;
  TestServer sa([&](const auto& r) { return a(r); });
  TestServer sb([&](const auto& r) { return b(r); });
  LoadOptions o;
  o.urls = {sa.url(), sb.url()};
  o.records = 1050;
  o.batch = 100;
  o.concurrency = 4;
  o.generator = {.seed = 4, .duplicate_share = 0.1, .invalid_share = 0.05};
  auto stats = runLoad(o);
  ASSERT_TRUE(stats.isOk()) << stats.status().toString();
  EXPECT_EQ(stats->records_sent, 1050u);
  EXPECT_EQ(stats->requests, 11u);
  EXPECT_GT(a.requests, 0);
  EXPECT_GT(b.requests, 0);
  EXPECT_EQ(stats->accepted + stats->rejected, 1050u);
  EXPECT_EQ(stats->rejected, stats->invalid_sent);
  EXPECT_GT(stats->invalid_sent, 20u);
  EXPECT_GT(stats->duplicates_sent, 50u);
  EXPECT_EQ(stats->unexpected_accepts, 0u);
  EXPECT_EQ(stats->unexpected_rejects, 0u);
  EXPECT_EQ(stats->failed_records, 0u);
  EXPECT_EQ(stats->rejected_by_reason.at("x: bad"), stats->rejected);
  EXPECT_EQ(a.content_types, std::set<std::string>{"application/json"});

  // What the servers accepted is exactly the generator's stream: every valid
  // record, duplicates byte-identical, and accepted_unique names the originals.
  CustomerGenerator gen(o.generator);
  std::multiset<std::string> expected;
  std::vector<uint64_t> unique;
  for (uint64_t i = 0; i < 1050; ++i) {
    GeneratedRecord r = gen.generate(i);
    if (r.valid) expected.insert(boost::json::serialize(boost::json::parse(r.json)));
    if (gen.kindOf(i) == RecordKind::kValid) unique.push_back(i);
  }
  std::multiset<std::string> got = a.accepted_json;
  got.insert(b.accepted_json.begin(), b.accepted_json.end());
  EXPECT_EQ(got, expected);
  EXPECT_EQ(stats->accepted_unique, unique);

  auto json = boost::json::parse(stats->toJson()).as_object();
  EXPECT_EQ(json.at("records_sent").as_int64(), 1050);
  EXPECT_EQ(json.at("rejected_by_reason").as_object().at("x: bad").as_int64(),
            static_cast<int64_t>(stats->rejected));
}

TEST(LoadClientTest, BufferFullIsWaitedOutAndNothingIsLost) {
  FakeIngest ingest;
  ingest.answer_503_first = 3;
  TestServer s([&](const auto& r) { return ingest(r); });
  LoadOptions o;
  o.urls = {s.url()};
  o.records = 500;
  o.batch = 50;
  o.concurrency = 2;
  o.ndjson = true;
  auto stats = runLoad(o);
  ASSERT_TRUE(stats.isOk());
  EXPECT_EQ(stats->retries_503, 3u);
  EXPECT_EQ(stats->http_status.at(503), 3u);
  EXPECT_EQ(stats->accepted, 500u);
  EXPECT_EQ(stats->failed_records, 0u);
  EXPECT_EQ(ingest.accepted_json.size(), 500u);
  EXPECT_EQ(ingest.content_types, std::set<std::string>{"application/x-ndjson"});
}

TEST(LoadClientTest, OtherErrorsAreCountedAsFailedRecords) {
  TestServer s([](const auto&) { return Answer{400, "{\"error\":\"broken JSON\"}"}; });
  LoadOptions o;
  o.urls = {s.url()};
  o.records = 300;
  o.batch = 100;
  auto stats = runLoad(o);
  ASSERT_TRUE(stats.isOk());
  EXPECT_EQ(stats->http_errors, 3u);
  EXPECT_EQ(stats->failed_records, 300u);
  EXPECT_EQ(stats->accepted, 0u);
}

TEST(LoadClientTest, UnreachableAgentFailsAfterRetriesWithoutHanging) {
  LoadOptions o;
  o.urls = {"http://127.0.0.1:1"};
  o.records = 10;
  o.batch = 10;
  o.give_up_after = std::chrono::milliseconds(2500);
  const int64_t t0 = steadyMicros();
  auto stats = runLoad(o);
  ASSERT_TRUE(stats.isOk());
  EXPECT_EQ(stats->failed_records, 10u);
  // Retried with growing pauses (0.1, 0.2, ... s) until the budget was spent.
  EXPECT_GE(stats->transport_errors, 5u);
  EXPECT_LE(stats->transport_errors, 10u);
  EXPECT_GE(steadyMicros() - t0, 2'500'000);
  EXPECT_LT(steadyMicros() - t0, 10'000'000);
}

TEST(LoadClientTest, RateAndDurationBoundTheRun) {
  FakeIngest ingest;
  TestServer s([&](const auto& r) { return ingest(r); });
  LoadOptions o;
  o.urls = {s.url()};
  o.seconds = 1.0;
  o.rate = 1000;
  o.batch = 50;
  o.concurrency = 2;
  auto stats = runLoad(o);
  ASSERT_TRUE(stats.isOk());
  // About rate x seconds: pacing holds it down, the deadline stops it.
  EXPECT_GE(stats->records_sent, 600u);
  EXPECT_LE(stats->records_sent, 1100u);
  EXPECT_LT(stats->seconds, 3.0);
}

TEST(LoadClientTest, RejectsBadOptions) {
  LoadOptions o;
  EXPECT_EQ(runLoad(o).status().code(), Code::kInvalidArgument);
  o.urls = {"http://127.0.0.1:9"};
  EXPECT_EQ(runLoad(o).status().code(), Code::kInvalidArgument);  // no records or seconds
  o.records = 1;
  o.urls = {"ftp://x"};
  EXPECT_EQ(runLoad(o).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace branchline::loadgen
