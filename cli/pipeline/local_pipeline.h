// LocalPipeline runs a whole Branchline deployment on this machine, for
// `branchline up`, the demo, integration tests and benchmarks: a private
// Mosquitto on loopback (or two, bridged, for broker failover), N aggregators
// sharing one central SQLite store, and M agents, each with its own config,
// data dir and log under one directory.
//
// Secured by default, as a real fleet is (README "Security"): a PKI in
// DIR/pki (made by the same code as `branchline pki init|enroll` on the first
// start, reused after), the broker on ssl:// with client certificates (the
// CN is the user name and the client id), the access policy naming every
// member and the broker limits (shared/pki/broker_config.h), every agent and
// aggregator with its own certificate and sealing keys. Run as root, the
// brokers run as user `mosquitto`, owning their data dirs and keys; start()
// fails naming the folder when that user cannot reach DIR. `secure = false` (`branchline up
// --insecure`) runs the same pipeline on plain TCP with an anonymous broker, for comparison.
//
// With `brokers = 2` a second Mosquitto, "mosquitto-2", bridges `<prefix>/#`
// both ways to the first (over TLS with its own certificate, CN
// "bridge.mosquitto-2", when secure), and every agent and aggregator lists both
// brokers, the first first: when one dies the clients move to the other.
//
// Guarantees: start() returns only once every process answers (brokers accept
// TCP, the bridge is subscribed at the first broker, aggregators and agents
// answer GET /healthz with 200), and only then is
// DIR/topology.json written (atomically: temp file, fsync, rename, fsync dir),
// so a script that sees the file can use every URL in it. stop() (and the
// destructor) stop agents first, then aggregators, then the broker, each with
// SIGTERM and up to 10 s before SIGKILL.
//
// Children are started with PR_SET_PDEATHSIG (see ProcessSpec), tied to the
// thread that spawns them: call start() and restart() from a thread that lives
// as long as the pipeline (main, or a test's thread), never from a short-lived one.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/pipeline/netns.h"
#include "cli/pipeline/process.h"
#include "shared/core/status.h"

namespace branchline::cli {

struct PipelineOptions {
  std::string dir;  // made absolute; created if missing
  int agents = 2;
  int aggregators = 2;
  // 1, or 2: a second broker "mosquitto-2" (port P+1) bridged to the first
  // (README "Two brokers (failover)"). start() refuses any other number.
  int brokers = 1;
  // brokers P (and P+1), aggregators P+10+i, agents P+20+i; 0: free ports
  uint16_t base_port = 0;
  // Where branchline-agent/-aggregator are. "": $BRANCHLINE_BIN_DIR if set (ctest
  // sets it), else the directory of the running executable (/proc/self/exe).
  std::string bin_dir;
  std::string mosquitto = "/usr/sbin/mosquitto";
  // Extra config keys, "table.key" -> TOML value text (`"batch.linger_ms" -> "20"`,
  // `"mqtt.topic_prefix" -> "\"x\""`). They replace the generated value of the same key.
  std::map<std::string, std::string> agent_overrides;
  std::map<std::string, std::string> aggregator_overrides;
  bool secure = true;  // see above; false: plain TCP, anonymous broker, nothing sealed
  // The central store every aggregator writes to. "": SQLite at DIR/central.db;
  // else a "postgresql://user@host:port/db" URL (the server is not started here).
  std::string store_url;
  // Each agent in a Linux network namespace of its own (needs root; see
  // cli/pipeline/netns.h), for chaos runs: it listens on the namespace's local
  // address (its URL says which), reaches the brokers over its uplink (each
  // broker also listens on every uplink's host end, which the broker
  // certificate names, so this needs a DIR without a PKI yet), and
  // cutNetwork()/healNetwork() take that uplink down and up.
  bool isolate_agents = false;
  std::chrono::milliseconds ready_timeout{30000};  // per process
  std::chrono::milliseconds stop_grace{10000};     // SIGTERM to SIGKILL
};

// A new folder /tmp/<prefix>.XXXXXX for pipelines to live in (their DIR or its
// parent), mode 0711: when we are root the brokers run as user `mosquitto`,
// which must be able to traverse it; others still cannot list it. "" if it
// cannot be made.
std::string makePipelineTempDir(const std::string& prefix);

enum class Role { kBroker, kAggregator, kAgent };
const char* roleName(Role role);

struct Member {
  Role role;
  std::string name;         // "mosquitto", "mosquitto-2", "agg-1", "agent-1"
  std::string config_path;  // absolute
  std::string data_dir;     // absolute
  std::string log_path;     // DIR/<name>/<name>.log
  uint16_t port = 0;
  std::string url;   // "mqtts://127.0.0.1:P" ("mqtt://" insecure) or "http://127.0.0.1:P"
  ProcessSpec spec;  // how to start it again
  // Agents: the bearer token for all of its sources (topology.json "ingest_token").
  std::string ingest_token;
  NetworkNamespace* netns = nullptr;  // with isolate_agents (agents only)
  Process process;
  bool exit_reported = false;
};

class LocalPipeline {
 public:
  explicit LocalPipeline(PipelineOptions options);
  ~LocalPipeline();  // stop()
  LocalPipeline(const LocalPipeline&) = delete;
  LocalPipeline& operator=(const LocalPipeline&) = delete;

  // Writes configs, starts everything, waits until ready, writes topology.json.
  // On failure stops what it started; the error names the process and quotes the
  // end of its log.
  Status start();
  // Agents, then aggregators, then the broker. Idempotent.
  void stop();

  const std::string& dir() const { return options_.dir; }
  std::string topologyPath() const { return options_.dir + "/topology.json"; }
  std::string storeUrl() const {
    return options_.store_url.empty() ? "sqlite://" + storePath() : options_.store_url;
  }
  std::string storePath() const { return options_.dir + "/central.db"; }  // SQLite only
  // The first broker: "ssl://127.0.0.1:P" ("tcp://" insecure), as the configs name it.
  std::string brokerUri() const;
  // Every broker, the first first: what each config's `mqtt.brokers` lists
  // (`host`: an isolated agent names the host end of its uplink instead).
  std::vector<std::string> brokerUris(const std::string& host = "127.0.0.1") const;
  bool secure() const { return options_.secure; }
  // The PKI folder (layout: README "Security"); exists only when secure().
  std::string pkiDir() const { return options_.dir + "/pki"; }
  // Batches are sealed: the configs carry the [security] keys (with secure()).
  bool sealsBatches() const;
  std::vector<std::string> agentUrls() const;
  // Each agent's ingest token, in agentUrls() order (LoadOptions::tokens).
  std::vector<std::string> agentTokens() const;
  std::vector<std::string> aggregatorUrls() const;

  // nullptr for an unknown name.
  Member* member(const std::string& name);
  Process* process(const std::string& name);
  const std::vector<std::unique_ptr<Member>>& members() const { return members_; }

  // SIGKILL one process and reap it; it stays down until restart().
  Status kill9(const std::string& name);
  // Stops it (if running) and starts it again with the same config, waits until
  // ready (for a broker with the other one up: until the bridge is back), and
  // rewrites topology.json with its new pid.
  Status restart(const std::string& name);
  Status brokerRestart() { return restart("mosquitto"); }
  // With isolate_agents: drop every packet on an agent's uplink, and let them
  // through again. kInvalidArgument for a name that is not an isolated agent.
  Status cutNetwork(const std::string& agent);
  Status healNetwork(const std::string& agent);

  // Processes that exited since the last call, each reported once:
  // {name, "exited with status 1"}. Reaps them; the others are untouched.
  std::vector<std::pair<std::string, std::string>> pollExits();

 private:
  Status plan();
  Status preparePki();
  Status writeConfigs();
  Status launch(Member& m);
  Status waitReady(Member& m);
  // With two brokers both running: until the bridge's subscription shows in
  // the first broker's log after byte `log_offset`. Else returns at once.
  Status waitBridge(uint64_t log_offset);
  Status isolateAgents();  // plan(): a namespace per agent, its URL and argv
  Member* firstBroker();
  Status writeTopology();
  Status ensureIngestToken(Member& m);

  PipelineOptions options_;
  // Before members_: destroyed after them, so no process outlives its namespace.
  std::vector<std::unique_ptr<NetworkNamespace>> namespaces_;
  std::vector<std::unique_ptr<Member>> members_;
  std::string seal_key_file_;  // the aggregators' current sealing key (secure only)
  bool started_ = false;
};

// The last `max_bytes` of a log file, for error messages ("" if unreadable).
std::string tailOfFile(const std::string& path, size_t max_bytes = 2000);

}  // namespace branchline::cli
