// MQTT client for agents and aggregators, over the Eclipse Paho C++ async
// client: QoS 1 publish, subscriptions re-made on every reconnect, automatic
// reconnect with backoff across a list of broker URIs. Callbacks run on Paho's
// single network thread: they must not block (post work elsewhere).
//
// A PUBACK only means the broker has the message; nothing here is a record of
// truth. Callers keep in flight only what they can re-drive from their own
// durable state.
//
// Protocol: MQTT 3.1.1 (Mosquitto 2.0 honours `$share/<group>/...` with it), no
// client persistence (MQTTCLIENT_PERSISTENCE_NONE). `ssl://` URIs use mutual TLS
// (ClientOptions::ca_file, cert_file, key_file).
#pragma once

#include <chrono>
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
  bool clean_session = true;
  std::chrono::seconds keepalive{10};
  std::chrono::milliseconds min_reconnect{250};
  std::chrono::milliseconds max_reconnect{5000};
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
};

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
  Status subscribe(const std::string& filter, int qos = 1);
  // Queues a publish without blocking. kUnavailable while disconnected (nothing queued).
  // `retain`: the broker keeps it and hands it to every later subscriber.
  Status publish(const std::string& topic, std::string payload, int qos = 1, bool retain = false);
  bool connected() const;
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::mqtt
