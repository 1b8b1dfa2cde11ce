// branchline-agent: reads agent.toml, wires the stages (HTTP ingest and spool
// -> DurableBuffer -> Forwarder -> MQTT) and runs until SIGINT or SIGTERM.
// Exit codes: 0 after a clean stop, 2 for a bad configuration (the message
// names the key), 1 when the agent cannot start (port taken, data dir not
// writable, buffer unreadable).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "agent/buffer/durable_buffer.h"
#include "agent/config/agent_config.h"
#include "agent/forward/forwarder.h"
#include "agent/health/agent_health.h"
#include "agent/ingest/ingest_service.h"
#include "agent/ingest/ingest_tokens.h"
#include "agent/spool/spool_ingester.h"
#include "protocol/seal.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/metrics.h"
#include "shared/core/private_path.h"
#include "shared/crypto/key_file.h"
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

struct TokenCommand {
  std::string config_path;
  std::vector<std::string> sources;
  std::string id;  // revoke
};

// `token add|list|revoke`: the hashes live in <data_dir>/ingest_tokens; a
// running agent rereads the file within a second. Every change is logged (the
// token's id and sources, never the token).
int manageTokens(const std::string& action, const TokenCommand& cmd) {
  auto cfg = agent::loadAgentConfig(cmd.config_path);
  if (!cfg.isOk()) return fail(kExitBadConfig, cfg.status().message());
  log::init("agent");
  for (const auto& source : cmd.sources) {
    auto it = std::find_if(cfg->access.begin(), cfg->access.end(),
                           [&](const auto& a) { return a.source == source; });
    if (it == cfg->access.end()) {
      return fail(kExitBadConfig, "token " + action + ": --source `" + source +
                                      "` is not a source of " + cmd.config_path);
    }
    if (it->open && action == "add") {
      std::fprintf(stderr,
                   "branchline-agent: note: source `%s` has auth = \"none\"; it takes posts "
                   "without a token\n",
                   source.c_str());
    }
  }
  const std::filesystem::path file = cfg->tokenFile();
  if (action == "list") {
    auto tokens = agent::readIngestTokens(file);
    if (!tokens.isOk()) return fail(kExitStartupFailed, tokens.status().message());
    std::printf("%-8s  %-20s  %s\n", "ID", "CREATED", "SOURCES");
    for (const auto& t : tokens->tokens()) {
      bool shown = cmd.sources.empty();
      for (const auto& s : cmd.sources) {
        shown = shown || std::find(t.sources.begin(), t.sources.end(), s) != t.sources.end();
      }
      if (!shown) continue;
      std::string sources;
      for (const auto& s : t.sources) sources += (sources.empty() ? "" : ",") + s;
      std::printf("%-8s  %-20s  %s\n", t.id.c_str(),
                  formatRfc3339Micros(t.created_unix * 1000000).substr(0, 19).append("Z").c_str(),
                  sources.c_str());
    }
    return 0;
  }
  if (auto made = makePrivateDirectory(cfg->data_dir); !made.isOk()) {
    return fail(kExitStartupFailed,
                "agent.data_dir " + cfg->data_dir.string() + ": " + made.status().message());
  }
  std::string token;
  std::string changed_id;
  std::string left;  // revoke: the sources the token keeps
  Status s = agent::updateIngestTokens(file, [&](agent::IngestTokens& tokens) -> Status {
    if (action == "add") {
      auto added = tokens.add(cmd.sources, nowMicros() / 1000000);
      if (!added.isOk()) return added.status();
      token = std::move(added).value();
      changed_id = std::string(agent::tokenId(token));
      return Status::ok();
    }
    for (const agent::IngestToken& entry : tokens.tokens()) {
      if (entry.id != cmd.id) continue;
      const agent::IngestToken t = entry;  // a copy: revoke() erases the entry
      std::vector<std::string> keep;
      for (const auto& src : t.sources) {
        if (std::find(cmd.sources.begin(), cmd.sources.end(), src) == cmd.sources.end()) {
          keep.push_back(src);
        }
      }
      if (keep.size() == t.sources.size()) {
        return Status::notFound("token " + cmd.id + " is not a token of the given --source");
      }
      changed_id = t.id;
      tokens.revoke(cmd.id);
      if (!keep.empty()) {
        for (const auto& src : keep) left += (left.empty() ? "" : ",") + src;
        return tokens.restore(t.id, t.created_unix, keep, t.hash);
      }
      return Status::ok();
    }
    return Status::notFound("no token with id `" + cmd.id + "` in " + file.string());
  });
  if (!s.isOk()) {
    return fail(s.code() == Code::kNotFound || s.code() == Code::kInvalidArgument
                    ? kExitBadConfig
                    : kExitStartupFailed,
                "token " + action + ": " + s.message());
  }
  std::string sources;
  for (const auto& src : cmd.sources) sources += (sources.empty() ? "" : ",") + src;
  if (action == "add") {
    log::info("ingest_token_added",
              {{"token_id", changed_id}, {"sources", sources}, {"file", file.string()}});
    std::printf("%s\n", token.c_str());
    std::fprintf(stderr,
                 "branchline-agent: token %s may post to %s; it is shown only now: store it "
                 "(clients send `Authorization: Bearer <token>`)\n",
                 changed_id.c_str(), sources.c_str());
  } else {
    log::info("ingest_token_revoked", {{"token_id", changed_id},
                                       {"sources", sources},
                                       {"sources_left", left},
                                       {"file", file.string()}});
    std::fprintf(stderr, "branchline-agent: token %s revoked for %s%s\n", changed_id.c_str(),
                 sources.c_str(), left.empty() ? "" : ("; it still may post to " + left).c_str());
  }
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
  // and on /health. Declared before the stages that report into it.
  mqtt::BrokerEvents broker_events(metrics, "bl_agent", client_id);
  // GET /health (README "Health"): whether the agent can forward.
  agent::AgentHealth health(*buffer, buffer_options.max_bytes, broker_events, cfg->health, metrics);
  agent::IngestOptions ingest_options;
  ingest_options.health = [&health] {
    const agent::HealthVerdict verdict = health.check();
    return agent::HealthAnswer{!verdict.ok(), verdict.json()};
  };
  ingest_options.max_depth = static_cast<size_t>(cfg->http.max_depth);
  ingest_options.max_records_per_request = cfg->http.max_records_per_request;
  ingest_options.max_record_bytes = cfg->http.max_record_bytes;
  ingest_options.max_field_bytes = cfg->http.max_field_bytes;
  // Who may post (README "Authenticated ingest"): tokens by default; a public
  // source says so and is rate limited, and we say so at every start.
  agent::IngestTokenFile tokens(cfg->tokenFile());
  if (auto narrowed = narrowToPrivateFile(cfg->tokenFile()); !narrowed.isOk()) {
    return fail(kExitStartupFailed, "ingest token file: " + narrowed.status().message());
  } else if (*narrowed) {
    log::warn("ingest_tokens_mode_narrowed",
              {{"path", cfg->tokenFile().string()}, {"mode", "0600"}});
  }
  if (Status s = tokens.loadNow(); !s.isOk()) return fail(kExitStartupFailed, s.message());
  for (const auto& a : cfg->access) {
    agent::SourcePolicy p;
    p.open = a.open;
    p.rate_limit_per_minute = a.rate_limit_per_minute;
    p.cors_origins = a.cors_origins;
    p.form_redirect = a.form_redirect;
    ingest_options.sources.emplace(a.source, std::move(p));
    if (a.open) {
      log::warn("ingest_source_public",
                {{"source", a.source},
                 {"rate_limit_per_minute", a.rate_limit_per_minute},
                 {"why", "auth = \"none\": anyone who reaches the port may post to it"}});
    }
  }
  ingest_options.tokens = &tokens;
  if (tokens.count() == 0 &&
      std::any_of(cfg->access.begin(), cfg->access.end(), [](const auto& a) { return !a.open; })) {
    log::warn("ingest_no_tokens",
              {{"file", cfg->tokenFile().string()},
               {"why",
                "no ingest token yet: every post answers 401; run `branchline-agent token "
                "add --config FILE --source S`"}});
  }
  if (!cfg->http.metrics_token_file.empty()) {
    crypto::KeyFileRules rules;
    rules.label = "http.metrics_token_file";
    auto token = crypto::readKeyFile(cfg->http.metrics_token_file, rules);
    if (!token.isOk()) return fail(kExitBadConfig, token.status().message());
    std::string_view t = token->view();
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' '))
      t.remove_suffix(1);
    if (t.empty() || t.find_first_of(" \t\r\n") != std::string_view::npos) {
      return fail(kExitBadConfig, "http.metrics_token_file " +
                                      cfg->http.metrics_token_file.string() +
                                      ": must hold one token (no spaces), as one line");
    }
    ingest_options.metrics_token = std::string(t);
  }
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
  http_options.tls_cert_file = cfg->http.tls_cert_file.string();
  http_options.tls_key_file = cfg->http.tls_key_file.string();
  http_options.client_ca_file = cfg->http.client_ca_file.string();
  http_options.refused = &ingest.httpRefused();
  http_options.connections = &ingest.httpConnections();
  http_options.reserved_paths.push_back("/health");
  auto server =
      http::Server::start(http_options, [&ingest](http::Request&& request, http::Respond respond) {
        ingest.handle(std::move(request), std::move(respond));
      });
  if (!server.isOk()) {
    // A TLS file that cannot be used is a configuration error; a taken port is not.
    if (server.status().code() == Code::kInvalidArgument) {
      return fail(kExitBadConfig, "http: " + server.status().message());
    }
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
  health.watch(forwarder->get());

  log::info("agent_started", {{"agent", cfg->id},
                              {"http_host", cfg->http.host},
                              {"http_port", static_cast<uint64_t>((*server)->port())},
                              {"data_dir", cfg->data_dir.string()},
                              {"https", !cfg->http.tls_cert_file.empty()},
                              {"client_certificates", !cfg->http.client_ca_file.empty()},
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
  health.watch(nullptr);  // nothing asks now (the server is gone); never leave it dangling
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
  auto* token = app.add_subcommand(
      "token",
      "Manage ingest tokens (README \"Authenticated ingest\"); a running agent picks up "
      "changes within a second");
  token->require_subcommand(1);
  TokenCommand add_cmd, list_cmd, revoke_cmd;
  auto* token_add = token->add_subcommand(
      "add", "Make a new token for the sources and print it (once; only its hash is kept)");
  token_add->add_option("--config", add_cmd.config_path, "agent configuration (TOML)")->required();
  token_add->add_option("--source", add_cmd.sources, "a source it may post to (repeatable)")
      ->required();
  auto* token_list =
      token->add_subcommand("list", "Show every token's id, creation time and sources");
  token_list->add_option("--config", list_cmd.config_path, "agent configuration (TOML)")
      ->required();
  token_list->add_option("--source", list_cmd.sources, "only tokens of these sources");
  auto* token_revoke = token->add_subcommand(
      "revoke", "Withdraw a token from the sources (all of its sources: it is deleted)");
  token_revoke->add_option("--config", revoke_cmd.config_path, "agent configuration (TOML)")
      ->required();
  token_revoke->add_option("--source", revoke_cmd.sources, "the sources (repeatable)")->required();
  token_revoke->add_option("id", revoke_cmd.id, "the token's id (`token list`)")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitBadConfig;
  }
  if (*rotate) return rotateDataKey(rotate_config);
  if (*token_add) return manageTokens("add", add_cmd);
  if (*token_list) return manageTokens("list", list_cmd);
  if (*token_revoke) return manageTokens("revoke", revoke_cmd);
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
