// The agent's configuration: the TOML file documented in README "Configuration
// / Agent", read into one plain struct with defaults. Every key not listed there
// is an error naming its path, so a typo never silently falls back to a
// default; wrong types and out-of-range values name the key and the bound
// ("batch.max_records: must be between 1 and 100000").
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "agent/health/health_thresholds.h"
#include "shared/core/status.h"
#include "shared/rules/rule_engine.h"

namespace branchline::agent {

struct AgentConfig {
  struct Http {
    std::string listen = "127.0.0.1:8080";  // as written
    std::string host = "127.0.0.1";         // parsed from `listen` ("[::1]:80" -> "::1")
    uint16_t port = 8080;                   // 0: pick a free one
    uint64_t max_body_bytes = 8 << 20;
    int max_depth = 32;
    uint64_t max_records_per_request = 10000;
    // Hostile-input limits (README "Input limits").
    uint64_t max_record_bytes = 256 << 10;
    uint64_t max_field_bytes = 64 << 10;
    uint64_t max_header_bytes = 16 << 10;
    std::chrono::milliseconds header_timeout{10000};
    std::chrono::milliseconds body_timeout{60000};
    uint64_t min_body_bytes_per_second = 1024;
    std::chrono::milliseconds idle_timeout{30000};
    uint64_t max_connections = 256;
    uint64_t max_connections_per_client = 128;  // 0: no per-client cap
    // HTTPS (both set) and, optionally, client certificates (README
    // "Authenticated ingest"). Made absolute.
    std::filesystem::path tls_cert_file;
    std::filesystem::path tls_key_file;
    std::filesystem::path client_ca_file;
    // When set, GET /metrics needs `Authorization: Bearer <the file's token>`.
    std::filesystem::path metrics_token_file;
  };
  struct Mqtt {
    std::vector<std::string> brokers{"tcp://127.0.0.1:1883"};
    std::string topic_prefix = "branchline/v1";
    // Mutual TLS (README "Security"): required, all three, when the brokers are
    // ssl:// (or mqtts://, wss://); refused with tcp:// ones. Made absolute.
    std::filesystem::path ca_file;
    std::filesystem::path cert_file;
    std::filesystem::path key_file;
  };
  struct Buffer {
    uint64_t max_bytes = 1ull << 30;
    std::filesystem::path key_file;  // the data key; resolved: `<data_dir>/buffer.key` when not set
  };
  struct Batch {
    uint64_t max_records = 2000;
    uint64_t max_bytes = 512 << 10;  // uncompressed payload bytes
    std::chrono::milliseconds linger{100};
    uint64_t window_batches = 8;
    uint64_t window_bytes = 1 << 20;  // compressed bytes in flight
    std::chrono::milliseconds ack_timeout{10000};
    int zstd_level = 1;
  };
  struct Spool {
    bool enabled = true;
    std::filesystem::path dir;  // resolved: `<data_dir>/spool` when not set
    std::chrono::milliseconds poll{500};
    uint64_t max_file_bytes = 64ull << 20;
    uint64_t max_line_bytes = 1 << 20;
    uint64_t max_records_per_file = 200000;
    std::string owner;       // user name or uid a spool file must have; empty: the agent's user
    bool keep_done = false;  // keep committed files in done/ (0600) instead of deleting them
  };

  struct Security {
    // Sealed batches (README "Security / Sealed batches"): both set, every batch
    // is sealed; neither set, batches travel plain. Made absolute.
    std::filesystem::path seal_key_file;        // the agent's X25519 pair (mode 0600)
    std::filesystem::path aggregator_key_file;  // the aggregators' current public key
  };

  // Who may post to a source and from where (README "Authenticated ingest",
  // "Web forms and browsers"): the agent's keys of a [sources.<name>] table,
  // which the rule engine does not see.
  struct SourceAccess {
    std::string source;
    bool open = false;                      // auth = "none" (default "token")
    uint64_t rate_limit_per_minute = 60;    // per client address, for open sources
    std::vector<std::string> cors_origins;  // exact origins ("https://forms.example.com")
    std::string form_redirect;              // "": answer form posts with JSON
  };

  std::string id;                  // required; [A-Za-z0-9_-]{1,64}
  std::filesystem::path data_dir;  // required; made absolute against the config's folder
  Http http;
  Mqtt mqtt;
  Buffer buffer;
  Batch batch;
  Spool spool;
  Security security;
  HealthThresholds health;                   // [health]: when GET /health says degraded
  std::vector<rules::SourceSchema> sources;  // built-in `customer` when none are declared
  std::vector<SourceAccess> access;          // one per source, in the same order

  // The ingest token file: <data_dir>/ingest_tokens.
  std::filesystem::path tokenFile() const;
};

// A config file larger than this is refused before it is parsed.
inline constexpr uint64_t kMaxConfigFileBytes = 1 << 20;

// Reads and validates the file. kNotFound when it cannot be read, kInvalidArgument
// (naming the key) when its content is wrong or the file is larger than
// `max_bytes`. Relative paths in it are taken relative to the file's folder.
Result<AgentConfig> loadAgentConfig(const std::filesystem::path& file,
                                    uint64_t max_bytes = kMaxConfigFileBytes);

// The same for TOML text; relative paths resolve against `base_dir`. Text
// past `max_bytes` or with dotted keys nested absurdly deep is refused before
// parsing (shared/core/config_text.h).
Result<AgentConfig> parseAgentConfig(std::string_view toml_text,
                                     const std::filesystem::path& base_dir,
                                     uint64_t max_bytes = kMaxConfigFileBytes);

// With mqtt.cert_file set: OK only when that certificate's CN is `agent.id`.
// The broker knows a TLS client by its CN alone (user name and client id) and
// its ACL grants the agent's topics to that name, so an agent whose id differs
// would connect, report healthy and have every publish dropped. Otherwise
// kInvalidArgument naming both and the fix; kNotFound / kInvalidArgument for a
// certificate file that cannot be read or parsed. Reads the file; call at startup.
Status checkCertificateIdentity(const AgentConfig& cfg);

}  // namespace branchline::agent
