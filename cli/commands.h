// The subcommands of `branchline`. Each returns the process exit code and
// prints its result on stdout (errors on stderr); main.cc only parses flags.
#pragma once

#include <string>

#include "cli/chaos/chaos.h"
#include "cli/loadgen/load_client.h"
#include "cli/pipeline/local_pipeline.h"
#include "cli/pki/fleet_pki.h"

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
  bool secure = true;  // PipelineOptions::secure
};

// Pipeline + load for `seconds` + drain + summary from the central store.
// Exit code 1 if the pipeline failed or an accepted record is missing centrally.
int runDemo(const DemoOptions& options);

// Chaos run (see cli/chaos/chaos.h): prints the verdict as one JSON line.
// Exit code 0 only when nothing was lost or doubled and the run was valid.
int runChaosCommand(ChaosOptions options);

// `branchline pki init`: prints the files written (never their contents).
// Exit code 1 if refused (an existing CA, a bad name) or failed.
int runPkiInit(const PkiInitOptions& options);

// `branchline pki enroll`: an agent, an aggregator, or a second broker's bridge.
int runPkiEnroll(const std::string& dir, const std::string& name, IdentityRole role, int days,
                 const std::string& topic_prefix);

// `branchline pki renew|revoke|rotate-seal-key|list`: print what changed and
// what the operator must do next. Exit code 1 if refused or failed.
int runPkiRenew(const std::string& dir, const std::string& name, IdentityRole role, int days);
int runPkiRevoke(const std::string& dir, const std::string& name, IdentityRole role);
int runPkiRotateSealKey(const std::string& dir, int grace_days);
int runPkiList(const std::string& dir);

}  // namespace branchline::cli
