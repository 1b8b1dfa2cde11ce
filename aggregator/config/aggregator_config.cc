#include "aggregator/config/aggregator_config.h"

#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "aggregator/store/central_store.h"
#include "shared/core/clock.h"
#include "shared/core/config_text.h"

namespace branchline::aggregator {
namespace {

// Each table and the keys it may hold: anything else is a typo.
const std::map<std::string, std::set<std::string>>& knownKeys() {
  static const std::map<std::string, std::set<std::string>> kKeys = {
      {"aggregator", {"name", "data_dir"}},
      {"http", {"listen"}},
      {"mqtt", {"brokers", "topic_prefix", "share_group", "ca_file", "cert_file", "key_file"}},
      {"store", {"url"}},
      {"limits",
       {"max_message_bytes", "max_inflated_bytes", "max_inflate_ratio", "max_records_per_batch",
        "max_traversal_words", "max_nesting"}},
      {"commit", {"max_batches"}},
      {"security", {"seal_keys", "retired_seal_keys", "agents_dir", "require_sealed"}},
  };
  return kKeys;
}

class Reader {
 public:
  Reader(const toml::table& root, std::string origin) : root_(root), origin_(std::move(origin)) {}

  Status fail(const std::string& key, const std::string& why, const toml::node* node = nullptr) {
    std::string where = origin_;
    if (node && node->source().begin.line > 0) {
      where += ":" + std::to_string(node->source().begin.line);
    }
    return Status::invalid(where + ": `" + key + "` " + why);
  }

  Status checkUnknown() {
    for (const auto& [name, node] : root_) {
      std::string table(name.str());
      auto known = knownKeys().find(table);
      if (known == knownKeys().end()) return fail(table, "is not a known key or table", &node);
      const toml::table* t = node.as_table();
      if (!t) return fail(table, "must be a table ([" + table + "])", &node);
      for (const auto& [key, value] : *t) {
        std::string k(key.str());
        if (!known->second.count(k)) {
          return fail(table + "." + k, "is not a known key", &value);
        }
      }
    }
    return Status::ok();
  }

  const toml::node* find(const std::string& table, const std::string& key) {
    const toml::table* t = root_[table].as_table();
    return t ? t->get(key) : nullptr;
  }

  Status string(const std::string& table, const std::string& key, std::string& out, bool required) {
    const std::string path = table + "." + key;
    const toml::node* n = find(table, key);
    if (!n) return required ? fail(path, "is required") : Status::ok();
    const auto* s = n->as_string();
    if (!s) return fail(path, "must be a string", n);
    out = s->get();
    if (out.empty()) return fail(path, "must not be empty", n);
    return Status::ok();
  }

  Status size(const std::string& table, const std::string& key, size_t& out, int64_t min,
              int64_t max) {
    const std::string path = table + "." + key;
    const toml::node* n = find(table, key);
    if (!n) return Status::ok();
    const auto* i = n->as_integer();
    if (!i) return fail(path, "must be an integer", n);
    int64_t v = i->get();
    if (v < min || v > max) {
      return fail(path,
                  "must be between " + std::to_string(min) + " and " + std::to_string(max) +
                      " (got " + std::to_string(v) + ")",
                  n);
    }
    out = static_cast<size_t>(v);
    return Status::ok();
  }

  Status stringList(const std::string& table, const std::string& key,
                    std::vector<std::string>& out) {
    const std::string path = table + "." + key;
    const toml::node* n = find(table, key);
    if (!n) return Status::ok();
    const auto* a = n->as_array();
    if (!a) return fail(path, "must be an array of strings", n);
    if (a->empty()) return fail(path, "must name at least one broker", n);
    std::vector<std::string> values;
    for (const auto& e : *a) {
      const auto* s = e.as_string();
      if (!s || s->get().empty()) return fail(path, "must hold only non-empty strings", &e);
      values.push_back(s->get());
    }
    out = std::move(values);
    return Status::ok();
  }

  const toml::node* node(const std::string& table, const std::string& key) {
    return find(table, key);
  }

 private:
  const toml::table& root_;
  std::string origin_;
};

bool identifier(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  });
}

bool hasMqttWildcardOrNul(std::string_view s) {
  return s.find_first_of(std::string_view("+#\0", 3)) != std::string_view::npos;
}

Status validate(Reader& r, AggregatorConfig& c) {
  if (!identifier(c.name, 64)) {
    return r.fail("aggregator.name",
                  "must be 1-64 characters of [A-Za-z0-9_.-] (got `" + c.name + "`)",
                  r.node("aggregator", "name"));
  }
  // host:port; the host may be a bracketed IPv6 literal.
  auto colon = c.http_listen.rfind(':');
  std::string host = colon == std::string::npos ? "" : c.http_listen.substr(0, colon);
  std::string port = colon == std::string::npos ? "" : c.http_listen.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  bool port_ok =
      !port.empty() && port.size() <= 5 &&
      std::all_of(port.begin(), port.end(), [](char ch) { return ch >= '0' && ch <= '9'; }) &&
      std::stoi(port) <= 65535;
  if (host.empty() || !port_ok) {
    return r.fail("http.listen",
                  "must be host:port with a port of 0-65535 (got `" + c.http_listen + "`)",
                  r.node("http", "listen"));
  }
  c.http_host = host;
  c.http_port = static_cast<uint16_t>(std::stoi(port));
  for (const std::string& b : c.brokers) {
    if (b.find("://") == std::string::npos) {
      return r.fail("mqtt.brokers", "entry `" + b + "` must be a URI such as tcp://host:1883",
                    r.node("mqtt", "brokers"));
    }
  }
  // TLS is all or nothing: a plain URI beside TLS ones would let a failover
  // drop TLS; TLS files beside plain URIs would look secured but be unused.
  size_t tls = 0;
  for (const std::string& b : c.brokers) {
    tls += b.rfind("ssl://", 0) == 0 || b.rfind("mqtts://", 0) == 0 || b.rfind("wss://", 0) == 0;
  }
  const bool tls_files = !c.ca_file.empty() || !c.cert_file.empty() || !c.key_file.empty();
  if (tls == 0 && tls_files) {
    return r.fail("mqtt.ca_file", "is set, but no broker URI is ssl:// (TLS would not be used)",
                  r.node("mqtt", "brokers"));
  }
  if (tls != 0 && tls != c.brokers.size()) {
    return r.fail("mqtt.brokers",
                  "mixes TLS (ssl://) and plain (tcp://) URIs; a failover would drop TLS",
                  r.node("mqtt", "brokers"));
  }
  if (tls != 0) {
    for (const auto& [key, value] :
         {std::pair<const char*, const std::string&>{"ca_file", c.ca_file},
          {"cert_file", c.cert_file},
          {"key_file", c.key_file}}) {
      if (value.empty()) {
        return r.fail(std::string("mqtt.") + key,
                      "is required with ssl:// brokers (see `branchline pki`)",
                      r.node("mqtt", "brokers"));
      }
    }
  }
  if (hasMqttWildcardOrNul(c.topic_prefix) || c.topic_prefix.front() == '/' ||
      c.topic_prefix.back() == '/' || c.topic_prefix.front() == '$') {
    return r.fail(
        "mqtt.topic_prefix",
        "must be a topic without wildcards or leading/trailing `/` (got `" + c.topic_prefix + "`)",
        r.node("mqtt", "topic_prefix"));
  }
  if (hasMqttWildcardOrNul(c.share_group) || c.share_group.find('/') != std::string::npos) {
    return r.fail("mqtt.share_group",
                  "must be one topic level without `/`, `+` or `#` (got `" + c.share_group + "`)",
                  r.node("mqtt", "share_group"));
  }
  Status url = checkCentralStoreUrl(c.store_url);
  if (!url) return r.fail("store.url", url.message(), r.node("store", "url"));
  return Status::ok();
}

}  // namespace

protocol::DecodeLimits AggregatorConfig::decodeLimits() const {
  protocol::DecodeLimits l;
  l.max_message_bytes = max_message_bytes;
  l.max_inflated_bytes = max_inflated_bytes;
  l.max_inflate_ratio = static_cast<double>(max_inflate_ratio);
  l.max_records = max_records_per_batch;
  // Unless set, the Cap'n Proto read budget follows the inflated size (8-byte
  // words), with headroom for list and struct pointers.
  l.max_traversal_words =
      max_traversal_words != 0 ? max_traversal_words : max_inflated_bytes / 8 * 2 + 1024;
  l.max_nesting = static_cast<int>(max_nesting);
  return l;
}

// [security]: sealed batches (README "Security / Sealed batches").
Status parseSecurity(Reader& r, AggregatorConfig& c) {
  if (const toml::node* n = r.node("security", "seal_keys")) {
    const auto* a = n->as_array();
    if (!a) return r.fail("security.seal_keys", "must be an array of key file names", n);
    for (const auto& e : *a) {
      const auto* s = e.as_string();
      if (!s || s->get().empty()) {
        return r.fail("security.seal_keys", "must hold only non-empty file names", &e);
      }
      c.seal_keys.push_back(s->get());
    }
  }
  if (const toml::node* n = r.node("security", "retired_seal_keys")) {
    const auto* a = n->as_array();
    if (!a) {
      return r.fail("security.retired_seal_keys",
                    "must be an array of { file = \"...\", until = \"<RFC 3339 time>\" }", n);
    }
    for (const auto& e : *a) {
      const auto* t = e.as_table();
      const toml::node* file = t ? t->get("file") : nullptr;
      const toml::node* until = t ? t->get("until") : nullptr;
      if (!t || t->size() != 2 || !file || !file->as_string() || file->as_string()->get().empty() ||
          !until || !until->as_string()) {
        return r.fail("security.retired_seal_keys",
                      "entries must be exactly { file = \"...\", until = \"<RFC 3339 time>\" }",
                      &e);
      }
      auto until_us = parseRfc3339Micros(until->as_string()->get());
      if (!until_us) {
        return r.fail("security.retired_seal_keys",
                      "`until` must be an RFC 3339 time such as 2026-12-31T00:00:00Z (got `" +
                          until->as_string()->get() + "`)",
                      until);
      }
      c.retired_seal_keys.push_back({file->as_string()->get(), *until_us});
    }
  }
  BL_RETURN_IF_ERROR(r.string("security", "agents_dir", c.agents_dir, false));
  const toml::node* require = r.node("security", "require_sealed");
  if (require && !require->as_boolean()) {
    return r.fail("security.require_sealed", "must be true or false", require);
  }
  c.require_sealed = require ? require->as_boolean()->get() : !c.seal_keys.empty();
  // Each combination below would look secured while opening nothing, or refuse everything.
  if (c.seal_keys.empty()) {
    if (c.require_sealed) {
      return r.fail("security.require_sealed",
                    "is true but security.seal_keys is empty: no batch could be opened", require);
    }
    if (!c.retired_seal_keys.empty()) {
      return r.fail("security.seal_keys", "is required with security.retired_seal_keys",
                    r.node("security", "retired_seal_keys"));
    }
    if (!c.agents_dir.empty()) {
      return r.fail("security.agents_dir", "has no effect without security.seal_keys",
                    r.node("security", "agents_dir"));
    }
  } else if (c.agents_dir.empty()) {
    return r.fail("security.agents_dir",
                  "is required with security.seal_keys (the enrolled agents' <id>.seal.pub files)",
                  r.node("security", "seal_keys"));
  }
  return Status::ok();
}

Result<AggregatorConfig> parseAggregatorConfig(std::string_view text, std::string_view origin,
                                               size_t max_bytes) {
  if (Status s = checkConfigText(text, {.max_bytes = max_bytes}); !s) {
    return Status::invalid(std::string(origin) + ": " + s.message());
  }
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    return Status::invalid(std::string(origin) + ":" + std::to_string(e.source().begin.line) +
                           ": not valid TOML: " + std::string(e.description()));
  }
  Reader r(root, std::string(origin));
  BL_RETURN_IF_ERROR(r.checkUnknown());
  AggregatorConfig c;
  std::string data_dir;
  BL_RETURN_IF_ERROR(r.string("aggregator", "name", c.name, true));
  BL_RETURN_IF_ERROR(r.string("aggregator", "data_dir", data_dir, true));
  c.data_dir = data_dir;
  BL_RETURN_IF_ERROR(r.string("http", "listen", c.http_listen, false));
  BL_RETURN_IF_ERROR(r.stringList("mqtt", "brokers", c.brokers));
  BL_RETURN_IF_ERROR(r.string("mqtt", "topic_prefix", c.topic_prefix, false));
  BL_RETURN_IF_ERROR(r.string("mqtt", "share_group", c.share_group, false));
  BL_RETURN_IF_ERROR(r.string("mqtt", "ca_file", c.ca_file, false));
  BL_RETURN_IF_ERROR(r.string("mqtt", "cert_file", c.cert_file, false));
  BL_RETURN_IF_ERROR(r.string("mqtt", "key_file", c.key_file, false));
  BL_RETURN_IF_ERROR(r.string("store", "url", c.store_url, true));
  // 256 MiB is the MQTT protocol's own payload ceiling.
  BL_RETURN_IF_ERROR(r.size("limits", "max_message_bytes", c.max_message_bytes, 1, 268435455));
  BL_RETURN_IF_ERROR(r.size("limits", "max_inflated_bytes", c.max_inflated_bytes, 1, 1ll << 32));
  BL_RETURN_IF_ERROR(r.size("limits", "max_inflate_ratio", c.max_inflate_ratio, 0, 1000000));
  BL_RETURN_IF_ERROR(
      r.size("limits", "max_records_per_batch", c.max_records_per_batch, 1, 10000000));
  BL_RETURN_IF_ERROR(
      r.size("limits", "max_traversal_words", c.max_traversal_words, 0, int64_t{1} << 40));
  BL_RETURN_IF_ERROR(r.size("limits", "max_nesting", c.max_nesting, 4, 1024));
  BL_RETURN_IF_ERROR(r.size("commit", "max_batches", c.commit_max_batches, 1, 1000));
  BL_RETURN_IF_ERROR(parseSecurity(r, c));
  BL_RETURN_IF_ERROR(validate(r, c));
  return c;
}

Result<AggregatorConfig> loadAggregatorConfig(const std::filesystem::path& path, size_t max_bytes) {
  auto text = readConfigFile(path, max_bytes);
  if (!text) return text.status();
  auto config = parseAggregatorConfig(*text, path.string(), max_bytes);
  if (!config) return config;
  // Relative file names are relative to the config file, not the working dir.
  const std::filesystem::path base = std::filesystem::absolute(path).parent_path();
  for (std::string* file : {&config->ca_file, &config->cert_file, &config->key_file}) {
    if (!file->empty()) file->assign((base / *file).lexically_normal().string());
  }
  for (std::string& file : config->seal_keys) file = (base / file).lexically_normal().string();
  for (auto& retired : config->retired_seal_keys) {
    retired.file = (base / retired.file).lexically_normal().string();
  }
  if (!config->agents_dir.empty()) {
    config->agents_dir = (base / config->agents_dir).lexically_normal().string();
  }
  return config;
}

}  // namespace branchline::aggregator
