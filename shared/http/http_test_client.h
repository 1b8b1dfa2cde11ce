// A minimal HTTP/1.1 client for tests (Boost.Beast over loopback). Every
// operation is bounded by a deadline, so a server bug fails a test instead of
// hanging it. Test-only (library bl_http_testing), not part of bl_http. The
// TLS variant is in http_test_tls.h.
//
// The Beast/Asio code lives in http_test_client.cc behind this plain
// interface: instantiated in a header it was compiled again by every test that
// used it, which under ASan + UBSan cost minutes of CI time per test.
#pragma once

#include <boost/beast/core/error.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace branchline::http::testing {

namespace beast = boost::beast;

struct ClientResponse {
  int status = 0;
  std::string body;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  bool keep_alive = false;
  // The first header named `name` (case-insensitive); "" when absent.
  std::string header(const std::string& name) const;
};

class TestClient {
 public:
  explicit TestClient(std::chrono::milliseconds deadline = std::chrono::seconds(10));
  virtual ~TestClient();
  TestClient(const TestClient&) = delete;
  TestClient& operator=(const TestClient&) = delete;

  beast::error_code connect(uint16_t port);

  // Writes raw bytes (for malformed, pipelined or partial requests).
  beast::error_code writeRaw(const std::string& bytes);

  beast::error_code send(const std::string& method, const std::string& target,
                         const std::string& body = {}, const std::string& content_type = {},
                         bool keep_alive = true);

  // Reads one response; nullopt (with `error` set) when the connection ends or times out.
  std::optional<ClientResponse> read(beast::error_code* error = nullptr);

  std::optional<ClientResponse> request(const std::string& method, const std::string& target,
                                        const std::string& body = {},
                                        const std::string& content_type = {});

  // True when the server closed the connection (EOF or reset) before the deadline.
  bool waitClosed();

  // The connection, over a plain or a TLS stream (http_test_client.cc).
  class Impl;

 protected:
  explicit TestClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::http::testing
