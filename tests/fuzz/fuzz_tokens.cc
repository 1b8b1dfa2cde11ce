// fuzz_tokens: the agent's ingest token handling (agent/ingest/ingest_tokens.h)
// over arbitrary bytes. The first byte picks what the rest is:
//   even: the text of a token file (`ingest_tokens`);
//   odd:  an Authorization header value, checked against a fixed token set.
//
// Beyond "no crash", it checks the promises: a file that parses renders to
// text that parses to the same entries; the rendered file never holds a
// token; a header is accepted (kOk) only when its credential is exactly the
// known token, and a credential is never longer than the header or holds a space.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/ingest/ingest_tokens.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using branchline::agent::bearerCredential;
using branchline::agent::IngestTokens;
using branchline::agent::tokenId;

// A fixed, well-formed token and its file (sha256 of the token text).
constexpr std::string_view kToken =
    "blt_0a1b2c3d_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

// The file entry of kToken (its SHA-256), for the sources customer and lead.
const IngestTokens& knownTokens() {
  static const IngestTokens tokens = [] {
    auto parsed = IngestTokens::parse(
        "0a1b2c3d 1 customer,lead "
        "f9de429ddead532634ade7883f8a85175ef0c1920caa4ffdbe514e55cb0e576b\n");
    FUZZ_CHECK(parsed.isOk(), "the fixed token file parses");
    return *parsed;
  }();
  return tokens;
}

void fileInput(std::string_view text) {
  auto parsed = IngestTokens::parse(text);
  if (!parsed.isOk()) return;
  const std::string rendered = parsed->render();
  auto again = IngestTokens::parse(rendered);
  FUZZ_CHECK(again.isOk(), "a rendered token file parses");
  FUZZ_CHECK(again->tokens().size() == parsed->tokens().size(), "render keeps every entry");
  for (size_t i = 0; i < parsed->tokens().size(); ++i) {
    const auto& a = parsed->tokens()[i];
    const auto& b = again->tokens()[i];
    FUZZ_CHECK(a.id == b.id && a.created_unix == b.created_unix && a.sources == b.sources &&
                   a.hash == b.hash,
               "render then parse is the identity");
    FUZZ_CHECK(a.id.size() == 8 && !a.sources.empty(), "entries are well formed");
  }
  // A source name may hold the text "blt_", never a whole token (a token is
  // longer than a source name, and the hash field is hex only).
  for (size_t at = rendered.find("blt_"); at != std::string::npos;
       at = rendered.find("blt_", at + 1)) {
    FUZZ_CHECK(tokenId(std::string_view(rendered).substr(at, 77)).empty(),
               "the file never holds a token");
  }
}

void headerInput(std::string_view header) {
  const std::string_view credential = bearerCredential(header);
  FUZZ_CHECK(credential.size() < header.size() || credential.empty(),
             "the credential is part of the header");
  FUZZ_CHECK(credential.find(' ') == std::string_view::npos, "a credential has no space");
  const std::string_view id = tokenId(credential);
  FUZZ_CHECK(id.empty() || (id.size() == 8 && credential.size() == kToken.size()),
             "an id only comes from a well-formed token");
  std::string got_id;
  const auto verdict = knownTokens().check(header, "customer", &got_id);
  if (verdict == IngestTokens::Verdict::kOk || verdict == IngestTokens::Verdict::kWrongSource) {
    FUZZ_CHECK(got_id == "0a1b2c3d", "the id of the accepted token");
    FUZZ_CHECK(credential == kToken, "only the known token is accepted");
  }
  if (credential == kToken) {
    FUZZ_CHECK(verdict == IngestTokens::Verdict::kOk, "the known token is accepted");
  }
  if (header.empty()) FUZZ_CHECK(verdict == IngestTokens::Verdict::kMissing, "no header: 401");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    fileInput(rest);
  } else {
    headerInput(rest);
  }
  return 0;
}
