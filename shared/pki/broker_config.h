// The broker's side of the fleet's identities (README "Security"): the
// Mosquitto 2.0 settings for a TLS listener that demands a client certificate
// and takes its CN as the user name, and the ACL that lets an agent write only
// its own batch/status topics and read only its own ack/config topics, while
// each aggregator identity reads every batch and status and writes acks and
// config. No anonymous access.
#pragma once

#include <string>
#include <string_view>
#include <vector>

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
  std::string ca_file;    // clients' certificates must chain to it
  std::string cert_file;  // the broker's server certificate
  std::string key_file;   // its key; Mosquitto must be able to read it
  std::string acl_file;   // mosquittoAcl() text
  std::string crl_file;   // the CA-signed revocation list (`crlfile`); "" for none
};

// mosquitto.conf lines that follow a `listener <port> <address>` line: the
// listener's TLS settings and then the global ones (no anonymous access, the
// ACL), which Mosquitto accepts only once per file.
std::string mosquittoTlsSettings(const BrokerTlsFiles& files);
// Only the listener's own TLS settings, for every further listener.
std::string mosquittoListenerTlsSettings(const BrokerTlsFiles& files);

// The acl_file text for `topic_prefix` ("branchline/v1") and these aggregators;
// each bridge (by broker name) may read and write everything under the prefix,
// since it carries every client's traffic between the two brokers.
std::string mosquittoAcl(std::string_view topic_prefix,
                         const std::vector<std::string>& aggregator_names,
                         const std::vector<std::string>& bridge_names = {});

}  // namespace branchline::pki
