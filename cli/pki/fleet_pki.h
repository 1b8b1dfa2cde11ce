// The fleet's PKI folder (README "Security / PKI layout") and the operations
// that fill it: `branchline pki init` (the certificate authority, the broker's
// server certificate, the aggregators' client certificates and their sealing
// key) and `branchline pki enroll` (one agent's, or one more aggregator's,
// certificate and sealing key pair). LocalPipeline uses the same functions, and
// enrollBridge() for the bridge of its second broker. The lifecycle after
// that: renewIdentity(), revokeIdentity() (the CA-signed broker/crl.pem and, for
// an agent, its sealing key withdrawn from the aggregators), rotateSealKey()
// and listIdentities().
//
// Guarantees: an existing CA is never overwritten, nor any existing key or
// certificate (each is created with link(2), so even a concurrent run cannot
// replace one); private keys are 0600 and written atomically; nothing secret
// reaches a log line or an error message.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "shared/core/status.h"

namespace branchline::cli {

// Where each file lives inside a PKI folder `dir`.
struct PkiLayout {
  std::filesystem::path dir;

  std::filesystem::path caCert() const { return dir / "ca.crt"; }
  std::filesystem::path caKey() const { return dir / "ca.key"; }
  std::filesystem::path brokerDir() const { return dir / "broker"; }
  std::filesystem::path brokerCert() const { return brokerDir() / "broker.crt"; }
  std::filesystem::path brokerKey() const { return brokerDir() / "broker.key"; }
  // The broker's access policy: the dynamic-security plugin's config file.
  std::filesystem::path brokerPolicy() const { return brokerDir() / "dynamic-security.json"; }
  std::filesystem::path brokerConf() const { return brokerDir() / "mosquitto-tls.conf"; }
  // The CA-signed revocation list the broker's `crlfile` names (empty after init).
  std::filesystem::path revocationList() const { return brokerDir() / "crl.pem"; }
  std::filesystem::path aggregatorsDir() const { return dir / "aggregators"; }
  std::filesystem::path aggregatorCert(const std::string& name) const {
    return aggregatorsDir() / (name + ".crt");
  }
  std::filesystem::path aggregatorKey(const std::string& name) const {
    return aggregatorsDir() / (name + ".key");
  }
  std::filesystem::path sealPrivateKey(const std::string& key_id) const {
    return aggregatorsDir() / ("seal-" + key_id + ".key");
  }
  std::filesystem::path sealPublicKey(const std::string& key_id) const {
    return aggregatorsDir() / ("seal-" + key_id + ".pub");
  }
  // A copy of the current aggregators' public sealing key: what agents seal to.
  std::filesystem::path currentSealPublicKey() const { return aggregatorsDir() / "seal.pub"; }
  // A second broker's client certificate for its bridge to the first (CN "bridge.<name>").
  std::filesystem::path bridgesDir() const { return dir / "bridges"; }
  std::filesystem::path bridgeCert(const std::string& broker) const {
    return bridgesDir() / (broker + ".crt");
  }
  std::filesystem::path bridgeKey(const std::string& broker) const {
    return bridgesDir() / (broker + ".key");
  }
  std::filesystem::path agentsDir() const { return dir / "agents"; }
  std::filesystem::path agentCert(const std::string& id) const {
    return agentsDir() / (id + ".crt");
  }
  std::filesystem::path agentKey(const std::string& id) const {
    return agentsDir() / (id + ".key");
  }
  std::filesystem::path agentSealKey(const std::string& id) const {
    return agentsDir() / (id + ".seal.key");
  }
  std::filesystem::path agentSealPublic(const std::string& id) const {
    return agentsDir() / (id + ".seal.pub");
  }
  // A revoked agent's public sealing key, renamed from <id>.seal.pub: the
  // aggregators refuse its batches as `revoked` (README "Renewal, revocation, rotation").
  std::filesystem::path agentSealRevoked(const std::string& id) const {
    return agentsDir() / (id + ".seal.pub.revoked");
  }
};

// Which identity a lifecycle command names: `NAME`, `--aggregator NAME`, `--bridge NAME`.
enum class IdentityRole { kAgent, kAggregator, kBridge };

struct PkiInitOptions {
  std::string dir;  // created if missing
  std::vector<std::string> aggregators{"agg-1", "agg-2"};
  // Added to the broker certificate's subjectAltName after IP 127.0.0.1 and
  // DNS localhost: an IPv4/IPv6 address becomes an IP entry, anything else a DNS name.
  std::vector<std::string> broker_hosts;
  int days = 825;                              // broker, aggregator certificates
  int ca_days = 3650;                          // the authority
  std::string topic_prefix = "branchline/v1";  // for the broker's access policy
};

// What was written (paths, for the operator), and the sealing key's id.
struct PkiReport {
  std::vector<std::string> files;
  std::string seal_key_id;
};

// kAlreadyExists (nothing written) when the folder already holds ca.crt or ca.key;
// kInvalidArgument for a bad name or option.
Result<PkiReport> initPki(const PkiInitOptions& options);

// An agent's TLS client certificate (CN = agent id) and sealing key pair, then
// broker/dynamic-security.json rewritten for every identity in the folder.
// kNotFound without a CA in `dir`; kAlreadyExists if the agent is enrolled.
Result<PkiReport> enrollAgent(const std::string& dir, const std::string& agent_id, int days = 825,
                              const std::string& topic_prefix = "branchline/v1");

// One more aggregator's client certificate (CN "aggregator.<name>"), then
// broker/dynamic-security.json rewritten for every identity in the folder.
Result<PkiReport> enrollAggregator(const std::string& dir, const std::string& name, int days = 825,
                                   const std::string& topic_prefix = "branchline/v1");

// The client certificate broker `broker_name` presents when it bridges to
// another broker of the fleet (CN "bridge.<name>", bridges/<name>.crt/.key),
// then broker/dynamic-security.json rewritten so that identity may carry
// `<prefix>/#` both ways.
// kNotFound without a CA in `dir`; kAlreadyExists if that broker is enrolled.
Result<PkiReport> enrollBridge(const std::string& dir, const std::string& broker_name,
                               int days = 825, const std::string& topic_prefix = "branchline/v1");

// The current aggregators' private sealing key file (aggregators/seal-<id>.key,
// the pair of seal.pub). kNotFound / kInvalidArgument when seal.pub is missing or bad.
Result<std::filesystem::path> currentSealPrivateKey(const std::string& dir);

// Writes an empty CA-signed broker/crl.pem when the folder has none (a folder
// made before revocation existed); initPki writes it. Never replaces one.
Status ensureRevocationList(const std::string& dir);

// What a renewal or revocation did, for the operator.
struct LifecycleReport {
  std::vector<std::string> files;  // written, renamed or replaced
  std::string common_name;
  std::string old_serial;  // canonical hex (pki/crl.h)
  int64_t old_not_after = 0;
  std::string new_serial;  // renewIdentity only
  int64_t new_not_after = 0;
};

// A new key and certificate (same CN and role, `days` from now) for an
// enrolled identity, each file replaced atomically (key first, then
// certificate). The old certificate stays valid until it expires unless it is
// revoked. kNotFound when the identity is not enrolled; kPermissionDenied when
// its certificate is revoked (renewal would re-admit it: enroll it anew).
Result<LifecycleReport> renewIdentity(const std::string& dir, const std::string& name,
                                      IdentityRole role, int days = 825);

// Adds the identity's certificate to broker/crl.pem (re-signed by the CA) and,
// for an agent, renames agents/<id>.seal.pub to <id>.seal.pub.revoked.
// kNotFound when not enrolled; kAlreadyExists when already revoked (nothing
// changed). The broker applies the CRL to new connections after a reload.
Result<LifecycleReport> revokeIdentity(const std::string& dir, const std::string& name,
                                       IdentityRole role, int64_t now_unix_seconds = 0);

struct SealRotationReport {
  std::vector<std::string> files;
  std::string old_key_id, new_key_id;
  std::filesystem::path old_private_key, new_private_key;
};

// A new aggregators' X25519 pair (aggregators/seal-<new>.key/.pub) and
// aggregators/seal.pub switched to it; the old pair's files stay for the grace
// period. kNotFound without a current seal.pub or its private key.
Result<SealRotationReport> rotateSealKey(const std::string& dir);

// One identity in the folder, as `branchline pki list` prints it.
struct IdentityListing {
  std::string role;  // "ca", "broker", "aggregator", "agent", "bridge"
  std::string name;  // file stem ("agent-1", "agg-1"; "ca", "broker")
  std::string common_name;
  std::string serial;  // canonical hex
  int64_t not_after = 0;
  double days_left = 0;
  bool revoked = false;
  std::string certificate_file;
};

// Every certificate in the folder, CA first, then broker, aggregators, bridges
// and agents (each sorted by name), revoked or not per broker/crl.pem.
// `now_unix_seconds` 0: the clock. kNotFound without a CA.
Result<std::vector<IdentityListing>> listIdentities(const std::string& dir,
                                                    int64_t now_unix_seconds = 0);

}  // namespace branchline::cli
