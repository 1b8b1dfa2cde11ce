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
  // [store]
  std::string store_url;  // required; "sqlite:///abs/path.db"
  // [limits]
  size_t max_message_bytes = 16777216;
  size_t max_inflated_bytes = 67108864;
  size_t max_records_per_batch = 100000;
  // [commit]
  size_t commit_max_batches = 16;

  protocol::DecodeLimits decodeLimits() const;
};

// Reads and validates `path`. kInvalidArgument (message names the file and
// the key) for a bad config; kNotFound when the file cannot be read.
Result<AggregatorConfig> loadAggregatorConfig(const std::filesystem::path& path);
// Same, from text; `origin` names it in errors.
Result<AggregatorConfig> parseAggregatorConfig(std::string_view toml_text, std::string_view origin);

}  // namespace branchline::aggregator
