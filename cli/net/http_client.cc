#include "cli/net/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>
#include <cstring>
#include <optional>
#include <thread>
#include <variant>

#include "shared/core/clock.h"

namespace branchline::cli {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

Result<Url> parseUrl(std::string_view url) {
  constexpr std::string_view kHttp = "http://", kHttps = "https://";
  Url out;
  std::string_view rest;
  if (url.substr(0, kHttp.size()) == kHttp) {
    rest = url.substr(kHttp.size());
  } else if (url.substr(0, kHttps.size()) == kHttps) {
    rest = url.substr(kHttps.size());
    out.tls = true;
    out.port = 443;
  } else {
    return Status::invalid("url `" + std::string(url) +
                           "`: only http:// and https:// URLs are supported");
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
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
  using TlsStream = beast::ssl_stream<beast::tcp_stream>;

  std::string host;
  uint16_t port;
  std::string authorization;  // "Bearer <token>", or "" for none
  HttpClientOptions options;
  asio::io_context ioc;
  std::optional<asio::ssl::context> tls;  // set once, on the first https connection
  // No connection, a plain one, or a TLS one.
  std::variant<std::monostate, beast::tcp_stream, TlsStream> stream;
  beast::flat_buffer buffer;

  bool connected() const { return !std::holds_alternative<std::monostate>(stream); }
  std::string scheme() const { return options.tls ? "https://" : "http://"; }
  std::string host_header;  // host, with :port unless it is the scheme's default

  // The TLS context: verification on, the CA and the client certificate loaded.
  Status makeTlsContext() {
    if (tls) return Status::ok();
    asio::ssl::context ctx(asio::ssl::context::tls_client);
    beast::error_code ec;
    ctx.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                        asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                        asio::ssl::context::no_tlsv1_1,
                    ec);
    ctx.set_verify_mode(asio::ssl::verify_peer, ec);
    if (options.ca_file.empty()) {
      ctx.set_default_verify_paths(ec);
    } else {
      ctx.load_verify_file(options.ca_file, ec);
    }
    if (ec) return Status::invalid("TLS CA file `" + options.ca_file + "`: " + ec.message());
    if (options.cert_file.empty() != options.key_file.empty()) {
      return Status::invalid("a TLS client certificate needs both its certificate and key file");
    }
    if (!options.cert_file.empty()) {
      ctx.use_certificate_chain_file(options.cert_file, ec);
      if (ec) {
        return Status::invalid("TLS certificate file `" + options.cert_file + "`: " + ec.message());
      }
      ctx.use_private_key_file(options.key_file, asio::ssl::context::pem, ec);
      if (ec) return Status::invalid("TLS key file `" + options.key_file + "`: " + ec.message());
    }
    tls.emplace(std::move(ctx));
    return Status::ok();
  }

  static beast::tcp_stream& tcpOf(beast::tcp_stream& s) { return s; }
  static beast::tcp_stream& tcpOf(TlsStream& s) { return beast::get_lowest_layer(s); }

  // Connects (and for https shakes hands) within `timeout`.
  Status connect(std::chrono::milliseconds timeout) {
    buffer.clear();
    beast::error_code ec;
    tcp::resolver resolver(ioc);
    auto endpoints = resolver.resolve(host, std::to_string(port), ec);
    if (ec) return fail("resolve", ec);
    if (options.tls) {
      BL_RETURN_IF_ERROR(makeTlsContext());
      TlsStream& s = stream.emplace<TlsStream>(ioc, *tls);
      // SNI (never for an IP address, RFC 6066 §3), and the name the
      // certificate must carry (X509_check_host or _ip).
      beast::error_code not_ip;
      asio::ip::make_address(host, not_ip);
      if (not_ip && !SSL_set_tlsext_host_name(s.native_handle(), host.c_str())) {
        return fail("tls", beast::error_code(static_cast<int>(::ERR_get_error()),
                                             asio::error::get_ssl_category()));
      }
      s.set_verify_callback(asio::ssl::host_name_verification(host));
    } else {
      stream.emplace<beast::tcp_stream>(ioc);
    }
    return std::visit(
        [&](auto& s) -> Status {
          if constexpr (std::is_same_v<std::decay_t<decltype(s)>, std::monostate>) {
            return Status::internal("no stream");
          } else {
            beast::tcp_stream& tcp_layer = tcpOf(s);
            tcp_layer.expires_after(timeout);
            tcp_layer.async_connect(endpoints,
                                    [&ec](beast::error_code e, const tcp::endpoint&) { ec = e; });
            ioc.run();
            if (ec) return fail("connect", ec);
            tcp_layer.socket().set_option(tcp::no_delay(true), ec);
            ioc.restart();
            if constexpr (std::is_same_v<std::decay_t<decltype(s)>, TlsStream>) {
              tcp_layer.expires_after(timeout);
              s.async_handshake(asio::ssl::stream_base::client,
                                [&ec](beast::error_code e) { ec = e; });
              ioc.run();
              if (ec) return fail("tls handshake", ec);
              ioc.restart();
            }
            return Status::ok();
          }
        },
        stream);
  }

  // Runs one exchange on the current (or a new) connection. `stale` is set when
  // the failure looks like a kept-alive connection the server had already closed.
  Result<HttpResponse> exchange(std::string_view method, std::string_view target,
                                std::string_view content_type, std::string_view body,
                                std::chrono::milliseconds timeout, bool& stale) {
    const bool reused = connected();
    stale = false;
    ioc.restart();
    if (!connected()) BL_RETURN_IF_ERROR(connect(timeout));

    http::request<http::span_body<const char>> req;
    req.method_string(beast::string_view(method.data(), method.size()));
    req.target(beast::string_view(target.data(), target.size()));
    req.version(11);
    req.set(http::field::host, host_header);
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
    beast::error_code ec;
    std::visit(
        [&](auto& s) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(s)>, std::monostate>) {
            tcpOf(s).expires_after(timeout);
            http::async_write(s, req, [&](beast::error_code e, size_t) {
              ec = e;
              if (ec) return;
              http::async_read(s, buffer, parser, [&ec](beast::error_code e2, size_t) { ec = e2; });
            });
            ioc.run();
          }
        },
        stream);
    if (ec) {
      stale = reused && (ec == http::error::end_of_stream || ec == asio::error::eof ||
                         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
                         ec == asio::ssl::error::stream_truncated);
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
    return Status::unavailable(std::string(what) + " " + scheme() + host + ":" +
                               std::to_string(port) + ": " + ec.message());
  }

  // Closes the socket without a TLS close_notify: the server treats a client
  // that leaves as done either way, and waiting for its answer would cost a
  // round trip per reconnect.
  void reset() {
    std::visit(
        [](auto& s) {
          if constexpr (!std::is_same_v<std::decay_t<decltype(s)>, std::monostate>) {
            beast::error_code ignored;
            tcpOf(s).socket().shutdown(tcp::socket::shutdown_both, ignored);
            tcpOf(s).socket().close(ignored);
          }
        },
        stream);
    stream.emplace<std::monostate>();
  }
};

HttpConnection::HttpConnection(std::string host, uint16_t port, HttpClientOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->host = std::move(host);
  impl_->port = port;
  if (!options.bearer_token.empty()) impl_->authorization = "Bearer " + options.bearer_token;
  impl_->options = std::move(options);
  const bool default_port = impl_->port == (impl_->options.tls ? 443 : 80);
  impl_->host_header = default_port ? impl_->host : impl_->host + ":" + std::to_string(impl_->port);
}

Status HttpConnection::prepare() {
  return impl_->options.tls ? impl_->makeTlsContext() : Status::ok();
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
  HttpConnection conn(parsed->host, parsed->port, HttpClientOptions{.tls = parsed->tls});
  return conn.request("GET", parsed->target, "", "", timeout);
}

}  // namespace branchline::cli
