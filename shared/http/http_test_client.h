// A minimal HTTP/1.1 client for tests (Boost.Beast over loopback). Every
// operation is bounded by a deadline, so a server bug fails a test instead of
// hanging it. Test-only: header-only, not part of bl_http. The TLS variant is
// in http_test_tls.h.
#pragma once

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace branchline::http::testing {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

struct ClientResponse {
  int status = 0;
  std::string body;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  bool keep_alive = false;
  std::string header(const std::string& name) const {
    for (const auto& [k, v] : headers) {
      if (beast::iequals(k, name)) return v;
    }
    return {};
  }
};

// Over `Stream`: beast::tcp_stream (TestClient) or a stream wrapping one.
template <class Stream>
class BasicTestClient {
 public:
  // `stream_args...`: what Stream takes after the io_context (a TLS context).
  template <class... StreamArgs>
  explicit BasicTestClient(std::chrono::milliseconds deadline, StreamArgs&... stream_args)
      : deadline_(deadline), stream_(ioc_, stream_args...) {}

  beast::error_code connect(uint16_t port) {
    beast::error_code result;
    lowest().expires_after(deadline_);
    lowest().async_connect(
        boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port),
        [&](beast::error_code ec) { result = ec; });
    run();
    return result;
  }

  // Writes raw bytes (for malformed, pipelined or partial requests).
  beast::error_code writeRaw(const std::string& bytes) {
    beast::error_code result;
    lowest().expires_after(deadline_);
    boost::asio::async_write(stream_, boost::asio::buffer(bytes),
                             [&](beast::error_code ec, size_t) { result = ec; });
    run();
    return result;
  }

  beast::error_code send(const std::string& method, const std::string& target,
                         const std::string& body = {}, const std::string& content_type = {},
                         bool keep_alive = true) {
    bhttp::request<bhttp::string_body> req;
    req.method_string(method);
    req.target(target);
    req.version(11);
    req.set(bhttp::field::host, "127.0.0.1");
    if (!content_type.empty()) req.set(bhttp::field::content_type, content_type);
    req.body() = body;
    req.keep_alive(keep_alive);
    req.prepare_payload();
    beast::error_code result;
    lowest().expires_after(deadline_);
    bhttp::async_write(stream_, req, [&](beast::error_code ec, size_t) { result = ec; });
    run();
    return result;
  }

  // Reads one response; nullopt (with `error` set) when the connection ends or times out.
  std::optional<ClientResponse> read(beast::error_code* error = nullptr) {
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(64 << 20);
    beast::error_code result;
    lowest().expires_after(deadline_);
    bhttp::async_read(stream_, buffer_, parser, [&](beast::error_code ec, size_t) { result = ec; });
    run();
    if (error) *error = result;
    if (result) return std::nullopt;
    auto msg = parser.release();
    ClientResponse out;
    out.status = static_cast<int>(msg.result_int());
    out.body = std::move(msg.body());
    out.keep_alive = msg.keep_alive();
    for (const auto& f : msg) {
      out.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    }
    out.content_type = out.header("Content-Type");
    return out;
  }

  std::optional<ClientResponse> request(const std::string& method, const std::string& target,
                                        const std::string& body = {},
                                        const std::string& content_type = {}) {
    if (send(method, target, body, content_type)) return std::nullopt;
    return read();
  }

  // True when the server closed the connection (EOF or reset) before the deadline.
  bool waitClosed() {
    char byte;
    beast::error_code result;
    lowest().expires_after(deadline_);
    stream_.async_read_some(boost::asio::buffer(&byte, 1),
                            [&](beast::error_code ec, size_t) { result = ec; });
    run();
    return result && result != beast::error::timeout;
  }

 protected:
  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }
  void run() {
    ioc_.restart();
    ioc_.run();
  }

  std::chrono::milliseconds deadline_;
  boost::asio::io_context ioc_;
  Stream stream_;
  beast::flat_buffer buffer_;
};

class TestClient : public BasicTestClient<beast::tcp_stream> {
 public:
  explicit TestClient(std::chrono::milliseconds deadline = std::chrono::seconds(10))
      : BasicTestClient(deadline) {}
};

}  // namespace branchline::http::testing
