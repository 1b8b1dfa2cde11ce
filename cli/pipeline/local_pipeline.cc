#include "cli/pipeline/local_pipeline.h"

#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/config/agent_config.h"
#include "agent/ingest/ingest_tokens.h"
#include "cli/net/http_client.h"
#include "cli/pki/fleet_pki.h"
#include "shared/core/atomic_file.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/private_path.h"
#include "shared/crypto/key_file.h"
#include "shared/pki/broker_config.h"

namespace branchline::cli {
namespace fs = std::filesystem;

namespace {

std::string tomlString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

// An ordered TOML document: tables in insertion order, keys in insertion order.
class TomlDoc {
 public:
  void set(const std::string& table, const std::string& key, const std::string& value) {
    auto& keys = tableNamed(table);
    for (auto& kv : keys) {
      if (kv.first == key) {
        kv.second = value;
        return;
      }
    }
    keys.emplace_back(key, value);
  }
  Status applyOverrides(const std::map<std::string, std::string>& overrides) {
    for (const auto& [path, value] : overrides) {
      size_t dot = path.rfind('.');
      if (dot == std::string::npos || dot == 0 || dot + 1 == path.size()) {
        return Status::invalid("config override `" + path + "`: expected table.key");
      }
      set(path.substr(0, dot), path.substr(dot + 1), value);
    }
    return Status::ok();
  }
  std::string render() const {
    std::string out = "# Written by `branchline up`; see README \"Configuration\".\n";
    for (const auto& [table, keys] : tables_) {
      out += "\n[" + table + "]\n";
      for (const auto& [k, v] : keys) out += k + " = " + v + "\n";
    }
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>>& tableNamed(const std::string& name) {
    for (auto& t : tables_) {
      if (t.first == name) return t.second;
    }
    tables_.emplace_back(name, std::vector<std::pair<std::string, std::string>>{});
    return tables_.back().second;
  }
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> tables_;
};

Status writeFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  if (!out) return Status::internal("cannot write " + path);
  return Status::ok();
}

std::string defaultBinDir() {
  if (const char* env = std::getenv("BRANCHLINE_BIN_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

// The topic prefix the configs end up with: an override's TOML string, or the default.
std::string effectiveTopicPrefix(const PipelineOptions& o) {
  for (const auto* overrides : {&o.agent_overrides, &o.aggregator_overrides}) {
    auto it = overrides->find("mqtt.topic_prefix");
    if (it != overrides->end() && it->second.size() >= 2 && it->second.front() == '"' &&
        it->second.back() == '"') {
      return it->second.substr(1, it->second.size() - 2);
    }
  }
  return "branchline/v1";
}

// The aggregators' limits.max_message_bytes: an override's integer, or the default.
uint64_t aggregatorMaxMessageBytes(const PipelineOptions& o) {
  auto it = o.aggregator_overrides.find("limits.max_message_bytes");
  if (it != o.aggregator_overrides.end()) {
    try {
      return std::stoull(it->second);
    } catch (const std::exception&) {
      // Not a number: the aggregator refuses its config and says why.
    }
  }
  return pki::kDefaultMaxMessageBytes;
}

constexpr const char* kFirstBroker = "mosquitto";
constexpr const char* kSecondBroker = "mosquitto-2";

// The bridge's client id at the first broker: its certificate's CN (with TLS
// the broker takes that as its user name), so the first broker's log names it.
std::string bridgeClientId(const std::string& broker) { return pki::bridgeIdentity(broker); }

uint64_t fileSize(const std::string& path) {
  std::error_code ec;
  const auto n = fs::file_size(path, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

// Who the brokers run as (Mosquitto's `user`): `mosquitto` when we are root,
// as Mosquitto itself would, so that a broker never keeps root; else
// ourselves, since only root can switch users.
struct BrokerUser {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  bool switched = false;  // not us: its files must be handed over
};

Result<BrokerUser> brokerUser() {
  if (::geteuid() != 0) {
    const passwd* pw = ::getpwuid(::geteuid());
    if (pw == nullptr)
      return Status::internal("pipeline: no user name for uid " + std::to_string(::geteuid()));
    return BrokerUser{pw->pw_name, pw->pw_uid, pw->pw_gid, false};
  }
  const passwd* pw = ::getpwnam("mosquitto");
  if (pw == nullptr) {
    return Status::notFound(
        "pipeline: running as root, so the brokers run as user `mosquitto`, which does not "
        "exist: install Mosquitto's package (it creates the user) or run `branchline up` as "
        "another user");
  }
  return BrokerUser{pw->pw_name, pw->pw_uid, pw->pw_gid, true};
}

// OK when `user` can reach `path` (search every folder above it) and read it,
// or for a folder also write it; else why not, and what to do.
Status checkBrokerUserReaches(const fs::path& path, const BrokerUser& user) {
  auto allowed = [&user](const struct stat& st, mode_t owner, mode_t group, mode_t other) {
    if (st.st_uid == user.uid) return (st.st_mode & owner) != 0;
    if (st.st_gid == user.gid) return (st.st_mode & group) != 0;
    return (st.st_mode & other) != 0;
  };
  std::vector<fs::path> above;
  for (fs::path p = path.parent_path(); !p.empty(); p = p.parent_path()) {
    above.push_back(p);
    if (p == p.root_path()) break;
  }
  const std::string who =
      "the brokers run as user `" + user.name + "` (branchline up runs as root; a broker must not)";
  for (auto it = above.rbegin(); it != above.rend(); ++it) {
    struct stat st {};
    if (::stat(it->c_str(), &st) != 0)
      return Status::internal("stat " + it->string() + ": " + strerror(errno));
    if (!allowed(st, S_IXUSR, S_IXGRP, S_IXOTH)) {
      char mode[8];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
      return Status(Code::kPermissionDenied, who + ", which cannot reach " + path.string() + ": " +
                                                 it->string() + " is mode " + mode +
                                                 ". Use a --dir that every user can traverse to "
                                                 "(e.g. under /var/tmp), or `chmod o+x " +
                                                 it->string() + "`");
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return Status::internal("stat " + path.string() + ": " + strerror(errno));
  const bool ok = S_ISDIR(st.st_mode) ? allowed(st, S_IWUSR, S_IWGRP, S_IWOTH) &&
                                            allowed(st, S_IXUSR, S_IXGRP, S_IXOTH)
                                      : allowed(st, S_IRUSR, S_IRGRP, S_IROTH);
  if (!ok) return Status(Code::kPermissionDenied, who + ", which cannot use " + path.string());
  return Status::ok();
}

// Everything a broker reads or writes after it has dropped root: its data dir
// (config, policy, persistence, log) becomes its own, and so do its keys in
// the PKI (0600 stays); the PKI's certificates are world-readable.
Status handOverToBrokerUser(const Member& m, const std::vector<fs::path>& key_files,
                            const std::vector<fs::path>& read_files, const BrokerUser& user) {
  const std::string& data_dir = m.data_dir;
  // Made here, not by the spawn (as root, for stdout), so the broker can append to it.
  if (int fd = ::open(m.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      fd < 0) {
    return Status::internal("create " + m.log_path + ": " + strerror(errno));
  } else {
    ::close(fd);
  }
  auto own = [&user](const fs::path& p) -> Status {
    if (::lchown(p.c_str(), user.uid, user.gid) != 0) {
      return Status::internal("chown " + p.string() + " to " + user.name + ": " + strerror(errno));
    }
    return Status::ok();
  };
  BL_RETURN_IF_ERROR(own(data_dir));
  if (::chmod(data_dir.c_str(), 0700) != 0) {
    return Status::internal("chmod " + data_dir + ": " + strerror(errno));
  }
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(data_dir, ec)) {
    BL_RETURN_IF_ERROR(own(entry.path()));
  }
  if (ec) return Status::internal("list " + data_dir + ": " + ec.message());
  BL_RETURN_IF_ERROR(checkBrokerUserReaches(data_dir, user));
  for (const auto& f : key_files) BL_RETURN_IF_ERROR(own(f));
  for (const auto* files : {&key_files, &read_files}) {
    for (const auto& f : *files) BL_RETURN_IF_ERROR(checkBrokerUserReaches(f, user));
  }
  return Status::ok();
}

}  // namespace

std::string makePipelineTempDir(const std::string& prefix) {
  std::string path = "/tmp/" + prefix + ".XXXXXX";
  if (::mkdtemp(path.data()) == nullptr) return "";
  if (::chmod(path.c_str(), 0711) != 0) {
    ::rmdir(path.c_str());
    return "";
  }
  return path;
}

const char* roleName(Role role) {
  switch (role) {
    case Role::kBroker:
      return "broker";
    case Role::kAggregator:
      return "aggregator";
    case Role::kAgent:
      return "agent";
  }
  return "?";
}

std::string tailOfFile(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff from = size > static_cast<std::streamoff>(max_bytes)
                            ? size - static_cast<std::streamoff>(max_bytes)
                            : 0;
  in.seekg(from);
  std::string out(static_cast<size_t>(size - from), '\0');
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  return out;
}

LocalPipeline::LocalPipeline(PipelineOptions options) : options_(std::move(options)) {}

LocalPipeline::~LocalPipeline() { stop(); }

std::string LocalPipeline::brokerUri() const {
  auto uris = brokerUris();
  return uris.empty() ? "" : uris.front();
}

std::vector<std::string> LocalPipeline::brokerUris(const std::string& host) const {
  std::vector<std::string> out;
  for (const auto& m : members_) {
    if (m->role == Role::kBroker) {
      out.push_back((options_.secure ? "ssl://" : "tcp://") + host + ":" + std::to_string(m->port));
    }
  }
  return out;
}

Member* LocalPipeline::firstBroker() { return member(kFirstBroker); }

bool LocalPipeline::sealsBatches() const { return options_.secure; }

// One token per agent for all of its sources, kept (0600, in a 0700 folder) so
// a later start in the same DIR reuses it while its hash is still in the file.
Status LocalPipeline::ensureIngestToken(Member& m) {
  auto cfg = agent::loadAgentConfig(m.config_path);
  if (!cfg.isOk()) return cfg.status().withContext(m.name);
  // Outside the agent's data dir, which holds only the hashes.
  const std::filesystem::path saved = options_.dir + "/.ingest-tokens/" + m.name;
  BL_RETURN_IF_ERROR(makePrivateDirectory(saved.parent_path()).status());
  std::string token;
  if (std::ifstream in(saved); in) std::getline(in, token);
  std::vector<std::string> sources;
  for (const auto& a : cfg->access) sources.push_back(a.source);
  Status s = agent::updateIngestTokens(cfg->tokenFile(), [&](agent::IngestTokens& tokens) {
    const std::string authorization = "Bearer " + token;
    bool covers = !token.empty();
    for (const auto& src : sources) {
      covers = covers && tokens.check(authorization, src) == agent::IngestTokens::Verdict::kOk;
    }
    if (covers) return Status::ok();
    auto added = tokens.add(sources, nowMicros() / 1000000);
    if (!added.isOk()) return added.status();
    token = std::move(added).value();
    return writeFileAtomically(saved, token + "\n", 0600);
  });
  if (!s.isOk()) return s.withContext(m.name + " ingest token");
  m.ingest_token = token;
  return Status::ok();
}

std::vector<std::string> LocalPipeline::agentTokens() const {
  std::vector<std::string> out;
  for (const auto& m : members_) {
    if (m->role == Role::kAgent) out.push_back(m->ingest_token);
  }
  return out;
}

std::vector<std::string> LocalPipeline::agentUrls() const {
  std::vector<std::string> out;
  for (const auto& m : members_) {
    if (m->role == Role::kAgent) out.push_back(m->url);
  }
  return out;
}

std::vector<std::string> LocalPipeline::aggregatorUrls() const {
  std::vector<std::string> out;
  for (const auto& m : members_) {
    if (m->role == Role::kAggregator) out.push_back(m->url);
  }
  return out;
}

Member* LocalPipeline::member(const std::string& name) {
  for (auto& m : members_) {
    if (m->name == name) return m.get();
  }
  return nullptr;
}

Process* LocalPipeline::process(const std::string& name) {
  Member* m = member(name);
  return m == nullptr ? nullptr : &m->process;
}

Status LocalPipeline::plan() {
  if (options_.dir.empty()) return Status::invalid("pipeline: no directory given (--dir)");
  if (options_.agents < 1 || options_.agents > 100) {
    return Status::invalid("pipeline: agents must be 1..100, got " +
                           std::to_string(options_.agents));
  }
  if (const std::string& u = options_.store_url; !u.empty() && u.rfind("sqlite:///", 0) != 0 &&
                                                 u.rfind("postgresql://", 0) != 0 &&
                                                 u.rfind("postgres://", 0) != 0) {
    return Status::invalid(
        "pipeline: --store must be sqlite:///abs/path.db or postgresql://user@host:port/db");
  }
  if (options_.brokers != 1 && options_.brokers != 2) {
    return Status::invalid("pipeline: brokers must be 1 or 2 (a bridged pair), got " +
                           std::to_string(options_.brokers));
  }
  if (options_.aggregators < 1 || options_.aggregators > 10) {
    return Status::invalid("pipeline: aggregators must be 1..10, got " +
                           std::to_string(options_.aggregators));
  }
  if (options_.base_port != 0 && options_.base_port + 20 + options_.agents > 65535) {
    return Status::invalid("pipeline: base port " + std::to_string(options_.base_port) +
                           " leaves no room for " + std::to_string(options_.agents) + " agents");
  }
  std::error_code ec;
  fs::create_directories(options_.dir, ec);
  if (ec) return Status::internal("create " + options_.dir + ": " + ec.message());
  options_.dir = fs::canonical(options_.dir, ec).string();
  if (ec) return Status::internal("resolve " + options_.dir + ": " + ec.message());
  if (options_.bin_dir.empty()) options_.bin_dir = defaultBinDir();

  auto port_for = [this](int offset) -> Result<uint16_t> {
    if (options_.base_port != 0) return static_cast<uint16_t>(options_.base_port + offset);
    return freeLoopbackPort();
  };
  auto add = [&](Role role, std::string name, int offset, std::string config_file,
                 std::string exe) -> Status {
    auto m = std::make_unique<Member>();
    m->role = role;
    m->name = std::move(name);
    m->data_dir = options_.dir + "/" + m->name;
    m->config_path = m->data_dir + "/" + config_file;
    m->log_path = m->data_dir + "/" + m->name + ".log";
    auto port = port_for(offset);
    if (!port.isOk()) return port.status();
    m->port = *port;
    const char* scheme = role != Role::kBroker ? "http" : options_.secure ? "mqtts" : "mqtt";
    m->url = std::string(scheme) + "://127.0.0.1:" + std::to_string(m->port);
    m->spec.executable = std::move(exe);
    m->spec.args = role == Role::kBroker ? std::vector<std::string>{"-c", m->config_path}
                                         : std::vector<std::string>{"--config", m->config_path};
    m->spec.working_dir = m->data_dir;
    m->spec.log_path = m->log_path;
    fs::create_directories(m->data_dir, ec);
    if (ec) return Status::internal("create " + m->data_dir + ": " + ec.message());
    members_.push_back(std::move(m));
    return Status::ok();
  };
  members_.clear();
  BL_RETURN_IF_ERROR(add(Role::kBroker, kFirstBroker, 0, "mosquitto.conf", options_.mosquitto));
  if (options_.brokers == 2) {
    BL_RETURN_IF_ERROR(add(Role::kBroker, kSecondBroker, 1, "mosquitto.conf", options_.mosquitto));
  }
  for (int i = 0; i < options_.aggregators; ++i) {
    BL_RETURN_IF_ERROR(add(Role::kAggregator, "agg-" + std::to_string(i + 1), 10 + i,
                           "aggregator.toml", options_.bin_dir + "/branchline-aggregator"));
  }
  for (int i = 0; i < options_.agents; ++i) {
    BL_RETURN_IF_ERROR(add(Role::kAgent, "agent-" + std::to_string(i + 1), 20 + i, "agent.toml",
                           options_.bin_dir + "/branchline-agent"));
  }
  if (options_.isolate_agents) BL_RETURN_IF_ERROR(isolateAgents());
  return Status::ok();
}

Status LocalPipeline::isolateAgents() {
  std::error_code ec;
  if (options_.secure && fs::exists(PkiLayout{pkiDir()}.caCert(), ec)) {
    return Status::invalid("pipeline: isolated agents need a fresh --dir (" + pkiDir() +
                           " exists, and its broker certificate cannot name the new uplinks)");
  }
  namespaces_.clear();
  int index = 0;
  for (auto& m : members_) {
    if (m->role != Role::kAgent) continue;
    auto ns = NetworkNamespace::create(++index);
    if (!ns.isOk()) return ns.status().withContext("pipeline: isolate " + m->name);
    m->netns = ns->get();
    m->url = "http://" + m->netns->localInnerAddress() + ":" + std::to_string(m->port);
    // `ip netns exec` execs the agent: the pid stays the agent's own.
    std::vector<std::string> argv = m->netns->execPrefix();
    argv.push_back(m->spec.executable);
    argv.insert(argv.end(), m->spec.args.begin(), m->spec.args.end());
    m->spec.executable = argv.front();
    m->spec.args.assign(argv.begin() + 1, argv.end());
    namespaces_.push_back(std::move(ns).value());
  }
  return Status::ok();
}

Status LocalPipeline::cutNetwork(const std::string& agent) {
  Member* m = member(agent);
  if (m == nullptr || m->netns == nullptr) {
    return Status::invalid("cut network: `" + agent + "` is not an isolated agent");
  }
  return m->netns->cut();
}

Status LocalPipeline::healNetwork(const std::string& agent) {
  Member* m = member(agent);
  if (m == nullptr || m->netns == nullptr) {
    return Status::invalid("heal network: `" + agent + "` is not an isolated agent");
  }
  return m->netns->heal();
}

// The PKI is made once per DIR and reused by later starts; members added
// since (more agents or aggregators, a second broker's bridge) are enrolled into it.
Status LocalPipeline::preparePki() {
  const std::string dir = pkiDir();
  const PkiLayout layout{dir};
  const std::string prefix = effectiveTopicPrefix(options_);
  std::error_code ec;
  if (!fs::exists(layout.caCert(), ec)) {
    PkiInitOptions init;
    init.dir = dir;
    init.aggregators.clear();
    for (const auto& m : members_) {
      if (m->role == Role::kAggregator) init.aggregators.push_back(m->name);
    }
    init.topic_prefix = prefix;
    // Isolated agents reach the brokers at their uplinks' host ends.
    for (const auto& ns : namespaces_) init.broker_hosts.push_back(ns->uplinkHostAddress());
    auto made = initPki(init);
    if (!made.isOk()) return made.status().withContext("pipeline PKI " + dir);
  }
  for (const auto& m : members_) {
    if (m->role == Role::kAggregator && !fs::exists(layout.aggregatorCert(m->name), ec)) {
      auto r = enrollAggregator(dir, m->name, 825, prefix);
      if (!r.isOk()) return r.status().withContext("pipeline PKI " + dir);
    } else if (m->role == Role::kAgent && !fs::exists(layout.agentCert(m->name), ec)) {
      auto r = enrollAgent(dir, m->name);
      if (!r.isOk()) return r.status().withContext("pipeline PKI " + dir);
    } else if (m->role == Role::kBroker && m->name != kFirstBroker &&
               !fs::exists(layout.bridgeCert(m->name), ec)) {
      auto r = enrollBridge(dir, m->name, 825, prefix);
      if (!r.isOk()) return r.status().withContext("pipeline PKI " + dir);
    }
  }
  if (Status s = ensureRevocationList(dir); !s) return s.withContext("pipeline PKI " + dir);
  auto seal = currentSealPrivateKey(dir);
  if (!seal.isOk()) return seal.status().withContext("pipeline PKI " + dir);
  seal_key_file_ = seal->string();
  return Status::ok();
}

namespace {

// A TOML array of strings.
std::string tomlStringArray(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + tomlString(item);
  return "[" + out + "]";
}

}  // namespace

Status LocalPipeline::writeConfigs() {
  const std::string brokers = tomlStringArray(brokerUris());
  const PkiLayout layout{pkiDir()};
  const std::string prefix = effectiveTopicPrefix(options_);
  std::vector<std::string> bridges;  // every broker but the first bridges to it
  for (const auto& b : members_) {
    if (b->role == Role::kBroker && b->name != kFirstBroker) bridges.push_back(b->name);
  }
  const Member* first = firstBroker();
  auto broker_user = brokerUser();
  if (!broker_user.isOk()) return broker_user.status();
  for (const auto& m : members_) {
    std::string text;
    if (m->role == Role::kBroker) {
      text = "# Written by `branchline up`: a private broker on loopback";
      text += m->name == kFirstBroker ? ".\n" : ", bridged to " + first->name + ".\n";
      std::vector<std::string> listen_on{"127.0.0.1"};
      for (const auto& ns : namespaces_) listen_on.push_back(ns->uplinkHostAddress());
      std::string tls, more_tls;
      if (options_.secure) {
        pki::BrokerIdentities ids;
        ids.bridges = bridges;
        for (const auto& a : members_) {
          if (a->role == Role::kAggregator) ids.aggregators.push_back(a->name);
          if (a->role == Role::kAgent) ids.agents.push_back(a->name);
        }
        auto plugin = pki::dynamicSecurityPlugin();
        if (!plugin.isOk()) return plugin.status().withContext("pipeline broker " + m->name);
        const std::string policy = m->data_dir + "/dynamic-security.json";
        BL_RETURN_IF_ERROR(writeFile(policy, pki::mosquittoDynamicSecurity(prefix, ids)));
        const pki::BrokerTlsFiles files{layout.caCert().string(),
                                        layout.brokerCert().string(),
                                        layout.brokerKey().string(),
                                        policy,
                                        *plugin,
                                        layout.revocationList().string()};
        tls = pki::mosquittoTlsSettings(files);
        more_tls = pki::mosquittoListenerTlsSettings(files);
      }
      // TLS settings belong to the listener above them: each one gets its own.
      for (size_t i = 0; i < listen_on.size(); ++i) {
        text += "listener " + std::to_string(m->port) + " " + listen_on[i] + "\n";
        if (!options_.secure) {
          text += "allow_anonymous true\n";
        } else {
          text += i == 0 ? tls : more_tls;
        }
      }
      // Queues survive a broker restart. They are bounded by bytes too: what
      // overflows is resent by its agent, which holds every batch until acked.
      text += "persistence true\n";
      text += "persistence_location " + m->data_dir + "/\n";
      text += "autosave_interval 1\n";
      text += pki::mosquittoLimits(aggregatorMaxMessageBytes(options_));
      text += "set_tcp_nodelay true\n";
      text += "user " + broker_user->name + "\n";
      text += "log_dest file " + m->log_path + "\n";
      text += "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n";
      // Subscriptions are few (made on connect); the bridge's tells start() it is up.
      text += "log_type subscribe\n";
      text += "connection_messages true\n";
      if (m->name != kFirstBroker) {
        // Last in the file: the options below belong to the bridge.
        text += "\n# The bridge: every topic under the prefix, both ways, so a client on\n";
        text += "# either broker reaches one on the other.\n";
        text += "connection to-" + first->name + "\n";
        text += "address 127.0.0.1:" + std::to_string(first->port) + "\n";
        text += "remote_clientid " + bridgeClientId(m->name) + "\n";
        text += "topic " + prefix + "/# both 1\n";
        // Messages for a bridge that is down wait in its session, on either side.
        text += "cleansession false\n";
        text += "bridge_protocol_version mqttv311\n";
        // The first broker then knows a bridge and sends nothing back to where it came from.
        text += "try_private true\n";
        // Reconnect 1-2 s after the first broker comes back (default: 5-30 s).
        text += "restart_timeout 1 2\n";
        // The $SYS state topic is outside every ACL.
        text += "notifications false\n";
        if (options_.secure) {
          text += "bridge_cafile " + layout.caCert().string() + "\n";
          text += "bridge_certfile " + layout.bridgeCert(m->name).string() + "\n";
          text += "bridge_keyfile " + layout.bridgeKey(m->name).string() + "\n";
          // The first broker's certificate is checked, its SAN against 127.0.0.1.
          text += "bridge_insecure false\n";
        }
      }
    } else if (m->role == Role::kAggregator) {
      TomlDoc doc;
      doc.set("aggregator", "name", tomlString(m->name));
      doc.set("aggregator", "data_dir", tomlString(m->data_dir));
      doc.set("http", "listen", tomlString("127.0.0.1:" + std::to_string(m->port)));
      doc.set("mqtt", "brokers", brokers);
      if (options_.secure) {
        doc.set("mqtt", "ca_file", tomlString(layout.caCert().string()));
        doc.set("mqtt", "cert_file", tomlString(layout.aggregatorCert(m->name).string()));
        doc.set("mqtt", "key_file", tomlString(layout.aggregatorKey(m->name).string()));
      }
      doc.set("store", "url", tomlString(storeUrl()));
      if (sealsBatches()) {
        doc.set("security", "seal_keys", "[" + tomlString(seal_key_file_) + "]");
        doc.set("security", "agents_dir", tomlString(layout.agentsDir().string()));
        doc.set("security", "require_sealed", "true");
      }
      BL_RETURN_IF_ERROR(doc.applyOverrides(options_.aggregator_overrides));
      text = doc.render();
    } else {
      TomlDoc doc;
      doc.set("agent", "id", tomlString(m->name));
      doc.set("agent", "data_dir", tomlString(m->data_dir));
      if (m->netns != nullptr) {
        // Its own namespace: local clients on the local link, brokers over the uplink.
        doc.set("http", "listen",
                tomlString(m->netns->localInnerAddress() + ":" + std::to_string(m->port)));
        doc.set("mqtt", "brokers", tomlStringArray(brokerUris(m->netns->uplinkHostAddress())));
      } else {
        doc.set("http", "listen", tomlString("127.0.0.1:" + std::to_string(m->port)));
        doc.set("mqtt", "brokers", brokers);
      }
      if (options_.secure) {
        doc.set("mqtt", "ca_file", tomlString(layout.caCert().string()));
        doc.set("mqtt", "cert_file", tomlString(layout.agentCert(m->name).string()));
        doc.set("mqtt", "key_file", tomlString(layout.agentKey(m->name).string()));
      }
      if (sealsBatches()) {
        doc.set("security", "seal_key_file", tomlString(layout.agentSealKey(m->name).string()));
        doc.set("security", "aggregator_key_file",
                tomlString(layout.currentSealPublicKey().string()));
      }
      BL_RETURN_IF_ERROR(doc.applyOverrides(options_.agent_overrides));
      text = doc.render();
    }
    BL_RETURN_IF_ERROR(writeFile(m->config_path, text));
    if (m->role == Role::kAgent) BL_RETURN_IF_ERROR(ensureIngestToken(*m));
    if (m->role == Role::kBroker && broker_user->switched) {
      std::vector<fs::path> keys, reads;
      if (options_.secure) {
        keys = {layout.brokerKey()};
        reads = {layout.caCert(), layout.brokerCert()};
        if (m->name != kFirstBroker) {
          keys.push_back(layout.bridgeKey(m->name));
          reads.push_back(layout.bridgeCert(m->name));
        }
      }
      BL_RETURN_IF_ERROR(handOverToBrokerUser(*m, keys, reads, *broker_user));
    }
  }
  return Status::ok();
}

Status LocalPipeline::launch(Member& m) {
  auto proc = Process::spawn(m.spec);
  if (!proc.isOk()) {
    Status s = proc.status().withContext(m.name);
    if (s.code() == Code::kNotFound && m.role != Role::kBroker) {
      return Status::notFound(s.message() + " (build it with ci/build, or pass --bin-dir)");
    }
    return s;
  }
  m.process = std::move(proc).value();
  m.exit_reported = false;
  log::info("process_started", {{"name", m.name},
                                {"role", roleName(m.role)},
                                {"pid", static_cast<int64_t>(m.process.pid())}});
  return waitReady(m);
}

Status LocalPipeline::waitReady(Member& m) {
  const int64_t deadline = steadyMicros() + options_.ready_timeout.count() * 1000;
  auto died = [&m]() {
    return Status::unavailable(m.name + " " + describeWaitStatus(*m.process.waitStatus()) +
                               " while starting; end of " + m.log_path + ":\n" +
                               tailOfFile(m.log_path));
  };
  std::string last_error;
  while (true) {
    if (!m.process.isRunning()) return died();
    if (m.role == Role::kBroker) {
      if (waitForTcp(m.port, std::chrono::milliseconds(100)).isOk()) return Status::ok();
      last_error = "port " + std::to_string(m.port) + " not listening";
    } else {
      auto res = httpGet(m.url + "/healthz", std::chrono::milliseconds(1000));
      if (res.isOk() && res->status == 200) return Status::ok();
      last_error = res.isOk() ? "GET /healthz answered " + std::to_string(res->status)
                              : res.status().message();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (steadyMicros() >= deadline) {
      return Status::unavailable(
          m.name + " not ready after " + std::to_string(options_.ready_timeout.count()) + " ms (" +
          last_error + "); end of " + m.log_path + ":\n" + tailOfFile(m.log_path));
    }
  }
}

Status LocalPipeline::waitBridge(uint64_t log_offset) {
  Member* first = firstBroker();
  Member* second = member(kSecondBroker);
  if (first == nullptr || second == nullptr || !first->process.isRunning() ||
      !second->process.isRunning()) {
    return Status::ok();
  }
  // Mosquitto logs a subscription only once it is allowed (ACL) and made; the
  // bridge subscribes right after its CONNACK, so this line means traffic flows.
  const std::string line =
      ": " + bridgeClientId(second->name) + " 1 " + effectiveTopicPrefix(options_) + "/#\n";
  const int64_t deadline = steadyMicros() + options_.ready_timeout.count() * 1000;
  while (true) {
    for (Member* m : {first, second}) {
      if (!m->process.isRunning()) {
        return Status::unavailable(m->name + " " + describeWaitStatus(*m->process.waitStatus()) +
                                   " while the bridge was connecting; end of " + m->log_path +
                                   ":\n" + tailOfFile(m->log_path));
      }
    }
    const uint64_t size = fileSize(first->log_path);
    if (size > log_offset &&
        tailOfFile(first->log_path, size - log_offset).find(line) != std::string::npos) {
      return Status::ok();
    }
    if (steadyMicros() >= deadline) {
      return Status::unavailable(
          "the bridge from " + second->name + " to " + first->name + " is not up after " +
          std::to_string(options_.ready_timeout.count()) + " ms; end of " + second->log_path +
          ":\n" + tailOfFile(second->log_path) + "\nend of " + first->log_path + ":\n" +
          tailOfFile(first->log_path));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Status LocalPipeline::writeTopology() {
  std::string out = "{\"store\": ";
  log::appendJsonString(out, storeUrl());
  out += ", \"secure\": ";
  out += options_.secure ? "true" : "false";
  if (options_.secure) {
    out += ", \"pki_dir\": ";
    log::appendJsonString(out, pkiDir());
  }
  out += ",\n \"processes\": [";
  bool first = true;
  for (const auto& m : members_) {
    out += first ? "\n  " : ",\n  ";
    first = false;
    out += "{\"role\": ";
    log::appendJsonString(out, roleName(m->role));
    out += ", \"name\": ";
    log::appendJsonString(out, m->name);
    out += ", \"pid\": " + std::to_string(m->process.pid());
    out += ", \"config\": ";
    log::appendJsonString(out, m->config_path);
    out += ",\n   \"data\": ";
    log::appendJsonString(out, m->data_dir);
    out += ", \"url\": ";
    log::appendJsonString(out, m->url);
    if (m->role == Role::kAgent) {
      out += ", \"ingest_token\": ";
      log::appendJsonString(out, m->ingest_token);
    }
    out += "}";
  }
  out += "]}\n";
  // 0600: it holds every agent's ingest token.
  return writeFileAtomically(topologyPath(), out, 0600);
}

Status LocalPipeline::start() {
  if (started_) return Status::ok();
  Status s = [this]() -> Status {
    BL_RETURN_IF_ERROR(plan());
    // A topology.json left from an earlier run must not be mistaken for this one.
    ::unlink(topologyPath().c_str());
    if (options_.secure) BL_RETURN_IF_ERROR(preparePki());
    BL_RETURN_IF_ERROR(writeConfigs());
    // The broker log may hold earlier runs' lines: only what comes after counts.
    const uint64_t bridge_log_from = fileSize(firstBroker()->log_path);
    for (Role role : {Role::kBroker, Role::kAggregator, Role::kAgent}) {
      for (auto& m : members_) {
        if (m->role == role) BL_RETURN_IF_ERROR(launch(*m));
      }
      if (role == Role::kBroker) BL_RETURN_IF_ERROR(waitBridge(bridge_log_from));
    }
    return writeTopology();
  }();
  if (!s.isOk()) {
    stop();
    return s;
  }
  started_ = true;
  return Status::ok();
}

void LocalPipeline::stop() {
  for (Role role : {Role::kAgent, Role::kAggregator, Role::kBroker}) {
    // Signal the whole tier at once, then wait: the grace periods overlap.
    for (auto& m : members_) {
      if (m->role == role && m->process.isRunning()) (void)m->process.signal(SIGTERM);
    }
    for (auto& m : members_) {
      if (m->role != role || !m->process.started() || m->process.waitStatus()) continue;
      if (!m->process.waitFor(options_.stop_grace)) {
        log::warn(
            "process_killed_after_grace",
            {{"name", m->name}, {"grace_ms", static_cast<int64_t>(options_.stop_grace.count())}});
        m->process.kill();
      }
      m->exit_reported = true;
      log::info("process_stopped",
                {{"name", m->name}, {"status", describeWaitStatus(*m->process.waitStatus())}});
    }
  }
  started_ = false;
}

Status LocalPipeline::kill9(const std::string& name) {
  Member* m = member(name);
  if (m == nullptr) return Status::notFound("no process named `" + name + "`");
  if (!m->process.isRunning()) return Status::notFound(name + " is not running");
  m->process.kill();
  m->exit_reported = true;
  return Status::ok();
}

Status LocalPipeline::restart(const std::string& name) {
  Member* m = member(name);
  if (m == nullptr) return Status::notFound("no process named `" + name + "`");
  if (m->process.isRunning()) m->process.terminate(options_.stop_grace);
  // Taken once the old process is gone: a bridge line after it is the new bridge's.
  const uint64_t bridge_log_from = fileSize(firstBroker()->log_path);
  BL_RETURN_IF_ERROR(launch(*m));
  if (m->role == Role::kBroker) BL_RETURN_IF_ERROR(waitBridge(bridge_log_from));
  return writeTopology();
}

std::vector<std::pair<std::string, std::string>> LocalPipeline::pollExits() {
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& m : members_) {
    if (m->exit_reported || !m->process.started() || m->process.isRunning()) continue;
    m->exit_reported = true;
    out.emplace_back(m->name, describeWaitStatus(*m->process.waitStatus()));
  }
  return out;
}

}  // namespace branchline::cli
