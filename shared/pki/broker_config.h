// The broker's side of the fleet's identities (README "Security"): the
// Mosquitto 2.0 settings for a TLS listener that demands a client certificate
// and takes its CN as the user name and the client id, and the access policy
// (Mosquitto's dynamic-security plugin) that lets an agent write only its own
// batch/status topics and read only its own ack/config topics, while only
// aggregator identities may subscribe to batches (shared or not) and write
// acks and config. No anonymous access; an identity the policy does not name
// may do nothing. Also the broker limits that match the batch limits.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace branchline::pki {

// Agent ids and aggregator names in certificates and file names: [A-Za-z0-9_-]{1,64}.
bool validIdentityName(std::string_view name);

// The CN (and so the broker user name) of an aggregator's client certificate:
// "aggregator.<name>". The dot keeps it apart from every possible agent id.
std::string aggregatorIdentity(std::string_view aggregator_name);

// The CN (and broker user name) of the client certificate a bridging broker
// `<name>` presents to the broker it bridges to: "bridge.<name>" (README
// "Two brokers (failover)"). The dot keeps it apart from agent ids too.
std::string bridgeIdentity(std::string_view broker_name);

struct BrokerTlsFiles {
  std::string ca_file;      // clients' certificates must chain to it
  std::string cert_file;    // the broker's server certificate
  std::string key_file;     // its key; Mosquitto must be able to read it
  std::string policy_file;  // mosquittoDynamicSecurity() JSON
  std::string plugin_file;  // mosquitto_dynamic_security.so (dynamicSecurityPlugin())
  std::string crl_file;     // the CA-signed revocation list (`crlfile`); "" for none
};

// mosquitto.conf lines that follow a `listener <port> <address>` line: the
// listener's TLS settings and then the global ones (no anonymous access, the
// dynamic-security plugin with `policy_file`), which Mosquitto accepts only
// once per file.
std::string mosquittoTlsSettings(const BrokerTlsFiles& files);
// Only the listener's own TLS settings, for every further listener.
std::string mosquittoListenerTlsSettings(const BrokerTlsFiles& files);

// Every identity the broker admits to anything; the policy names each one.
struct BrokerIdentities {
  std::vector<std::string> agents;       // agent ids (CN = id)
  std::vector<std::string> aggregators;  // aggregator names (CN "aggregator.<name>")
  std::vector<std::string> bridges;      // broker names (CN "bridge.<name>")
};

// The dynamic-security plugin's config file (JSON) for `topic_prefix`
// ("branchline/v1"): one role per agent (its own topics), one per aggregator
// (every batch and status, through `$share` or not; acks, config and its own
// `online` topic), and `<prefix>/#` both ways for each bridge, which carries
// every client's traffic between two brokers. Anything not granted is
// refused, a SUBSCRIBE with a failure code in its SUBACK.
std::string mosquittoDynamicSecurity(std::string_view topic_prefix,
                                     const BrokerIdentities& identities);

// Where Mosquitto's dynamic-security plugin is installed on this machine;
// kNotFound (naming the package) when it is not.
Result<std::string> dynamicSecurityPlugin();
// The Debian/Ubuntu path, for configs written for another machine.
inline constexpr const char* kDebianDynamicSecurityPlugin =
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";

// The largest payload an aggregator accepts by default (limits.max_message_bytes).
inline constexpr uint64_t kDefaultMaxMessageBytes = uint64_t{16} << 20;

// mosquitto.conf lines bounding what one client can make the broker hold:
// `max_packet_size` (a publish whose payload is larger than
// `max_message_bytes`, the aggregators' limit, is refused before it is read
// into memory: the client is disconnected), `max_queued_bytes` and
// `max_queued_messages` per client, `max_inflight_messages`.
std::string mosquittoLimits(uint64_t max_message_bytes = kDefaultMaxMessageBytes);

}  // namespace branchline::pki
