// Shared fixture for the integration tests: a LocalPipeline (real Mosquitto,
// real aggregators and agents from build/bin) in a fresh temp dir, plus the
// checks every test makes against the central store: exactly the accepted
// unique valid records, byte-identical to what the rule engine produces.
//
// The central store is SQLite, or with BRANCHLINE_TEST_STORE=postgresql a
// private PostgreSQL server started for the test (CTest registers each
// pipeline test twice, `<name>` and `<name>_pg`).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "aggregator/store/testing/postgres_server.h"
#include "cli/loadgen/load_client.h"
#include "cli/pipeline/local_pipeline.h"

namespace branchline::testing {

// Runs one SQL query returning a single integer against the central store:
// `store` is a SQLite file path or a postgresql:// URL. -1 when it fails.
int64_t queryInt(const std::string& store, const std::string& sql);

// One metric's value from the process serving `base_url` ("http://127.0.0.1:P"),
// GET /metrics; `name` may carry labels (`x_total{reason="revoked"}`). -1 when
// absent or the process does not answer.
double scrapeMetric(const std::string& base_url, const std::string& name);

// `n` valid customer records as NDJSON, external ids <prefix>-0 ..., each with
// `notes` when it is not empty.
std::string customerNdjson(const std::string& prefix, int n, const std::string& notes = {});

// POSTs `n` valid customer records (customerNdjson) to
// the agent at `agent_url`; a test failure unless all are accepted (200).
void postCustomerRecords(const std::string& agent_url, const std::string& token,
                         const std::string& prefix, int n);
// One metric's value from Prometheus text (a /metrics body); -1 if absent.
double metricValue(const std::string& text, const std::string& name);

struct StoredRecord {
  std::string payload;
  std::string agent_id;
};
// record_key -> row, for source `customer`.
std::map<std::string, StoredRecord> readRecords(const std::string& store);

class PipelineTest : public ::testing::Test {
 protected:
  void TearDown() override;
  void reportProcessStates() const;

  // Starts a pipeline with `agents` agents and `aggregators` aggregators.
  void startPipeline(int agents, int aggregators,
                     std::map<std::string, std::string> agent_overrides = {});

  // Waits until the central store holds `records` records and `rejects` rejects and
  // every agent's buffer is empty, or `timeout_s` passes. Returns whether it did.
  bool waitForDrain(int64_t records, int64_t rejects, int timeout_s);

  // Asserts the store holds exactly the records in stats.accepted_unique, each
  // byte-identical to the rule engine's normalization of what was sent.
  void expectExactlyAccepted(const loadgen::LoadStats& stats, const loadgen::GeneratorOptions& gen);

  // Records held in all agents' buffers (bl_agent_buffer_records summed), or -1
  // when an agent does not answer /metrics.
  int64_t agentBufferRecords() const;
  // One series of agent `index`'s /metrics (`name` or `name{label="v"}`); -1
  // when absent or the agent does not answer.
  double agentMetric(size_t index, const std::string& series) const;

  loadgen::LoadOptions loadOptions(uint64_t records, const loadgen::GeneratorOptions& gen) const;

  // What queryInt/readRecords take for this test's store (path or URL).
  const std::string& store() const { return store_; }

  std::string dir_;
  std::string store_;
  std::unique_ptr<PostgresServer> postgres_;
  std::unique_ptr<cli::LocalPipeline> pipeline_;
};

}  // namespace branchline::testing
