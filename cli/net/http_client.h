// Loopback networking helpers for the `branchline` command and its tests: pick
// a free port, wait for a listener, and a small keep-alive HTTP/1.1 client
// (Boost.Beast; https:// through Boost.Asio SSL over OpenSSL). Every call is bounded by a timeout;
// none blocks forever, so a hung agent turns into an error the caller can report, not a hung CLI.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace branchline::cli {

// "http://host:port/path" or "https://host:port/path" split into parts.
struct Url {
  std::string host;
  uint16_t port = 80;        // 443 for https:// when the URL names none
  std::string target = "/";  // path and query; "/" when absent
  bool tls = false;          // https://
};
Result<Url> parseUrl(std::string_view url);

// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then
// released). Another process may take it before the caller binds it: callers
// that start servers on it must treat "address in use" as retryable.
Result<uint16_t> freeLoopbackPort();

// Returns OK once something accepts TCP connections on 127.0.0.1:port;
// kUnavailable when `timeout` passes first.
Status waitForTcp(uint16_t port, std::chrono::milliseconds timeout);

struct HttpResponse {
  int status = 0;
  std::string body;
  std::string retry_after;  // the Retry-After header, if any
};

// How a connection presents itself to the server.
struct HttpClientOptions {
  // Sent as `Authorization: Bearer <token>` on every request when not empty
  // (an agent's ingest token: topology.json's "ingest_token").
  std::string bearer_token;
  // HTTPS (an agent with [http] tls_cert_file). The server's certificate must
  // chain to `ca_file` (PEM; empty: the system's trusted CAs) and name the
  // host (DNS name or IP address) the connection was made to.
  bool tls = false;
  std::string ca_file;
  // A client certificate and its key (PEM), for an agent with [http] client_ca_file.
  std::string cert_file;
  std::string key_file;
};

// One keep-alive connection to one server. Reconnects transparently when the
// server closed an idle connection. Not thread-safe: one per thread.
class HttpConnection {
 public:
  HttpConnection(std::string host, uint16_t port, HttpClientOptions options = {});
  ~HttpConnection();
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  // kUnavailable on connect/IO failure, a refused TLS handshake or timeout (the
  // request may or may not have reached the server); kInvalidArgument when the
  // TLS files cannot be loaded; otherwise the response, whatever its status.
  Result<HttpResponse> request(std::string_view method, std::string_view target,
                               std::string_view content_type, std::string_view body,
                               std::chrono::milliseconds timeout);
  void close();
  // Loads what the connection needs before its first request (for https the
  // CA, certificate and key files): kInvalidArgument naming a file that does
  // not load. request() does the same on first use.
  Status prepare();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One GET on a fresh connection (https:// with the system's trusted CAs).
Result<HttpResponse> httpGet(std::string_view url, std::chrono::milliseconds timeout);

}  // namespace branchline::cli
