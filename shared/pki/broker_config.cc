#include "shared/pki/broker_config.h"

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <filesystem>

namespace branchline::pki {
namespace json = boost::json;

bool validIdentityName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string aggregatorIdentity(std::string_view aggregator_name) {
  return "aggregator." + std::string(aggregator_name);
}

std::string bridgeIdentity(std::string_view broker_name) {
  return "bridge." + std::string(broker_name);
}

std::string mosquittoTlsSettings(const BrokerTlsFiles& files) {
  std::string out = mosquittoListenerTlsSettings(files);
  out += "allow_anonymous false\n";
  // Access control by the dynamic-security plugin, not acl_file: Mosquitto
  // 2.0's acl_file never checks a SUBSCRIBE (security_default.c allows every
  // one), so any fleet certificate could join the aggregators' `$share` group
  // and take its round-robin turn of every agent's batches, which the read
  // check then drops. The plugin checks subscriptions (a refused one gets
  // SUBACK 0x80, 0x87 with MQTT 5) as well as publishes and deliveries.
  out += "plugin " + files.plugin_file + "\n";
  out += "plugin_opt_config_file " + files.policy_file + "\n";
  return out;
}

std::string mosquittoListenerTlsSettings(const BrokerTlsFiles& files) {
  std::string out;
  out += "cafile " + files.ca_file + "\n";
  if (!files.crl_file.empty()) out += "crlfile " + files.crl_file + "\n";  // read at (re)load
  out += "certfile " + files.cert_file + "\n";
  out += "keyfile " + files.key_file + "\n";
  // Mosquitto 2.0 reads this as the lowest version it accepts (1.3 stays on).
  out += "tls_version tlsv1.2\n";
  out += "require_certificate true\n";
  // The certificate's CN is the user name the access policy sees; with it no
  // client can claim a name its certificate does not carry.
  out += "use_identity_as_username true\n";
  // ... and the client id too, whatever the client sent: one identity per
  // connection. A certificate can then take over only its own session and fire
  // only its own will (never another agent's or an aggregator's), and two
  // copies of one agent replace each other instead of two others.
  out += "use_username_as_clientid true\n";
  return out;
}

namespace {

json::object acl(const char* type, const std::string& topic) {
  return json::object{{"acltype", type}, {"topic", topic}, {"allow", true}};
}

json::object role(const std::string& name, json::array acls) {
  return json::object{{"rolename", name}, {"acls", std::move(acls)}};
}

json::object client(const std::string& username, const std::string& role_name) {
  return json::object{{"username", username},
                      {"roles", json::array{json::object{{"rolename", role_name}}}}};
}

// A topic a client may subscribe to and then receive; `$share/<any group>/`
// too when `shared`.
void subscribeAndReceive(json::array& acls, const std::string& topic, bool shared) {
  acls.push_back(acl("subscribePattern", topic));
  if (shared) acls.push_back(acl("subscribePattern", "$share/+/" + topic));
  acls.push_back(acl("publishClientReceive", topic));
}

}  // namespace

std::string mosquittoDynamicSecurity(std::string_view topic_prefix,
                                     const BrokerIdentities& identities) {
  const std::string prefix(topic_prefix);
  const std::string agents = prefix + "/agents/";
  const std::string online = prefix + "/aggregators/+/online";
  json::array roles, clients;
  for (const auto& id : identities.agents) {
    json::array acls;
    acls.push_back(acl("publishClientSend", agents + id + "/batch"));
    acls.push_back(acl("publishClientSend", agents + id + "/status"));
    subscribeAndReceive(acls, agents + id + "/ack", false);
    subscribeAndReceive(acls, agents + id + "/config", false);
    // Every agent hears that an aggregator is back or gone (it then resends).
    subscribeAndReceive(acls, online, false);
    roles.push_back(role("agent." + id, std::move(acls)));
    clients.push_back(client(id, "agent." + id));
  }
  for (const auto& name : identities.aggregators) {
    json::array acls;
    subscribeAndReceive(acls, agents + "+/batch", true);
    subscribeAndReceive(acls, agents + "+/status", true);
    acls.push_back(acl("publishClientSend", agents + "+/ack"));
    acls.push_back(acl("publishClientSend", agents + "+/config"));
    // Its own announcements and will only: no aggregator speaks for another.
    acls.push_back(acl("publishClientSend", prefix + "/aggregators/" + name + "/online"));
    const std::string identity = aggregatorIdentity(name);
    roles.push_back(role(identity, std::move(acls)));
    clients.push_back(client(identity, identity));
  }
  for (const auto& name : identities.bridges) {
    json::array acls;
    subscribeAndReceive(acls, prefix + "/#", false);
    acls.push_back(acl("publishClientSend", prefix + "/#"));
    const std::string identity = bridgeIdentity(name);
    roles.push_back(role(identity, std::move(acls)));
    clients.push_back(client(identity, identity));
  }
  // Deny by default. $CONTROL (the plugin's own admin topics) is never granted:
  // the policy changes only with this file and a broker restart.
  json::object doc{{"defaultACLAccess", json::object{{"publishClientSend", false},
                                                     {"publishClientReceive", false},
                                                     {"subscribe", false},
                                                     {"unsubscribe", true}}},
                   {"roles", std::move(roles)},
                   {"clients", std::move(clients)},
                   {"groups", json::array{}}};
  return json::serialize(doc) + "\n";
}

Result<std::string> dynamicSecurityPlugin() {
  for (const char* path :
       {kDebianDynamicSecurityPlugin, "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib64/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so"}) {
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) return std::string(path);
  }
  return Status::notFound(
      "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed: "
      "install Mosquitto 2.0 or later with it (Debian/Ubuntu: package `mosquitto`)");
}

std::string mosquittoLimits(uint64_t max_message_bytes) {
  std::string out;
  // The whole packet: the largest payload the aggregators accept plus 4 KiB
  // for the fixed header, the topic (under 200 bytes) and MQTT 5 properties.
  // Mosquitto checks it from the packet's length prefix, before reading the
  // payload, and disconnects the client (MQTT 5: DISCONNECT 0x95 first), so an
  // oversized publish never reaches memory or a subscriber. No
  // message_size_limit: between it and this limit a QoS 1 publish would be
  // PUBACKed and dropped, a silent loss; at the aggregator an oversized batch
  // is refused and audited instead.
  out += "max_packet_size " + std::to_string(max_message_bytes + 4096) + "\n";
  // Per client, beyond the in-flight window. 128 MiB holds every agent's
  // default window (batch.window_bytes, 1 MiB) for a hundred agents queued for
  // one aggregator; past it Mosquitto drops QoS 1 messages for that client,
  // which loses nothing: the agent keeps each batch until it is acked and
  // resends it after batch.ack_timeout_ms.
  out += "max_queued_messages 1000000\n";
  out += "max_queued_bytes " + std::to_string(uint64_t{128} << 20) + "\n";
  out += "max_inflight_messages 100\n";
  // A session nobody resumes is dropped after this, with what was queued for
  // it: the sessions left under client ids no longer used (before the client
  // id was the certificate's CN, or of an agent retired without a revoke)
  // would otherwise hold up to max_queued_bytes each for good. MQTT 5 clients
  // set their own Session Expiry (an agent's: 24 h), which is shorter.
  out += "persistent_client_expiration 7d\n";
  return out;
}

}  // namespace branchline::pki
