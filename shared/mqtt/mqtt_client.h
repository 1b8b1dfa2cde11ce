// MQTT client for agents and aggregators, over the Eclipse Paho C++ async
// client: QoS 1 publish, subscriptions re-made on every reconnect, automatic
// reconnect with backoff across a list of broker URIs. Callbacks run on Paho's
// single network thread: they must not block (post work elsewhere).
//
// A PUBACK only means the broker has the message; nothing here is a record of
// truth. Callers keep in flight only what they can re-drive from their own
// durable state.
//
// Protocol: MQTT 5 (README "MQTT 5"), so the broker says why it refuses: a
// publish it will not take comes back as a PUBACK reason code
// (ClientOptions::on_publish_refused), and a session another client took over
// as a DISCONNECT reason or, where the broker says nothing, as repeated drops
// (on_session_taken_over). `$share/<group>/...` filters
// work as before. No client persistence (MQTTCLIENT_PERSISTENCE_NONE).
// `ssl://` URIs use mutual TLS (ClientOptions::ca_file, cert_file, key_file).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shared/core/status.h"

namespace branchline::mqtt {

struct ClientOptions {
  // "tcp://127.0.0.1:1883", tried in order, from the first on every (re)connect.
  std::vector<std::string> broker_uris;
  std::string client_id;
  // true: Clean Start with a Session Expiry Interval of 0, the session ends
  // with the connection. false: a persistent session (its subscriptions, and
  // QoS 1 messages for it while away) that the broker keeps for
  // `session_expiry` after the connection ends.
  bool clean_session = true;
  std::chrono::seconds session_expiry{std::chrono::hours(24)};
  // Maximum Packet Size sent on CONNECT: the broker sends this client nothing
  // larger (it drops such a message for this client). The default carries the
  // largest batch (limits.max_message_bytes, 16 MiB) with room for its topic.
  uint32_t max_packet_size = (16u << 20) + (64u << 10);
  std::chrono::seconds keepalive{10};
  std::chrono::milliseconds min_reconnect{250};
  std::chrono::milliseconds max_reconnect{5000};
  // Connected, yet the resubscription has had no SUBACK, or publishes are
  // outstanding and none has completed, for this long: the Paho client is
  // taken to be wedged (seen once after a broker restart: connected and
  // pinging, never sending again). It is then replaced by a new one that
  // connects afresh (`mqtt_client_stalled`); callers resend as after any
  // reconnect. 0 turns the check off.
  std::chrono::milliseconds stall_timeout{30000};
  int max_inflight = 64;  // Paho's own in-flight window (messages)
  std::string username;   // optional
  std::string password;   // optional; never logged
  // TLS, for `ssl://` / `mqtts://` URIs (README "Security"): TLS 1.2 or later,
  // the broker's certificate verified against `ca_file` (the system trust
  // store when empty) and its host name or IP address checked against the
  // certificate's subjectAltName. `cert_file` + `key_file` (both or neither):
  // this client's certificate and key; the broker takes its identity (the
  // CN) as the user name. start() refuses missing files, a key file that
  // grants group/other access and a key that is not the certificate's, and
  // warns about an expired certificate. Unused for tcp:// URIs.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Last will: the broker publishes it (QoS 1, not retained) for this client
  // when the connection ends without a DISCONNECT: the process was killed, or
  // the link went silent past 1.5 keep-alives. Empty topic: none.
  std::string will_topic;
  std::string will_payload;
  bool will_retain = false;  // the broker keeps it as the topic's retained message

  // What the broker refused. Both run on Paho's network thread (or, for a
  // publish refused before it is sent, on the publishing thread): they must
  // not block. Optional.
  // A QoS 1 publish the broker refused: its PUBACK reason code (>= 0x80, e.g.
  // 0x87 Not authorized for an ACL refusal) and that code's name. A publish
  // larger than the broker's Maximum Packet Size is refused here, without
  // sending it, as 0x95 Packet too large (the broker would drop the link).
  std::function<void(const std::string& topic, int reason_code, const std::string& reason)>
      on_publish_refused;
  // Another client is connected under this client id and the broker keeps
  // handing the session to whichever connected last (two live copies of one
  // identity). kBrokerSaidSo: the broker's DISCONNECT said 0x8E Session taken
  // over (Mosquitto 2.0.15 and later). kRepeatedDrops: brokers that close the
  // old connection without a word (Mosquitto 2.0.11): the broker closed a
  // working connection kTakeoverDrops times within kTakeoverWindow and took
  // the client back at once every time, which a broker restart or a cut line
  // does not do.
  enum class Takeover { kBrokerSaidSo, kRepeatedDrops };
  std::function<void(Takeover)> on_session_taken_over;
};

inline constexpr int kTakeoverDrops = 3;
inline constexpr std::chrono::seconds kTakeoverWindow{60};
const char* takeoverName(ClientOptions::Takeover how);  // "session_taken_over", "repeated_drops"

struct Message {
  std::string topic;
  std::string payload;
};

using MessageHandler = std::function<void(Message&&)>;
// connected=true after each (re)connect, once subscriptions are re-made; false on loss.
using ConnectionHandler = std::function<void(bool connected)>;

class Client {
 public:
  Client(ClientOptions options, MessageHandler on_message, ConnectionHandler on_connection);
  ~Client();  // disconnects, waits for Paho's thread to finish with our callbacks

  // Starts connecting in the background; returns at once. Keeps retrying forever.
  // kInvalidArgument / kNotFound / kPermissionDenied for unusable TLS options
  // (naming the option and the file), before any connection is tried.
  Status start();
  // Remembered and re-applied after every reconnect. `filter` may be `$share/g/...`.
  // While connected it waits (up to 5 s) for the SUBACK, so a publish right after
  // it is seen; called from a handler it only queues the request (never blocks Paho).
  // A SUBACK refusal is kPermissionDenied for 0x87 Not authorized, else
  // kUnavailable, naming the reason code (the filter is still remembered);
  // on a reconnect it is logged as mqtt_subscribe_refused.
  Status subscribe(const std::string& filter, int qos = 1);
  // Queues a publish without blocking. kUnavailable while disconnected (nothing
  // queued); kInvalidArgument for a message past the broker's Maximum Packet
  // Size (also reported to on_publish_refused). A refusal by the broker comes
  // later, to on_publish_refused. `retain`: the broker keeps it and hands it to
  // every later subscriber.
  Status publish(const std::string& topic, std::string payload, int qos = 1, bool retain = false);
  bool connected() const;
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::mqtt
