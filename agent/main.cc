// branchline-agent: reads agent.toml, wires the stages (HTTP ingest and spool
// -> DurableBuffer -> Forwarder -> MQTT) and runs until SIGINT or SIGTERM.
// Exit codes: 0 after a clean stop, 2 for a bad configuration (the message
// names the key), 1 when the agent cannot start (port taken, data dir not
// writable, buffer unreadable).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "agent/buffer/durable_buffer.h"
#include "agent/config/agent_config.h"
#include "agent/forward/forwarder.h"
#include "agent/ingest/ingest_service.h"
#include "agent/spool/spool_ingester.h"
#include "protocol/seal.h"
#include "shared/core/log.h"
#include "shared/core/metrics.h"
#include "shared/core/private_path.h"
#include "shared/http/http_server.h"
#include "shared/mqtt/broker_events.h"
#include "shared/pki/certificate_expiry.h"
#include "shared/rules/rule_engine.h"

namespace {

using namespace branchline;

constexpr int kExitBadConfig = 2;
constexpr int kExitStartupFailed = 1;

int fail(int code, const std::string& message) {
  std::fprintf(stderr, "branchline-agent: %s\n", message.c_str());
  log::error(code == kExitBadConfig ? "agent_bad_config" : "agent_start_failed",
             {{"error", message}});
  return code;
}

agent::BufferOptions bufferOptions(const agent::AgentConfig& cfg) {
  agent::BufferOptions o;
  o.path = cfg.data_dir / "buffer.db";
  o.max_bytes = cfg.buffer.max_bytes;
  o.key_file = cfg.buffer.key_file;
  return o;
}

// `rotate-data-key`: offline; the logic and its crash safety live in DurableBuffer.
int rotateDataKey(const std::string& config_path) {
  auto cfg = agent::loadAgentConfig(config_path);
  if (!cfg.isOk()) return fail(kExitBadConfig, cfg.status().message());
  log::init("agent");
  auto rotated = agent::rotateBufferDataKey(bufferOptions(*cfg));
  if (!rotated.isOk()) {
    const std::string message = "rotate-data-key: " + rotated.status().message();
    std::fprintf(stderr, "branchline-agent: %s\n", message.c_str());
    log::error("data_key_rotation_failed", {{"error", message}});
    return kExitStartupFailed;
  }
  std::printf(
      "branchline-agent: rotated the data key in %s: %llu records and %llu quarantined rejects "
      "re-sealed; the old key is destroyed\n",
      cfg->buffer.key_file.c_str(), static_cast<unsigned long long>(rotated->records),
      static_cast<unsigned long long>(rotated->rejects));
  return 0;
}

int run(const std::string& config_path, const sigset_t& stop_signals) {
  auto cfg = agent::loadAgentConfig(config_path);
  if (!cfg.isOk()) return fail(kExitBadConfig, cfg.status().message());
  log::init("agent");
  if (Status s = agent::checkCertificateIdentity(*cfg); !s.isOk()) {
    return fail(kExitBadConfig, s.message());
  }

  auto engine = rules::RuleEngine::create(cfg->sources);
  if (!engine.isOk()) return fail(kExitBadConfig, engine.status().message());

  // Sealing keys are read before any input is accepted: a missing, unreadable or
  // group/other-readable key file stops the agent here (README "Sealed batches").
  std::optional<protocol::SealerKeys> seal;
  if (!cfg->security.seal_key_file.empty()) {
    auto own = protocol::readSealPrivateKey(cfg->security.seal_key_file);
    if (!own.isOk()) {
      return fail(kExitBadConfig, "security.seal_key_file: " + own.status().message());
    }
    auto aggregators = protocol::readSealPublicKey(cfg->security.aggregator_key_file);
    if (!aggregators.isOk()) {
      return fail(kExitBadConfig,
                  "security.aggregator_key_file: " + aggregators.status().message());
    }
    seal = protocol::SealerKeys{*own, *aggregators};
  }

  // Customer data at rest: the data directory is 0700, a wider one narrowed
  // (README "Private files"); one owned by another user is refused.
  auto private_dir = makePrivateDirectory(cfg->data_dir);
  if (!private_dir.isOk()) {
    return fail(kExitStartupFailed,
                "agent.data_dir " + cfg->data_dir.string() + ": " + private_dir.status().message());
  }
  if (*private_dir) {
    log::warn("data_dir_mode_narrowed", {{"path", cfg->data_dir.string()}, {"mode", "0700"}});
  }
  agent::BufferOptions buffer_options = bufferOptions(*cfg);
  auto opened = agent::DurableBuffer::open(buffer_options);
  if (!opened.isOk()) {
    return fail(kExitStartupFailed, "buffer " + buffer_options.path.string() + ": " +
                                        opened.status().message() +
                                        " (is agent.data_dir writable?)");
  }
  std::unique_ptr<agent::DurableBuffer> buffer = std::move(opened).value();

  MetricsRegistry metrics;
  if (Status s = pki::addCertificateExpiryGauge(metrics, "bl_agent_certificate_expiry_days",
                                                cfg->mqtt.cert_file);
      !cfg->mqtt.cert_file.empty() && !s) {
    log::warn("certificate_expiry_unknown", {{"error", s.message()}});
  }
  const std::string client_id = "branchline-agent-" + cfg->id;
  // What the broker refuses the forwarder (README "MQTT 5"): logged, counted
  // and on /healthz. Declared before the stages that report into it.
  mqtt::BrokerEvents broker_events(metrics, "bl_agent", client_id);
  agent::IngestOptions ingest_options;
  ingest_options.health_fields = [&broker_events] {
    auto h = broker_events.health();
    return agent::HealthFields{h.degraded, std::move(h.json_fields)};
  };
  ingest_options.max_depth = static_cast<size_t>(cfg->http.max_depth);
  ingest_options.max_records_per_request = cfg->http.max_records_per_request;
  ingest_options.max_record_bytes = cfg->http.max_record_bytes;
  ingest_options.max_field_bytes = cfg->http.max_field_bytes;
  // Declared before the stages that call into it, so it is destroyed after them.
  agent::IngestService ingest(*engine, *buffer, metrics, ingest_options);

  http::ServerOptions http_options;
  http_options.listen_address = cfg->http.host;
  http_options.port = cfg->http.port;
  http_options.max_body_bytes = cfg->http.max_body_bytes;
  http_options.max_header_bytes = cfg->http.max_header_bytes;
  http_options.header_timeout = cfg->http.header_timeout;
  http_options.body_timeout = cfg->http.body_timeout;
  http_options.min_body_bytes_per_second = cfg->http.min_body_bytes_per_second;
  http_options.idle_timeout = cfg->http.idle_timeout;
  http_options.max_connections = cfg->http.max_connections;
  http_options.max_connections_per_client = cfg->http.max_connections_per_client;
  http_options.refused = &ingest.httpRefused();
  http_options.connections = &ingest.httpConnections();
  auto server =
      http::Server::start(http_options, [&ingest](http::Request&& request, http::Respond respond) {
        ingest.handle(std::move(request), std::move(respond));
      });
  if (!server.isOk()) {
    return fail(kExitStartupFailed,
                "http.listen " + cfg->http.listen + ": " + server.status().message());
  }

  std::unique_ptr<agent::SpoolIngester> spool;
  if (cfg->spool.enabled) {
    agent::SpoolOptions spool_options;
    spool_options.dir = cfg->spool.dir;
    spool_options.sources = (*engine)->sourceNames();
    spool_options.poll = cfg->spool.poll;
    spool_options.max_depth = static_cast<size_t>(cfg->http.max_depth);
    spool_options.max_file_bytes = cfg->spool.max_file_bytes;
    spool_options.max_line_bytes = cfg->spool.max_line_bytes;
    spool_options.max_records_per_file = cfg->spool.max_records_per_file;
    spool_options.owner = cfg->spool.owner;
    spool_options.keep_done = cfg->spool.keep_done;
    auto created = agent::SpoolIngester::create(spool_options, *engine, *buffer, metrics);
    if (!created.isOk()) {
      return fail(kExitStartupFailed,
                  "spool.dir " + cfg->spool.dir.string() + ": " + created.status().message());
    }
    spool = std::move(created).value();
    spool->start();
  }

  agent::ForwarderOptions forward;
  forward.mqtt.broker_uris = cfg->mqtt.brokers;
  forward.mqtt.ca_file = cfg->mqtt.ca_file.string();
  forward.mqtt.cert_file = cfg->mqtt.cert_file.string();
  forward.mqtt.key_file = cfg->mqtt.key_file.string();
  forward.mqtt.client_id = client_id;
  broker_events.attach(forward.mqtt);
  // A persistent session: acks sent while the link was briefly down still arrive.
  forward.mqtt.clean_session = false;
  forward.agent_id = cfg->id;
  forward.topic_prefix = cfg->mqtt.topic_prefix;
  forward.limits.max_records = cfg->batch.max_records;
  forward.limits.max_bytes = cfg->batch.max_bytes;
  forward.window_batches = cfg->batch.window_batches;
  forward.window_bytes = cfg->batch.window_bytes;
  forward.linger = cfg->batch.linger;
  forward.ack_timeout = cfg->batch.ack_timeout;
  forward.zstd_level = cfg->batch.zstd_level;
  forward.seal = std::move(seal);
  auto forwarder = agent::Forwarder::start(*buffer, std::move(forward), metrics);
  if (!forwarder.isOk()) return fail(kExitStartupFailed, forwarder.status().message());

  log::info("agent_started", {{"agent", cfg->id},
                              {"http_host", cfg->http.host},
                              {"http_port", static_cast<uint64_t>((*server)->port())},
                              {"data_dir", cfg->data_dir.string()},
                              {"spool", cfg->spool.enabled},
                              {"brokers", static_cast<uint64_t>(cfg->mqtt.brokers.size())},
                              {"sealed", !cfg->security.seal_key_file.empty()}});

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  log::info("agent_stopping", {{"agent", cfg->id}, {"signal", signal_number}});

  // Inputs first, so nothing new arrives; then the forwarder; then the buffer,
  // which finishes pending appends (and their answers) before it closes.
  server->reset();
  spool.reset();
  forwarder->reset();
  buffer.reset();
  log::info("agent_stopped", {{"agent", cfg->id}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "branchline-agent: takes records over HTTP and from a spool folder, keeps them "
      "durably and forwards them to the aggregators"};
  std::string config_path;
  app.add_option("--config", config_path, "agent configuration (TOML); required to run the agent");
  app.require_subcommand(0, 1);
  std::string rotate_config;
  auto* rotate = app.add_subcommand(
      "rotate-data-key",
      "Re-seal the buffer under a new data key and destroy the old key (README [buffer] "
      "key_file). Offline: stop the agent first; refused while an agent has the buffer open");
  rotate->add_option("--config", rotate_config, "agent configuration (TOML)")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitBadConfig;
  }
  if (*rotate) return rotateDataKey(rotate_config);
  if (config_path.empty())
    return app.exit(CLI::RequiredError("--config")) == 0 ? 0 : kExitBadConfig;

  // Blocked before any thread starts, so every thread inherits the mask and
  // only sigwait() below sees SIGINT/SIGTERM.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A peer closing a socket mid-write must be an error value, not a kill.
  signal(SIGPIPE, SIG_IGN);

  return run(config_path, stop_signals);
}
