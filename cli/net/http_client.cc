#include "cli/net/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <cstring>
#include <optional>
#include <thread>

#include "shared/core/clock.h"

namespace branchline::cli {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

Result<Url> parseUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return Status::invalid("url `" + std::string(url) + "`: only http:// URLs are supported");
  }
  std::string_view rest = url.substr(kScheme.size());
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  Url out;
  out.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  size_t colon = authority.rfind(':');
  if (colon == std::string_view::npos) {
    out.host = std::string(authority);
  } else {
    out.host = std::string(authority.substr(0, colon));
    std::string_view port_text = authority.substr(colon + 1);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
      return Status::invalid("url `" + std::string(url) + "`: bad port");
    }
    out.port = static_cast<uint16_t>(port);
  }
  if (out.host.empty()) return Status::invalid("url `" + std::string(url) + "`: no host");
  return out;
}

Result<uint16_t> freeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::internal(std::string("socket: ") + strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  if (rc == 0) rc = ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int err = errno;
  ::close(fd);
  if (rc != 0) return Status::internal(std::string("bind 127.0.0.1:0: ") + strerror(err));
  return static_cast<uint16_t>(ntohs(addr.sin_port));
}

Status waitForTcp(uint16_t port, std::chrono::milliseconds timeout) {
  const int64_t deadline = steadyMicros() + timeout.count() * 1000;
  while (true) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Status::internal(std::string("socket: ") + strerror(errno));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::close(fd);
    if (rc == 0) return Status::ok();
    if (steadyMicros() >= deadline) {
      return Status::unavailable("nothing listens on 127.0.0.1:" + std::to_string(port) +
                                 " after " + std::to_string(timeout.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

struct HttpConnection::Impl {
  std::string host;
  uint16_t port;
  std::string authorization;  // "Bearer <token>", or "" for none
  asio::io_context ioc;
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

  // Runs one exchange on the current (or a new) connection. `stale` is set when
  // the failure looks like a kept-alive connection the server had already closed.
  Result<HttpResponse> exchange(std::string_view method, std::string_view target,
                                std::string_view content_type, std::string_view body,
                                std::chrono::milliseconds timeout, bool& stale) {
    const bool reused = stream.has_value();
    stale = false;
    beast::error_code ec;
    ioc.restart();
    if (!stream) {
      stream.emplace(ioc);
      buffer.clear();
      tcp::resolver resolver(ioc);
      auto endpoints = resolver.resolve(host, std::to_string(port), ec);
      if (ec) return fail("resolve", ec);
      stream->expires_after(timeout);
      stream->async_connect(endpoints,
                            [&ec](beast::error_code e, const tcp::endpoint&) { ec = e; });
      ioc.run();
      if (ec) return fail("connect", ec);
      stream->socket().set_option(tcp::no_delay(true), ec);
      ioc.restart();
    }

    http::request<http::span_body<const char>> req;
    req.method_string(beast::string_view(method.data(), method.size()));
    req.target(beast::string_view(target.data(), target.size()));
    req.version(11);
    req.set(http::field::host, host);
    req.keep_alive(true);
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    if (!content_type.empty()) {
      req.set(http::field::content_type,
              beast::string_view(content_type.data(), content_type.size()));
    }
    req.body() = boost::span<const char>(body.data(), body.size());
    req.prepare_payload();

    http::response_parser<http::string_body> parser;
    parser.body_limit(256u << 20);
    stream->expires_after(timeout);
    http::async_write(*stream, req, [&](beast::error_code e, size_t) {
      ec = e;
      if (ec) return;
      http::async_read(*stream, buffer, parser, [&ec](beast::error_code e2, size_t) { ec = e2; });
    });
    ioc.run();
    if (ec) {
      stale = reused && (ec == http::error::end_of_stream || ec == asio::error::eof ||
                         ec == asio::error::connection_reset || ec == asio::error::broken_pipe);
      return fail("request", ec);
    }

    auto& res = parser.get();
    HttpResponse out;
    out.status = static_cast<int>(res.result_int());
    out.body = std::move(res.body());
    if (auto it = res.find(http::field::retry_after); it != res.end()) {
      out.retry_after = std::string(it->value());
    }
    if (!res.keep_alive()) reset();
    return out;
  }

  Status fail(const char* what, const beast::error_code& ec) {
    reset();
    return Status::unavailable(std::string(what) + " http://" + host + ":" + std::to_string(port) +
                               ": " + ec.message());
  }

  void reset() {
    if (stream) {
      beast::error_code ignored;
      stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream->socket().close(ignored);
      stream.reset();
    }
  }
};

HttpConnection::HttpConnection(std::string host, uint16_t port, HttpClientOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->host = std::move(host);
  impl_->port = port;
  if (!options.bearer_token.empty()) impl_->authorization = "Bearer " + options.bearer_token;
}

HttpConnection::~HttpConnection() { close(); }

void HttpConnection::close() { impl_->reset(); }

Result<HttpResponse> HttpConnection::request(std::string_view method, std::string_view target,
                                             std::string_view content_type, std::string_view body,
                                             std::chrono::milliseconds timeout) {
  bool stale = false;
  auto res = impl_->exchange(method, target, content_type, body, timeout, stale);
  // A kept-alive connection the server has since closed fails on first use;
  // that says nothing about the server, so try once on a fresh connection.
  if (!res.isOk() && stale) {
    res = impl_->exchange(method, target, content_type, body, timeout, stale);
  }
  return res;
}

Result<HttpResponse> httpGet(std::string_view url, std::chrono::milliseconds timeout) {
  auto parsed = parseUrl(url);
  if (!parsed.isOk()) return parsed.status();
  HttpConnection conn(parsed->host, parsed->port);
  return conn.request("GET", parsed->target, "", "", timeout);
}

}  // namespace branchline::cli
