// The keys an aggregator opens sealed batches with (README "Security / Sealed
// batches"): its own key ring, loaded once at startup from the configured key
// files, and the enrolled agents' public sealing keys, read from the fleet's
// agents folder (`<agents_dir>/<id>.seal.pub`) as batches arrive.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "protocol/seal.h"
#include "shared/core/status.h"

namespace branchline::aggregator {

struct RetiredSealKeyFile {
  std::filesystem::path file;
  int64_t until_us = 0;  // honoured while now < until_us
};

// Reads every private key file (0600 or refused: kPermissionDenied). `current`
// keys are honoured with no end, `retired` ones until their time. Errors name
// the file; the same key listed twice is an error (kInvalidArgument).
Result<protocol::AggregatorKeyRing> loadAggregatorKeyRing(
    const std::vector<std::filesystem::path>& current,
    const std::vector<RetiredSealKeyFile>& retired);

// The enrolled agents' public keys. A key read is cached for `ttl`, then read
// again (a re-enrolled agent's new key is picked up within ttl); an id not in
// the cache is read from the folder on the spot, so an agent enrolled while the
// aggregator runs is accepted with its first batch, no restart. Misses are not
// cached. At most `max_entries` keys are held (the cache is emptied past that).
// Thread-safe.
class EnrolledAgentKeys {
 public:
  struct Options {
    std::filesystem::path agents_dir;
    std::chrono::milliseconds ttl{60000};
    size_t max_entries = 100000;
  };
  explicit EnrolledAgentKeys(Options options);

  // kNotFound when `<agents_dir>/<agent_id>.seal.pub` does not exist (the agent
  // is not enrolled); kInvalidArgument for an id that is not [A-Za-z0-9_-]{1,64}
  // (never turned into a path) or an unreadable key file (naming the file);
  // kPermissionDenied when `<agents_dir>/<agent_id>.seal.pub.revoked` exists
  // (`branchline pki revoke`), checked on every call.
  Result<protocol::X25519Key> lookup(const std::string& agent_id);

 private:
  struct Cached {
    protocol::X25519Key key;
    int64_t read_at_us = 0;  // steady clock
  };
  const Options options_;
  std::mutex mutex_;
  std::map<std::string, Cached> cache_;
};

}  // namespace branchline::aggregator
