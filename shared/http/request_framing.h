// Strict HTTP/1.1 request framing (RFC 9112): where a request's head ends,
// how long its body is, and the chunked coding. The Server feeds it the bytes
// of one connection; nothing here touches a socket, so the fuzz target
// (tests/fuzz/fuzz_http_framing.cc) runs exactly the code the server runs.
//
// Guarantees: memory held is bounded by the limits (head, one chunk line,
// trailers, body), whatever the peer sends; any ambiguity in framing (obs-fold,
// bare CR or LF, a Transfer-Encoding other than exactly `chunked`, Content-Length
// with Transfer-Encoding, a Content-Length that is not one decimal number, a
// chunk size that is not plain hex) is an error, after which the connection's
// remaining bytes cannot be trusted to start a request (RFC 9112 §6.3): the
// caller answers and closes.
#pragma once

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/message.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace branchline::http {

// The Server fills the first two from its ServerOptions, which own their defaults.
struct FramingLimits {
  size_t max_header_bytes = 0;  // request line and fields, with the blank line
  size_t max_body_bytes = 0;    // decoded body
  // One chunk-size line with its extensions, CRLF included (RFC 9112 §7.1.1
  // lets a recipient bound extensions; real clients send none).
  size_t max_chunk_line_bytes = 1024;
  size_t max_trailer_bytes = 16 << 10;  // the trailer section after the last chunk
};

enum class FramingError {
  kNone,
  kMalformed,       // 400
  kHeaderTooLarge,  // 431
  kBodyTooLarge,    // 413
};

// One request, fed in pieces. Typical use:
//   RequestFramer f(limits);
//   while (!f.failed() && !f.done()) { n = f.feed(bytes); drop n bytes; ... }
// feed() stops after the head (headDone() turns true: look at head(), e.g. for
// Expect: 100-continue) and after the body; bytes past the request are left
// unconsumed for the next one (pipelining).
class RequestFramer {
 public:
  explicit RequestFramer(const FramingLimits& limits) : limits_(limits) {}

  // Consumes a prefix of `bytes` and returns its length. Consumes nothing once
  // done() or failed().
  size_t feed(std::string_view bytes);

  bool headDone() const { return state_ > State::kHead; }
  bool done() const { return state_ == State::kDone; }
  bool failed() const { return error_ != FramingError::kNone; }
  FramingError error() const { return error_; }
  const std::string& errorMessage() const { return message_; }  // "chunk size `0x10` is not ..."

  // REQUIRES: headDone(). Method, target, version and fields as parsed.
  const boost::beast::http::request<boost::beast::http::empty_body>& head() const { return head_; }
  // REQUIRES: headDone(). False when the request has no body to read.
  bool hasBody() const { return chunked_ || content_length_ > 0; }
  // REQUIRES: done(). The decoded body; moved out once.
  std::string takeBody() { return std::move(body_); }

 private:
  enum class State { kHead, kLength, kChunkLine, kChunkData, kChunkDataEnd, kTrailers, kDone };

  size_t feedHead(std::string_view bytes);
  size_t feedChunkLine(std::string_view bytes);
  size_t feedTrailers(std::string_view bytes);
  void parseHead(std::string_view head);
  void parseChunkLine(std::string_view line);
  void fail(FramingError error, std::string message);

  FramingLimits limits_;
  State state_ = State::kHead;
  FramingError error_ = FramingError::kNone;
  std::string message_;
  std::string pending_;  // the head, a chunk line or the trailers, until complete
  boost::beast::http::request<boost::beast::http::empty_body> head_;
  bool chunked_ = false;
  uint64_t content_length_ = 0;
  uint64_t remaining_ = 0;  // of the Content-Length body or of the current chunk
  std::string body_;
};

}  // namespace branchline::http
