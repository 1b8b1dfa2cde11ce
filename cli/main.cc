// `branchline`: the operator's and developer's command. `up` runs a local
// pipeline, `loadgen` drives agents with synthetic records, `demo` does both
// and reports what reached the central store, `pki` makes the fleet's keys.
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "shared/core/log.h"

int main(int argc, char** argv) {
  using namespace branchline;
  log::init("branchline");
  CLI::App app{"Branchline: local pipeline, load generator and demo"};
  app.require_subcommand(1);

  cli::PipelineOptions up;
  int up_base_port = 0;
  auto* up_cmd =
      app.add_subcommand("up", "Run broker, aggregators and agents until SIGINT/SIGTERM");
  up_cmd->add_option("--dir", up.dir, "Directory for configs, data, logs, topology.json")
      ->required();
  up_cmd->add_option("--agents", up.agents, "Number of agents")->check(CLI::Range(1, 100));
  up_cmd->add_option("--aggregators", up.aggregators, "Number of aggregators")
      ->check(CLI::Range(1, 10));
  up_cmd
      ->add_option("--brokers", up.brokers,
                   "1, or 2: a second Mosquitto (port P+1) bridged to the first, for failover")
      ->check(CLI::Range(1, 2));
  up_cmd
      ->add_option("--base-port", up_base_port,
                   "Brokers P (and P+1), aggregators P+10+i, agents P+20+i (default: free ports)")
      ->check(CLI::Range(1, 65000));
  up_cmd->add_option("--store", up.store_url,
                     "Central store URL, e.g. postgresql://user@host:5432/db "
                     "(default: SQLite at DIR/central.db)");
  up_cmd->add_option("--bin-dir", up.bin_dir,
                     "Where branchline-agent/-aggregator are (default: next to this binary)");
  bool up_insecure = false;
  up_cmd->add_flag("--insecure", up_insecure,
                   "No TLS, no ACL, anonymous broker (for comparison; default: PKI in DIR/pki)");

  loadgen::LoadOptions load;
  auto* load_cmd = app.add_subcommand("loadgen", "Send synthetic customer records to agents");
  load_cmd->add_option("--url", load.urls, "Agent base URL (repeatable)")->required();
  load_cmd->add_option("--token", load.tokens,
                       "Ingest token (Authorization: Bearer): one per --url in order, or one for "
                       "all (topology.json's \"ingest_token\")");
  load_cmd->add_option("--ca-file", load.ca_file,
                       "For https:// URLs: the CA (PEM) the agents' certificates chain to "
                       "(default: the system's trusted CAs)");
  load_cmd
      ->add_option("--cert-file", load.cert_file,
                   "For https:// URLs: a client certificate (PEM), for agents with "
                   "[http] client_ca_file")
      ->needs(load_cmd->add_option("--key-file", load.key_file,
                                   "The client certificate's private key (PEM)"));
  auto* records_opt = load_cmd->add_option("--records", load.records, "Records to send");
  load_cmd->add_option("--seconds", load.seconds, "Send for this long")->excludes(records_opt);
  load_cmd->add_option("--rate", load.rate, "Records per second (0: as fast as possible)");
  load_cmd->add_option("--concurrency", load.concurrency, "Connections")
      ->check(CLI::Range(1, 1024));
  load_cmd->add_option("--batch", load.batch, "Records per request")->check(CLI::Range(1, 100000));
  load_cmd->add_option("--duplicates", load.generator.duplicate_share, "Share of resent records")
      ->check(CLI::Range(0.0, 1.0));
  load_cmd->add_option("--invalid", load.generator.invalid_share, "Share of invalid records")
      ->check(CLI::Range(0.0, 1.0));
  load_cmd->add_option("--seed", load.generator.seed, "Generator seed");
  load_cmd->add_option("--source", load.source, "Source name in the URL path");
  load_cmd->add_flag("--ndjson", load.ndjson, "Send application/x-ndjson instead of JSON arrays");

  cli::DemoOptions demo;
  int demo_base_port = 0;
  auto* demo_cmd = app.add_subcommand("demo", "Run the pipeline under load and summarize");
  demo_cmd->add_option("--dir", demo.dir, "Directory (default: a new /tmp/branchline-demo.*)");
  demo_cmd->add_option("--seconds", demo.seconds, "Seconds of load")
      ->check(CLI::Range(1.0, 3600.0));
  demo_cmd->add_option("--agents", demo.agents, "Number of agents")->check(CLI::Range(1, 100));
  demo_cmd->add_option("--aggregators", demo.aggregators, "Number of aggregators")
      ->check(CLI::Range(1, 10));
  demo_cmd->add_option("--base-port", demo_base_port, "As for `up`")->check(CLI::Range(1, 65000));
  demo_cmd->add_option("--bin-dir", demo.bin_dir, "As for `up`");
  bool demo_insecure = false;
  demo_cmd->add_flag("--insecure", demo_insecure, "As for `up`");

  auto* pki_cmd = app.add_subcommand("pki", "The fleet's certificates and keys");
  pki_cmd->require_subcommand(1);
  cli::PkiInitOptions pki_init;
  std::string pki_aggregators = "agg-1,agg-2";
  auto* pki_init_cmd = pki_cmd->add_subcommand(
      "init",
      "Create the CA, the broker certificate, the aggregators' certificates and sealing key");
  pki_init_cmd->add_option("--dir", pki_init.dir, "PKI folder (created; must hold no CA)")
      ->required();
  pki_init_cmd->add_option("--aggregators", pki_aggregators,
                           "Aggregator names, comma-separated (default: agg-1,agg-2)");
  pki_init_cmd->add_option("--broker-host", pki_init.broker_hosts,
                           "Extra broker host name or IP for its certificate (repeatable)");
  pki_init_cmd
      ->add_option("--days", pki_init.days, "Validity of the broker/aggregator certificates")
      ->check(CLI::Range(1, 36500));
  pki_init_cmd->add_option("--ca-days", pki_init.ca_days, "Validity of the CA")
      ->check(CLI::Range(1, 36500));
  pki_init_cmd->add_option("--topic-prefix", pki_init.topic_prefix,
                           "For the broker's access policy");
  std::string pki_dir, pki_name, pki_prefix = "branchline/v1";
  int pki_days = 825;
  bool pki_aggregator = false;
  auto* pki_enroll_cmd = pki_cmd->add_subcommand(
      "enroll",
      "Issue an agent's certificate and sealing key pair (or an aggregator's certificate)");
  pki_enroll_cmd->add_option("--dir", pki_dir, "PKI folder made by `pki init`")->required();
  pki_enroll_cmd->add_option("name", pki_name, "The agent id (or, with --aggregator, its name)")
      ->required();
  bool pki_bridge = false;
  auto* aggregator_flag =
      pki_enroll_cmd->add_flag("--aggregator", pki_aggregator, "Enroll an aggregator instead");
  pki_enroll_cmd
      ->add_flag("--bridge", pki_bridge,
                 "Enroll a second broker's bridge instead: name = that broker")
      ->excludes(aggregator_flag);
  pki_enroll_cmd->add_option("--days", pki_days, "Certificate validity")
      ->check(CLI::Range(1, 36500));
  pki_enroll_cmd->add_option("--topic-prefix", pki_prefix,
                             "For the broker's access policy (broker/dynamic-security.json, "
                             "rewritten by every enrollment)");

  // renew / revoke / rotate-seal-key / list: the lifecycle after enroll.
  std::string life_dir, life_name;
  bool life_aggregator = false, life_bridge = false;
  int renew_days = 825, grace_days = 7;
  auto* pki_renew_cmd = pki_cmd->add_subcommand(
      "renew", "A new certificate and key for an enrolled identity (the old one is not revoked)");
  auto* pki_revoke_cmd = pki_cmd->add_subcommand(
      "revoke", "Revoke an identity: broker/crl.pem, and an agent's sealing key");
  for (auto* cmd : {pki_renew_cmd, pki_revoke_cmd}) {
    cmd->add_option("--dir", life_dir, "PKI folder made by `pki init`")->required();
    cmd->add_option("name", life_name, "The agent id (or, with --aggregator, its name)")
        ->required();
    auto* agg = cmd->add_flag("--aggregator", life_aggregator, "An aggregator's certificate");
    cmd->add_flag("--bridge", life_bridge, "A second broker's bridge certificate")->excludes(agg);
  }
  pki_renew_cmd->add_option("--days", renew_days, "Validity of the new certificate")
      ->check(CLI::Range(1, 36500));
  auto* pki_rotate_cmd = pki_cmd->add_subcommand(
      "rotate-seal-key", "A new aggregators' sealing key; seal.pub switched to it");
  pki_rotate_cmd->add_option("--dir", life_dir, "PKI folder made by `pki init`")->required();
  pki_rotate_cmd
      ->add_option("--grace-days", grace_days,
                   "How long aggregators keep opening batches sealed to the old key (printed "
                   "`until`)")
      ->check(CLI::Range(1, 3650));
  auto* pki_list_cmd =
      pki_cmd->add_subcommand("list", "Every identity: CN, serial, expiry, revoked or not");
  pki_list_cmd->add_option("--dir", life_dir, "PKI folder made by `pki init`")->required();

  cli::ChaosOptions chaos;
  int chaos_min_kills = chaos.min_kills_each;
  auto* chaos_cmd = app.add_subcommand(
      "chaos", "Kill and restart components under load, then count lost/duplicated records");
  chaos_cmd->add_option("--dir", chaos.pipeline.dir, "Directory (default: a new /tmp dir)");
  chaos_cmd->add_option("--seconds", chaos.seconds, "Seconds of load and faults")
      ->check(CLI::Range(10.0, 86400.0));
  chaos_cmd->add_option("--rate", chaos.rate, "Records per second of load")
      ->check(CLI::Range(1.0, 1e6));
  chaos_cmd->add_option("--agents", chaos.pipeline.agents, "Number of agents")
      ->check(CLI::Range(1, 100));
  chaos_cmd->add_option("--aggregators", chaos.pipeline.aggregators, "Number of aggregators")
      ->check(CLI::Range(1, 10));
  chaos_cmd->add_option("--brokers", chaos.pipeline.brokers, "1, or 2 bridged (each killed too)")
      ->check(CLI::Range(1, 2));
  chaos_cmd->add_option("--seed", chaos.seed,
                        "Seed of the fault schedule and the records (default: a new random one, "
                        "printed and in the verdict)");
  chaos_cmd->add_option("--min-kills", chaos_min_kills, "Kills per component, at least")
      ->check(CLI::Range(0, 1000));
  chaos_cmd->add_option("--bin-dir", chaos.pipeline.bin_dir, "As for `up`");
  chaos_cmd
      ->add_option("--store", chaos.store,
                   "Central store: sqlite, or postgresql (a private server, killed too)")
      ->check(CLI::IsMember({"sqlite", "postgresql"}));
  chaos_cmd->add_flag("--network-cuts", chaos.network_cuts,
                      "Also cut each agent's uplink (own network namespace; needs root)");
  chaos_cmd->add_option("--postgres-bin", chaos.postgres_bin_dir,
                        "Where initdb and pg_ctl are (--store postgresql)");

  CLI11_PARSE(app, argc, argv);

  if (*up_cmd) {
    up.base_port = static_cast<uint16_t>(up_base_port);
    up.secure = !up_insecure;
    return cli::runUp(std::move(up));
  }
  if (*pki_init_cmd) {
    pki_init.aggregators.clear();
    std::string_view rest = pki_aggregators;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      pki_init.aggregators.emplace_back(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
    return cli::runPkiInit(pki_init);
  }
  if (*pki_enroll_cmd) {
    const cli::IdentityRole role = pki_bridge       ? cli::IdentityRole::kBridge
                                   : pki_aggregator ? cli::IdentityRole::kAggregator
                                                    : cli::IdentityRole::kAgent;
    return cli::runPkiEnroll(pki_dir, pki_name, role, pki_days, pki_prefix);
  }
  const cli::IdentityRole life_role = life_bridge       ? cli::IdentityRole::kBridge
                                      : life_aggregator ? cli::IdentityRole::kAggregator
                                                        : cli::IdentityRole::kAgent;
  if (*pki_renew_cmd) return cli::runPkiRenew(life_dir, life_name, life_role, renew_days);
  if (*pki_revoke_cmd) return cli::runPkiRevoke(life_dir, life_name, life_role);
  if (*pki_rotate_cmd) return cli::runPkiRotateSealKey(life_dir, grace_days);
  if (*pki_list_cmd) return cli::runPkiList(life_dir);
  if (*load_cmd) {
    if (load.records == 0 && load.seconds <= 0) load.records = 10000;
    return cli::runLoadgen(load);
  }
  if (*chaos_cmd) {
    chaos.min_kills_each = chaos_min_kills;
    // Quick resends, so the surviving aggregator takes a dead one's batches soon.
    chaos.pipeline.agent_overrides["batch.ack_timeout_ms"] = "3000";
    return cli::runChaosCommand(std::move(chaos));
  }
  demo.base_port = static_cast<uint16_t>(demo_base_port);
  demo.secure = !demo_insecure;
  return cli::runDemo(demo);
}
