#include "shared/http/request_framing.h"

#include <gtest/gtest.h>

#include <string>

namespace branchline::http {
namespace {

const FramingLimits kLimits{.max_header_bytes = 16 << 10, .max_body_bytes = 1 << 20};

// Feeds all of `bytes` (one request) and returns the framer, done or failed.
RequestFramer frameOne(std::string_view bytes, FramingLimits limits = kLimits) {
  RequestFramer framer(limits);
  while (!bytes.empty() && !framer.done() && !framer.failed()) {
    bytes.remove_prefix(framer.feed(bytes));
  }
  return framer;
}

TEST(RequestFramerTest, StopsAfterTheHeadThenAfterTheBodyLeavingTheNextRequest) {
  std::string bytes = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
  RequestFramer framer(kLimits);
  size_t used = framer.feed(bytes);
  EXPECT_TRUE(framer.headDone());
  EXPECT_FALSE(framer.done());
  EXPECT_EQ(framer.head().target(), "/a");
  used += framer.feed(std::string_view(bytes).substr(used));
  ASSERT_TRUE(framer.done());
  EXPECT_EQ(framer.takeBody(), "abc");
  EXPECT_EQ(bytes.substr(used), "GET /b HTTP/1.1\r\n\r\n");
}

TEST(RequestFramerTest, ChunkedBodyIsDecodedAcrossAnySplit) {
  std::string bytes =
      "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=\"y\"\r\nabc\r\n"
      "10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
  for (size_t piece = 1; piece <= bytes.size(); ++piece) {
    RequestFramer framer(kLimits);
    for (size_t at = 0; at < bytes.size() && !framer.done() && !framer.failed();) {
      std::string_view part = std::string_view(bytes).substr(at, piece);
      size_t used = 0;
      while (used < part.size() && !framer.done() && !framer.failed()) {
        used += framer.feed(part.substr(used));
      }
      at += used;
    }
    ASSERT_TRUE(framer.done()) << piece << ": " << framer.errorMessage();
    EXPECT_EQ(framer.takeBody(), "abc0123456789abcdef") << piece;
  }
}

TEST(RequestFramerTest, LimitsAreKindsOfError) {
  FramingLimits small{.max_header_bytes = 64, .max_body_bytes = 8};
  auto head = frameOne("GET / HTTP/1.1\r\nX: " + std::string(100, 'a') + "\r\n\r\n", small);
  EXPECT_EQ(head.error(), FramingError::kHeaderTooLarge);
  auto length = frameOne("POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n", small);
  EXPECT_EQ(length.error(), FramingError::kBodyTooLarge);
  // A chunk's declared size counts before its data arrives.
  auto chunk =
      frameOne("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n4\r\n", small);
  EXPECT_EQ(chunk.error(), FramingError::kBodyTooLarge);
  auto line =
      frameOne("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;" + std::string(2000, 'e'));
  EXPECT_EQ(line.error(), FramingError::kMalformed);
  EXPECT_NE(line.errorMessage().find("longer than 1024 bytes"), std::string::npos);
}

TEST(RequestFramerTest, TheLargestChunkSizeIsSixteenHexDigits) {
  FramingLimits limits = kLimits;
  limits.max_body_bytes = 16;
  auto ok = frameOne(
      "POST / HTTP/1.1\r\nTransfer-Encoding: "
      "chunked\r\n\r\n000000000000000A\r\n0123456789\r\n0\r\n\r\n",
      limits);
  EXPECT_TRUE(ok.done()) << ok.errorMessage();
  auto huge = frameOne("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n");
  EXPECT_EQ(huge.error(), FramingError::kBodyTooLarge);
  auto longer =
      frameOne("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n");
  EXPECT_EQ(longer.error(), FramingError::kMalformed);
}

}  // namespace
}  // namespace branchline::http
