#include "shared/pki/broker_config.h"

namespace branchline::pki {

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
  out += "acl_file " + files.acl_file + "\n";
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
  // The certificate's CN is the user name the ACL's %u and `user` lines see;
  // with it no client can claim a name its certificate does not carry.
  out += "use_identity_as_username true\n";
  return out;
}

std::string mosquittoAcl(std::string_view topic_prefix,
                         const std::vector<std::string>& aggregator_names,
                         const std::vector<std::string>& bridge_names) {
  const std::string agents = std::string(topic_prefix) + "/agents/";
  std::string out =
      "# Written by `branchline pki`: each client's user name is its certificate's CN.\n"
      "# Agents (CN = agent id): their own topics only.\n";
  out += "pattern write " + agents + "%u/batch\n";
  out += "pattern write " + agents + "%u/status\n";
  out += "pattern read " + agents + "%u/ack\n";
  out += "pattern read " + agents + "%u/config\n";
  // Every client may hear that an aggregator is back (agents then resend at once).
  const std::string online = std::string(topic_prefix) + "/aggregators/+/online";
  out += "pattern read " + online + "\n";
  for (const auto& name : aggregator_names) {
    out += "\n# Aggregator " + name + ": reads every batch and status, answers with acks.\n";
    out += "user " + aggregatorIdentity(name) + "\n";
    out += "topic read " + agents + "+/batch\n";
    out += "topic write " + agents + "+/ack\n";
    out += "topic read " + agents + "+/status\n";
    out += "topic write " + agents + "+/config\n";
    out += "topic write " + online + "\n";
  }
  for (const auto& name : bridge_names) {
    out += "\n# Bridge from broker " + name + ": carries every client's topics both ways.\n";
    out += "user " + bridgeIdentity(name) + "\n";
    out += "topic readwrite " + std::string(topic_prefix) + "/#\n";
  }
  return out;
}

}  // namespace branchline::pki
