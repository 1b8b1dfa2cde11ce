// The subcommands of `branchline`. Each returns the process exit code and
// prints its result on stdout (errors on stderr); main.cc only parses flags.
#pragma once

#include <string>

#include "cli/loadgen/load_client.h"
#include "cli/pipeline/local_pipeline.h"

namespace branchline::cli {

// Starts the pipeline, prints the topology path, runs until SIGINT/SIGTERM.
int runUp(PipelineOptions options);

// Runs the load client and prints its stats as one JSON object.
int runLoadgen(const loadgen::LoadOptions& options);

struct DemoOptions {
  std::string dir;  // "": a new /tmp/branchline-demo.XXXXXX
  double seconds = 30;
  int agents = 2;
  int aggregators = 2;
  uint16_t base_port = 0;
  std::string bin_dir;
};

// Pipeline + load for `seconds` + drain + summary from the central store.
// Exit code 1 if the pipeline failed or an accepted record is missing centrally.
int runDemo(const DemoOptions& options);

}  // namespace branchline::cli
