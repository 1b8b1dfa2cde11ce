// fuzz_http_framing: the agent's HTTP request framing (shared/http/
// request_framing.h) over arbitrary bytes: request heads, Content-Length and
// chunked bodies, trailers and pipelined requests, fed as the Server feeds
// them (a framer per request; the bytes it leaves start the next one).
//
// Beyond "no crash", it checks the framer's promises: the outcome (every
// request's method, target, version, keep-alive, Content-Type and body, or the
// error that ends the connection) is the same whether the bytes come at once,
// one by one or in pieces of any size; no body exceeds max_body_bytes; a
// request framed as bodiless has an empty body.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shared/http/request_framing.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using branchline::http::FramingError;
using branchline::http::FramingLimits;
using branchline::http::RequestFramer;

constexpr FramingLimits kLimits{.max_header_bytes = 512,
                                .max_body_bytes = 4096,
                                .max_chunk_line_bytes = 64,
                                .max_trailer_bytes = 128};
constexpr int kMaxRequests = 16;

// Feeds `input` in pieces of `piece` bytes and describes what came out.
std::string frame(std::string_view input, size_t piece) {
  std::string out;
  std::string buffer;  // what the server's read buffer holds
  size_t next = 0;
  std::optional<RequestFramer> framer(kLimits);
  for (int requests = 0; requests < kMaxRequests;) {
    if (buffer.empty()) {
      if (next >= input.size()) break;  // the peer closed mid-request (or between requests)
      std::string_view more = input.substr(next, piece);
      buffer.append(more);
      next += more.size();
    }
    size_t used = framer->feed(buffer);
    FUZZ_CHECK(used <= buffer.size(), "feed consumes only what it was given");
    buffer.erase(0, used);
    if (framer->failed()) {
      FUZZ_CHECK(framer->error() != FramingError::kNone, "a failure names its kind");
      out += "error " + std::to_string(static_cast<int>(framer->error())) + " " +
             framer->errorMessage();
      break;
    }
    if (!framer->done()) continue;
    const auto& head = framer->head();
    bool has_body = framer->hasBody();
    std::string body = framer->takeBody();
    FUZZ_CHECK(body.size() <= kLimits.max_body_bytes, "bodies stay within max_body_bytes");
    FUZZ_CHECK(has_body || body.empty(), "a bodiless request has no body");
    out += std::string(head.method_string()) + " " + std::string(head.target()) + " " +
           std::to_string(head.version()) + (head.keep_alive() ? " keep" : " close") + " [" +
           std::string(head[boost::beast::http::field::content_type]) + "] " +
           std::to_string(body.size()) + ":" + body + "\n";
    framer.emplace(kLimits);
    ++requests;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string whole = frame(input, input.size() + 1);
  FUZZ_CHECK(frame(input, 1) == whole, "byte-by-byte framing matches framing at once");
  size_t piece = size == 0 ? 2 : 2 + data[0] % 61;
  FUZZ_CHECK(frame(input, piece) == whole, "framing in pieces matches framing at once");
  return 0;
}
