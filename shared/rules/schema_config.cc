// parseSources: the `[sources.<name>]` tables of agent.toml -> SourceSchema.
#include <toml++/toml.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "shared/rules/rule_engine.h"

namespace branchline::rules {
namespace {

using namespace std::string_view_literals;

struct TypeName {
  std::string_view name;
  FieldType type;
};
constexpr TypeName kTypes[] = {
    {"string", FieldType::kString},   {"email", FieldType::kEmail},
    {"phone", FieldType::kPhone},     {"timestamp", FieldType::kTimestamp},
    {"enum", FieldType::kEnum},       {"integer", FieldType::kInteger},
    {"decimal", FieldType::kDecimal}, {"boolean", FieldType::kBoolean},
};

// Where a table member was written. toml++ tables iterate in key order; config
// order is what users expect to see in the canonical payload, so members are
// re-sorted by the position of their key (for `[a.fields.x]` headers, dotted
// keys and inline tables alike). Members without a position (a table built in
// code) compare equal and keep key order, because the sort is stable.
std::pair<uint32_t, uint32_t> declaredAt(const toml::key& key, const toml::node& node) {
  const toml::source_position& k = key.source().begin;
  if (k.line != 0) return {k.line, k.column};
  const toml::source_position& n = node.source().begin;
  return {n.line, n.column};
}

template <typename Table>
std::vector<std::pair<const toml::key*, const toml::node*>> inDeclarationOrder(const Table& t) {
  std::vector<std::pair<const toml::key*, const toml::node*>> members;
  for (auto&& [key, node] : t) members.emplace_back(&key, &node);
  std::stable_sort(members.begin(), members.end(), [](const auto& a, const auto& b) {
    return declaredAt(*a.first, *a.second) < declaredAt(*b.first, *b.second);
  });
  return members;
}

class SourceParser {
 public:
  Result<std::vector<SourceSchema>> parse(const toml::table& sources) {
    std::vector<SourceSchema> out;
    for (auto [key, node] : inDeclarationOrder(sources)) {
      const std::string path = "sources." + std::string(key->str());
      const toml::table* table = node->as_table();
      if (table == nullptr) {
        error(path, "expected a table ([" + path + "])");
        continue;
      }
      out.push_back(parseSource(std::string(key->str()), path, *table));
    }
    if (!errors_.empty()) return Status::invalid(errors_);
    return out;
  }

 private:
  void error(const std::string& path, const std::string& what) {
    if (!errors_.empty()) errors_ += "; ";
    errors_ += path + ": " + what;
  }

  static bool validName(std::string_view name) {
    if (name.empty() || name.size() > 64) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '-';
    });
  }

  SourceSchema parseSource(std::string name, const std::string& path, const toml::table& t) {
    SourceSchema s;
    if (!validName(name)) error(path, "source name must be 1-64 characters of [A-Za-z0-9_-]");
    s.name = std::move(name);
    bool has_fields = false;
    for (auto [key, node] : inDeclarationOrder(t)) {
      const std::string_view k = key->str();
      const std::string at = path + "." + std::string(k);
      if (k == "key"sv) {
        const toml::array* keys = node->as_array();
        if (keys == nullptr) {
          error(at, "expected an array of field names");
          continue;
        }
        for (const toml::node& item : *keys) {
          if (const auto* v = item.as_string()) {
            s.key_fields.push_back(v->get());
          } else {
            error(at, "expected an array of field names");
          }
        }
      } else if (k == "unknown_fields"sv) {
        const std::optional<std::string_view> v = node->value<std::string_view>();
        if (v == "keep"sv) {
          s.unknown_fields = UnknownFieldPolicy::kKeep;
        } else if (v == "drop"sv) {
          s.unknown_fields = UnknownFieldPolicy::kDrop;
        } else if (v == "reject"sv) {
          s.unknown_fields = UnknownFieldPolicy::kReject;
        } else {
          error(at, "expected \"keep\", \"drop\" or \"reject\"");
        }
      } else if (k == "fields"sv) {
        const toml::table* fields = node->as_table();
        if (fields == nullptr) {
          error(at, "expected a table of fields");
          continue;
        }
        has_fields = true;
        for (auto [fkey, fnode] : inDeclarationOrder(*fields)) {
          const std::string fat = at + "." + std::string(fkey->str());
          const toml::table* ft = fnode->as_table();
          if (ft == nullptr) {
            error(fat, "expected a table ([" + fat + "])");
            continue;
          }
          s.fields.push_back(parseField(std::string(fkey->str()), fat, *ft));
        }
        if (fields->empty()) error(at, "declares no fields");
      } else {
        error(at, "unknown key");
      }
    }
    if (!has_fields) error(path + ".fields", "missing: a source declares its fields");
    for (const std::string& k : s.key_fields) {
      const auto it = std::find_if(s.fields.begin(), s.fields.end(),
                                   [&](const FieldRule& f) { return f.name == k; });
      if (it == s.fields.end()) {
        error(path + ".key", "field `" + k + "` is not declared");
      } else if (!it->required) {
        error(path + ".key", "field `" + k + "` must be required = true");
      }
    }
    return s;
  }

  FieldRule parseField(std::string name, const std::string& path, const toml::table& t) {
    FieldRule f;
    f.name = std::move(name);
    bool has_values = false, has_region = false;
    for (auto [key, node] : inDeclarationOrder(t)) {
      const std::string_view k = key->str();
      const std::string at = path + "." + std::string(k);
      if (k == "type"sv) {
        const std::optional<std::string_view> v = node->value<std::string_view>();
        const auto it = std::find_if(std::begin(kTypes), std::end(kTypes),
                                     [&](const TypeName& t) { return v == t.name; });
        if (!v) {
          error(at, "expected a string");
        } else if (it == std::end(kTypes)) {
          error(at, "unknown type `" + std::string(*v) +
                        "` (string|email|phone|timestamp|enum|integer|decimal|boolean)");
        } else {
          f.type = it->type;
        }
      } else if (k == "required"sv) {
        if (const auto v = node->value_exact<bool>()) {
          f.required = *v;
        } else {
          error(at, "expected true or false");
        }
      } else if (k == "max_length"sv) {
        const auto v = node->value_exact<int64_t>();
        if (!v || *v < 1) {
          error(at, "expected a positive integer");
        } else {
          f.max_length = static_cast<size_t>(*v);
        }
      } else if (k == "pattern"sv) {
        if (const auto v = node->value_exact<std::string>()) {
          f.pattern = *v;
        } else {
          error(at, "expected a string");
        }
      } else if (k == "values"sv) {
        has_values = true;
        const toml::array* values = node->as_array();
        if (values == nullptr || values->empty()) {
          error(at, "expected a non-empty array of strings");
          continue;
        }
        for (const toml::node& item : *values) {
          if (const auto* v = item.as_string()) {
            f.enum_values.push_back(v->get());
          } else {
            error(at, "expected a non-empty array of strings");
            break;
          }
        }
      } else if (k == "region"sv) {
        has_region = true;
        const auto v = node->value_exact<std::string>();
        if (!v || v->size() != 2) {
          error(at, "expected a two-letter region code such as \"US\"");
        } else {
          f.default_region = *v;
        }
      } else {
        error(at, "unknown key");
      }
    }
    if (f.type == FieldType::kEnum && !has_values)
      error(path + ".values", "missing: enum needs values");
    if (f.type != FieldType::kEnum && has_values) error(path + ".values", "only for type \"enum\"");
    if (f.type != FieldType::kPhone && has_region)
      error(path + ".region", "only for type \"phone\"");
    return f;
  }

  std::string errors_;
};

}  // namespace

Result<std::vector<SourceSchema>> parseSources(const toml::table& sources) {
  return SourceParser().parse(sources);
}

}  // namespace branchline::rules
