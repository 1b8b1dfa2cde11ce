#include "shared/http/http_server.h"

#include <algorithm>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "shared/core/log.h"
#include "shared/http/request_framing.h"

// TLS is Boost.Asio SSL over OpenSSL rather than mbedTLS (which the rest of the
// tree uses for randomness and ECDSA): Beast's ssl_stream is a drop-in stream
// for the session code below, where mbedTLS would need a hand-written
// asynchronous stream adapter, and OpenSSL's verifier is the one the broker
// (Mosquitto) already trusts with the same certificates.
#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace branchline::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

// After a 413/431/400 the peer may still be sending; closing at once with unread
// bytes makes the kernel send RST, and many clients then lose our answer. We
// shut down our side and discard what arrives for at most this long.
constexpr std::chrono::milliseconds kMaxLingerDrain{2000};
constexpr size_t kDrainChunk = 64 << 10;
// Of ServerOptions::reserved_connections, what one peer address may hold: a
// few slow connections from each of a few addresses cannot take them all.
constexpr size_t kMaxReservedPerClient = 4;
// A TLS read is a composed operation (several socket reads per record), so a
// cancel from the deadline can land between two of them and be missed; past
// this much longer the connection is closed without an answer.
constexpr std::chrono::milliseconds kTlsCancelGrace{1000};

std::string lowerMediaType(std::string_view value) {
  size_t end = value.find(';');
  std::string_view media = value.substr(0, end);
  while (!media.empty() && (media.front() == ' ' || media.front() == '\t')) media.remove_prefix(1);
  while (!media.empty() && (media.back() == ' ' || media.back() == '\t')) media.remove_suffix(1);
  std::string out(media);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// What Core and the Respond callbacks know of a connection, whatever its
// stream (plain TCP or TLS): the typed Session<Stream> below does the rest.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Called from any thread by the Respond of request `id`.
  virtual void deliver(uint64_t id, Response response) = 0;
  // Closes at once, mid-request or not (Server::stop).
  virtual void closeFromServer() = 0;
};

// State shared by the server, its sessions and every outstanding Respond. It
// outlives the Server object when a handler keeps a Respond after shutdown; the
// `stopped` flag (checked under the mutex) then turns late answers into no-ops.
struct Core {
  ServerOptions options;
  Handler handler;
  std::optional<asio::ssl::context> tls;  // set: every connection is TLS
  std::mutex mutex;
  bool stopped = false;
  std::unordered_map<SessionBase*, std::shared_ptr<SessionBase>> sessions;  // owns live ones
  std::unordered_map<std::string, size_t> per_client;           // open connections by peer
  std::unordered_map<std::string, size_t> reserved_per_client;  // reserved slots by peer
  size_t reserved_open = 0;

  // Why a connection was not admitted; nullptr when it was, with `reserved`
  // telling whether it took one of the reserved slots past max_connections.
  const char* admit(const std::shared_ptr<SessionBase>& s, const std::string& peer,
                    bool& reserved) {
    std::lock_guard lock(mutex);
    if (stopped) return "too_many_connections";
    reserved = sessions.size() - reserved_open >= options.max_connections;
    if (reserved) {
      auto r = reserved_per_client.find(peer);
      size_t peer_reserved = r == reserved_per_client.end() ? 0 : r->second;
      if (reserved_open >= options.reserved_connections || peer_reserved >= kMaxReservedPerClient) {
        return "too_many_connections";
      }
    }
    size_t& mine = per_client[peer];
    if (options.max_connections_per_client != 0 && mine >= options.max_connections_per_client) {
      if (mine == 0) per_client.erase(peer);
      return "too_many_client_connections";
    }
    ++mine;
    if (reserved) {
      ++reserved_open;
      ++reserved_per_client[peer];
    }
    sessions.emplace(s.get(), s);
    if (options.connections) options.connections->set(static_cast<int64_t>(sessions.size()));
    return nullptr;
  }
  void remove(SessionBase* s, const std::string& peer, bool reserved) {
    std::shared_ptr<SessionBase> keep;  // destroyed outside the lock
    {
      std::lock_guard lock(mutex);
      auto it = sessions.find(s);
      if (it == sessions.end()) return;
      keep = std::move(it->second);
      sessions.erase(it);
      auto c = per_client.find(peer);
      if (c != per_client.end() && --c->second == 0) per_client.erase(c);
      if (reserved) {
        --reserved_open;
        if (auto r = reserved_per_client.find(peer); --r->second == 0) reserved_per_client.erase(r);
      }
      if (options.connections) options.connections->set(static_cast<int64_t>(sessions.size()));
    }
  }
  void countRefusal(const char* reason) {
    if (options.refused) options.refused->with(reason).inc();
  }
};

// The subject's common name of a verified peer certificate; "" when it has none.
std::string commonName(X509* cert) {
  X509_NAME* name = X509_get_subject_name(cert);
  int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return {};
  unsigned char* utf8 = nullptr;
  int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index)));
  if (n < 0) return {};
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// One connection over `Stream` (PlainStream or TlsStream). Timeouts, limits and
// keep-alive act on the lowest layer (the TCP socket), so both behave alike;
// TLS adds a handshake before the first request, bounded by header_timeout.
template <class Stream>
class Session : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;

  // `tls...`: the server's ssl::context, for a TlsStream.
  template <class... Tls>
  Session(tcp::socket&& socket, std::shared_ptr<Core> core, Tls&... tls)
      : stream_(std::move(socket), tls...), timer_(stream_.get_executor()), core_(std::move(core)) {
    beast::error_code ec;
    auto endpoint = lowest().socket().remote_endpoint(ec);
    if (!ec) peer_ = endpoint.address().to_string();
  }

  const std::string& peer() const { return peer_; }
  // Before start(): this connection holds a reserved slot (ServerOptions::reserved_paths only).
  void markReserved() { reserved_ = true; }

  void start() {
    asio::dispatch(stream_.get_executor(), [self = this->shared_from_this()] {
      if constexpr (kTls) {
        self->handshake();
      } else {
        self->readHeader();
      }
    });
  }

  void deliver(uint64_t id, Response response) override {
    asio::post(stream_.get_executor(),
               [self = this->shared_from_this(), id, r = std::move(response)]() mutable {
                 self->write(id, std::move(r));
               });
  }

  // Answers `status` and closes without a handler (limits, malformed input,
  // overload); `reason` is the refusal's metric label.
  void rejectAndClose(int status, const char* reason, const std::string& message) {
    core_->countRefusal(reason);
    asio::dispatch(stream_.get_executor(), [self = this->shared_from_this(), status, message] {
      self->disarm();
      self->keep_alive_ = false;
      if (!self->handshaken_) {
        // Refused on admission: a TLS client can read the 503 only once the
        // handshake is done, and that is bounded like any other.
        self->refusal_ = jsonError(status, message);
        return self->handshake();
      }
      self->awaiting_id_ = ++self->next_id_;
      self->write(self->awaiting_id_, jsonError(status, message));
    });
  }

  void closeFromServer() override {
    asio::post(stream_.get_executor(), [self = this->shared_from_this()] { self->close(); });
  }

 private:
  using Clock = std::chrono::steady_clock;
  // What the deadline timer is guarding.
  // kCancelled: a TLS read was cancelled by a deadline and has not returned yet.
  enum class Phase { kNone, kHandshake, kIdle, kHeader, kBody, kCancelled };

  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }

  // TLS only: the handshake, then the first request (or a refusal's answer).
  // A client that fails it or is still at it after header_timeout is closed
  // without an answer, since none can reach it.
  void handshake() {
    if constexpr (kTls) {
      arm(Clock::now() + core_->options.header_timeout, Phase::kHandshake);
      lowest().expires_never();
      stream_.async_handshake(
          asio::ssl::stream_base::server,
          [self = this->shared_from_this()](beast::error_code ec) { self->onHandshake(ec); });
    }
  }

  void onHandshake(beast::error_code ec) {
    if (closed_) return;  // the deadline closed it and counted the refusal
    disarm();
    if (ec) return refuseHandshake();
    handshaken_ = true;
    if constexpr (kTls) {
      // Only requested (and then required) with client_ca_file, so a
      // certificate here passed verify_peer against that bundle.
      SSL* ssl = stream_.native_handle();
      if (X509* cert = SSL_get0_peer_certificate(ssl);
          cert != nullptr && SSL_get_verify_result(ssl) == X509_V_OK) {
        client_verified_ = true;
        client_subject_ = commonName(cert);
      }
    }
    if (refusal_) {
      awaiting_id_ = ++next_id_;
      Response refusal = std::move(*refusal_);
      refusal_.reset();
      return write(awaiting_id_, std::move(refusal));
    }
    readHeader();
  }

  void refuseHandshake() {
    // A connection refused on admission is already counted under that reason.
    if (!refusal_) core_->countRefusal("tls_handshake_failed");
    close();
  }

  // Deadlines run on our own timer rather than tcp_stream's: its timeout
  // closes the socket, and a client cut for being slow should still get a 408
  // saying why.
  void arm(Clock::time_point at, Phase phase) {
    phase_ = phase;
    deadline_ = at;
    timer_.expires_at(at);
    timer_.async_wait(
        [self = this->shared_from_this(), gen = ++timer_generation_](beast::error_code ec) {
          if (ec || gen != self->timer_generation_ || self->closed_) return;
          self->onDeadline();
        });
  }
  void disarm() {
    phase_ = Phase::kNone;
    ++timer_generation_;
    timer_.cancel();
  }

  void onDeadline() {
    if (phase_ == Phase::kCancelled) return close();
    timed_out_ = phase_;
    phase_ = Phase::kNone;
    if (timed_out_ == Phase::kIdle) return close();  // an idle keep-alive: nobody is waiting
    if (timed_out_ == Phase::kHandshake) return refuseHandshake();
    // The pending read completes with operation_aborted and answers 408 there.
    beast::error_code ignored;
    lowest().socket().cancel(ignored);
    if constexpr (kTls) arm(Clock::now() + kTlsCancelGrace, Phase::kCancelled);
  }

  void onTimedOut() {
    const auto& o = core_->options;
    if (timed_out_ == Phase::kHeader) {
      return rejectAndClose(
          408, "header_timeout",
          "request header not complete within " + std::to_string(o.header_timeout.count()) + " ms");
    }
    if (deadline_ >= body_cap_) {
      return rejectAndClose(
          408, "body_timeout",
          "request body not complete within " + std::to_string(o.body_timeout.count()) + " ms");
    }
    rejectAndClose(408, "body_too_slow",
                   "request body arrives slower than " +
                       std::to_string(o.min_body_bytes_per_second) + " bytes per second");
  }

  // Waits for the next request on a kept-alive connection: idle_timeout until
  // its first byte, then header_timeout for the header.
  void awaitNextRequest() {
    if (closed_) return;
    if (buffer_.size() > 0) return readHeader();  // a pipelined request is already here
    arm(Clock::now() + core_->options.idle_timeout, Phase::kIdle);
    lowest().expires_never();
    stream_.async_read_some(buffer_.prepare(kFirstRead),
                            [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                              self->buffer_.commit(n);
                              if (ec || self->closed_) return self->onReadError(ec);
                              self->readHeader();
                            });
  }

  void readHeader() {
    if (closed_) return;
    const auto& o = core_->options;
    framer_.emplace(FramingLimits{.max_header_bytes = o.max_header_bytes,
                                  .max_body_bytes = o.max_body_bytes,
                                  .max_trailer_bytes = o.max_header_bytes});
    arm(Clock::now() + o.header_timeout, Phase::kHeader);
    pumpHeader();
  }

  void pumpHeader() {
    if (!feedFramer()) return;
    if (framer_->headDone()) return onHeader();
    readMore([](Session& self) { self.pumpHeader(); });
  }

  // Reads what the peer sends next into buffer_, then runs `next`.
  template <class Next>
  void readMore(Next next) {
    lowest().expires_never();
    stream_.async_read_some(buffer_.prepare(kReadSize), [self = this->shared_from_this(), next](
                                                            beast::error_code ec, size_t n) {
      self->buffer_.commit(n);
      self->body_received_ += n;
      // A deadline that fired just as the read finished still counts.
      if (ec || self->closed_ || self->timed_out_ != Phase::kNone) {
        return self->onReadError(ec);
      }
      next(*self);
    });
  }

  // Hands the buffered bytes to the framer, which keeps what it needs (bounded
  // by its limits) and leaves a pipelined next request in buffer_. False when
  // it refused them: answered, and the connection is closing.
  bool feedFramer() {
    if (buffer_.size() == 0) return true;
    auto data = buffer_.data();
    buffer_.consume(
        framer_->feed(std::string_view(static_cast<const char*>(data.data()), data.size())));
    if (!framer_->failed()) return true;
    disarm();
    const auto& o = core_->options;
    switch (framer_->error()) {
      case FramingError::kHeaderTooLarge:
        rejectAndClose(
            431, "header_too_large",
            "request header is larger than " + std::to_string(o.max_header_bytes) + " bytes");
        break;
      case FramingError::kBodyTooLarge:
        rejectAndClose(
            413, "body_too_large",
            "request body is larger than " + std::to_string(o.max_body_bytes) + " bytes");
        break;
      case FramingError::kMalformed:
      case FramingError::kNone:
        rejectAndClose(400, "malformed_http", "malformed HTTP request: " + framer_->errorMessage());
        break;
    }
    return false;
  }

  // A reserved slot serves one bodiless GET of a reserved path.
  bool allowedOnReservedSlot() const {
    const auto& head = framer_->head();
    if (head.method() != bhttp::verb::get || framer_->hasBody()) return false;
    std::string_view target = head.target();
    target = target.substr(0, target.find('?'));
    const auto& paths = core_->options.reserved_paths;
    return std::find(paths.begin(), paths.end(), target) != paths.end();
  }

  void onHeader() {
    disarm();
    if (reserved_ && !allowedOnReservedSlot()) {
      return rejectAndClose(503, "too_many_connections", "too many connections; retry later");
    }
    const auto& req = framer_->head();
    if (auto it = req.find(bhttp::field::expect);
        it != req.end() && beast::iequals(it->value(), "100-continue")) {
      // The header passed every limit, so tell the client to send the body
      // (curl waits a second for this before sending it anyway).
      auto cont = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_,
                                                                       req.version());
      lowest().expires_after(core_->options.write_timeout);
      bhttp::async_write(stream_, *cont,
                         [self = this->shared_from_this(), cont](beast::error_code wec, size_t) {
                           if (wec) return self->close();
                           self->startBody();
                         });
      return;
    }
    startBody();
  }

  void startBody() {
    body_start_ = Clock::now();
    body_cap_ = body_start_ + core_->options.body_timeout;
    body_received_ = 0;
    readBody();
  }

  // Reads the body piece by piece so the deadline can follow the rate floor.
  void readBody() {
    if (!feedFramer()) return;
    if (framer_->done()) return onBody();
    const auto& o = core_->options;
    Clock::time_point deadline = body_cap_;
    if (o.min_body_bytes_per_second > 0) {
      auto earned = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
          static_cast<double>(body_received_) / static_cast<double>(o.min_body_bytes_per_second)));
      deadline = std::min(deadline, body_start_ + kRateGrace + earned);
    }
    if (deadline != deadline_ || phase_ != Phase::kBody) arm(deadline, Phase::kBody);
    readMore([](Session& self) { self.readBody(); });
  }

  void onReadError(beast::error_code ec) {
    if (closed_) return;
    if (timed_out_ != Phase::kNone && timed_out_ != Phase::kIdle) return onTimedOut();
    disarm();
    (void)ec;  // end of stream, reset or cancelled: nobody to answer
    close();
  }

  void onBody() {
    disarm();
    const auto& head = framer_->head();
    keep_alive_ = head.keep_alive() && !reserved_;  // a reserved slot answers once
    version_ = head.version();
    Request request;
    request.method = std::string(head.method_string());
    request.target = std::string(head.target());
    if (auto it = head.find(bhttp::field::content_type); it != head.end()) {
      request.content_type = lowerMediaType(it->value());
      request.content_type_header = std::string(it->value());
    }
    if (auto it = head.find(bhttp::field::authorization); it != head.end()) {
      request.authorization = std::string(it->value());
    }
    if (auto it = head.find(bhttp::field::origin); it != head.end()) {
      request.origin = std::string(it->value());
    }
    if (auto it = head.find(bhttp::field::access_control_request_method); it != head.end()) {
      request.access_control_request_method = std::string(it->value());
    }
    if (auto it = head.find(bhttp::field::access_control_request_headers); it != head.end()) {
      request.access_control_request_headers = std::string(it->value());
    }
    request.peer = peer_;
    if (client_verified_) {
      request.client_verified = true;
      request.client_subject = client_subject_;
    }
    request.body = framer_->takeBody();
    framer_.reset();
    awaiting_id_ = ++next_id_;
    Respond respond = makeRespond(awaiting_id_);
    // No deadline while the handler works (group commit); the answer's write has one.
    try {
      core_->handler(std::move(request), std::move(respond));
    } catch (const std::exception& e) {
      // The Respond was moved into the handler; if it is gone unanswered its
      // destructor answers 500. Log what failed, never the request body.
      log::error("http_handler_threw", {{"what", e.what()}});
    }
  }

  Respond makeRespond(uint64_t id);

  void write(uint64_t id, Response response) {
    if (closed_ || id != awaiting_id_) return;  // stale or duplicate answer
    awaiting_id_ = 0;
    auto res = std::make_shared<bhttp::response<bhttp::string_body>>();
    res->version(version_);
    res->result(static_cast<unsigned>(response.status));
    res->set(bhttp::field::server, "branchline");
    res->set(bhttp::field::content_type, response.content_type);
    for (auto& [name, value] : response.headers) res->set(name, value);
    res->body() = std::move(response.body);
    res->keep_alive(keep_alive_);
    res->prepare_payload();
    lowest().expires_after(core_->options.write_timeout);
    bhttp::async_write(stream_, *res,
                       [self = this->shared_from_this(), res](beast::error_code ec, size_t) {
                         self->onWrite(ec);
                       });
  }

  void onWrite(beast::error_code ec) {
    if (ec) return close();
    if (!keep_alive_) return lingerThenClose();
    awaitNextRequest();  // bytes of a pipelined next request may already be in buffer_
  }

  void lingerThenClose() {
    // One expiry bounds all of it, close_notify included: tcp_stream applies it
    // to every socket operation until it is reset.
    lowest().expires_after(
        std::min<std::chrono::milliseconds>(kMaxLingerDrain, core_->options.write_timeout));
    if constexpr (kTls) {
      // Sends close_notify, then waits for the peer's; whatever ends that (the
      // peer's close_notify, its EOF, data it still sends, the expiry), what
      // is left is drained below the TLS layer.
      stream_.async_shutdown(
          [self = this->shared_from_this()](beast::error_code) { self->shutdownSendAndDrain(); });
    } else {
      shutdownSendAndDrain();
    }
  }

  void shutdownSendAndDrain() {
    if (closed_) return;
    beast::error_code ignored;
    lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
    drain_.resize(kDrainChunk);
    drain();
  }

  void drain() {
    lowest().async_read_some(asio::buffer(drain_),
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               if (ec) return self->close();
                               self->drain();
                             });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    disarm();
    beast::error_code ignored;
    lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
    lowest().close();
    core_->remove(this, peer_, reserved_);  // our caller's handler still holds a shared_ptr to us
  }

  static constexpr size_t kFirstRead = 4096;
  static constexpr size_t kReadSize = 64 << 10;  // what one read may add to buffer_
  // The body's rate floor starts counting after this much time.
  static constexpr std::chrono::seconds kRateGrace{1};

  Stream stream_;
  asio::steady_timer timer_;
  std::shared_ptr<Core> core_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<RequestFramer> framer_;  // the request being read
  std::vector<char> drain_;
  Phase phase_ = Phase::kNone;
  Phase timed_out_ = Phase::kNone;
  uint64_t timer_generation_ = 0;
  Clock::time_point deadline_{};
  Clock::time_point body_start_{};
  Clock::time_point body_cap_{};
  uint64_t body_received_ = 0;
  bool keep_alive_ = true;
  unsigned version_ = 11;
  bool closed_ = false;
  bool reserved_ = false;
  uint64_t next_id_ = 0;
  uint64_t awaiting_id_ = 0;  // the request whose answer we wait for; 0: none
  bool handshaken_ = !kTls;
  std::optional<Response> refusal_;  // TLS: refused on admission, answered after the handshake
  bool client_verified_ = false;     // TLS: the client's certificate chains to client_ca_file
  std::string client_subject_;       // its subject's common name
};

// The one-shot answer channel handed to the handler. If every copy is dropped
// unanswered (a handler bug), its destructor answers 500 so the client is not
// left hanging.
class Responder {
 public:
  Responder(std::shared_ptr<Core> core, std::weak_ptr<SessionBase> session, uint64_t id)
      : core_(std::move(core)), session_(std::move(session)), id_(id) {}
  ~Responder() {
    if (!done_.load()) send(jsonError(500, "internal error: the request was not answered"));
  }

  void send(Response response) {
    bool expected = false;
    if (!done_.compare_exchange_strong(expected, true)) {
      assert(false && "Respond called more than once");
      return;
    }
    std::shared_ptr<SessionBase> session;
    {
      // Under the lock so that Server::stop() cannot tear the io_context down
      // between our check and the post.
      std::lock_guard lock(core_->mutex);
      if (core_->stopped) return;
      session = session_.lock();
      if (session) session->deliver(id_, std::move(response));
    }
  }

 private:
  std::shared_ptr<Core> core_;
  std::weak_ptr<SessionBase> session_;
  uint64_t id_;
  std::atomic<bool> done_{false};
};

template <class Stream>
Respond Session<Stream>::makeRespond(uint64_t id) {
  auto responder = std::make_shared<Responder>(core_, this->weak_from_this(), id);
  return [responder](Response response) { responder->send(std::move(response)); };
}

// "http tls_cert_file `server.pem`: <why>": the option, the file and the reason.
Status tlsFileError(const char* option, const std::string& file, const std::string& why) {
  return Status::invalid(std::string("http ") + option + " `" + file + "`: " + why);
}

// Checked first so that a missing file reads as such, not as OpenSSL's
// "system library" reason.
Status readable(const char* option, const std::string& file) {
  std::FILE* f = std::fopen(file.c_str(), "rb");
  if (f == nullptr)
    return tlsFileError(option, file, std::string("cannot read: ") + strerror(errno));
  std::fclose(f);
  return Status::ok();
}

// The server's TLS context from ServerOptions' files; nullopt for plain HTTP.
Result<std::optional<asio::ssl::context>> makeTlsContext(const ServerOptions& o) {
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return Status::invalid(
        o.tls_cert_file.empty()
            ? "http tls_key_file is set but tls_cert_file is not (HTTPS needs both)"
            : "http tls_cert_file is set but tls_key_file is not (HTTPS needs both)");
  }
  if (o.tls_cert_file.empty()) {
    if (!o.client_ca_file.empty()) {
      return Status::invalid(
          "http client_ca_file is set without tls_cert_file and tls_key_file (client "
          "certificates need HTTPS)");
    }
    return std::optional<asio::ssl::context>();
  }
  namespace ssl = asio::ssl;
  std::optional<ssl::context> ctx(std::in_place, ssl::context::tls_server);
  // TLS 1.2 at least; no compression (CRIME) and no renegotiation (a client
  // could otherwise restart the expensive part of the handshake at will).
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                   ssl::context::single_dh_use | ssl::context::no_compression);
  SSL_CTX* native = ctx->native_handle();
  SSL_CTX_set_options(native, SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
  beast::error_code ec;
  BL_RETURN_IF_ERROR(readable("tls_cert_file", o.tls_cert_file));
  ctx->use_certificate_chain_file(o.tls_cert_file, ec);
  if (ec) return tlsFileError("tls_cert_file", o.tls_cert_file, ec.message());
  BL_RETURN_IF_ERROR(readable("tls_key_file", o.tls_key_file));
  ctx->use_private_key_file(o.tls_key_file, ssl::context::pem, ec);
  if (ec) return tlsFileError("tls_key_file", o.tls_key_file, ec.message());
  if (SSL_CTX_check_private_key(native) != 1) {
    return tlsFileError("tls_key_file", o.tls_key_file,
                        "is not the key of the certificate in " + o.tls_cert_file);
  }
  if (!o.client_ca_file.empty()) {
    BL_RETURN_IF_ERROR(readable("client_ca_file", o.client_ca_file));
    ctx->load_verify_file(o.client_ca_file, ec);
    if (ec) return tlsFileError("client_ca_file", o.client_ca_file, ec.message());
    // Names the acceptable issuers in the CertificateRequest, so a client
    // holding several certificates can pick the right one.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(native, names);
    }
    ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return ctx;
}

}  // namespace

struct Server::Impl {
  asio::io_context ioc;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::shared_ptr<Core> core = std::make_shared<Core>();
  std::optional<tcp::acceptor> acceptor;
  uint16_t port = 0;
  std::vector<std::thread> threads;
  std::once_flag stop_once;

  void accept() {
    acceptor->async_accept(asio::make_strand(ioc), [this](beast::error_code ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
      if (!ec) {
        if (core->tls) {
          admit(std::make_shared<Session<TlsStream>>(std::move(s), core, *core->tls));
        } else {
          admit(std::make_shared<Session<PlainStream>>(std::move(s), core));
        }
      } else {
        log::warn("http_accept_failed", {{"error", ec.message()}});
      }
      accept();
    });
  }

  template <class Stream>
  void admit(const std::shared_ptr<Session<Stream>>& session) {
    bool reserved = false;
    if (const char* refused = core->admit(session, session->peer(), reserved)) {
      // Over a connection cap (or stopping): answer 503 politely on a
      // connection we do not keep; it closes itself after the write.
      session->rejectAndClose(503, refused,
                              std::string_view(refused) == "too_many_connections"
                                  ? "too many connections; retry later"
                                  : "too many connections from this client; retry later");
    } else {
      if (reserved) session->markReserved();
      session->start();
    }
  }
};

Server::Server() : impl_(std::make_unique<Impl>()) {}

Server::~Server() { stop(); }

Result<std::unique_ptr<Server>> Server::start(ServerOptions options, Handler handler) {
  assert(handler && "http::Server needs a handler");
  assert(options.threads > 0);
  beast::error_code ec;
  auto address = asio::ip::make_address(options.listen_address, ec);
  if (ec) {
    return Status::invalid("http listen address `" + options.listen_address + "`: " + ec.message());
  }
  auto tls = makeTlsContext(options);
  if (!tls.isOk()) return tls.status();
  std::unique_ptr<Server> server(new Server());
  Impl& impl = *server->impl_;
  impl.core->tls = std::move(tls).value();
  impl.core->options = options;
  impl.core->handler = std::move(handler);
  impl.acceptor.emplace(asio::make_strand(impl.ioc));
  tcp::endpoint endpoint(address, options.port);
  std::string where = options.listen_address + ":" + std::to_string(options.port);
  impl.acceptor->open(endpoint.protocol(), ec);
  if (!ec) impl.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl.acceptor->bind(endpoint, ec);
  if (!ec) impl.acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Status::unavailable("http listen on " + where + ": " + ec.message());
  impl.port = impl.acceptor->local_endpoint().port();
  impl.work.emplace(impl.ioc.get_executor());
  impl.accept();
  for (int i = 0; i < options.threads; ++i) {
    impl.threads.emplace_back([&impl] { impl.ioc.run(); });
  }
  log::info("http_listening", {{"address", options.listen_address}, {"port", impl.port}});
  return server;
}

uint16_t Server::port() const { return impl_->port; }

void Server::stop() {
  Impl& impl = *impl_;
  std::call_once(impl.stop_once, [&impl] {
    std::vector<std::shared_ptr<SessionBase>> sessions;
    {
      std::lock_guard lock(impl.core->mutex);
      impl.core->stopped = true;
      for (auto& [raw, s] : impl.core->sessions) sessions.push_back(s);
    }
    asio::post(impl.acceptor->get_executor(), [&impl] {
      beast::error_code ignored;
      impl.acceptor->close(ignored);
    });
    for (auto& s : sessions) s->closeFromServer();
    sessions.clear();
    impl.work.reset();
    // Connections in the middle of a request are cut: stopping is for shutdown,
    // and the agent answers nothing it has not committed.
    impl.ioc.stop();
    for (auto& t : impl.threads) {
      assert(t.get_id() != std::this_thread::get_id() && "Server::stop from its own thread");
      t.join();
    }
    impl.threads.clear();
    // Destroy connections while the io_context still exists.
    std::unordered_map<SessionBase*, std::shared_ptr<SessionBase>> left;
    {
      std::lock_guard lock(impl.core->mutex);
      left.swap(impl.core->sessions);
    }
    left.clear();
    impl.acceptor.reset();
  });
}

Response jsonError(int status, const std::string& message) {
  Response r;
  r.status = status;
  r.body = "{\"error\":";
  log::appendJsonString(r.body, message);
  r.body += "}";
  return r;
}

}  // namespace branchline::http
