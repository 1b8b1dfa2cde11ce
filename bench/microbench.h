// branchline-microbench: the per-stage figures that used to print from unit
// tests. Each run*Bench prints its figures and returns a process exit code
// (0, or 1 with the reason on stderr when the stage could not be measured).
// None asserts a figure: they are for LIMITS.md and the README, as ratios to a
// reference measured in the same run where there is one.
#pragma once

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "shared/core/status.h"

namespace branchline::bench {

// DurableBuffer append() and append -> formBatch -> ack, sealed and in clear,
// next to raw SQLite INSERTs (agent/buffer).
int runBufferBench();
// Central store commits on SQLite; with `postgres`, also on a private
// PostgreSQL server started for the run, on the same load (aggregator/store).
int runCentralStoreBench(bool postgres);
// Encoding + sealing and decoding + opening one full batch (protocol/seal).
int runSealBench();
// RuleEngine::apply() on the default customer schema, per core (shared/rules).
int runRulesBench();

// Prints "microbench <stage>: <status>" to stderr and returns 1.
inline int failed(const char* stage, const Status& s) {
  std::fprintf(stderr, "microbench %s: %s\n", stage, s.toString().c_str());
  return 1;
}

// A fresh folder under the temp dir, removed with its contents at the end of
// scope; path() is empty when it could not be created.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "bl-microbench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace branchline::bench
