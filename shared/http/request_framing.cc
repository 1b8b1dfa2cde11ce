#include "shared/http/request_framing.h"

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/parser.hpp>
#include <cstring>
#include <limits>

namespace branchline::http {
namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

constexpr std::string_view kBlankLine = "\r\n\r\n";
constexpr size_t kMaxChunkSizeDigits = 16;  // 64 bits; more is refused, not wrapped
constexpr size_t kMaxContentLengthDigits = 19;
constexpr size_t kMaxQuoted = 24;  // of the peer's bytes in an error message

bool isToken(char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The peer's bytes for an error message: short, and printable.
std::string quote(std::string_view bytes) {
  std::string out = "`";
  for (char c : bytes.substr(0, kMaxQuoted)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (bytes.size() > kMaxQuoted) out += "...";
  return out + "`";
}

// What is wrong with the lines of a header or trailer section (each ending in
// CRLF, the blank line excluded), or empty. `names_checked`: Beast parses the
// head's names itself; the trailers we check here.
std::string fieldLinesProblem(std::string_view lines, bool check_names) {
  while (!lines.empty()) {
    size_t eol = lines.find("\r\n");
    std::string_view line = lines.substr(0, eol);
    lines.remove_prefix(eol + 2);
    if (line.empty()) return "an empty header line";
    if (line.find_first_of("\r\n") != std::string_view::npos) {
      return "a bare CR or LF in a header line";
    }
    if (line.front() == ' ' || line.front() == '\t') {
      return "obs-fold (a header line starting with a space or tab) is not accepted";
    }
    if (check_names) {
      size_t colon = line.find(':');
      if (colon == 0 || colon == std::string_view::npos ||
          !std::all_of(line.begin(), line.begin() + static_cast<std::ptrdiff_t>(colon), isToken)) {
        return "trailer line " + quote(line) + " is not `name: value`";
      }
    }
  }
  return {};
}

// Appends to `pending` (at most `limit` bytes in all) until it holds a blank
// line; returns the bytes taken and sets `end` past the blank line once there
// (else npos).
size_t appendUntilBlankLine(std::string& pending, std::string_view bytes, size_t limit,
                            size_t& end) {
  size_t from = pending.size() >= 3 ? pending.size() - 3 : 0;
  size_t take = std::min(bytes.size(), limit - std::min(limit, pending.size()));
  pending.append(bytes.data(), take);
  size_t at = pending.find(kBlankLine, from);
  if (at == std::string::npos) {
    end = std::string::npos;
    return take;
  }
  end = at + kBlankLine.size();
  size_t extra = pending.size() - end;
  pending.resize(end);
  return take - extra;
}

}  // namespace

size_t RequestFramer::feed(std::string_view bytes) {
  size_t used = 0;
  while (!failed() && state_ != State::kDone) {
    std::string_view rest = bytes.substr(used);
    if (state_ == State::kHead) return used + feedHead(rest);  // the caller looks at the head
    if (rest.empty()) break;
    switch (state_) {
      case State::kLength:
      case State::kChunkData: {
        size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, rest.size()));
        body_.append(rest.data(), take);
        remaining_ -= take;
        used += take;
        if (remaining_ == 0)
          state_ = state_ == State::kLength ? State::kDone : State::kChunkDataEnd;
        break;
      }
      case State::kChunkDataEnd:
        // Exactly CRLF after a chunk's data; `pending_` remembers a CR seen.
        if (rest.front() != (pending_.empty() ? '\r' : '\n')) {
          fail(FramingError::kMalformed, "chunk data is not followed by CRLF");
          break;
        }
        ++used;
        if (pending_.empty()) {
          pending_ = "\r";
        } else {
          pending_.clear();
          state_ = State::kChunkLine;
        }
        break;
      case State::kChunkLine:
        used += feedChunkLine(rest);
        break;
      case State::kTrailers:
        used += feedTrailers(rest);
        break;
      case State::kHead:
      case State::kDone:
        break;
    }
  }
  return used;
}

size_t RequestFramer::feedHead(std::string_view bytes) {
  size_t end = 0;
  size_t taken = appendUntilBlankLine(pending_, bytes, limits_.max_header_bytes, end);
  if (end == std::string::npos) {
    if (pending_.size() >= limits_.max_header_bytes) {
      fail(FramingError::kHeaderTooLarge, "request header too large");
    }
    return taken;
  }
  parseHead(pending_);
  pending_.clear();
  return taken;
}

void RequestFramer::parseHead(std::string_view head) {
  size_t first_eol = head.find("\r\n");
  std::string problem =
      fieldLinesProblem(head.substr(first_eol + 2, head.size() - first_eol - 4), false);
  if (head.substr(0, first_eol).find_first_of("\r\n") != std::string_view::npos) {
    problem = "a bare CR or LF in the request line";
  }
  if (!problem.empty()) return fail(FramingError::kMalformed, problem);

  bhttp::request_parser<bhttp::empty_body> parser;
  parser.header_limit(std::numeric_limits<uint32_t>::max());
  parser.body_limit(boost::none);  // ours, below
  parser.eager(false);
  beast::error_code ec;
  parser.put(boost::asio::buffer(head.data(), head.size()), ec);
  if (ec || !parser.is_header_done()) {
    return fail(FramingError::kMalformed, ec ? ec.message() : "incomplete request head");
  }
  head_ = parser.release();

  // RFC 9112 §6.1 and §6.3: one way to frame the body, or none.
  auto te = head_.equal_range(bhttp::field::transfer_encoding);
  auto cl = head_.equal_range(bhttp::field::content_length);
  bool has_te = te.first != te.second;
  bool has_cl = cl.first != cl.second;
  if (has_te) {
    if (std::next(te.first) != te.second) {
      return fail(FramingError::kMalformed, "more than one Transfer-Encoding field");
    }
    if (!beast::iequals(te.first->value(), "chunked")) {
      return fail(FramingError::kMalformed, "Transfer-Encoding " + quote(te.first->value()) +
                                                " is not supported; send `chunked` or none");
    }
    if (has_cl) {
      return fail(FramingError::kMalformed, "both Content-Length and Transfer-Encoding");
    }
    if (head_.version() < 11) {
      return fail(FramingError::kMalformed, "Transfer-Encoding in an HTTP/1.0 request");
    }
    chunked_ = true;
    state_ = State::kChunkLine;
    return;
  }
  if (has_cl) {
    if (std::next(cl.first) != cl.second) {
      return fail(FramingError::kMalformed, "more than one Content-Length field");
    }
    std::string_view value = cl.first->value();
    if (value.empty() || value.size() > kMaxContentLengthDigits ||
        !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return fail(FramingError::kMalformed,
                  "Content-Length " + quote(value) + " is not one decimal number");
    }
    for (char c : value) content_length_ = content_length_ * 10 + static_cast<uint64_t>(c - '0');
    if (content_length_ > limits_.max_body_bytes) {
      return fail(FramingError::kBodyTooLarge, "request body too large");
    }
  }
  if (content_length_ == 0) {
    state_ = State::kDone;
    return;
  }
  body_.reserve(static_cast<size_t>(content_length_));
  remaining_ = content_length_;
  state_ = State::kLength;
}

size_t RequestFramer::feedChunkLine(std::string_view bytes) {
  size_t nl = bytes.find('\n');
  size_t take = nl == std::string_view::npos ? bytes.size() : nl + 1;
  if (pending_.size() + take > limits_.max_chunk_line_bytes) {
    fail(FramingError::kMalformed,
         "chunk size line longer than " + std::to_string(limits_.max_chunk_line_bytes) + " bytes");
    return take;
  }
  if (nl == std::string_view::npos) {
    pending_.append(bytes);
    return take;
  }
  if (pending_.empty()) {
    parseChunkLine(bytes.substr(0, take));  // the common case: no copy
  } else {
    std::string line = std::move(pending_);  // parseChunkLine may start the trailers in pending_
    pending_.clear();
    line.append(bytes.data(), take);
    parseChunkLine(line);
  }
  return take;
}

// chunk-size [ chunk-ext ] CRLF, with chunk-size = 1*16HEXDIG and
// chunk-ext = *( ";" token [ "=" ( token / quoted-string ) ] ): RFC 9112 §7.1
// without its optional whitespace, which no client needs and a smuggler does.
void RequestFramer::parseChunkLine(std::string_view line) {
  if (line.size() < 2 || line[line.size() - 2] != '\r') {
    return fail(FramingError::kMalformed, "chunk size line does not end in CRLF");
  }
  std::string_view text = line.substr(0, line.size() - 2);
  size_t digits = 0;
  uint64_t size = 0;
  while (digits < text.size() && hexValue(text[digits]) >= 0) {
    size = (size << 4) | static_cast<uint64_t>(hexValue(text[digits]));
    if (++digits > kMaxChunkSizeDigits) {
      return fail(FramingError::kMalformed, "chunk size " + quote(text) + " has more than " +
                                                std::to_string(kMaxChunkSizeDigits) +
                                                " hex digits");
    }
  }
  if (digits == 0 || (digits < text.size() && text[digits] != ';')) {
    return fail(FramingError::kMalformed, "chunk size " + quote(text) + " is not plain hex");
  }
  std::string_view ext = text.substr(digits);
  size_t i = 0;
  auto token = [&] {
    size_t start = i;
    while (i < ext.size() && isToken(ext[i])) ++i;
    return i > start;
  };
  while (i < ext.size()) {
    bool ok = ext[i++] == ';' && token();
    if (ok && i < ext.size() && ext[i] == '=') {
      ++i;
      if (i < ext.size() && ext[i] == '"') {
        ++i;
        while (ok && i < ext.size() && ext[i] != '"') {
          unsigned char c = static_cast<unsigned char>(ext[i]);
          if (c == '\\') ++i;  // quoted-pair
          ok = i < ext.size() && (c == '\t' || c >= 0x20) && c != 0x7f;
          ++i;
        }
        ok = ok && i < ext.size();
        ++i;  // the closing quote
      } else {
        ok = token();
      }
    }
    if (!ok) return fail(FramingError::kMalformed, "malformed chunk extension " + quote(ext));
  }
  if (size > limits_.max_body_bytes - body_.size()) {
    return fail(FramingError::kBodyTooLarge, "request body too large");
  }
  if (size == 0) {
    pending_ = "\r\n";  // the last chunk's CRLF starts the trailer section's search
    state_ = State::kTrailers;
    return;
  }
  remaining_ = size;
  state_ = State::kChunkData;
}

size_t RequestFramer::feedTrailers(std::string_view bytes) {
  size_t end = 0;
  size_t limit = limits_.max_trailer_bytes + 2;
  size_t taken = appendUntilBlankLine(pending_, bytes, limit, end);
  if (end == std::string::npos) {
    if (pending_.size() >= limit) {
      fail(FramingError::kMalformed,
           "trailer section larger than " + std::to_string(limits_.max_trailer_bytes) + " bytes");
    }
    return taken;
  }
  // Trailers are checked and dropped: nothing of ours reads them.
  std::string problem = fieldLinesProblem(std::string_view(pending_).substr(2, end - 4), true);
  pending_.clear();
  if (!problem.empty()) {
    fail(FramingError::kMalformed, problem);
  } else {
    state_ = State::kDone;
  }
  return taken;
}

void RequestFramer::fail(FramingError error, std::string message) {
  error_ = error;
  message_ = std::move(message);
}

}  // namespace branchline::http
