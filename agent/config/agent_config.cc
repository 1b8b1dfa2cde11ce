#include "agent/config/agent_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <optional>
#include <sstream>

#include "shared/core/config_text.h"
#include "shared/pki/pki.h"

#if __has_include("shared/rules/schema_config.h")
#include "shared/rules/schema_config.h"
#endif

namespace branchline::agent {
namespace {

// Reads the keys of one table, remembering which it consumed so every other
// key can be reported as unknown.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string path) : table_(table), path_(std::move(path)) {}

  std::string keyPath(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

  const toml::node* take(std::string_view key) {
    known_.emplace_back(key);
    return table_.get(key);
  }

  Status integer(std::string_view key, int64_t min, int64_t max, int64_t& out) {
    const toml::node* node = take(key);
    if (node == nullptr) return Status::ok();
    const auto* v = node->as_integer();
    if (v == nullptr) return Status::invalid(keyPath(key) + ": must be an integer");
    if (v->get() < min || v->get() > max) {
      return Status::invalid(keyPath(key) + ": must be between " + std::to_string(min) + " and " +
                             std::to_string(max));
    }
    out = v->get();
    return Status::ok();
  }

  template <typename T>
  Status integerAs(std::string_view key, int64_t min, int64_t max, T& out) {
    int64_t v = static_cast<int64_t>(out);
    BL_RETURN_IF_ERROR(integer(key, min, max, v));
    out = static_cast<T>(v);
    return Status::ok();
  }

  Status millis(std::string_view key, int64_t min, int64_t max, std::chrono::milliseconds& out) {
    int64_t v = out.count();
    BL_RETURN_IF_ERROR(integer(key, min, max, v));
    out = std::chrono::milliseconds(v);
    return Status::ok();
  }

  // A float or an integer in (min, max]: a ratio such as 0.9.
  Status ratio(std::string_view key, double min_exclusive, double max, double& out) {
    const toml::node* node = take(key);
    if (node == nullptr) return Status::ok();
    const std::optional<double> v = node->is_number() ? node->value<double>() : std::nullopt;
    if (!v) return Status::invalid(keyPath(key) + ": must be a number");
    if (!(*v > min_exclusive && *v <= max)) {
      std::ostringstream bound;
      bound << keyPath(key) << ": must be greater than " << min_exclusive << " and at most " << max;
      return Status::invalid(bound.str());
    }
    out = *v;
    return Status::ok();
  }

  Status string(std::string_view key, std::string& out, bool* present = nullptr) {
    const toml::node* node = take(key);
    if (present != nullptr) *present = node != nullptr;
    if (node == nullptr) return Status::ok();
    const auto* v = node->as_string();
    if (v == nullptr) return Status::invalid(keyPath(key) + ": must be a string");
    out = v->get();
    return Status::ok();
  }

  Status boolean(std::string_view key, bool& out) {
    const toml::node* node = take(key);
    if (node == nullptr) return Status::ok();
    const auto* v = node->as_boolean();
    if (v == nullptr) return Status::invalid(keyPath(key) + ": must be true or false");
    out = v->get();
    return Status::ok();
  }

  Status stringArray(std::string_view key, std::vector<std::string>& out) {
    const toml::node* node = take(key);
    if (node == nullptr) return Status::ok();
    const auto* arr = node->as_array();
    if (arr == nullptr) return Status::invalid(keyPath(key) + ": must be an array of strings");
    std::vector<std::string> values;
    for (size_t i = 0; i < arr->size(); ++i) {
      const auto* s = arr->get(i)->as_string();
      if (s == nullptr) {
        return Status::invalid(keyPath(key) + "[" + std::to_string(i) + "]: must be a string");
      }
      values.push_back(s->get());
    }
    out = std::move(values);
    return Status::ok();
  }

  // A sub-table; nullptr when absent. Not a table: error.
  Result<const toml::table*> table(std::string_view key) {
    const toml::node* node = take(key);
    if (node == nullptr) return static_cast<const toml::table*>(nullptr);
    const auto* t = node->as_table();
    if (t == nullptr) return Status::invalid(keyPath(key) + ": must be a table");
    return t;
  }

  // Call after every take(): any key left over is a typo or a key we do not have.
  Status rejectUnknown() const {
    for (const auto& [k, v] : table_) {
      bool known = false;
      for (const auto& name : known_) known = known || name == k.str();
      if (!known) return Status::invalid("unknown key `" + keyPath(k.str()) + "`");
    }
    return Status::ok();
  }

 private:
  const toml::table& table_;
  std::string path_;
  std::vector<std::string> known_;
};

bool validAgentId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// "host:port" or "[v6]:port"; port 0..65535.
Status parseListen(const std::string& listen, AgentConfig::Http& http) {
  const auto bad = [&](const std::string& why) {
    return Status::invalid("http.listen: `" + listen + "`: " + why + " (expected host:port)");
  };
  std::string host;
  std::string port;
  if (!listen.empty() && listen.front() == '[') {
    const size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return bad("unterminated IPv6 address");
    }
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return bad("no port");
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
    if (host.find(':') != std::string::npos) return bad("IPv6 addresses need brackets");
  }
  if (host.empty()) return bad("empty host");
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string::npos) {
    return bad("port must be a number");
  }
  const unsigned long p = std::stoul(port);
  if (p > 65535) return bad("port must be between 0 and 65535");
  http.host = host;
  http.port = static_cast<uint16_t>(p);
  return Status::ok();
}

Status validateBroker(const std::string& uri, size_t index) {
  static constexpr std::string_view kSchemes[] = {"tcp://",   "ssl://", "mqtt://",
                                                  "mqtts://", "ws://",  "wss://"};
  for (auto scheme : kSchemes) {
    if (uri.rfind(scheme, 0) == 0 && uri.size() > scheme.size()) return Status::ok();
  }
  return Status::invalid(
      "mqtt.brokers[" + std::to_string(index) + "]: `" + uri +
      "`: expected tcp://host:port (or ssl://, mqtt://, mqtts://, ws://, wss://)");
}

bool isTlsBroker(const std::string& uri) {
  return uri.rfind("ssl://", 0) == 0 || uri.rfind("mqtts://", 0) == 0 ||
         uri.rfind("wss://", 0) == 0;
}

// TLS is all or nothing: a plain URI beside TLS ones would let a failover drop
// TLS, and TLS files beside plain URIs would look secured while being unused.
Status validateBrokerTls(const AgentConfig::Mqtt& mqtt) {
  size_t tls = 0;
  for (const auto& b : mqtt.brokers) tls += isTlsBroker(b) ? 1 : 0;
  const bool files = !mqtt.ca_file.empty() || !mqtt.cert_file.empty() || !mqtt.key_file.empty();
  if (tls == 0) {
    if (files) {
      return Status::invalid(
          "mqtt.ca_file/cert_file/key_file: set, but no broker URI is ssl:// (TLS would not be "
          "used)");
    }
    return Status::ok();
  }
  if (tls != mqtt.brokers.size()) {
    return Status::invalid(
        "mqtt.brokers: mixes TLS (ssl://) and plain (tcp://) URIs; a failover would drop TLS");
  }
  for (const auto& [key, file] :
       {std::pair<const char*, const std::filesystem::path&>{"mqtt.ca_file", mqtt.ca_file},
        {"mqtt.cert_file", mqtt.cert_file},
        {"mqtt.key_file", mqtt.key_file}}) {
    if (file.empty()) {
      return Status::invalid(std::string(key) +
                             ": required with ssl:// brokers (see `branchline pki enroll`)");
    }
  }
  return Status::ok();
}

Status validateTopicPrefix(const std::string& prefix) {
  if (prefix.empty()) return Status::invalid("mqtt.topic_prefix: must not be empty");
  if (prefix.find_first_of("+#") != std::string::npos || prefix.find('\0') != std::string::npos) {
    return Status::invalid("mqtt.topic_prefix: must not contain the wildcards `+` or `#`");
  }
  if (prefix.front() == '/' || prefix.back() == '/' || prefix.front() == '$') {
    return Status::invalid("mqtt.topic_prefix: must not start with `/` or `$` or end with `/`");
  }
  return Status::ok();
}

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

// An origin as browsers send it: scheme "://" host [":" port], nothing after.
bool validOrigin(std::string_view origin) {
  size_t scheme_end = origin.find("://");
  if (scheme_end == std::string_view::npos) return false;
  std::string_view scheme = origin.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") return false;
  std::string_view rest = origin.substr(scheme_end + 3);
  if (rest.empty()) return false;
  return std::all_of(rest.begin(), rest.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == ':' ||
           c == '[' || c == ']';
  });
}

// Takes the agent's own keys out of a [sources.<name>] table (README
// "Authenticated ingest"), leaving the rules for the rule engine.
Result<AgentConfig::SourceAccess> takeSourceAccess(toml::table& t, const std::string& path) {
  AgentConfig::SourceAccess a;
  auto take = [&](std::string_view key) -> std::optional<toml::node_view<toml::node>> {
    if (!t.contains(key)) return std::nullopt;
    return t[key];
  };
  if (auto n = take("auth")) {
    auto v = n->value<std::string>();
    if (v == "none") {
      a.open = true;
    } else if (v != "token") {
      return Status::invalid(path + ".auth: expected \"token\" (the default) or \"none\"");
    }
  }
  if (auto n = take("rate_limit_per_minute")) {
    auto v = n->value<int64_t>();
    if (!v || *v < 1 || *v > 1000000) {
      return Status::invalid(path + ".rate_limit_per_minute: must be between 1 and 1000000");
    }
    a.rate_limit_per_minute = static_cast<uint64_t>(*v);
  }
  if (auto n = take("cors_origins")) {
    const toml::array* arr = n->as_array();
    if (arr == nullptr) return Status::invalid(path + ".cors_origins: must be an array of strings");
    for (size_t i = 0; i < arr->size(); ++i) {
      auto v = arr->get(i)->value<std::string>();
      const std::string at = path + ".cors_origins[" + std::to_string(i) + "]";
      if (!v) return Status::invalid(at + ": must be a string");
      if (!validOrigin(*v)) {
        return Status::invalid(at + ": `" + *v +
                               "` is not an origin (scheme://host[:port], lower case, no path)");
      }
      a.cors_origins.push_back(*v);
    }
  }
  if (auto n = take("form_redirect")) {
    auto v = n->value<std::string>();
    if (!v || (v->rfind("https://", 0) != 0 && v->rfind("http://", 0) != 0) ||
        v->find_first_of("\r\n \t") != std::string::npos) {
      return Status::invalid(path + ".form_redirect: must be an http:// or https:// URL");
    }
    a.form_redirect = *v;
  }
  if (t.contains("rate_limit_per_minute") && !a.open) {
    return Status::invalid(path +
                           ".rate_limit_per_minute: applies only to a source with auth = \"none\"");
  }
  for (std::string_view key : {"auth", "rate_limit_per_minute", "cors_origins", "form_redirect"}) {
    t.erase(key);
  }
  return a;
}

Status parseRoot(const toml::table& root, const std::filesystem::path& base_dir, AgentConfig& cfg) {
  TableReader top(root, "");
  // Table order matches the README; each section is optional except [agent].
  auto agent = top.table("agent");
  if (!agent.isOk()) return agent.status();
  if (*agent == nullptr) return Status::invalid("agent.id: required key is missing");
  {
    TableReader t(**agent, "agent");
    bool has_id = false;
    bool has_dir = false;
    std::string data_dir;
    BL_RETURN_IF_ERROR(t.string("id", cfg.id, &has_id));
    BL_RETURN_IF_ERROR(t.string("data_dir", data_dir, &has_dir));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
    if (!has_id) return Status::invalid("agent.id: required key is missing");
    if (!validAgentId(cfg.id)) {
      return Status::invalid("agent.id: `" + cfg.id +
                             "`: must be 1 to 64 characters of A-Z a-z 0-9 _ -");
    }
    if (!has_dir) return Status::invalid("agent.data_dir: required key is missing");
    if (data_dir.empty()) return Status::invalid("agent.data_dir: must not be empty");
    cfg.data_dir = (base_dir / data_dir).lexically_normal();
  }

  auto http = top.table("http");
  if (!http.isOk()) return http.status();
  if (*http != nullptr) {
    TableReader t(**http, "http");
    BL_RETURN_IF_ERROR(t.string("listen", cfg.http.listen));
    BL_RETURN_IF_ERROR(t.integerAs("max_body_bytes", 1, int64_t{1} << 30, cfg.http.max_body_bytes));
    BL_RETURN_IF_ERROR(t.integerAs("max_depth", 1, 1024, cfg.http.max_depth));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_records_per_request", 1, 1000000, cfg.http.max_records_per_request));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_record_bytes", 64, int64_t{1} << 30, cfg.http.max_record_bytes));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_field_bytes", 16, int64_t{1} << 30, cfg.http.max_field_bytes));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_header_bytes", 1024, int64_t{1} << 20, cfg.http.max_header_bytes));
    BL_RETURN_IF_ERROR(t.millis("header_timeout_ms", 100, 3600000, cfg.http.header_timeout));
    BL_RETURN_IF_ERROR(t.millis("body_timeout_ms", 100, 3600000, cfg.http.body_timeout));
    BL_RETURN_IF_ERROR(t.integerAs("min_body_bytes_per_second", 0, int64_t{1} << 30,
                                   cfg.http.min_body_bytes_per_second));
    BL_RETURN_IF_ERROR(t.millis("idle_timeout_ms", 100, 3600000, cfg.http.idle_timeout));
    BL_RETURN_IF_ERROR(t.integerAs("max_connections", 1, 65536, cfg.http.max_connections));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_connections_per_client", 0, 65536, cfg.http.max_connections_per_client));
    std::string cert, key, client_ca, metrics_token;
    BL_RETURN_IF_ERROR(t.string("tls_cert_file", cert));
    BL_RETURN_IF_ERROR(t.string("tls_key_file", key));
    BL_RETURN_IF_ERROR(t.string("client_ca_file", client_ca));
    BL_RETURN_IF_ERROR(t.string("metrics_token_file", metrics_token));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
    if (cert.empty() != key.empty()) {
      return Status::invalid(
          std::string(cert.empty() ? "http.tls_cert_file" : "http.tls_key_file") +
          ": required when " + (cert.empty() ? "http.tls_key_file" : "http.tls_cert_file") +
          " is set (HTTPS needs both)");
    }
    if (!client_ca.empty() && cert.empty()) {
      return Status::invalid(
          "http.client_ca_file: client certificates need HTTPS (set http.tls_cert_file and "
          "http.tls_key_file)");
    }
    auto resolve = [&](const std::string& f) {
      return f.empty() ? std::filesystem::path() : (base_dir / f).lexically_normal();
    };
    cfg.http.tls_cert_file = resolve(cert);
    cfg.http.tls_key_file = resolve(key);
    cfg.http.client_ca_file = resolve(client_ca);
    cfg.http.metrics_token_file = resolve(metrics_token);
  }
  BL_RETURN_IF_ERROR(parseListen(cfg.http.listen, cfg.http));

  auto mqtt = top.table("mqtt");
  if (!mqtt.isOk()) return mqtt.status();
  if (*mqtt != nullptr) {
    TableReader t(**mqtt, "mqtt");
    BL_RETURN_IF_ERROR(t.stringArray("brokers", cfg.mqtt.brokers));
    BL_RETURN_IF_ERROR(t.string("topic_prefix", cfg.mqtt.topic_prefix));
    std::string ca_file, cert_file, key_file;
    BL_RETURN_IF_ERROR(t.string("ca_file", ca_file));
    BL_RETURN_IF_ERROR(t.string("cert_file", cert_file));
    BL_RETURN_IF_ERROR(t.string("key_file", key_file));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
    auto resolve = [&](const std::string& f) {
      return f.empty() ? std::filesystem::path() : (base_dir / f).lexically_normal();
    };
    cfg.mqtt.ca_file = resolve(ca_file);
    cfg.mqtt.cert_file = resolve(cert_file);
    cfg.mqtt.key_file = resolve(key_file);
  }
  if (cfg.mqtt.brokers.empty()) return Status::invalid("mqtt.brokers: must list at least one URI");
  for (size_t i = 0; i < cfg.mqtt.brokers.size(); ++i) {
    BL_RETURN_IF_ERROR(validateBroker(cfg.mqtt.brokers[i], i));
  }
  BL_RETURN_IF_ERROR(validateBrokerTls(cfg.mqtt));
  BL_RETURN_IF_ERROR(validateTopicPrefix(cfg.mqtt.topic_prefix));

  auto buffer = top.table("buffer");
  if (!buffer.isOk()) return buffer.status();
  std::string key_file;
  if (*buffer != nullptr) {
    TableReader t(**buffer, "buffer");
    BL_RETURN_IF_ERROR(t.integerAs("max_bytes", int64_t{1} << 20, kMaxInt, cfg.buffer.max_bytes));
    BL_RETURN_IF_ERROR(t.string("key_file", key_file));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
  }
  cfg.buffer.key_file =
      key_file.empty() ? cfg.data_dir / "buffer.key" : (base_dir / key_file).lexically_normal();

  auto batch = top.table("batch");
  if (!batch.isOk()) return batch.status();
  if (*batch != nullptr) {
    TableReader t(**batch, "batch");
    BL_RETURN_IF_ERROR(t.integerAs("max_records", 1, 100000, cfg.batch.max_records));
    BL_RETURN_IF_ERROR(t.integerAs("max_bytes", 1024, int64_t{16} << 20, cfg.batch.max_bytes));
    BL_RETURN_IF_ERROR(t.millis("linger_ms", 0, 60000, cfg.batch.linger));
    BL_RETURN_IF_ERROR(t.integerAs("window_batches", 1, 1000, cfg.batch.window_batches));
    BL_RETURN_IF_ERROR(
        t.integerAs("window_bytes", 1024, int64_t{64} << 20, cfg.batch.window_bytes));
    BL_RETURN_IF_ERROR(t.millis("ack_timeout_ms", 100, 3600000, cfg.batch.ack_timeout));
    BL_RETURN_IF_ERROR(t.integerAs("zstd_level", 0, 19, cfg.batch.zstd_level));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
  }

  auto spool = top.table("spool");
  if (!spool.isOk()) return spool.status();
  std::string spool_dir;
  if (*spool != nullptr) {
    TableReader t(**spool, "spool");
    BL_RETURN_IF_ERROR(t.boolean("enabled", cfg.spool.enabled));
    BL_RETURN_IF_ERROR(t.string("dir", spool_dir));
    BL_RETURN_IF_ERROR(t.millis("poll_ms", 10, 600000, cfg.spool.poll));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_file_bytes", 1024, int64_t{16} << 30, cfg.spool.max_file_bytes));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_line_bytes", 64, int64_t{1} << 30, cfg.spool.max_line_bytes));
    BL_RETURN_IF_ERROR(
        t.integerAs("max_records_per_file", 1, 100000000, cfg.spool.max_records_per_file));
    BL_RETURN_IF_ERROR(t.string("owner", cfg.spool.owner));
    BL_RETURN_IF_ERROR(t.boolean("keep_done", cfg.spool.keep_done));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
  }
  cfg.spool.dir =
      spool_dir.empty() ? cfg.data_dir / "spool" : (base_dir / spool_dir).lexically_normal();

  auto security = top.table("security");
  if (!security.isOk()) return security.status();
  if (*security != nullptr) {
    TableReader t(**security, "security");
    std::string seal_key, aggregator_key;
    BL_RETURN_IF_ERROR(t.string("seal_key_file", seal_key));
    BL_RETURN_IF_ERROR(t.string("aggregator_key_file", aggregator_key));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
    // One without the other would look sealed while sending in clear, or fail later.
    if (seal_key.empty() != aggregator_key.empty()) {
      return Status::invalid(
          std::string(seal_key.empty() ? "security.seal_key_file"
                                       : "security.aggregator_key_file") +
          ": required when " +
          (seal_key.empty() ? "security.aggregator_key_file" : "security.seal_key_file") +
          " is set (batches are sealed with both; see `branchline pki enroll`)");
    }
    if (!seal_key.empty()) {
      cfg.security.seal_key_file = (base_dir / seal_key).lexically_normal();
      cfg.security.aggregator_key_file = (base_dir / aggregator_key).lexically_normal();
    }
  }

  auto health = top.table("health");
  if (!health.isOk()) return health.status();
  if (*health != nullptr) {
    TableReader t(**health, "health");
    BL_RETURN_IF_ERROR(
        t.millis("broker_unreachable_ms", 100, 86400000, cfg.health.broker_unreachable));
    BL_RETURN_IF_ERROR(t.millis("acks_stalled_ms", 100, 86400000, cfg.health.acks_stalled));
    BL_RETURN_IF_ERROR(t.ratio("buffer_full_ratio", 0, 1, cfg.health.buffer_full_ratio));
    BL_RETURN_IF_ERROR(t.rejectUnknown());
  }

  auto sources = top.table("sources");
  if (!sources.isOk()) return sources.status();
  if (*sources != nullptr && !(*sources)->empty()) {
    // The access keys are the agent's; the rule engine sees the rest.
    toml::table rules_view = **sources;
    std::vector<AgentConfig::SourceAccess> access;
    for (auto&& [name, node] : rules_view) {
      toml::table* t = node.as_table();
      if (t == nullptr) continue;  // parseSources names the error
      auto parsed = takeSourceAccess(*t, "sources." + std::string(name.str()));
      if (!parsed.isOk()) return parsed.status();
      access.push_back(std::move(parsed).value());
      access.back().source = std::string(name.str());
    }
    auto parsed = rules::parseSources(rules_view);
    if (!parsed.isOk()) return parsed.status();
    cfg.sources = std::move(parsed).value();
    for (const auto& schema : cfg.sources) {
      auto it = std::find_if(access.begin(), access.end(),
                             [&](const auto& a) { return a.source == schema.name; });
      cfg.access.push_back(std::move(*it));
    }
  } else {
    cfg.sources = {rules::defaultCustomerSchema()};
    cfg.access.push_back({.source = cfg.sources.front().name});
  }

  return top.rejectUnknown();
}

}  // namespace

std::filesystem::path AgentConfig::tokenFile() const { return data_dir / "ingest_tokens"; }

Result<AgentConfig> parseAgentConfig(std::string_view toml_text,
                                     const std::filesystem::path& base_dir, uint64_t max_bytes) {
  BL_RETURN_IF_ERROR(checkConfigText(toml_text, {.max_bytes = max_bytes}));
  toml::table root;
  try {
    root = toml::parse(toml_text);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    return Status::invalid("line " + std::to_string(at.line) + ", column " +
                           std::to_string(at.column) + ": " + std::string(e.description()));
  }
  AgentConfig cfg;
  const std::filesystem::path base = std::filesystem::absolute(base_dir);
  BL_RETURN_IF_ERROR(parseRoot(root, base, cfg));
  return cfg;
}

Result<AgentConfig> loadAgentConfig(const std::filesystem::path& file, uint64_t max_bytes) {
  auto text = readConfigFile(file, max_bytes);
  if (!text.isOk()) return text.status();
  auto cfg = parseAgentConfig(*text, std::filesystem::absolute(file).parent_path(), max_bytes);
  if (!cfg.isOk()) return cfg.status().withContext(file.string());
  return cfg;
}

Status checkCertificateIdentity(const AgentConfig& cfg) {
  if (cfg.mqtt.cert_file.empty()) return Status::ok();
  const std::string file = cfg.mqtt.cert_file.string();
  auto pem = pki::readFile(cfg.mqtt.cert_file);
  if (!pem.isOk()) return Status::notFound("mqtt.cert_file " + file + ": cannot be read");
  auto info = pki::inspectCertificate(*pem);
  if (!info.isOk()) {
    return Status::invalid("mqtt.cert_file " + file + ": " + info.status().message());
  }
  if (info->common_name == cfg.id) return Status::ok();
  return Status::invalid("agent.id `" + cfg.id + "` is not the identity in mqtt.cert_file " + file +
                         " (CN `" + info->common_name + "`): the broker knows this agent as `" +
                         info->common_name + "` and would drop what it publishes as `" + cfg.id +
                         "`. Set agent.id = \"" + info->common_name +
                         "\", or point mqtt.cert_file and mqtt.key_file at agent `" + cfg.id +
                         "`'s certificate (`branchline pki enroll --dir P " + cfg.id + "`)");
}

}  // namespace branchline::agent
