// branchline-microbench [buffer|central-store|seal|rules|all] [--postgres]
// Prints per-stage figures (bench/microbench.h); `all` (the default) runs every
// stage in turn. Never asserts a figure.
#include <CLI/CLI.hpp>

#include "bench/microbench.h"

int main(int argc, char** argv) {
  using namespace branchline::bench;
  CLI::App app{"branchline-microbench: per-stage figures (buffer, central store, seal, rules)"};
  app.require_subcommand(0, 1);
  app.fallthrough();  // --postgres may follow the subcommand
  bool postgres = false;
  app.add_flag("--postgres", postgres,
               "central-store: also measure PostgreSQL (starts a private server; needs "
               "/usr/lib/postgresql/15/bin)");
  CLI::App* buffer =
      app.add_subcommand("buffer", "DurableBuffer append and cycle, sealed and clear");
  CLI::App* store = app.add_subcommand("central-store", "central store commit throughput");
  CLI::App* seal = app.add_subcommand("seal", "encode+seal and decode+open of one full batch");
  CLI::App* rules = app.add_subcommand("rules", "rule engine apply() per core");
  app.add_subcommand("all", "every stage (the default)");
  CLI11_PARSE(app, argc, argv);

  const bool all = app.get_subcommands().empty() || app.got_subcommand("all");
  int rc = 0;
  if (all || buffer->parsed()) rc |= runBufferBench();
  if (all || store->parsed()) rc |= runCentralStoreBench(postgres);
  if (all || seal->parsed()) rc |= runSealBench();
  if (all || rules->parsed()) rc |= runRulesBench();
  return rc;
}
