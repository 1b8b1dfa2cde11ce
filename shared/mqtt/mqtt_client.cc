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
#include <shared_mutex>
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

// "0x87 Not authorized": an MQTT 5 reason code as logs and errors show it.
std::string reasonText(int code) {
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", code & 0xff);
  return std::string(hex) + " " + ::mqtt::exception::reason_code_str(code);
}

// A reason the broker gave (MQTT 5): a code of 0x80 or more; Paho C++ marks
// results of MQTT 3.1.1 operations and local failures otherwise.
bool isBrokerRefusal(int code) { return code >= 0x80 && code != ::mqtt::MQTTPP_V3_CODE; }

Status fromPaho(const ::mqtt::exception& e, const std::string& what) {
  const int rc = e.get_return_code();
  if (isBrokerRefusal(e.get_reason_code())) {
    const std::string reason = reasonText(e.get_reason_code());
    if (e.get_reason_code() == ::mqtt::ReasonCode::NOT_AUTHORIZED) {
      return Status(Code::kPermissionDenied, what + ": the broker refused it (" + reason +
                                                 "); check the broker's ACL for this identity");
    }
    return Status::unavailable(what + ": the broker refused it (" + reason + ")");
  }
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

// Bytes of the MQTT 5 PUBLISH packet Paho sends for this message (no
// properties): fixed header, remaining length, topic, packet id, property length.
uint64_t publishPacketBytes(const std::string& topic, size_t payload, int qos) {
  const uint64_t remaining = 2 + topic.size() + (qos > 0 ? 2 : 0) + 1 + payload;
  uint64_t length_bytes = 1;
  for (uint64_t v = remaining; v >= 128; v /= 128) ++length_bytes;
  return 1 + length_bytes + remaining;
}

// Paho C frees its global state, its heap bookkeeping included, when its
// last client is destroyed; after that its free() of memory it allocated
// before (CONNACK properties in Paho C++ tokens, our connect properties) only
// logs, and the memory leaks (seen under LeakSanitizer when every client of a
// test had stopped). One client that is never destroyed keeps that state for
// the life of the process, as a library's global init would.
void keepPahoInitialized() {
  static const MQTTAsync keeper = [] {
    MQTTAsync handle = nullptr;
    (void)::MQTTAsync_create(&handle, "tcp://127.0.0.1:1", "bl-paho-keeper",
                             MQTTCLIENT_PERSISTENCE_NONE, nullptr);
    return handle;
  }();
  (void)keeper;
}

}  // namespace

const char* takeoverName(ClientOptions::Takeover how) {
  return how == ClientOptions::Takeover::kBrokerSaidSo ? "session_taken_over" : "repeated_drops";
}

struct Client::Impl : public ::mqtt::iaction_listener {
  ClientOptions options;
  MessageHandler on_message;
  ConnectionHandler on_connection;

  // Serializes user handlers against stop(): once `deliver` is false no handler
  // runs again, and one running has returned. Recursive: a message handler may
  // publish, and a publish refused on the spot reports from inside it.
  std::recursive_mutex handler_mutex;
  bool deliver = true;

  std::atomic<bool> connected{false};
  // From the CONNACK (MQTT 5 Maximum Packet Size); 0: the broker set none.
  std::atomic<uint32_t> broker_max_packet{0};
  // The reason of the broker's last DISCONNECT (0: none since the last
  // connect), so the connection-lost log says why instead of `cause:""`.
  std::atomic<int> broker_disconnect_reason{0};

  std::mutex state_mutex;  // subscriptions, stopping
  std::condition_variable state_cv;
  std::vector<std::pair<std::string, int>> subscriptions;
  bool stopping = false;
  bool started = false;
  bool connection_lost = false;  // the connector makes the next connect
  // Takeover by a client that the broker does not name (ClientOptions::Takeover):
  // set when the broker closed a working connection with no reason, cleared
  // by a failed connect; the times such a drop was followed by a connect
  // that worked at once.
  bool unexplained_drop = false;
  std::vector<std::chrono::steady_clock::time_point> quick_drops;
  std::thread connector;

  // Progress of the current Paho client (ClientOptions::stall_timeout), in
  // steady-clock nanoseconds. Publishes handed to Paho and completed (PUBACK or
  // failure); since when something is outstanding with no completion; since
  // when the resubscription waits for its SUBACK (0: not waiting).
  std::atomic<uint64_t> publishes_started{0};
  std::atomic<uint64_t> publishes_done{0};
  std::atomic<int64_t> progress_at_ns{0};
  std::atomic<int64_t> suback_wait_since_ns{0};
  // Held shared by publish()/subscribe() outside Paho callbacks, exclusively
  // while the Paho client is replaced.
  std::shared_mutex client_mutex;

  static int64_t steadyNanos() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  void publishStarted() {
    if (publishes_started.load() <= publishes_done.load()) progress_at_ns.store(steadyNanos());
    publishes_started.fetch_add(1);
  }
  void publishDone() {
    publishes_done.fetch_add(1);
    progress_at_ns.store(steadyNanos());
  }
  // Why the current client looks wedged, or nullptr.
  const char* stalled() const {
    if (options.stall_timeout.count() <= 0 || !connected.load()) return nullptr;
    const int64_t limit =
        std::chrono::duration_cast<std::chrono::nanoseconds>(options.stall_timeout).count();
    const int64_t now = steadyNanos();
    const int64_t suback_since = suback_wait_since_ns.load();
    if (suback_since != 0 && now - suback_since > limit) return "no SUBACK for the resubscription";
    if (publishes_started.load() > publishes_done.load() && now - progress_at_ns.load() > limit) {
      return "publishes outstanding and none completed";
    }
    return nullptr;
  }

  // Delivery listener of every publish: the broker's PUBACK reason code.
  struct PublishListener : ::mqtt::iaction_listener {
    Impl& impl;
    explicit PublishListener(Impl& i) : impl(i) {}
    void on_success(const ::mqtt::token&) override { impl.publishDone(); }
    void on_failure(const ::mqtt::token& tok) override {
      CallbackScope scope;
      impl.publishDone();
      // A publish that failed here (the connection went while it was in
      // flight) is no refusal: the caller's resend covers it.
      const int code = tok.get_reason_code();
      if (!isBrokerRefusal(code)) return;
      const auto* delivery = dynamic_cast<const ::mqtt::delivery_token*>(&tok);
      const auto msg = delivery != nullptr ? delivery->get_message() : nullptr;
      impl.publishRefused(msg ? msg->get_topic() : std::string(), code);
    }
  };
  PublishListener publish_listener{*this};

  // Listener of every connect: it runs before Paho's connected handler, so the
  // broker's limits are known before anyone is told the client is connected.
  struct ConnectListener : ::mqtt::iaction_listener {
    Impl& impl;
    explicit ConnectListener(Impl& i) : impl(i) {}
    void on_success(const ::mqtt::token& tok) override { impl.rememberBrokerLimits(tok); }
    void on_failure(const ::mqtt::token&) override {}
  };
  ConnectListener connect_listener{*this};

  ::mqtt::connect_options connect_options;
  // Declared last: destroyed first, so Paho never calls into freed members.
  std::unique_ptr<::mqtt::async_client> client;

  void callHandler(bool up) {
    std::lock_guard lock(handler_mutex);
    if (deliver && on_connection) on_connection(up);
  }

  void publishRefused(const std::string& topic, int code) {
    std::lock_guard lock(handler_mutex);
    if (deliver && options.on_publish_refused) {
      options.on_publish_refused(topic, code, ::mqtt::exception::reason_code_str(code));
    }
  }

  // Resubscription listener (iaction_listener): SUBACK for the whole remembered set.
  void on_success(const ::mqtt::token& tok) override {
    CallbackScope scope;
    suback_wait_since_ns.store(0);
    // MQTT 5 answers several filters in one SUBACK, a code per filter. Paho
    // throws instead when the first one is refused.
    std::vector<::mqtt::ReasonCode> codes;
    try {
      codes = tok.get_subscribe_response().get_reason_codes();
    } catch (const ::mqtt::exception& e) {
      codes = {::mqtt::ReasonCode(e.get_reason_code())};
    }
    const auto filters = tok.get_topics();
    for (size_t i = 0; i < codes.size(); ++i) {
      if (!isBrokerRefusal(codes[i])) continue;
      log::error("mqtt_subscribe_refused",
                 {{"client_id", options.client_id},
                  {"filter", filters && i < filters->size() ? (*filters)[i] : std::string()},
                  {"reason", reasonText(codes[i])}});
    }
    if (connected.load()) callHandler(true);
  }
  void on_failure(const ::mqtt::token& tok) override {
    CallbackScope scope;
    suback_wait_since_ns.store(0);
    log::error("mqtt_resubscribe_failed", {{"client_id", options.client_id},
                                           {"rc", tok.get_return_code()},
                                           {"reason", isBrokerRefusal(tok.get_reason_code())
                                                          ? reasonText(tok.get_reason_code())
                                                          : std::string()}});
    // Publishing still works; the caller's resend timers cover what is missed.
    if (connected.load()) callHandler(true);
  }

  void onConnected() {
    CallbackScope scope;
    // Publishes of the last connection may never complete (a session the
    // broker no longer had): only this connection's count. One of them that
    // completes after all merely hides a new one for a while.
    publishes_started.store(0);
    publishes_done.store(0);
    progress_at_ns.store(steadyNanos());
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
      suback_wait_since_ns.store(steadyNanos());
      // Never wait here: this is Paho's network thread. The listener reports.
      client->subscribe(filters, qos, nullptr, *this);
    } catch (const ::mqtt::exception& e) {
      suback_wait_since_ns.store(0);
      log::error("mqtt_resubscribe_failed",
                 {{"client_id", options.client_id}, {"error", e.what()}});
      callHandler(true);
    }
  }

  // The broker's DISCONNECT (MQTT 5), just before onConnectionLost().
  void onDisconnected(const ::mqtt::properties& props, ::mqtt::ReasonCode code) {
    CallbackScope scope;
    broker_disconnect_reason.store(code);
    std::string detail;
    if (props.contains(::mqtt::property::REASON_STRING)) {
      detail = ::mqtt::get<std::string>(props, ::mqtt::property::REASON_STRING);
    }
    log::warn("mqtt_disconnected_by_broker",
              {{"client_id", options.client_id}, {"reason", reasonText(code)}, {"detail", detail}});
    if (code == ::mqtt::ReasonCode::SESSION_TAKEN_OVER)
      takenOver(ClientOptions::Takeover::kBrokerSaidSo);
  }

  void takenOver(ClientOptions::Takeover how) {
    std::lock_guard lock(handler_mutex);
    if (deliver && options.on_session_taken_over) options.on_session_taken_over(how);
  }

  // After each connect that worked (connector thread).
  void noteReconnect() {
    const auto now = std::chrono::steady_clock::now();
    bool suspect = false;
    {
      std::lock_guard lock(state_mutex);
      if (!unexplained_drop) return;
      unexplained_drop = false;
      std::erase_if(quick_drops, [&](auto t) { return now - t > kTakeoverWindow; });
      quick_drops.push_back(now);
      if (quick_drops.size() >= static_cast<size_t>(kTakeoverDrops)) {
        quick_drops.clear();
        suspect = true;
      }
    }
    if (suspect) takenOver(ClientOptions::Takeover::kRepeatedDrops);
  }

  void onConnectionLost(const std::string& paho_cause) {
    CallbackScope scope;
    connected.store(false);
    // Paho gives no cause for a DISCONNECT from the broker; its reason is the cause.
    const int reason = broker_disconnect_reason.exchange(0);
    const std::string cause = !paho_cause.empty() ? paho_cause
                              : reason != 0       ? "broker sent DISCONNECT " + reasonText(reason)
                                                  : std::string();
    log::warn("mqtt_connection_lost", {{"client_id", options.client_id}, {"cause", cause}});
    {
      std::lock_guard lock(state_mutex);
      connection_lost = true;
      // A DISCONNECT with a reason explains itself (a takeover it names is
      // reported already); only a silent close counts towards a suspicion.
      unexplained_drop = paho_cause.empty() && reason == 0;
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
      const char* stall = nullptr;
      while (!stopping && !connection_lost && stall == nullptr) {
        state_cv.wait_for(lock, std::chrono::seconds(1));
        stall = stalled();
      }
      if (stall != nullptr && !stopping && !connection_lost) {
        lock.unlock();
        replaceStalledClient(stall);
        lock.lock();
      }
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

  // Connector thread: the wedged Paho client goes (its queued publishes with
  // it) and a new one, with the same options and callbacks, connects next.
  void replaceStalledClient(const char* why) {
    log::error("mqtt_client_stalled",
               {{"client_id", options.client_id},
                {"why", why},
                {"stall_timeout_ms", static_cast<int64_t>(options.stall_timeout.count())},
                {"outstanding_publishes", publishes_started.load() - publishes_done.load()},
                {"action", "replacing the MQTT client; unacked batches are resent"}});
    connected.store(false);
    try {
      client->disable_callbacks();
    } catch (const ::mqtt::exception&) {
      // Only fails while a connect is in progress; destroying the client stops it too.
    }
    std::this_thread::sleep_for(kTokenCallbackGrace);
    callHandler(false);
    {
      std::unique_lock exclusive(client_mutex);
      client.reset();
      client = makePahoClient();
      publishes_started.store(0);
      publishes_done.store(0);
      suback_wait_since_ns.store(0);
    }
    std::lock_guard lock(state_mutex);
    connection_lost = true;  // the loop connects the new client
  }

  std::unique_ptr<::mqtt::async_client> makePahoClient() {
    // MQTT 5 on the client and on every connect (Paho refuses a mix).
    ::mqtt::create_options create(MQTTVERSION_5);
    // nullptr persistence = MQTTCLIENT_PERSISTENCE_NONE: the caller's SQLite is the record of
    // truth.
    auto c = std::make_unique<::mqtt::async_client>(options.broker_uris.front(), options.client_id,
                                                    create, nullptr);
    c->set_connected_handler([this](const std::string&) { onConnected(); });
    c->set_disconnected_handler([this](const ::mqtt::properties& props, ::mqtt::ReasonCode code) {
      onDisconnected(props, code);
    });
    c->set_connection_lost_handler([this](const std::string& cause) { onConnectionLost(cause); });
    c->set_message_callback([this](::mqtt::const_message_ptr msg) { onMessage(std::move(msg)); });
    return c;
  }

  void rememberBrokerLimits(const ::mqtt::token& tok) {
    uint32_t max = 0;
    try {
      const auto response = tok.get_connect_response();
      const auto& props = response.get_properties();
      if (props.contains(::mqtt::property::MAXIMUM_PACKET_SIZE))
        max = ::mqtt::get<uint32_t>(props, ::mqtt::property::MAXIMUM_PACKET_SIZE);
    } catch (const ::mqtt::exception&) {
      // No CONNACK properties: the broker then sets no limit.
    }
    broker_max_packet.store(max);
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
        if (connectTo(uri, error)) {
          noteReconnect();
          return;
        }
        std::lock_guard lock(state_mutex);
        unexplained_drop = false;  // the broker (or the way to it) was away
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
      auto tok = client->connect(connect_options, nullptr, connect_listener);
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
  keepPahoInitialized();
  impl_->client = impl_->makePahoClient();

  auto& co = impl_->connect_options;
  co.set_mqtt_version(MQTTVERSION_5);
  // The MQTT 3.1.1 clean-session switch, as MQTT 5 says it: Clean Start, and
  // how long the broker keeps the session once the connection ends.
  co.set_clean_start(o.clean_session);
  const uint32_t expiry = o.clean_session ? 0 : static_cast<uint32_t>(o.session_expiry.count());
  co.set_properties(::mqtt::properties{
      // Paho takes four-byte properties as int32_t; the bits are the uint32_t.
      {::mqtt::property::SESSION_EXPIRY_INTERVAL, static_cast<int32_t>(expiry)},
      {::mqtt::property::MAXIMUM_PACKET_SIZE, static_cast<int32_t>(o.max_packet_size)},
  });
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
  std::shared_lock client_lock(impl_->client_mutex, std::defer_lock);
  if (!t_in_paho_callback) client_lock.lock();
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
  // Sent, it would make the broker drop the connection (MQTT 5 forbids a
  // packet past the receiver's Maximum Packet Size), and every resend again.
  const uint32_t broker_max = impl_->broker_max_packet.load();
  if (broker_max != 0 && publishPacketBytes(topic, payload.size(), qos) > broker_max) {
    impl_->publishRefused(topic, ::mqtt::ReasonCode::PACKET_TOO_LARGE);
    return Status::invalid("publish to `" + topic + "`: " + std::to_string(payload.size()) +
                           " bytes is past the broker's maximum packet size (" +
                           std::to_string(broker_max) +
                           " bytes, its max_packet_size); raise it or lower the batch limits");
  }
  // A Paho callback runs on the current client, which is only replaced once
  // callbacks are off; any other caller holds it while it uses it.
  std::shared_lock client_lock(impl_->client_mutex, std::defer_lock);
  if (!t_in_paho_callback) client_lock.lock();
  try {
    auto msg = ::mqtt::make_message(topic, ::mqtt::binary_ref(std::move(payload)), qos, retain);
    impl_->publishStarted();
    // Not waited on: the listener hears the broker's PUBACK reason code.
    impl_->client->publish(std::move(msg), nullptr, impl_->publish_listener);
  } catch (const ::mqtt::exception& e) {
    impl_->publishDone();  // never handed over
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
