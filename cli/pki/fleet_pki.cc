#include "cli/pki/fleet_pki.h"

#include <arpa/inet.h>

#include <algorithm>
#include <ctime>
#include <set>

#include "protocol/seal.h"
#include "shared/core/atomic_file.h"
#include "shared/pki/broker_config.h"
#include "shared/pki/certificate_expiry.h"
#include "shared/pki/crl.h"
#include "shared/pki/pki.h"

namespace branchline::cli {
namespace {
namespace fs = std::filesystem;

constexpr const char* kAuthorityName = "Branchline fleet CA";
constexpr const char* kBrokerName = "branchline-broker";

Status makeDir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::internal("create " + dir.string() + ": " + ec.message());
  return Status::ok();
}

Status checkDays(int days, const char* what) {
  if (days < 1 || days > 36500) {
    return Status::invalid(std::string(what) + ": must be between 1 and 36500, got " +
                           std::to_string(days));
  }
  return Status::ok();
}

Status checkName(const std::string& name, const char* what) {
  if (!pki::validIdentityName(name)) {
    return Status::invalid(std::string(what) + " `" + name +
                           "`: must be 1 to 64 characters of A-Z a-z 0-9 _ -");
  }
  return Status::ok();
}

Status checkAggregatorName(const std::string& name) {
  BL_RETURN_IF_ERROR(checkName(name, "aggregator name"));
  // aggregators/ also holds seal-<keyid>.key and seal.pub.
  if (name == "seal" || name.rfind("seal-", 0) == 0) {
    return Status::invalid("aggregator name `" + name + "`: `seal` names are reserved");
  }
  return Status::ok();
}

Status refuseExisting(const fs::path& file, const std::string& why) {
  std::error_code ec;
  if (fs::exists(file, ec)) {
    return Status(Code::kAlreadyExists, file.string() + " already exists: " + why);
  }
  return Status::ok();
}

// Key first, then certificate, neither ever replacing a file.
Status writeCredential(const pki::Credential& c, const fs::path& cert, const fs::path& key,
                       PkiReport& report) {
  BL_RETURN_IF_ERROR(writeFileAtomically(key, c.private_key_pem, 0600, {.replace = false}));
  report.files.push_back(key.string());
  BL_RETURN_IF_ERROR(writeFileAtomically(cert, c.certificate_pem, 0644, {.replace = false}));
  report.files.push_back(cert.string());
  return Status::ok();
}

Result<pki::Credential> loadAuthority(const PkiLayout& layout) {
  auto ca = pki::loadCredential(layout.caCert(), layout.caKey());
  if (!ca.isOk() && ca.status().code() == Code::kNotFound) {
    return Status::notFound("no certificate authority in " + layout.dir.string() +
                            " (ca.crt, ca.key): run `branchline pki init --dir " +
                            layout.dir.string() + "` first");
  }
  return ca;
}

pki::CertificateSpec clientSpec(const std::string& cn, int days) {
  pki::CertificateSpec s;
  s.common_name = cn;
  s.role = pki::CertRole::kClient;
  s.days = days;
  return s;
}

// A sealing key pair as <private> and <public> files, neither replacing one.
Result<std::string> writeSealPair(const fs::path& private_file, const fs::path& public_file,
                                  PkiReport& report) {
  BL_RETURN_IF_ERROR(refuseExisting(private_file, "refusing to replace a sealing key"));
  BL_RETURN_IF_ERROR(refuseExisting(public_file, "refusing to replace a sealing key"));
  auto pair = protocol::generateSealKeyPair();
  if (!pair.isOk()) return pair.status();
  BL_RETURN_IF_ERROR(protocol::writeSealPrivateKey(private_file, *pair));
  report.files.push_back(private_file.string());
  BL_RETURN_IF_ERROR(protocol::writeSealPublicKey(public_file, pair->public_key));
  report.files.push_back(public_file.string());
  return protocol::sealKeyId(pair->public_key);
}

// Every identity with a certificate (<name>.crt) in `dir`, sorted.
std::vector<std::string> certifiedNamesIn(const fs::path& dir) {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const fs::path p = entry.path();
    if (p.extension() == ".crt" && pki::validIdentityName(p.stem().string())) {
      names.insert(p.stem().string());
    }
  }
  return {names.begin(), names.end()};
}

int64_t unixNow() { return static_cast<int64_t>(::time(nullptr)); }

// A CRL with `list`, signed by `ca`, written over broker/crl.pem or (replace
// false) only where none exists yet.
Status writeRevocationFile(const PkiLayout& layout, const pki::Credential& ca,
                           const pki::RevocationList& list, bool replace) {
  auto pem = pki::writeRevocationList(ca, list);
  if (!pem.isOk()) return pem.status();
  return writeFileAtomically(layout.revocationList(), *pem, 0644, {.replace = replace});
}

// An empty CRL where there is none, so the broker's `crlfile` always exists.
Status ensureRevocationFile(const PkiLayout& layout, const pki::Credential& ca,
                            std::vector<std::string>& files) {
  std::error_code ec;
  if (fs::exists(layout.revocationList(), ec)) return Status::ok();
  BL_RETURN_IF_ERROR(makeDir(layout.brokerDir()));
  Status s = writeRevocationFile(layout, ca, {{}, 1, unixNow()}, false);
  if (s.code() == Code::kAlreadyExists) return Status::ok();  // a concurrent run wrote one
  BL_RETURN_IF_ERROR(s);
  files.push_back(layout.revocationList().string());
  return Status::ok();
}

Result<pki::RevocationList> readRevocations(const PkiLayout& layout, const std::string& ca_pem) {
  auto pem = pki::readFile(layout.revocationList());
  if (!pem.isOk()) return pem.status();
  auto list = pki::readRevocationList(*pem, ca_pem);
  if (!list.isOk()) return list.status().withContext(layout.revocationList().string());
  return list;
}

// The access policy names every identity in the folder, so every enrollment
// rewrites it (Mosquitto reads it at start: restart the broker after one).
Status writeBrokerFiles(const PkiLayout& layout, const pki::Credential& ca,
                        const std::string& topic_prefix, PkiReport& report) {
  BL_RETURN_IF_ERROR(ensureRevocationFile(layout, ca, report.files));
  pki::BrokerIdentities ids;
  ids.agents = certifiedNamesIn(layout.agentsDir());
  ids.aggregators = certifiedNamesIn(layout.aggregatorsDir());
  ids.bridges = certifiedNamesIn(layout.bridgesDir());
  BL_RETURN_IF_ERROR(writeFileAtomically(layout.brokerPolicy(),
                                         pki::mosquittoDynamicSecurity(topic_prefix, ids), 0644));
  report.files.push_back(layout.brokerPolicy().string());
  pki::BrokerTlsFiles files;
  files.ca_file = fs::absolute(layout.caCert()).string();
  files.cert_file = fs::absolute(layout.brokerCert()).string();
  files.key_file = fs::absolute(layout.brokerKey()).string();
  files.policy_file = fs::absolute(layout.brokerPolicy()).string();
  files.crl_file = fs::absolute(layout.revocationList()).string();
  // This machine's plugin when it has one; else where Debian and Ubuntu put it.
  auto plugin = pki::dynamicSecurityPlugin();
  files.plugin_file = plugin.isOk() ? *plugin : pki::kDebianDynamicSecurityPlugin;
  const std::string conf =
      "# Written by `branchline pki`: include it from mosquitto.conf (Mosquitto 2.0).\n"
      "# Mosquitto must be able to read broker.key (0600) and dynamic-security.json: run\n"
      "# it as their owner, or copy the broker/ files and ca.crt where its user can read\n"
      "# them and fix the paths. It reads the policy only at start: restart it after\n"
      "# `branchline pki enroll`. crl.pem changes with `branchline pki revoke`: reload\n"
      "# Mosquitto (SIGHUP) after one.\n"
      "listener 8883\n" +
      pki::mosquittoTlsSettings(files) + pki::mosquittoLimits();
  BL_RETURN_IF_ERROR(writeFileAtomically(layout.brokerConf(), conf, 0644));
  report.files.push_back(layout.brokerConf().string());
  return Status::ok();
}

// A new aggregators' sealing pair (seal-<id>.key/.pub, never replacing one),
// then seal.pub switched to it (renamed over: agents read the old or the new
// key, never a torn file). The pair is named by its id, known only once it exists.
Result<std::string> newAggregatorSealKey(const PkiLayout& layout, std::vector<std::string>& files) {
  auto pair = protocol::generateSealKeyPair();
  if (!pair.isOk()) return pair.status();
  const std::string id = protocol::sealKeyId(pair->public_key);
  const fs::path seal_key = layout.sealPrivateKey(id);
  const fs::path seal_pub = layout.sealPublicKey(id);
  for (const auto& file : {seal_key, seal_pub}) {
    BL_RETURN_IF_ERROR(refuseExisting(file, "refusing to replace a sealing key"));
  }
  BL_RETURN_IF_ERROR(protocol::writeSealPrivateKey(seal_key, *pair));
  files.push_back(seal_key.string());
  for (const auto& file : {seal_pub, layout.currentSealPublicKey()}) {
    BL_RETURN_IF_ERROR(protocol::writeSealPublicKey(file, pair->public_key));
    files.push_back(file.string());
  }
  return id;
}

// The files and CN of the identity a lifecycle command names.
struct IdentityFiles {
  fs::path cert, key;
  std::string common_name;
  std::string label;  // "agent `agent-1`", for messages
};

Result<IdentityFiles> identityFiles(const PkiLayout& layout, const std::string& name,
                                    IdentityRole role) {
  switch (role) {
    case IdentityRole::kAggregator:
      BL_RETURN_IF_ERROR(checkAggregatorName(name));
      return IdentityFiles{layout.aggregatorCert(name), layout.aggregatorKey(name),
                           pki::aggregatorIdentity(name), "aggregator `" + name + "`"};
    case IdentityRole::kBridge:
      BL_RETURN_IF_ERROR(checkName(name, "broker name"));
      return IdentityFiles{layout.bridgeCert(name), layout.bridgeKey(name),
                           pki::bridgeIdentity(name), "the bridge of broker `" + name + "`"};
    case IdentityRole::kAgent:
      break;
  }
  BL_RETURN_IF_ERROR(checkName(name, "agent id"));
  return IdentityFiles{layout.agentCert(name), layout.agentKey(name), name, "agent `" + name + "`"};
}

// The identity's current certificate; kNotFound (saying how to enroll) without one.
Result<pki::CertificateInfo> enrolledCertificate(const IdentityFiles& id) {
  std::error_code ec;
  if (!fs::exists(id.cert, ec)) {
    return Status::notFound(id.label + " is not enrolled (no " + id.cert.string() +
                            "): `branchline pki enroll` it first");
  }
  auto pem = pki::readFile(id.cert);
  if (!pem.isOk()) return pem.status();
  auto info = pki::inspectCertificate(*pem);
  if (!info.isOk()) return info.status().withContext(id.cert.string());
  return info;
}

// The folder's revocation list; an empty one when the folder has none yet.
Result<pki::RevocationList> revocationsOrEmpty(const PkiLayout& layout, const std::string& ca_pem) {
  auto list = readRevocations(layout, ca_pem);
  if (!list.isOk() && list.status().code() == Code::kNotFound) return pki::RevocationList{};
  return list;
}

// An enrolled identity with what renew and revoke need: the CA, its current
// certificate and the folder's revocation list.
struct EnrolledIdentity {
  IdentityFiles files;
  pki::Credential ca;
  pki::CertificateInfo cert;
  pki::RevocationList revocations;

  LifecycleReport report() const {
    LifecycleReport r;
    r.common_name = files.common_name;
    r.old_serial = pki::canonicalSerial(cert.serial_hex);
    r.old_not_after = cert.not_after;
    return r;
  }
};

Result<EnrolledIdentity> loadEnrolled(const PkiLayout& layout, const std::string& name,
                                      IdentityRole role) {
  auto id = identityFiles(layout, name, role);
  if (!id.isOk()) return id.status();
  auto ca = loadAuthority(layout);
  if (!ca.isOk()) return ca.status();
  auto cert = enrolledCertificate(*id);
  if (!cert.isOk()) return cert.status();
  auto list = revocationsOrEmpty(layout, ca->certificate_pem);
  if (!list.isOk()) return list.status();
  return EnrolledIdentity{std::move(id).value(), std::move(ca).value(), std::move(cert).value(),
                          std::move(list).value()};
}

bool isRevoked(const pki::RevocationList& list, const std::string& serial) {
  const std::string want = pki::canonicalSerial(serial);
  return std::any_of(list.revoked.begin(), list.revoked.end(),
                     [&](const pki::RevokedCertificate& r) { return r.serial_hex == want; });
}

}  // namespace

Result<PkiReport> initPki(const PkiInitOptions& options) {
  if (options.dir.empty()) return Status::invalid("pki init: no folder given (--dir)");
  BL_RETURN_IF_ERROR(checkDays(options.days, "--days"));
  BL_RETURN_IF_ERROR(checkDays(options.ca_days, "--ca-days"));
  if (options.aggregators.empty()) return Status::invalid("pki init: name at least one aggregator");
  std::set<std::string> seen;
  for (const auto& name : options.aggregators) {
    BL_RETURN_IF_ERROR(checkAggregatorName(name));
    if (!seen.insert(name).second) {
      return Status::invalid("aggregator name `" + name + "` is given twice");
    }
  }
  if (options.topic_prefix.empty()) return Status::invalid("pki init: empty topic prefix");
  pki::CertificateSpec broker;
  broker.common_name = kBrokerName;
  broker.role = pki::CertRole::kServer;
  broker.days = options.days;
  broker.ip_addresses = {"127.0.0.1"};
  broker.dns_names = {"localhost"};
  for (const auto& host : options.broker_hosts) {
    unsigned char buf[16];
    const bool ip = ::inet_pton(AF_INET, host.c_str(), buf) == 1 ||
                    ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
    auto& list = ip ? broker.ip_addresses : broker.dns_names;
    if (std::find(list.begin(), list.end(), host) == list.end()) list.push_back(host);
  }

  const PkiLayout layout{fs::absolute(options.dir)};
  for (const auto& file : {layout.caCert(), layout.caKey()}) {
    BL_RETURN_IF_ERROR(refuseExisting(
        file,
        "this folder already has a certificate authority; refusing to overwrite it (to add "
        "an agent: `branchline pki enroll --dir " +
            options.dir + " <agent-id>`)"));
  }
  for (const auto& d :
       {layout.dir, layout.brokerDir(), layout.aggregatorsDir(), layout.agentsDir()}) {
    BL_RETURN_IF_ERROR(makeDir(d));
  }

  PkiReport report;
  pki::CertificateSpec ca_spec;
  ca_spec.common_name = kAuthorityName;
  ca_spec.role = pki::CertRole::kAuthority;
  ca_spec.days = options.ca_days;
  auto ca = pki::createAuthority(ca_spec);
  if (!ca.isOk()) return ca.status();
  BL_RETURN_IF_ERROR(writeCredential(*ca, layout.caCert(), layout.caKey(), report));

  auto broker_cred = pki::issueCertificate(*ca, broker);
  if (!broker_cred.isOk()) return broker_cred.status().withContext("broker certificate");
  BL_RETURN_IF_ERROR(
      writeCredential(*broker_cred, layout.brokerCert(), layout.brokerKey(), report));

  for (const auto& name : options.aggregators) {
    auto cred = pki::issueCertificate(*ca, clientSpec(pki::aggregatorIdentity(name), options.days));
    if (!cred.isOk()) return cred.status().withContext("aggregator " + name);
    BL_RETURN_IF_ERROR(
        writeCredential(*cred, layout.aggregatorCert(name), layout.aggregatorKey(name), report));
  }

  BL_RETURN_IF_ERROR(
      refuseExisting(layout.currentSealPublicKey(), "refusing to replace a sealing key"));
  auto seal_id = newAggregatorSealKey(layout, report.files);
  if (!seal_id.isOk()) return seal_id.status();
  report.seal_key_id = *seal_id;

  BL_RETURN_IF_ERROR(writeBrokerFiles(layout, *ca, options.topic_prefix, report));
  return report;
}

Result<PkiReport> enrollAgent(const std::string& dir, const std::string& agent_id, int days,
                              const std::string& topic_prefix) {
  BL_RETURN_IF_ERROR(checkName(agent_id, "agent id"));
  BL_RETURN_IF_ERROR(checkDays(days, "--days"));
  if (topic_prefix.empty()) return Status::invalid("pki enroll: empty topic prefix");
  const PkiLayout layout{fs::absolute(dir)};
  auto ca = loadAuthority(layout);
  if (!ca.isOk()) return ca.status();
  const std::string again = "agent `" + agent_id +
                            "` is already enrolled; for a new certificate: `branchline pki renew "
                            "--dir " +
                            dir + " " + agent_id + "`; for new sealing keys, remove " +
                            (layout.agentsDir() / (agent_id + ".*")).string() + " first";
  for (const auto& file : {layout.agentCert(agent_id), layout.agentKey(agent_id),
                           layout.agentSealKey(agent_id), layout.agentSealPublic(agent_id)}) {
    BL_RETURN_IF_ERROR(refuseExisting(file, again));
  }
  BL_RETURN_IF_ERROR(makeDir(layout.agentsDir()));
  auto cred = pki::issueCertificate(*ca, clientSpec(agent_id, days));
  if (!cred.isOk()) return cred.status().withContext("agent " + agent_id);
  PkiReport report;
  BL_RETURN_IF_ERROR(
      writeCredential(*cred, layout.agentCert(agent_id), layout.agentKey(agent_id), report));
  auto id = writeSealPair(layout.agentSealKey(agent_id), layout.agentSealPublic(agent_id), report);
  if (!id.isOk()) return id.status();
  report.seal_key_id = *id;
  BL_RETURN_IF_ERROR(makeDir(layout.brokerDir()));
  BL_RETURN_IF_ERROR(writeBrokerFiles(layout, *ca, topic_prefix, report));
  return report;
}

Result<PkiReport> enrollAggregator(const std::string& dir, const std::string& name, int days,
                                   const std::string& topic_prefix) {
  BL_RETURN_IF_ERROR(checkAggregatorName(name));
  BL_RETURN_IF_ERROR(checkDays(days, "--days"));
  if (topic_prefix.empty()) return Status::invalid("pki enroll: empty topic prefix");
  const PkiLayout layout{fs::absolute(dir)};
  auto ca = loadAuthority(layout);
  if (!ca.isOk()) return ca.status();
  for (const auto& file : {layout.aggregatorCert(name), layout.aggregatorKey(name)}) {
    BL_RETURN_IF_ERROR(refuseExisting(file, "aggregator `" + name + "` is already enrolled"));
  }
  BL_RETURN_IF_ERROR(makeDir(layout.aggregatorsDir()));
  BL_RETURN_IF_ERROR(makeDir(layout.brokerDir()));
  auto cred = pki::issueCertificate(*ca, clientSpec(pki::aggregatorIdentity(name), days));
  if (!cred.isOk()) return cred.status().withContext("aggregator " + name);
  PkiReport report;
  BL_RETURN_IF_ERROR(
      writeCredential(*cred, layout.aggregatorCert(name), layout.aggregatorKey(name), report));
  BL_RETURN_IF_ERROR(writeBrokerFiles(layout, *ca, topic_prefix, report));
  return report;
}

Result<PkiReport> enrollBridge(const std::string& dir, const std::string& broker_name, int days,
                               const std::string& topic_prefix) {
  BL_RETURN_IF_ERROR(checkName(broker_name, "broker name"));
  BL_RETURN_IF_ERROR(checkDays(days, "--days"));
  if (topic_prefix.empty()) return Status::invalid("pki enroll: empty topic prefix");
  const PkiLayout layout{fs::absolute(dir)};
  auto ca = loadAuthority(layout);
  if (!ca.isOk()) return ca.status();
  for (const auto& file : {layout.bridgeCert(broker_name), layout.bridgeKey(broker_name)}) {
    BL_RETURN_IF_ERROR(
        refuseExisting(file, "the bridge of broker `" + broker_name + "` is already enrolled"));
  }
  BL_RETURN_IF_ERROR(makeDir(layout.bridgesDir()));
  BL_RETURN_IF_ERROR(makeDir(layout.brokerDir()));
  auto cred = pki::issueCertificate(*ca, clientSpec(pki::bridgeIdentity(broker_name), days));
  if (!cred.isOk()) return cred.status().withContext("bridge of broker " + broker_name);
  PkiReport report;
  BL_RETURN_IF_ERROR(writeCredential(*cred, layout.bridgeCert(broker_name),
                                     layout.bridgeKey(broker_name), report));
  BL_RETURN_IF_ERROR(writeBrokerFiles(layout, *ca, topic_prefix, report));
  return report;
}

Result<fs::path> currentSealPrivateKey(const std::string& dir) {
  const PkiLayout layout{fs::absolute(dir)};
  auto pub = protocol::readSealPublicKey(layout.currentSealPublicKey());
  if (!pub.isOk()) return pub.status();
  const fs::path key = layout.sealPrivateKey(protocol::sealKeyId(*pub));
  std::error_code ec;
  if (!fs::exists(key, ec)) {
    return Status::notFound("the current sealing key " + key.string() +
                            " (the pair of seal.pub) is missing");
  }
  return key;
}

Status ensureRevocationList(const std::string& dir) {
  const PkiLayout layout{fs::absolute(dir)};
  auto ca = loadAuthority(layout);
  if (!ca.isOk()) return ca.status();
  std::vector<std::string> files;
  return ensureRevocationFile(layout, *ca, files);
}

Result<LifecycleReport> renewIdentity(const std::string& dir, const std::string& name,
                                      IdentityRole role, int days) {
  BL_RETURN_IF_ERROR(checkDays(days, "--days"));
  const PkiLayout layout{fs::absolute(dir)};
  auto e = loadEnrolled(layout, name, role);
  if (!e.isOk()) return e.status();
  const IdentityFiles* id = &e->files;
  if (isRevoked(e->revocations, e->cert.serial_hex)) {
    return Status(Code::kPermissionDenied,
                  id->label +
                      " is revoked; renewing would admit it again. To re-admit it, "
                      "remove its files and enroll it anew");
  }
  auto cred = pki::issueCertificate(e->ca, clientSpec(id->common_name, days));
  if (!cred.isOk()) return cred.status().withContext(id->label);
  auto fresh = pki::inspectCertificate(cred->certificate_pem);
  if (!fresh.isOk()) return fresh.status();
  LifecycleReport report = e->report();
  report.new_serial = pki::canonicalSerial(fresh->serial_hex);
  report.new_not_after = fresh->not_after;
  // Each file is renamed over its old self; key first, so the one window
  // (microseconds) has a new key beside the old certificate, which a process
  // starting right then refuses loudly rather than using a mixed pair.
  BL_RETURN_IF_ERROR(writeFileAtomically(id->key, cred->private_key_pem, 0600));
  report.files.push_back(id->key.string());
  BL_RETURN_IF_ERROR(writeFileAtomically(id->cert, cred->certificate_pem, 0644));
  report.files.push_back(id->cert.string());
  return report;
}

Result<LifecycleReport> revokeIdentity(const std::string& dir, const std::string& name,
                                       IdentityRole role, int64_t now_unix_seconds) {
  const PkiLayout layout{fs::absolute(dir)};
  auto e = loadEnrolled(layout, name, role);
  if (!e.isOk()) return e.status();
  const IdentityFiles* id = &e->files;
  pki::RevocationList* list = &e->revocations;
  LifecycleReport report = e->report();

  // The sealing key first: if the CRL write then fails, running revoke again
  // finishes the job (the marker is already there).
  std::error_code ec;
  if (role == IdentityRole::kAgent && fs::exists(layout.agentSealPublic(name), ec)) {
    auto pem = pki::readFile(layout.agentSealPublic(name));
    if (!pem.isOk()) return pem.status();
    Status marked = writeFileAtomically(layout.agentSealRevoked(name), *pem, 0644);
    if (!marked) return marked;
    report.files.push_back(layout.agentSealRevoked(name).string());
    fs::remove(layout.agentSealPublic(name), ec);
    if (ec) {
      return Status::internal("remove " + layout.agentSealPublic(name).string() + ": " +
                              ec.message());
    }
  }
  if (isRevoked(*list, report.old_serial)) {
    return Status(Code::kAlreadyExists, id->label + "'s certificate (serial " + report.old_serial +
                                            ") is already revoked in " +
                                            layout.revocationList().string());
  }
  const int64_t now = now_unix_seconds != 0 ? now_unix_seconds : unixNow();
  list->revoked.push_back({report.old_serial, now});
  list->crl_number += 1;
  list->this_update = now;
  BL_RETURN_IF_ERROR(makeDir(layout.brokerDir()));
  BL_RETURN_IF_ERROR(writeRevocationFile(layout, e->ca, *list, true));
  report.files.push_back(layout.revocationList().string());
  return report;
}

Result<SealRotationReport> rotateSealKey(const std::string& dir) {
  const PkiLayout layout{fs::absolute(dir)};
  auto old_private = currentSealPrivateKey(dir);
  if (!old_private.isOk()) return old_private.status();
  auto old_public = protocol::readSealPublicKey(layout.currentSealPublicKey());
  if (!old_public.isOk()) return old_public.status();
  SealRotationReport report;
  report.old_key_id = protocol::sealKeyId(*old_public);
  report.old_private_key = *old_private;
  auto id = newAggregatorSealKey(layout, report.files);
  if (!id.isOk()) return id.status();
  report.new_key_id = *id;
  report.new_private_key = layout.sealPrivateKey(*id);
  return report;
}

Result<std::vector<IdentityListing>> listIdentities(const std::string& dir,
                                                    int64_t now_unix_seconds) {
  const PkiLayout layout{fs::absolute(dir)};
  auto ca_pem = pki::readFile(layout.caCert());
  if (!ca_pem.isOk()) {
    return Status::notFound("no certificate authority in " + layout.dir.string() +
                            " (ca.crt): run `branchline pki init --dir " + layout.dir.string() +
                            "` first");
  }
  auto revoked = revocationsOrEmpty(layout, *ca_pem);
  if (!revoked.isOk()) return revoked.status();
  const int64_t now = now_unix_seconds != 0 ? now_unix_seconds : unixNow();
  std::vector<IdentityListing> out;
  auto add = [&](const char* role, const std::string& name, const fs::path& cert) -> Status {
    auto pem = pki::readFile(cert);
    if (!pem.isOk()) return pem.status();
    auto info = pki::inspectCertificate(*pem);
    if (!info.isOk()) return info.status().withContext(cert.string());
    IdentityListing row;
    row.role = role;
    row.name = name;
    row.common_name = info->common_name;
    row.serial = pki::canonicalSerial(info->serial_hex);
    row.not_after = info->not_after;
    row.days_left = pki::daysLeft(info->not_after, now);
    row.revoked = isRevoked(*revoked, row.serial);
    row.certificate_file = cert.string();
    out.push_back(std::move(row));
    return Status::ok();
  };
  BL_RETURN_IF_ERROR(add("ca", "ca", layout.caCert()));
  std::error_code ec;
  if (fs::exists(layout.brokerCert(), ec)) {
    BL_RETURN_IF_ERROR(add("broker", "broker", layout.brokerCert()));
  }
  for (const auto& name : certifiedNamesIn(layout.aggregatorsDir())) {
    BL_RETURN_IF_ERROR(add("aggregator", name, layout.aggregatorCert(name)));
  }
  for (const auto& name : certifiedNamesIn(layout.bridgesDir())) {
    BL_RETURN_IF_ERROR(add("bridge", name, layout.bridgeCert(name)));
  }
  for (const auto& name : certifiedNamesIn(layout.agentsDir())) {
    BL_RETURN_IF_ERROR(add("agent", name, layout.agentCert(name)));
  }
  return out;
}

}  // namespace branchline::cli
