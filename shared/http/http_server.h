// A small asynchronous HTTP/1.1 server (Boost.Beast) for ingest, health and
// metrics. It owns the sockets and enforces transport limits (header and body
// size, deadlines and a rate floor for slow clients, connection counts, all in
// ServerOptions) so a hostile or broken client costs a bounded amount of
// memory and time and never holds a connection slot for long; handlers see whole
// requests and answer through a callback that may be called later and from
// any thread (e.g. once the agent's buffer has committed). With a certificate
// and key it serves HTTPS instead (TLS 1.2 or later), and with a client CA
// bundle it admits only clients whose certificate chains to it (mutual TLS).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shared/core/metrics.h"
#include "shared/core/status.h"

namespace branchline::http {

struct Request {
  std::string method;               // "GET", "POST", ...
  std::string target;               // path and query, as sent: "/v1/records/customer"
  std::string content_type;         // media type only, lower-cased, parameters stripped
  std::string content_type_header;  // the Content-Type value as sent (multipart's boundary)
  std::string authorization;        // the Authorization value as sent; "" when absent
  std::string origin;               // the Origin value (browsers, CORS); "" when absent
  // A CORS preflight's Access-Control-Request-Method / -Headers; "" when absent.
  std::string access_control_request_method;
  std::string access_control_request_headers;
  std::string peer;  // the client's IP address ("127.0.0.1"), for rate limits and logs
  // TLS with ServerOptions::client_ca_file: the client's certificate chains to
  // it (always so: the handshake fails otherwise), and its subject's common
  // name. false and "" over plain HTTP or TLS without client certificates.
  bool client_verified = false;
  std::string client_subject;
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

// Transport limits (README "Input limits"). Every refusal is counted in
// `refused` under its reason label and, where an answer is possible, answered
// with a JSON error: body_too_large (413), header_too_large (431),
// malformed_http (400), header_timeout / body_timeout / body_too_slow (408),
// too_many_connections / too_many_client_connections (503), and, with no
// answer possible, tls_handshake_failed (a TLS handshake that failed or did not
// finish within header_timeout: plain HTTP on the TLS port, a client
// certificate missing or not from client_ca_file). Framing is strict
// (request_framing.h); after any refusal the connection is closed, never read
// for another request.
struct ServerOptions {
  std::string listen_address = "127.0.0.1";
  uint16_t port = 0;                   // 0: pick a free port (see Server::port())
  size_t max_body_bytes = 8 << 20;     // past it: 413, before reading the rest
  size_t max_header_bytes = 16 << 10;  // request line and header fields; past it: 431
  // A new connection must deliver a whole request header within this; on a
  // kept-alive connection the clock starts at the request's first byte.
  std::chrono::milliseconds header_timeout{10000};
  // The whole body must arrive within this after the header ...
  std::chrono::milliseconds body_timeout{60000};
  // ... and, after its first second, at an average of at least this many
  // bytes per second (0: no rate floor), so a trickling client is cut early.
  size_t min_body_bytes_per_second = 1024;
  // A kept-alive connection with no request started is closed after this (no answer).
  std::chrono::milliseconds idle_timeout{30000};
  std::chrono::milliseconds write_timeout{30000};  // sending one answer
  size_t max_connections = 256;                    // open connections; past it: 503
  size_t max_connections_per_client = 128;         // from one peer address; 0: no cap
  // Beyond max_connections, up to this many more connections (at most 4 from
  // one peer address) are admitted for a single GET of one of reserved_paths,
  // so health checks and scrapes get through while ingest holds every slot.
  // Anything else on such a connection: 503 too_many_connections, closed.
  size_t reserved_connections = 16;
  std::vector<std::string> reserved_paths = {"/healthz", "/metrics"};  // query ignored
  int threads = 2;
  // HTTPS: a PEM certificate (chain) and its PEM private key, both or
  // neither; "" and "": plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA bundle; set (HTTPS only), every client must present a certificate
  // that chains to it or its handshake fails (mutual TLS, see Request).
  std::string client_ca_file;
  // Optional metrics, owned by the caller and outliving the server.
  LabeledCounter* refused = nullptr;  // refusals by reason (see above)
  Gauge* connections = nullptr;       // connections open now
};

class Server {
 public:
  // Binds and starts serving on its own threads. kUnavailable if the port is
  // taken; kInvalidArgument for a bad address, or TLS options that do not fit
  // (one of the certificate and key, a client CA without them) or files that
  // cannot be read or used (not PEM, a key that is not the certificate's),
  // naming the option, the file and OpenSSL's reason.
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
