#include "shared/http/http_server.h"

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cassert>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "shared/core/log.h"

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

bool isParseError(const beast::error_code& ec) {
  return &ec.category() == &bhttp::make_error_code(bhttp::error::bad_method).category();
}

class Session;

// State shared by the server, its sessions and every outstanding Respond. It
// outlives the Server object when a handler keeps a Respond after shutdown; the
// `stopped` flag (checked under the mutex) then turns late answers into no-ops.
struct Core {
  ServerOptions options;
  Handler handler;
  std::mutex mutex;
  bool stopped = false;
  std::unordered_map<Session*, std::shared_ptr<Session>> sessions;  // owns live connections

  bool admit(const std::shared_ptr<Session>& s) {
    std::lock_guard lock(mutex);
    if (stopped || sessions.size() >= options.max_connections) return false;
    sessions.emplace(s.get(), s);
    return true;
  }
  void remove(Session* s) {
    std::shared_ptr<Session> keep;  // destroyed outside the lock
    {
      std::lock_guard lock(mutex);
      auto it = sessions.find(s);
      if (it == sessions.end()) return;
      keep = std::move(it->second);
      sessions.erase(it);
    }
  }
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<Core> core)
      : stream_(std::move(socket)), core_(std::move(core)) {}

  void start() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->readHeader(); });
  }

  // Called from any thread by the Respond of request `id`.
  void deliver(uint64_t id, Response response) {
    asio::post(stream_.get_executor(),
               [self = shared_from_this(), id, r = std::move(response)]() mutable {
                 self->write(id, std::move(r));
               });
  }

  // Answers `status` and closes without a handler (limits, malformed input, overload).
  void rejectAndClose(int status, const std::string& message) {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this(), status, message] {
      self->keep_alive_ = false;
      self->awaiting_id_ = ++self->next_id_;
      self->write(self->awaiting_id_, jsonError(status, message));
    });
  }

  void closeFromServer() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] { self->close(); });
  }

 private:
  void readHeader() {
    if (closed_) return;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(core_->options.max_header_bytes));
    parser_->body_limit(core_->options.max_body_bytes);
    // One deadline for the whole request (header and body): a client that trickles
    // bytes cannot hold a connection past it.
    stream_.expires_after(core_->options.read_timeout);
    bhttp::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->onHeader(ec); });
  }

  void onHeader(beast::error_code ec) {
    if (ec) return onReadError(ec);
    const auto& req = parser_->get();
    if (auto it = req.find(bhttp::field::expect);
        it != req.end() && beast::iequals(it->value(), "100-continue")) {
      // The header passed every limit, so tell the client to send the body
      // (curl waits a second for this before sending it anyway).
      auto cont = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_,
                                                                       req.version());
      bhttp::async_write(stream_, *cont,
                         [self = shared_from_this(), cont](beast::error_code wec, size_t) {
                           if (wec) return self->close();
                           self->readBody();
                         });
      return;
    }
    readBody();
  }

  void readBody() {
    bhttp::async_read(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->onBody(ec); });
  }

  void onReadError(beast::error_code ec) {
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == bhttp::error::partial_message) {
      return close();
    }
    if (ec == bhttp::error::header_limit) {
      return rejectAndClose(431, "request header is larger than " +
                                     std::to_string(core_->options.max_header_bytes) + " bytes");
    }
    if (ec == bhttp::error::body_limit) {
      return rejectAndClose(413, "request body is larger than " +
                                     std::to_string(core_->options.max_body_bytes) + " bytes");
    }
    if (isParseError(ec)) return rejectAndClose(400, "malformed HTTP request: " + ec.message());
    close();  // connection reset and other transport errors: nobody to answer
  }

  void onBody(beast::error_code ec) {
    if (ec) return onReadError(ec);
    stream_.expires_never();  // the handler may take its time (group commit)
    auto msg = parser_->release();
    parser_.reset();
    keep_alive_ = msg.keep_alive();
    version_ = msg.version();
    Request request;
    request.method = std::string(msg.method_string());
    request.target = std::string(msg.target());
    if (auto it = msg.find(bhttp::field::content_type); it != msg.end()) {
      request.content_type = lowerMediaType(it->value());
    }
    request.body = std::move(msg.body());
    awaiting_id_ = ++next_id_;
    Respond respond = makeRespond(awaiting_id_);
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
    stream_.expires_after(core_->options.read_timeout);
    bhttp::async_write(
        stream_, *res,
        [self = shared_from_this(), res](beast::error_code ec, size_t) { self->onWrite(ec); });
  }

  void onWrite(beast::error_code ec) {
    if (ec) return close();
    if (!keep_alive_) return lingerThenClose();
    readHeader();  // bytes of a pipelined next request may already be in buffer_
  }

  void lingerThenClose() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(
        std::min<std::chrono::milliseconds>(kMaxLingerDrain, core_->options.read_timeout));
    drain_.resize(kDrainChunk);
    drain();
  }

  void drain() {
    stream_.async_read_some(asio::buffer(drain_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->close();
                              self->drain();
                            });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    core_->remove(this);  // our caller's handler still holds a shared_ptr to us
  }

  beast::tcp_stream stream_;
  std::shared_ptr<Core> core_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::vector<char> drain_;
  bool keep_alive_ = true;
  unsigned version_ = 11;
  bool closed_ = false;
  uint64_t next_id_ = 0;
  uint64_t awaiting_id_ = 0;  // the request whose answer we wait for; 0: none
};

// The one-shot answer channel handed to the handler. If every copy is dropped
// unanswered (a handler bug), its destructor answers 500 so the client is not
// left hanging.
class Responder {
 public:
  Responder(std::shared_ptr<Core> core, std::weak_ptr<Session> session, uint64_t id)
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
    std::shared_ptr<Session> session;
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
  std::weak_ptr<Session> session_;
  uint64_t id_;
  std::atomic<bool> done_{false};
};

Respond Session::makeRespond(uint64_t id) {
  auto responder = std::make_shared<Responder>(core_, weak_from_this(), id);
  return [responder](Response response) { responder->send(std::move(response)); };
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
        auto session = std::make_shared<Session>(std::move(s), core);
        if (core->admit(session)) {
          session->start();
        } else {
          // Over max_connections (or stopping): answer 503 politely on a
          // connection we do not keep; it closes itself after the write.
          session->rejectAndClose(503, "too many connections; retry later");
        }
      } else {
        log::warn("http_accept_failed", {{"error", ec.message()}});
      }
      accept();
    });
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
  std::unique_ptr<Server> server(new Server());
  Impl& impl = *server->impl_;
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
    std::vector<std::shared_ptr<Session>> sessions;
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
    std::unordered_map<Session*, std::shared_ptr<Session>> left;
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
