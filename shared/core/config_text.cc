#include "shared/core/config_text.h"

#include <fstream>

namespace branchline {
namespace {

bool bareKeyChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

}  // namespace

Status checkConfigText(std::string_view text, const ConfigTextLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return Status::invalid("config is " + std::to_string(text.size()) +
                           " bytes, larger than the limit of " + std::to_string(limits.max_bytes));
  }
  // Counts the dots of the dotted chain being read, skipping strings and
  // comments. A chain is broken by anything that cannot be inside a key, so
  // values (1.5, dates, quoted text) never add up: only keys and headers can
  // reach the limit.
  size_t line = 1;
  size_t dots = 0;
  const size_t n = text.size();
  for (size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (c == '#') {
      while (i + 1 < n && text[i + 1] != '\n') ++i;
    } else if (c == '"' || c == '\'') {
      const bool basic = c == '"';
      const bool multi = text.substr(i, 3) == std::string_view(basic ? "\"\"\"" : "'''");
      size_t j = i + (multi ? 3 : 1);
      bool closed = false;
      for (; j < n && !closed; ++j) {
        if (basic && text[j] == '\\') {
          ++j;
        } else if (text[j] == '\n') {
          if (!multi) break;  // unterminated: the parser reports it; the newline counts below
          ++line;
        } else if (text[j] == c && (!multi || text.substr(j, 3) == text.substr(i, 3))) {
          if (multi) {
            // Up to two more quotes belong to the content: `"""a""""` ends at the last one.
            j += 2;
            for (int extra = 0; extra < 2 && j + 1 < n && text[j + 1] == c; ++extra) ++j;
          }
          closed = true;
        }
      }
      i = j - 1;  // the loop's ++i moves past the string (or onto its newline)
    } else if (c == '.') {
      if (++dots >= limits.max_key_depth) {
        return Status::invalid("line " + std::to_string(line) + ": a dotted key deeper than " +
                               std::to_string(limits.max_key_depth) + " levels");
      }
    } else if (!bareKeyChar(c) && c != ' ' && c != '\t') {
      dots = 0;
      if (c == '\n') ++line;
    }
  }
  return Status::ok();
}

Result<std::string> readConfigFile(const std::filesystem::path& file, size_t max_bytes) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return Status::notFound("cannot read config file " + file.string());
  // One byte past the cap tells "too large" without reading (or holding) more:
  // a config pointed at a huge file or a device costs at most the cap.
  std::string text(max_bytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return Status::notFound("cannot read config file " + file.string());
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > max_bytes) {
    return Status::invalid("config file " + file.string() + " is larger than " +
                           std::to_string(max_bytes) + " bytes; is it the right file?");
  }
  return text;
}

}  // namespace branchline
