// branchline-aggregator: reads its config, opens the central store, consumes
// agents' batches from MQTT and serves /healthz and /metrics until SIGINT or
// SIGTERM. Exit codes: 0 after a clean stop, 2 for a bad command line or
// config (the message names the key), 1 when startup fails otherwise.
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/config/aggregator_config.h"
#include "aggregator/consume/batch_consumer.h"
#include "aggregator/consume/seal_keys.h"
#include "aggregator/store/central_store.h"
#include "aggregator/store/postgres_store.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/metrics.h"
#include "shared/http/http_server.h"
#include "shared/mqtt/broker_events.h"
#include "shared/pki/certificate_expiry.h"

namespace {

using namespace branchline;

constexpr int kExitStartup = 1;
constexpr int kExitConfig = 2;

http::Handler makeHandler(aggregator::BatchConsumer& consumer, MetricsRegistry& metrics,
                          const mqtt::BrokerEvents& broker_events) {
  return [&consumer, &metrics, &broker_events](http::Request&& req, http::Respond respond) {
    std::string path = req.target.substr(0, req.target.find('?'));
    if (path != "/healthz" && path != "/metrics") {
      respond(http::jsonError(404, "no such path: " + path));
      return;
    }
    if (req.method != "GET") {
      http::Response r = http::jsonError(405, "use GET for " + path);
      r.headers.emplace_back("Allow", "GET");
      respond(std::move(r));
      return;
    }
    http::Response r;
    if (path == "/metrics") {
      r.content_type = "text/plain; version=0.0.4";
      r.body = metrics.renderPrometheus();
    } else {
      const bool store = consumer.storeReady();
      const bool broker = consumer.brokerConnected();
      r.status = store && broker ? 200 : 503;
      // A publish refusal or a takeover lately: still serving (200), but degraded.
      const mqtt::BrokerEvents::Health events = broker_events.health();
      const char* status = r.status != 200 ? "unavailable" : events.degraded ? "degraded" : "ok";
      r.body = std::string("{\"status\":\"") + status + "\",\"store\":\"" +
               (store ? "ready" : "unavailable") + "\",\"broker\":\"" +
               (broker ? "connected" : "disconnected") + "\"" + events.json_fields + "}";
    }
    respond(std::move(r));
  };
}

int run(const std::string& config_path) {
  auto config = aggregator::loadAggregatorConfig(config_path);
  if (!config) {
    log::error("config_invalid", {{"error", config.status().message()}});
    std::fprintf(stderr, "branchline-aggregator: %s\n", config.status().message().c_str());
    return kExitConfig;
  }
  const aggregator::AggregatorConfig& cfg = *config;

  // Sealing keys (README "Sealed batches"): a missing, unreadable or
  // group/other-readable key file is a config error, before anything starts.
  protocol::AggregatorKeyRing ring;
  std::unique_ptr<aggregator::EnrolledAgentKeys> agent_keys;
  if (!cfg.seal_keys.empty()) {
    std::vector<std::filesystem::path> current(cfg.seal_keys.begin(), cfg.seal_keys.end());
    std::vector<aggregator::RetiredSealKeyFile> retired;
    for (const auto& r : cfg.retired_seal_keys) retired.push_back({r.file, r.until_us});
    auto loaded = aggregator::loadAggregatorKeyRing(current, retired);
    if (!loaded) {
      const std::string message =
          config_path + ": [security] seal_keys / retired_seal_keys: " + loaded.status().message();
      log::error("config_invalid", {{"error", message}});
      std::fprintf(stderr, "branchline-aggregator: %s\n", message.c_str());
      return kExitConfig;
    }
    ring = std::move(loaded).value();
    for (const auto& [key_id, entry] : ring.by_key_id) {
      const bool retired_key = entry.honoured_until_us != INT64_MAX;
      if (retired_key && entry.honoured_until_us <= nowMicros()) {
        log::warn("seal_key_expired",
                  {{"key_id", key_id}, {"until", formatRfc3339Micros(entry.honoured_until_us)}});
      }
      log::info("seal_key_loaded",
                {{"key_id", key_id},
                 {"until", retired_key ? formatRfc3339Micros(entry.honoured_until_us) : "-"}});
    }
    agent_keys = std::make_unique<aggregator::EnrolledAgentKeys>(
        aggregator::EnrolledAgentKeys::Options{.agents_dir = cfg.agents_dir});
  }

  std::error_code ec;
  std::filesystem::create_directories(cfg.data_dir, ec);
  if (ec) {
    log::error("startup_failed", {{"error", "cannot create aggregator.data_dir " +
                                                cfg.data_dir.string() + ": " + ec.message()}});
    return kExitStartup;
  }

  // Block the stop signals before any thread starts, so every thread inherits
  // the mask and only sigwait() below ever sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto store = aggregator::openCentralStore(cfg.store_url);
  if (!store) {
    log::error("startup_failed", {{"error", store.status().toString()}});
    return kExitStartup;
  }

  MetricsRegistry metrics;
  if (Status s = pki::addCertificateExpiryGauge(metrics, "bl_aggregator_certificate_expiry_days",
                                                cfg.cert_file);
      !cfg.cert_file.empty() && !s) {
    log::warn("certificate_expiry_unknown", {{"error", s.message()}});
  }
  // What the broker refuses or takes away (README "MQTT 5"): logged, counted
  // and on /healthz, as at the agent.
  mqtt::BrokerEvents broker_events(metrics, "bl_aggregator", "aggregator." + cfg.name);
  aggregator::ConsumerOptions co;
  co.aggregator_name = cfg.name;
  co.broker_events = &broker_events;
  co.broker_uris = cfg.brokers;
  co.ca_file = cfg.ca_file;
  co.cert_file = cfg.cert_file;
  co.key_file = cfg.key_file;
  co.topic_prefix = cfg.topic_prefix;
  co.share_group = cfg.share_group;
  co.limits = cfg.decodeLimits();
  co.max_batches_per_commit = cfg.commit_max_batches;
  co.open.require_sealed = cfg.require_sealed;
  if (agent_keys) {
    co.open.ring = &ring;
    co.open.agent_public_key = [keys = agent_keys.get()](const std::string& id) {
      return keys->lookup(id);
    };
  }
  aggregator::BatchConsumer consumer(co, **store, metrics);
  if (Status s = consumer.start(); !s) {
    log::error("startup_failed", {{"error", s.toString()}});
    return kExitStartup;
  }

  http::ServerOptions so;
  so.listen_address = cfg.http_host;
  so.port = cfg.http_port;
  so.max_body_bytes = 64 << 10;  // only GETs are served
  so.threads = 1;
  auto server = http::Server::start(so, makeHandler(consumer, metrics, broker_events));
  if (!server) {
    log::error("startup_failed", {{"error", server.status().toString()}});
    consumer.stop();
    return kExitStartup;
  }
  log::info("aggregator_started", {{"name", cfg.name},
                                   {"http_port", static_cast<uint64_t>((*server)->port())},
                                   {"store", aggregator::redactPostgresUrl(cfg.store_url)},
                                   {"require_sealed", cfg.require_sealed}});

  int sig = 0;
  sigwait(&stop_signals, &sig);
  log::info("aggregator_stopping", {{"signal", sig}});
  // Order: the consumer finishes its current commit and its acks, then the
  // HTTP server goes, then the store closes (checkpointing its WAL).
  consumer.stop();
  (*server)->stop();
  server.value().reset();
  store.value().reset();
  log::info("aggregator_stopped", {{"name", cfg.name}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"branchline-aggregator: opens agents' batches, stores them centrally, acks them"};
  std::string config_path;
  app.add_option("--config", config_path, "the aggregator's TOML config file")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitConfig;
  }
  branchline::log::init("aggregator");
  return run(config_path);
}
