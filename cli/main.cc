// `branchline`: the operator's and developer's command. `up` runs a local
// pipeline, `loadgen` drives agents with synthetic records, `demo` does both
// and reports what reached the central store.
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
      ->add_option("--base-port", up_base_port,
                   "Broker P, aggregators P+10+i, agents P+20+i (default: free ports)")
      ->check(CLI::Range(1, 65000));
  up_cmd->add_option("--bin-dir", up.bin_dir,
                     "Where branchline-agent/-aggregator are (default: next to this binary)");

  loadgen::LoadOptions load;
  auto* load_cmd = app.add_subcommand("loadgen", "Send synthetic customer records to agents");
  load_cmd->add_option("--url", load.urls, "Agent base URL (repeatable)")->required();
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

  CLI11_PARSE(app, argc, argv);

  if (*up_cmd) {
    up.base_port = static_cast<uint16_t>(up_base_port);
    return cli::runUp(std::move(up));
  }
  if (*load_cmd) {
    if (load.records == 0 && load.seconds <= 0) load.records = 10000;
    return cli::runLoadgen(load);
  }
  demo.base_port = static_cast<uint16_t>(demo_base_port);
  return cli::runDemo(demo);
}
