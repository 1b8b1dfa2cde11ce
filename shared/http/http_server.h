// A small asynchronous HTTP/1.1 server (Boost.Beast) for ingest, health and
// metrics. It owns the sockets and enforces transport limits (header and body
// size, read timeouts for slow clients, connection count); handlers see whole
// requests and answer through a callback that may be called later and from
// any thread (e.g. once the agent's buffer has committed).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shared/core/status.h"

namespace branchline::http {

struct Request {
  std::string method;        // "GET", "POST", ...
  std::string target;        // path and query, as sent: "/v1/records/customer"
  std::string content_type;  // media type only, lower-cased, parameters stripped
  std::string body;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra, e.g. Retry-After
};

// Calls back exactly once. Safe to call from any thread.
using Respond = std::function<void(Response)>;
using Handler = std::function<void(Request&&, Respond)>;

struct ServerOptions {
  std::string listen_address = "127.0.0.1";
  uint16_t port = 0;                              // 0: pick a free port (see Server::port())
  size_t max_body_bytes = 8 << 20;                // past it: 413, before reading the rest
  size_t max_header_bytes = 16 << 10;             // past it: 431
  std::chrono::milliseconds read_timeout{30000};  // whole request; slow clients are cut
  size_t max_connections = 256;
  int threads = 2;
};

class Server {
 public:
  // Binds and starts serving on its own threads. kUnavailable if the port is taken.
  static Result<std::unique_ptr<Server>> start(ServerOptions options, Handler handler);
  ~Server();  // stops: closes the listener and every connection, joins the threads

  uint16_t port() const;
  void stop();

 private:
  Server();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Convenience for handlers: {"error": message} with the given status.
Response jsonError(int status, const std::string& message);

}  // namespace branchline::http
