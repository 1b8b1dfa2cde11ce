// The aggregator's configuration (README "Configuration / Aggregator"), read
// from one TOML file. Every key has a default except aggregator.name,
// aggregator.data_dir and store.url; an unknown key or a value of the wrong
// type or range is an error naming its dotted path and line, so a typo never
// silently falls back to a default.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/batch_codec.h"
#include "shared/core/status.h"

namespace branchline::aggregator {

struct AggregatorConfig {
  // [aggregator]
  std::string name;                // required; stamped on acks, ledger rows, audit rows
  std::filesystem::path data_dir;  // required
  // [http]
  std::string http_listen = "127.0.0.1:9090";
  std::string http_host = "127.0.0.1";  // parsed from http_listen
  uint16_t http_port = 9090;            // parsed from http_listen; 0 picks a free port
  // [mqtt]
  std::vector<std::string> brokers{"tcp://127.0.0.1:1883"};
  std::string topic_prefix = "branchline/v1";
  std::string share_group = "branchline-aggregators";
  // Mutual TLS (README "Security"): required, all three, when the brokers are
  // ssl:// (or mqtts://, wss://); refused with tcp:// ones. loadAggregatorConfig
  // makes relative paths absolute against the config file's folder.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // [store]
  std::string store_url;  // required; "sqlite:///abs/path.db"
  // [limits] (README "Input limits")
  size_t max_message_bytes = 16777216;
  size_t max_inflated_bytes = 67108864;
  size_t max_inflate_ratio = 1000;  // inflated / received body bytes; 0: off
  size_t max_records_per_batch = 100000;
  size_t max_traversal_words = 0;  // Cap'n Proto read budget; 0: derived from max_inflated_bytes
  size_t max_nesting = 16;         // Cap'n Proto pointer nesting
  // [commit]
  size_t commit_max_batches = 16;
  // [security] (README "Security / Sealed batches"). loadAggregatorConfig makes
  // the paths absolute against the config file's folder.
  struct RetiredSealKey {
    std::string file;
    int64_t until_us = 0;  // honoured while now is before it
  };
  std::vector<std::string> seal_keys;  // private key files honoured with no end
  std::vector<RetiredSealKey> retired_seal_keys;
  std::string agents_dir;       // `<id>.seal.pub` of every enrolled agent; required with seal_keys
  bool require_sealed = false;  // default: true when seal_keys is set

  protocol::DecodeLimits decodeLimits() const;
};

// A config file larger than this is refused before it is parsed.
inline constexpr size_t kMaxConfigFileBytes = 1 << 20;

// Reads and validates `path`. kInvalidArgument (message names the file and
// the key) for a bad config or a file past `max_bytes`; kNotFound when the
// file cannot be read.
Result<AggregatorConfig> loadAggregatorConfig(const std::filesystem::path& path,
                                              size_t max_bytes = kMaxConfigFileBytes);
// Same, from text; `origin` names it in errors. Text past `max_bytes` or with
// absurdly deep dotted keys is refused before parsing (shared/core/config_text.h).
Result<AggregatorConfig> parseAggregatorConfig(std::string_view toml_text, std::string_view origin,
                                               size_t max_bytes = kMaxConfigFileBytes);

}  // namespace branchline::aggregator
