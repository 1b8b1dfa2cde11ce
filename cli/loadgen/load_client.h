// The HTTP load client behind `branchline loadgen` and the demo: C keep-alive
// connections (one thread each), round-robin over the agents' URLs, posting
// batches of generated customer records at a target rate.
//
// Guarantee: nothing generated is silently lost. A 503 (buffer full) is waited
// out (Retry-After) and the same request is sent again; a connection failure is
// retried on a new connection (the agent may then see a batch twice, which the
// store's dedup absorbs). Only a request that still fails after its retry budget
// is counted in `failed_records`, so sent == accepted + rejected + failed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cli/loadgen/record_generator.h"
#include "shared/core/status.h"

namespace branchline::loadgen {

struct LoadOptions {
  std::vector<std::string> urls;  // agent base URLs, "http://127.0.0.1:8080"
  // Ingest tokens (Authorization: Bearer): one per URL, in the same order, or
  // one for all; empty: none sent.
  std::vector<std::string> tokens;
  // For https:// URLs: the CA the agents' certificates chain to (empty: the
  // system's trusted CAs), and a client certificate and key for agents that
  // require one ([http] client_ca_file). All PEM files.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  std::string source = "customer";
  uint64_t records = 0;  // stop after this many records (0: no count limit)
  double seconds = 0;    // stop after this long (0: no time limit); one must be set
  double rate = 0;       // records per second over all connections; 0: as fast as possible
  int concurrency = 1;   // connections, assigned to URLs round-robin
  int batch = 100;       // records per request
  bool ndjson = false;   // application/x-ndjson instead of a JSON array
  GeneratorOptions generator;
  std::chrono::milliseconds request_timeout{30000};
  std::chrono::milliseconds give_up_after{120000};  // per request, over all its retries
  // Set by another thread to stop early (requests in flight finish first).
  const std::atomic<bool>* cancel = nullptr;
};

struct LoadStats {
  double seconds = 0;
  uint64_t requests = 0;      // HTTP exchanges, retries included
  uint64_t records_sent = 0;  // distinct records offered (a retry is not counted again)
  uint64_t accepted = 0;
  uint64_t rejected = 0;
  uint64_t failed_records = 0;  // in requests that failed for good
  uint64_t valid_sent = 0;      // generator's view: valid (incl. duplicates)
  uint64_t duplicates_sent = 0;
  uint64_t invalid_sent = 0;
  uint64_t unexpected_rejects = 0;  // valid by the generator, rejected by the agent
  uint64_t unexpected_accepts = 0;  // invalid by the generator, accepted by the agent
  uint64_t retries_503 = 0;
  uint64_t transport_errors = 0;
  uint64_t http_errors = 0;                            // other non-200 answers
  std::map<std::string, uint64_t> rejected_by_reason;  // "field: reason"
  std::map<int, uint64_t> http_status;                 // every status seen
  double latency_p50_ms = 0, latency_p99_ms = 0, latency_max_ms = 0;
  // The distinct records the agents accepted at least once (as the original or
  // a duplicate of it), as stream indices, sorted: exactly what the central
  // store must hold. CustomerGenerator::externalId() turns one into its key.
  std::vector<uint64_t> accepted_unique;
  // The distinct valid records of requests that failed for good (an error was
  // their last answer), sorted: the agent may still have stored them.
  std::vector<uint64_t> failed_unique;
  // Records re-sent after a transport error: the broken attempt may have
  // committed them already, so each may reach the store as one delivery more.
  uint64_t resent_after_error = 0;

  double recordsPerSecond() const { return seconds > 0 ? records_sent / seconds : 0; }
  std::string toJson() const;  // one line
};

// Runs until the record count or the time is reached (or `cancel`). Fails only
// on bad options; delivery problems are counted in the stats.
Result<LoadStats> runLoad(const LoadOptions& options);

}  // namespace branchline::loadgen
