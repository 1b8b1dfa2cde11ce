// TestClient and TlsTestClient (http_test_client.h, http_test_tls.h): the
// Beast/Asio code, compiled once for every test that uses them.
#include "shared/http/http_test_client.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "shared/http/http_test_tls.h"

namespace branchline::http::testing {

namespace bhttp = boost::beast::http;

std::string ClientResponse::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (beast::iequals(k, name)) return v;
  }
  return {};
}

// What TestClient asks of its connection, whatever the stream.
class TestClient::Impl {
 public:
  virtual ~Impl() = default;
  virtual beast::error_code connect(uint16_t port) = 0;
  virtual beast::error_code writeRaw(const std::string& bytes) = 0;
  virtual beast::error_code send(const std::string& method, const std::string& target,
                                 const std::string& body, const std::string& content_type,
                                 bool keep_alive) = 0;
  virtual std::optional<ClientResponse> read(beast::error_code* error) = 0;
  virtual bool waitClosed() = 0;
  // TLS only; a plain connection has nothing to do.
  virtual beast::error_code handshake() { return {}; }
  virtual const std::string& setupError() const {
    static const std::string none;
    return none;
  }
};

namespace {

// Over `Stream`: beast::tcp_stream or a stream wrapping one.
template <class Stream>
class StreamClient : public TestClient::Impl {
 public:
  // `stream_args...`: what Stream takes after the io_context (a TLS context).
  template <class... StreamArgs>
  explicit StreamClient(std::chrono::milliseconds deadline, StreamArgs&... stream_args)
      : deadline_(deadline), stream_(ioc_, stream_args...) {}

  beast::error_code connect(uint16_t port) override {
    beast::error_code result;
    lowest().expires_after(deadline_);
    lowest().async_connect(
        boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port),
        [&](beast::error_code ec) { result = ec; });
    run();
    return result;
  }

  beast::error_code writeRaw(const std::string& bytes) override {
    beast::error_code result;
    lowest().expires_after(deadline_);
    boost::asio::async_write(stream_, boost::asio::buffer(bytes),
                             [&](beast::error_code ec, size_t) { result = ec; });
    run();
    return result;
  }

  beast::error_code send(const std::string& method, const std::string& target,
                         const std::string& body, const std::string& content_type,
                         bool keep_alive) override {
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

  std::optional<ClientResponse> read(beast::error_code* error) override {
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

  bool waitClosed() override {
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

// Base-from-member: the TLS context must be complete before the stream (whose
// SSL object copies its settings) is made.
struct ClientTlsContext {
  ClientTlsContext(const std::string& ca_file, const std::string& cert_file,
                   const std::string& key_file) {
    beast::error_code ec;
    if (!ca_file.empty()) {
      tls_context.load_verify_file(ca_file, ec);
      tls_context.set_verify_mode(boost::asio::ssl::verify_peer);
    }
    if (!ec && !cert_file.empty()) tls_context.use_certificate_chain_file(cert_file, ec);
    if (!ec && !key_file.empty()) {
      tls_context.use_private_key_file(key_file, boost::asio::ssl::context::pem, ec);
    }
    if (ec) setup_error = ec.message();
  }
  boost::asio::ssl::context tls_context{boost::asio::ssl::context::tls_client};
  std::string setup_error;  // "" when the files loaded
};

class TlsClient : private ClientTlsContext,
                  public StreamClient<beast::ssl_stream<beast::tcp_stream>> {
 public:
  TlsClient(const std::string& ca_file, const std::string& cert_file, const std::string& key_file,
            std::chrono::milliseconds deadline)
      : ClientTlsContext(ca_file, cert_file, key_file), StreamClient(deadline, tls_context) {
    stream_.set_verify_callback(boost::asio::ssl::host_name_verification("127.0.0.1"));
  }

  const std::string& setupError() const override { return setup_error; }

  beast::error_code handshake() override {
    beast::error_code result;
    lowest().expires_after(deadline_);
    stream_.async_handshake(boost::asio::ssl::stream_base::client,
                            [&](beast::error_code ec) { result = ec; });
    run();
    return result;
  }
};

}  // namespace

TestClient::TestClient(std::chrono::milliseconds deadline)
    : impl_(std::make_unique<StreamClient<beast::tcp_stream>>(deadline)) {}
TestClient::TestClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TestClient::~TestClient() = default;

beast::error_code TestClient::connect(uint16_t port) { return impl_->connect(port); }
beast::error_code TestClient::writeRaw(const std::string& bytes) { return impl_->writeRaw(bytes); }
beast::error_code TestClient::send(const std::string& method, const std::string& target,
                                   const std::string& body, const std::string& content_type,
                                   bool keep_alive) {
  return impl_->send(method, target, body, content_type, keep_alive);
}
std::optional<ClientResponse> TestClient::read(beast::error_code* error) {
  return impl_->read(error);
}
std::optional<ClientResponse> TestClient::request(const std::string& method,
                                                  const std::string& target,
                                                  const std::string& body,
                                                  const std::string& content_type) {
  if (send(method, target, body, content_type)) return std::nullopt;
  return read();
}
bool TestClient::waitClosed() { return impl_->waitClosed(); }

TlsTestClient::TlsTestClient(const std::string& ca_file, const std::string& cert_file,
                             const std::string& key_file, std::chrono::milliseconds deadline)
    : TestClient(std::make_unique<TlsClient>(ca_file, cert_file, key_file, deadline)) {}
const std::string& TlsTestClient::setupError() const { return impl_->setupError(); }
beast::error_code TlsTestClient::handshake() { return impl_->handshake(); }
beast::error_code TlsTestClient::open(uint16_t port) {
  if (auto ec = connect(port)) return ec;
  return handshake();
}

}  // namespace branchline::http::testing
