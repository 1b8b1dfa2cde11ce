#include "agent/ingest/form_body.h"

#include <algorithm>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "agent/ingest/record_intake.h"

namespace branchline::agent {
namespace {

namespace json = boost::json;

constexpr size_t kMaxNameInMessage = 64;
// A header with more is not from a browser; the bound keeps the duplicate check cheap.
constexpr size_t kMaxParams = 32;
constexpr size_t kMaxBoundaryBytes = 70;  // RFC 2046 5.1.1

// A client-supplied name as it may appear in an error message: backquoted,
// valid UTF-8, at most 64 bytes, without control characters or backquotes
// (which could forge lines or end the quote in a log).
std::string quoted(std::string_view name) {
  std::string s = sanitizeUtf8(name, kMaxNameInMessage);
  for (char& c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '`') c = '?';
  }
  return "`" + s + (name.size() > kMaxNameInMessage ? "...`" : "`");
}

// limit + 1 without wrapping: decoding stops one byte past a limit, enough to
// know it is exceeded without copying a hostile value in full.
size_t pastLimit(size_t limit) { return limit == SIZE_MAX ? limit : limit + 1; }

char asciiLower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return asciiLower(x) == asciiLower(y);
         });
}

bool isControl(char c) {
  auto u = static_cast<unsigned char>(c);
  return (u < 0x20 && c != '\t') || u == 0x7f;
}

// RFC 9110 5.6.2 token characters.
bool isTchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// RFC 2046 5.1.1 bchars.
bool isBchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("'()+_,-./:=? ").find(c) != std::string_view::npos;
}

std::string_view trimWhitespace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Collects the fields of one body and applies the checks both encodings
// share. `where` prefixes messages ("" or "part 3: ").
class FieldSink {
 public:
  FieldSink(const FormLimits& limits, json::object& out) : limits_(limits), out_(out) {
    out_.clear();
  }

  // Counts one more field before any work on it, so a body of millions of
  // pairs stops at the limit.
  Status count(const std::string& where) {
    if (++fields_ > limits_.max_fields) {
      return Status::exhausted(where + "the form has more than " +
                               std::to_string(limits_.max_fields) + " fields");
    }
    return Status::ok();
  }

  Status checkName(std::string_view name, const std::string& where) {
    if (name.empty()) return Status::invalid(where + "a field has an empty name");
    if (name.size() > limits_.max_name_bytes) {
      return Status::exhausted(where + "field " + quoted(name) + ": the name is longer than " +
                               std::to_string(limits_.max_name_bytes) + " bytes");
    }
    if (size_t bad = firstInvalidUtf8(name); bad < name.size()) {
      return Status::invalid(where + "field " + quoted(name) + ": the name is not valid UTF-8");
    }
    if (!seen_.emplace(name).second) {
      return Status::invalid(where + "field " + quoted(name) + " is given twice");
    }
    return Status::ok();
  }

  // `name` passed checkName. An empty value leaves the field absent.
  Status addValue(std::string_view name, std::string_view value, const std::string& where) {
    if (value.size() > limits_.max_value_bytes) {
      return Status::exhausted(where + "field " + quoted(name) + ": the value is longer than " +
                               std::to_string(limits_.max_value_bytes) + " bytes");
    }
    if (size_t bad = firstInvalidUtf8(value); bad < value.size()) {
      return Status::invalid(where + "field " + quoted(name) +
                             ": the value is not valid UTF-8 (at byte " + std::to_string(bad) +
                             " of the value)");
    }
    if (!value.empty()) out_.emplace(name, value);
    return Status::ok();
  }

 private:
  const FormLimits& limits_;
  json::object& out_;
  size_t fields_ = 0;
  // Absent (empty) fields count too: "a=&a=1" gives `a` twice.
  std::unordered_set<std::string> seen_;
};

int hexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Undoes '+' and %XX in `raw`, stopping once `cap` bytes are decoded. `out`
// views `raw` itself when there is nothing to undo, else `buf`. False on a '%'
// not followed by two hex digits.
bool formDecode(std::string_view raw, size_t cap, std::string& buf, std::string_view& out) {
  if (raw.find_first_of("%+") == std::string_view::npos) {
    out = raw;
    return true;
  }
  buf.clear();
  for (size_t i = 0; i < raw.size() && buf.size() < cap; ++i) {
    char c = raw[i];
    if (c == '+') {
      buf.push_back(' ');
    } else if (c != '%') {
      buf.push_back(c);
    } else {
      if (i + 2 >= raw.size()) return false;
      int hi = hexDigit(raw[i + 1]);
      int lo = hexDigit(raw[i + 2]);
      if (hi < 0 || lo < 0) return false;
      buf.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    }
  }
  out = buf;
  return true;
}

struct Param {
  std::string name;  // lower case
  std::string value;
};

// Splits a header value "type/sub; a=b" into the part before the first ';'
// (trimmed) and the rest, which starts at that ';'.
std::pair<std::string_view, std::string_view> splitHead(std::string_view value) {
  size_t semi = std::min(value.find(';'), value.size());
  return {trimWhitespace(value.substr(0, semi)), value.substr(semi)};
}

// Parses `*( OWS ";" OWS name "=" ( token / quoted-string ) ) OWS` (RFC 9110
// 5.6.6); empty parameters (";;", a trailing ';') are skipped. With
// `quoted_pairs` a backslash in a quoted string escapes the next character
// (RFC 9110); without, it is literal, as browsers send Content-Disposition
// names (WHATWG HTML, "multipart/form-data encoding algorithm").
Status parseParams(std::string_view text, bool quoted_pairs, const std::string& what,
                   std::vector<Param>& params) {
  const size_t n = text.size();
  size_t i = 0;
  auto skipWhitespace = [&] {
    while (i < n && (text[i] == ' ' || text[i] == '\t')) ++i;
  };
  while (true) {
    skipWhitespace();
    if (i == n) return Status::ok();
    if (text[i] != ';') return Status::invalid(what + ": expected ';' before a parameter");
    ++i;
    skipWhitespace();
    if (i == n) return Status::ok();
    if (text[i] == ';') continue;
    size_t start = i;
    while (i < n && isTchar(text[i])) ++i;
    if (i == start || i == n || text[i] != '=') {
      return Status::invalid(what + ": a parameter is not name=value");
    }
    Param param;
    for (char c : text.substr(start, i - start)) param.name.push_back(asciiLower(c));
    ++i;
    if (i < n && text[i] == '"') {
      ++i;
      while (true) {
        if (i == n) return Status::invalid(what + ": a quoted parameter value is not closed");
        char c = text[i++];
        if (c == '"') break;
        if (c == '\\' && quoted_pairs) {
          if (i == n) return Status::invalid(what + ": a quoted parameter value is not closed");
          c = text[i++];
        }
        if (isControl(c)) {
          return Status::invalid(what + ": parameter " + quoted(param.name) +
                                 " holds a control character");
        }
        param.value.push_back(c);
      }
    } else {
      size_t value_start = i;
      while (i < n && isTchar(text[i])) ++i;
      if (i == value_start) {
        return Status::invalid(what + ": parameter " + quoted(param.name) + " has no value");
      }
      param.value = text.substr(value_start, i - value_start);
    }
    for (const Param& p : params) {
      if (p.name == param.name) {
        return Status::invalid(what + ": parameter " + quoted(param.name) + " is given twice");
      }
    }
    if (params.size() == kMaxParams) {
      return Status::invalid(what + ": more than " + std::to_string(kMaxParams) + " parameters");
    }
    params.push_back(std::move(param));
  }
}

const Param* findParam(const std::vector<Param>& params, std::string_view name) {
  for (const Param& p : params) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

Status boundaryOf(std::string_view content_type, std::string& boundary) {
  auto [media_type, rest] = splitHead(content_type);
  if (!equalsIgnoreCase(media_type, "multipart/form-data")) {
    return Status::invalid("Content-Type: not multipart/form-data");
  }
  std::vector<Param> params;
  BL_RETURN_IF_ERROR(parseParams(rest, true, "Content-Type", params));
  const Param* b = findParam(params, "boundary");
  if (b == nullptr) return Status::invalid("Content-Type: multipart/form-data without a boundary");
  if (b->value.empty() || b->value.size() > kMaxBoundaryBytes || b->value.back() == ' ' ||
      !std::all_of(b->value.begin(), b->value.end(), isBchar)) {
    return Status::invalid(
        "Content-Type: the boundary must be 1 to 70 letters, digits or '()+_,-./:=? "
        "(RFC 2046), not ending in a space");
  }
  boundary = b->value;
  return Status::ok();
}

// The headers of one part that matter, checked: the field name, or an error
// for anything but a plain text field.
Status readPartHeaders(std::string_view block, std::string_view nl, const std::string& where,
                       std::string& name) {
  std::string_view disposition, content_type, transfer_encoding;
  bool has_disposition = false, has_content_type = false, has_transfer_encoding = false;
  for (size_t start = 0; !block.empty() && start <= block.size();) {
    size_t end = std::min(block.find(nl, start), block.size());
    std::string_view line = block.substr(start, end - start);
    start = end + nl.size();
    if (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
      return Status::invalid(where + "a part header is folded over lines (obsolete, RFC 9112)");
    }
    size_t colon = line.find(':');
    std::string_view header = line.substr(0, std::min(colon, line.size()));
    if (colon == std::string_view::npos || header.empty() ||
        !std::all_of(header.begin(), header.end(), isTchar)) {
      return Status::invalid(where + "a part header line is not `Name: value`");
    }
    std::string_view value = trimWhitespace(line.substr(colon + 1));
    if (std::any_of(value.begin(), value.end(), isControl)) {
      return Status::invalid(where + "part header " + quoted(header) +
                             " holds a control character (a stray CR or LF mixes line endings)");
    }
    auto take = [&](bool& seen, std::string_view& slot) {
      if (seen) return Status::invalid(where + "part header " + quoted(header) + " is given twice");
      seen = true;
      slot = value;
      return Status::ok();
    };
    if (equalsIgnoreCase(header, "Content-Disposition")) {
      BL_RETURN_IF_ERROR(take(has_disposition, disposition));
    } else if (equalsIgnoreCase(header, "Content-Type")) {
      BL_RETURN_IF_ERROR(take(has_content_type, content_type));
    } else if (equalsIgnoreCase(header, "Content-Transfer-Encoding")) {
      BL_RETURN_IF_ERROR(take(has_transfer_encoding, transfer_encoding));
    }
  }

  if (!has_disposition) {
    return Status::invalid(where + "the part has no Content-Disposition: form-data; name=\"...\"");
  }
  auto [kind, rest] = splitHead(disposition);
  if (!equalsIgnoreCase(kind, "form-data")) {
    return Status::invalid(where + "Content-Disposition is not form-data");
  }
  std::vector<Param> params;
  BL_RETURN_IF_ERROR(parseParams(rest, false, where + "Content-Disposition", params));
  const Param* name_param = findParam(params, "name");
  if (name_param == nullptr) {
    return Status::invalid(where + "Content-Disposition has no name parameter");
  }
  name = name_param->value;
  const std::string field = where + "field " + quoted(name) + ": ";
  if (findParam(params, "filename") != nullptr || findParam(params, "filename*") != nullptr) {
    return Status::invalid(field +
                           "file uploads are not accepted; send the field's text without a "
                           "filename");
  }
  if (has_content_type) {
    auto [media_type, ct_rest] = splitHead(content_type);
    std::vector<Param> ct_params;
    BL_RETURN_IF_ERROR(parseParams(ct_rest, true, field + "Content-Type", ct_params));
    const Param* charset = findParam(ct_params, "charset");
    if (!equalsIgnoreCase(media_type, "text/plain") ||
        (charset != nullptr && !equalsIgnoreCase(charset->value, "utf-8"))) {
      return Status::invalid(field +
                             "only text/plain (charset utf-8 or none) is accepted as a part's "
                             "Content-Type");
    }
  }
  if (has_transfer_encoding && !equalsIgnoreCase(transfer_encoding, "7bit") &&
      !equalsIgnoreCase(transfer_encoding, "8bit") &&
      !equalsIgnoreCase(transfer_encoding, "binary")) {
    return Status::invalid(field +
                           "Content-Transfer-Encoding must be 7bit, 8bit or binary (nothing is "
                           "decoded)");
  }
  return Status::ok();
}

// One part: the bytes between a boundary line and the next delimiter.
Status readPart(std::string_view part, std::string_view nl, const FormLimits& limits,
                const std::string& where, FieldSink& sink) {
  std::string_view block;
  std::string_view value;
  if (part.substr(0, nl.size()) == nl) {
    value = part.substr(nl.size());  // no headers at all
  } else {
    const std::string blank_line = std::string(nl) + std::string(nl);
    // Look for the blank line only as far as the limit allows: a hostile part
    // of megabytes without one costs no more than a legitimate header block.
    size_t window = std::min(part.size(), limits.max_part_header_bytes + blank_line.size());
    size_t at = part.substr(0, window).find(blank_line);
    if (at == std::string_view::npos || at > limits.max_part_header_bytes) {
      if (window < part.size() || at != std::string_view::npos) {
        return Status::exhausted(where + "the part's headers are longer than " +
                                 std::to_string(limits.max_part_header_bytes) + " bytes");
      }
      return Status::invalid(where + "the part has no blank line after its headers");
    }
    block = part.substr(0, at);
    value = part.substr(at + blank_line.size());
  }
  std::string name;
  BL_RETURN_IF_ERROR(readPartHeaders(block, nl, where, name));
  BL_RETURN_IF_ERROR(sink.checkName(name, where));
  return sink.addValue(name, value, where);
}

// Skips RFC 2046 transport padding (spaces and tabs after a boundary).
size_t skipPadding(std::string_view body, size_t pos) {
  while (pos < body.size() && (body[pos] == ' ' || body[pos] == '\t')) ++pos;
  return pos;
}

}  // namespace

Status parseUrlEncodedForm(std::string_view body, const FormLimits& limits,
                           boost::json::object& out) {
  FieldSink sink(limits, out);
  const std::string where;
  std::string name_buf;
  std::string value_buf;
  for (size_t pos = 0; pos <= body.size();) {
    size_t amp = std::min(body.find('&', pos), body.size());
    std::string_view pair = body.substr(pos, amp - pos);
    pos = amp + 1;
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string_view raw_name = pair.substr(0, std::min(eq, pair.size()));
    std::string_view raw_value = eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    BL_RETURN_IF_ERROR(sink.count(where));
    std::string_view name;
    if (!formDecode(raw_name, pastLimit(limits.max_name_bytes), name_buf, name)) {
      return Status::invalid("field " + quoted(raw_name) +
                             ": the name has a '%' not followed by two hex digits");
    }
    BL_RETURN_IF_ERROR(sink.checkName(name, where));
    std::string_view value;
    if (!formDecode(raw_value, pastLimit(limits.max_value_bytes), value_buf, value)) {
      return Status::invalid("field " + quoted(name) +
                             ": the value has a '%' not followed by two hex digits");
    }
    BL_RETURN_IF_ERROR(sink.addValue(name, value, where));
  }
  return Status::ok();
}

Status parseMultipartForm(std::string_view content_type_header, std::string_view body,
                          const FormLimits& limits, boost::json::object& out) {
  FieldSink sink(limits, out);
  std::string boundary;
  BL_RETURN_IF_ERROR(boundaryOf(content_type_header, boundary));
  const std::string dash_boundary = "--" + boundary;

  // The first boundary line opens the body or follows the preamble's last line.
  size_t pos = 0;
  if (body.substr(0, dash_boundary.size()) != dash_boundary) {
    size_t at = body.find("\n" + dash_boundary);
    if (at == std::string_view::npos) {
      return Status::invalid("the body has no boundary line (\"--\" and the boundary)");
    }
    pos = at + 1;
  }
  pos += dash_boundary.size();
  if (body.substr(pos, 2) == "--") return Status::ok();  // a form without fields
  pos = skipPadding(body, pos);
  // The first boundary line's ending sets the body's: CRLF, or LF throughout.
  std::string_view nl;
  if (body.substr(pos, 2) == "\r\n") {
    nl = "\r\n";
  } else if (body.substr(pos, 1) == "\n") {
    nl = "\n";
  } else {
    return Status::invalid("text follows the boundary on the first boundary line");
  }
  pos += nl.size();
  // A delimiter is a line break then the boundary line (RFC 2046): the line
  // break before it belongs to it, not to the value.
  const std::string delimiter = std::string(nl) + dash_boundary;

  for (size_t part = 1;; ++part) {
    const std::string where = "part " + std::to_string(part) + ": ";
    BL_RETURN_IF_ERROR(sink.count(where));
    size_t end = body.find(delimiter, pos);
    if (end == std::string_view::npos) {
      return Status::invalid(where + "the body ends before the closing boundary line (\"--\", " +
                             "the boundary, \"--\")");
    }
    BL_RETURN_IF_ERROR(readPart(body.substr(pos, end - pos), nl, limits, where, sink));
    pos = end + delimiter.size();
    if (body.substr(pos, 2) == "--") return Status::ok();  // the epilogue is ignored
    pos = skipPadding(body, pos);
    if (body.substr(pos, nl.size()) != nl) {
      return Status::invalid(where +
                             "text follows the boundary on its line (a value must not hold a "
                             "line starting with the boundary)");
    }
    pos += nl.size();
  }
}

}  // namespace branchline::agent
