// The chaos harness behind `branchline chaos`: runs a LocalPipeline under a
// steady synthetic load, kills (SIGKILL) and restarts its components on a
// random schedule, lets the pipeline drain, and counts what reached the
// central store against what the agents accepted. The verdict is the proof of
// guarantee 2: `lost` and `duplicated` must both be 0.
//
// Schedule: a fault every [min_gap, max_gap] (shrunk when needed so that every
// component is killed at least `min_kills_each` times within `seconds`); the
// victim is drawn among the components still short of that count, else among
// all; it stays down for [min_down, max_down] and is then restarted and waited
// for until ready. The seed makes the schedule reproducible.
//
// The central store is the pipeline's SQLite file, or (store = "postgresql") a
// private PostgreSQL server the run starts on loopback and treats as one more
// component: SIGKILLed with all its backends and restarted through crash
// recovery, like the others.
//
// With network_cuts, each agent runs in a network namespace of its own
// (PipelineOptions::isolate_agents) and its uplink to the broker is one more
// component, named "uplink:<agent>": cut (every packet dropped, as when an
// office loses its line while its LAN and the load keep going) for
// [min_cut, max_cut] and then healed. Where namespaces are not permitted the
// run goes on without the cuts and the verdict says why (network_cuts_skipped).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cli/pipeline/local_pipeline.h"
#include "shared/core/status.h"

namespace branchline::cli {

struct ChaosOptions {
  PipelineOptions pipeline;      // dir, agents, aggregators, binaries
  std::string store = "sqlite";  // or "postgresql" (see above)
  std::string postgres_bin_dir = "/usr/lib/postgresql/15/bin";  // initdb, pg_ctl
  double seconds = 300;    // length of the fault phase (load runs for as long)
  double rate = 2000;      // records/s of load over all agents
  uint64_t seed = 0;       // fault schedule and generator seed; 0: a random one (in the verdict)
  int min_kills_each = 2;  // every component killed at least this often
  std::chrono::milliseconds min_gap{4000}, max_gap{15000};  // between two faults
  std::chrono::milliseconds min_down{300}, max_down{4000};  // a victim's downtime
  bool network_cuts = false;                                // see above
  std::chrono::milliseconds min_cut{2000}, max_cut{16000};  // an uplink's downtime
  std::chrono::seconds drain_timeout{300};
  const std::atomic<bool>* cancel = nullptr;  // set by another thread to stop early
};

struct ChaosFault {
  double at_s = 0;  // since the load started
  std::string component;
  double down_s = 0;   // from SIGKILL to restart
  double ready_s = 0;  // from restart to answering again
  std::string error;   // a restart that failed (then the verdict fails)
};

struct ChaosVerdict {
  double load_seconds = 0;
  uint64_t records_sent = 0;
  uint64_t accepted = 0;        // distinct valid records the agents accepted
  uint64_t stored = 0;          // of those, found in the central store
  uint64_t lost = 0;            // accepted, not stored
  uint64_t duplicated = 0;      // stored rows beyond one per (source, record_key)
  uint64_t unexpected = 0;      // stored, but never accepted by an agent
  uint64_t recovered = 0;       // stored, though the load client's last answer was an error
  uint64_t failed_records = 0;  // load requests that failed for good (not accepted)
  // |sum(stored_records) over batch_ledger and batch_conflicts - rows in records|
  uint64_t ledger_mismatch = 0;
  // Record deliveries committed (sum(records) over batch_ledger and
  // batch_conflicts), and how many exceed what the agents can have accepted:
  // doubling seen without relying on the store's UNIQUE constraint (counted
  // in `duplicated`).
  uint64_t deliveries = 0;
  uint64_t extra_deliveries = 0;
  uint64_t seed = 0;         // the seed the run used (replay with ChaosOptions::seed)
  double drain_seconds = 0;  // from the end of load until every buffer was empty
  bool drained = false;
  double max_ready_seconds = 0;      // the slowest restart-to-ready
  std::map<std::string, int> kills;  // component -> SIGKILLs ("uplink:<agent>": cuts)
  std::string network_cuts_skipped;  // why, when cuts were asked for and not possible
  std::vector<ChaosFault> faults;
  std::vector<std::string> errors;  // anything that makes the run invalid
  std::string load_json;            // the load client's own stats (LoadStats::toJson)

  bool passed() const {
    return drained && lost == 0 && duplicated == 0 && unexpected == 0 && ledger_mismatch == 0 &&
           errors.empty();
  }
  std::string toJson() const;  // one line
};

// Runs the whole thing. An error only when the pipeline cannot start or the
// options are unusable; everything that goes wrong later is in the verdict.
Result<ChaosVerdict> runChaos(const ChaosOptions& options);

}  // namespace branchline::cli
