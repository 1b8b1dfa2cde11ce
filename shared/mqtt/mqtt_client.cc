#include "shared/mqtt/mqtt_client.h"

#include <MQTTAsync.h>
#include <mqtt/async_client.h>
#include <unistd.h>

#include <atomic>
#include <cassert>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <mutex>
#include <random>
#include <thread>

#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/pki/pki.h"

namespace branchline::mqtt {
namespace {

// Set while one of our Paho callbacks runs on this thread, so calls that would
// wait on Paho (a blocking subscribe, stop) can tell they would deadlock it.
thread_local bool t_in_paho_callback = false;

struct CallbackScope {
  CallbackScope() { t_in_paho_callback = true; }
  ~CallbackScope() { t_in_paho_callback = false; }
};

std::string randomClientId() {
  std::random_device rd;
  std::mt19937_64 gen(rd());
  char buf[32];
  std::snprintf(buf, sizeof buf, "bl-%016llx", static_cast<unsigned long long>(gen()));
  return buf;
}

Status fromPaho(const ::mqtt::exception& e, const std::string& what) {
  const int rc = e.get_return_code();
  if (rc == MQTTASYNC_DISCONNECTED)
    return Status::unavailable(what + ": not connected to a broker");
  if (rc == MQTTASYNC_MAX_BUFFERED_MESSAGES || rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT) {
    return Status::exhausted(what + ": client queue full (" + e.get_error_str() + "); back off");
  }
  return Status::unavailable(what + ": " + e.what());
}

bool isTlsUri(const std::string& uri) {
  return uri.rfind("ssl://", 0) == 0 || uri.rfind("mqtts://", 0) == 0 ||
         uri.rfind("wss://", 0) == 0;
}

bool anyTls(const std::vector<std::string>& uris) {
  for (const auto& u : uris) {
    if (isTlsUri(u)) return true;
  }
  return false;
}

// Paho only reports a bad TLS file as a failed handshake, retried forever;
// checking up front turns that into one clear error naming the option.
Status checkTlsOptions(const ClientOptions& o) {
  if (!anyTls(o.broker_uris)) return Status::ok();
  if (o.cert_file.empty() != o.key_file.empty()) {
    return Status::invalid(
        "mqtt: cert_file and key_file go together (a client certificate needs "
        "its key)");
  }
  if (!o.ca_file.empty() && ::access(o.ca_file.c_str(), R_OK) != 0) {
    return Status::notFound("mqtt ca_file " + o.ca_file + ": cannot read it (" +
                            std::strerror(errno) + ")");
  }
  if (o.cert_file.empty()) return Status::ok();
  // Readable, 0600, both PEM, and the key is the certificate's.
  auto credential = pki::loadCredential(o.cert_file, o.key_file);
  if (!credential.isOk()) return credential.status().withContext("mqtt cert_file/key_file");
  // An expired certificate is refused by the broker with no reason the client
  // can see; say it here. Not an error: the clock may be wrong, or a new
  // certificate may be put in place while the client keeps retrying.
  auto info = pki::inspectCertificate(credential->certificate_pem);
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  if (info.isOk() && (now < info->not_before || now > info->not_after)) {
    log::warn("mqtt_tls_certificate_not_valid_now",
              {{"client_id", o.client_id},
               {"cert_file", o.cert_file},
               {"common_name", info->common_name},
               {"not_before", formatRfc3339Micros(info->not_before * 1'000'000)},
               {"not_after", formatRfc3339Micros(info->not_after * 1'000'000)}});
  }
  return Status::ok();
}

// How long the destructor waits for the DISCONNECT to go out; longer only
// delays shutdown, since nothing in flight here is a record of truth.
constexpr auto kDisconnectTimeout = std::chrono::milliseconds(1000);
constexpr auto kConnectTimeout = std::chrono::seconds(5);
constexpr auto kSubscribeWait = std::chrono::seconds(5);
// Paho C++ 1.2 wakes a token's waiter before it is done with the token: after
// notify_all() its callback thread still calls async_client::remove_token(),
// which locks a mutex inside the client. A client destroyed in that window is
// used after free (seen under ASan when a refused connect and stop() raced).
// Nothing tells us when that thread has left, so stop() gives it this long.
constexpr auto kTokenCallbackGrace = std::chrono::milliseconds(100);

}  // namespace

struct Client::Impl : public ::mqtt::iaction_listener {
  ClientOptions options;
  MessageHandler on_message;
  ConnectionHandler on_connection;

  // Serializes user handlers against stop(): once `deliver` is false no handler
  // runs again, and one running has returned.
  std::mutex handler_mutex;
  bool deliver = true;

  std::atomic<bool> connected{false};

  std::mutex state_mutex;  // subscriptions, stopping
  std::condition_variable state_cv;
  std::vector<std::pair<std::string, int>> subscriptions;
  bool stopping = false;
  bool started = false;
  bool connection_lost = false;  // the connector makes the next connect
  std::thread connector;

  ::mqtt::connect_options connect_options;
  // Declared last: destroyed first, so Paho never calls into freed members.
  std::unique_ptr<::mqtt::async_client> client;

  void callHandler(bool up) {
    std::lock_guard lock(handler_mutex);
    if (deliver && on_connection) on_connection(up);
  }

  // Resubscription listener (iaction_listener): SUBACK for the whole remembered set.
  void on_success(const ::mqtt::token&) override {
    CallbackScope scope;
    if (connected.load()) callHandler(true);
  }
  void on_failure(const ::mqtt::token& tok) override {
    CallbackScope scope;
    log::error("mqtt_resubscribe_failed",
               {{"client_id", options.client_id}, {"rc", tok.get_return_code()}});
    // Publishing still works; the caller's resend timers cover what is missed.
    if (connected.load()) callHandler(true);
  }

  void onConnected() {
    CallbackScope scope;
    connected.store(true);
    log::info("mqtt_connected", {{"client_id", options.client_id}});
    std::vector<std::pair<std::string, int>> subs;
    {
      std::lock_guard lock(state_mutex);
      subs = subscriptions;
    }
    if (subs.empty()) {
      callHandler(true);
      return;
    }
    auto filters = std::make_shared<::mqtt::string_collection>();
    std::vector<int> qos;
    for (const auto& [filter, q] : subs) {
      filters->push_back(filter);
      qos.push_back(q);
    }
    try {
      // Never wait here: this is Paho's network thread. The listener reports.
      client->subscribe(filters, qos, nullptr, *this);
    } catch (const ::mqtt::exception& e) {
      log::error("mqtt_resubscribe_failed",
                 {{"client_id", options.client_id}, {"error", e.what()}});
      callHandler(true);
    }
  }

  void onConnectionLost(const std::string& cause) {
    CallbackScope scope;
    connected.store(false);
    log::warn("mqtt_connection_lost", {{"client_id", options.client_id}, {"cause", cause}});
    {
      std::lock_guard lock(state_mutex);
      connection_lost = true;
    }
    state_cv.notify_all();
    callHandler(false);
  }

  void onMessage(::mqtt::const_message_ptr msg) {
    CallbackScope scope;
    if (!msg) return;
    Message m{msg->get_topic(), msg->get_payload_str()};
    std::lock_guard lock(handler_mutex);
    if (deliver && on_message) on_message(std::move(m));
  }

  // Makes every connect, the first and each after a loss, until stop().
  // Paho's automatic reconnect and its own walk over a list of server URIs are
  // not used: a reconnect there starts at the URI last connected to and never
  // goes back to the ones before it (eclipse-paho/paho.mqtt.c#1661), so a
  // client that failed over to the second broker would never return to the
  // first. Each attempt here names one URI, and every round starts at the first.
  void connectLoop() {
    for (;;) {
      connectOnce();
      std::unique_lock lock(state_mutex);
      state_cv.wait(lock, [&] { return stopping || connection_lost; });
      // A pause before the first attempt, as Paho's own reconnect made.
      if (state_cv.wait_for(lock, options.min_reconnect, [&] { return stopping; })) return;
      lock.unlock();
      // Paho reports a loss from its network thread while holding its global
      // mutex, and after our handler returns it still reads the connect
      // callbacks that a new connect() replaces (unlocked). is_connected() takes
      // that mutex: once it returns, Paho is done with the lost connection.
      (void)client->is_connected();
    }
  }

  // Until connected (or stop()): the URIs in order, then a backoff, then again.
  void connectOnce() {
    auto backoff = options.min_reconnect;
    for (;;) {
      std::string error;
      for (const auto& uri : options.broker_uris) {
        {
          std::lock_guard lock(state_mutex);
          if (stopping) return;
          connection_lost = false;
        }
        if (connectTo(uri, error)) return;
      }
      log::warn("mqtt_connect_failed",
                {{"client_id", options.client_id},
                 {"brokers", static_cast<uint64_t>(options.broker_uris.size())},
                 {"error", error},
                 {"retry_ms", static_cast<int64_t>(backoff.count())}});
      std::unique_lock lock(state_mutex);
      if (state_cv.wait_for(lock, backoff, [&] { return stopping; })) return;
      backoff = std::min(backoff * 2, options.max_reconnect);
    }
  }

  // One attempt at one broker; on failure appends "<uri>: <why>" to `errors`.
  bool connectTo(const std::string& uri, std::string& errors) {
    std::string error;
    try {
      connect_options.set_servers(std::make_shared<::mqtt::string_collection>(uri));
      auto tok = client->connect(connect_options);
      const auto budget = kConnectTimeout + std::chrono::seconds(1);
      if (tok->wait_for(budget)) return true;
      error = "timed out";
      // The attempt may still be running; wait for it before starting another.
      tok->wait_for(budget);
      if (connected.load()) return true;
    } catch (const ::mqtt::exception& e) {
      error = e.what();
    }
    errors += (errors.empty() ? "" : "; ") + uri + ": " + error;
    return false;
  }
};

Client::Client(ClientOptions options, MessageHandler on_message, ConnectionHandler on_connection)
    : impl_(std::make_unique<Impl>()) {
  assert(!options.broker_uris.empty() && "mqtt::Client needs at least one broker URI");
  if (options.client_id.empty()) options.client_id = randomClientId();
  impl_->options = std::move(options);
  impl_->on_message = std::move(on_message);
  impl_->on_connection = std::move(on_connection);

  const ClientOptions& o = impl_->options;
  // MQTT 3.1.1: Mosquitto 2.0 honours `$share/<group>/...` for it too, and its
  // clean-session flag is the persistent-session switch we need.
  ::mqtt::create_options create(MQTTVERSION_3_1_1);
  // nullptr persistence = MQTTCLIENT_PERSISTENCE_NONE: the caller's SQLite is the record of truth.
  impl_->client =
      std::make_unique<::mqtt::async_client>(o.broker_uris.front(), o.client_id, create, nullptr);

  auto& co = impl_->connect_options;
  co.set_mqtt_version(MQTTVERSION_3_1_1);
  co.set_clean_session(o.clean_session);
  co.set_keep_alive_interval(o.keepalive);
  co.set_connect_timeout(kConnectTimeout);
  // No set_automatic_reconnect: Impl::connectLoop() reconnects (see there).
  co.set_max_inflight(o.max_inflight);
  // set_servers: one URI per attempt, in Impl::connectTo().
  if (!o.will_topic.empty()) {
    co.set_will(::mqtt::will_options(o.will_topic, o.will_payload, 1, o.will_retain));
  }
  if (!o.username.empty()) co.set_user_name(o.username);
  if (!o.password.empty()) co.set_password(o.password);

  Impl* impl = impl_.get();
  if (anyTls(o.broker_uris)) {
    ::mqtt::ssl_options ssl;
    if (!o.ca_file.empty()) ssl.set_trust_store(o.ca_file);
    if (!o.cert_file.empty()) ssl.set_key_store(o.cert_file);
    if (!o.key_file.empty()) ssl.set_private_key(o.key_file);
    ssl.set_enable_server_cert_auth(true);
    // Host check: the URI's host must match a DNS name or IP address in the
    // broker certificate's subjectAltName.
    ssl.set_verify(true);
    // No version pin: Paho built on OpenSSL 1.1+ ignores sslVersion and
    // negotiates TLS 1.3 where the broker has it; OpenSSL 3 refuses anything
    // below TLS 1.2 at the security level Paho sets, and so does the broker
    // config `branchline` writes (tls_version tlsv1.2).
    // No ssl_options::set_error_handler: Paho C++ 1.2 hands the C library a
    // context pointer into the connect_options copy that async_client::connect
    // takes by value, which is gone when the handshake fails (a use after
    // scope under ASan). A TLS failure shows as "TCP/TLS connect failure";
    // start() checks our own files, the broker's log has its reason.
    co.set_ssl(std::move(ssl));
  }
  impl_->client->set_connected_handler([impl](const std::string&) { impl->onConnected(); });
  impl_->client->set_connection_lost_handler(
      [impl](const std::string& cause) { impl->onConnectionLost(cause); });
  impl_->client->set_message_callback(
      [impl](::mqtt::const_message_ptr msg) { impl->onMessage(std::move(msg)); });
}

Client::~Client() { stop(); }

Status Client::start() {
  BL_RETURN_IF_ERROR(checkTlsOptions(impl_->options));
  std::lock_guard lock(impl_->state_mutex);
  if (impl_->stopping) return Status::unavailable("mqtt client is stopped");
  if (impl_->started) return Status::ok();
  impl_->started = true;
  impl_->connector = std::thread([impl = impl_.get()] { impl->connectLoop(); });
  return Status::ok();
}

Status Client::subscribe(const std::string& filter, int qos) {
  if (qos < 0 || qos > 2)
    return Status::invalid("subscribe `" + filter + "`: qos must be 0, 1 or 2");
  {
    std::lock_guard lock(impl_->state_mutex);
    if (impl_->stopping) return Status::unavailable("mqtt client is stopped");
    for (const auto& [f, q] : impl_->subscriptions) {
      if (f == filter && q == qos) return Status::ok();
    }
    impl_->subscriptions.emplace_back(filter, qos);
  }
  if (!impl_->connected.load()) return Status::ok();  // made on the next connect
  try {
    auto tok = impl_->client->subscribe(filter, qos);
    // Waiting lets a caller publish right after subscribe() and see the reply;
    // inside a Paho callback it would deadlock Paho, so there we only queue it.
    if (t_in_paho_callback) return Status::ok();
    if (!tok->wait_for(kSubscribeWait)) {
      return Status::unavailable("subscribe `" + filter + "`: no SUBACK within 5 s");
    }
  } catch (const ::mqtt::exception& e) {
    // Remembered anyway: it is re-made on the next connect.
    return fromPaho(e, "subscribe `" + filter + "`");
  }
  return Status::ok();
}

Status Client::publish(const std::string& topic, std::string payload, int qos, bool retain) {
  if (!impl_->connected.load()) {
    return Status::unavailable("publish to `" + topic + "`: not connected to a broker");
  }
  try {
    auto msg = ::mqtt::make_message(topic, ::mqtt::binary_ref(std::move(payload)), qos, retain);
    impl_->client->publish(std::move(msg));  // the delivery token is not waited on
  } catch (const ::mqtt::exception& e) {
    return fromPaho(e, "publish to `" + topic + "`");
  }
  return Status::ok();
}

bool Client::connected() const { return impl_->connected.load(); }

void Client::stop() {
  assert(!t_in_paho_callback && "mqtt::Client::stop() called from inside a Paho callback");
  {
    std::lock_guard lock(impl_->state_mutex);
    if (impl_->stopping && !impl_->client) return;
    impl_->stopping = true;
  }
  impl_->state_cv.notify_all();
  if (impl_->connector.joinable()) impl_->connector.join();
  {
    // After this no user handler runs, and any that was running has returned.
    std::lock_guard lock(impl_->handler_mutex);
    impl_->deliver = false;
  }
  if (!impl_->client) return;
  try {
    if (impl_->client->is_connected()) {
      impl_->client->disconnect(kDisconnectTimeout)->wait_for(kDisconnectTimeout * 2);
    }
  } catch (const ::mqtt::exception& e) {
    log::warn("mqtt_disconnect_failed",
              {{"client_id", impl_->options.client_id}, {"error", e.what()}});
  }
  impl_->connected.store(false);
  try {
    impl_->client->disable_callbacks();
  } catch (const ::mqtt::exception&) {
    // Only fails while a connect is in progress; destroying the client below stops it too.
  }
  std::this_thread::sleep_for(kTokenCallbackGrace);
  impl_->client.reset();
}

}  // namespace branchline::mqtt
