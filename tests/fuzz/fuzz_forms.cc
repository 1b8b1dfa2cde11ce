// fuzz_forms: the HTML form body parsers (agent/ingest/form_body.h) over
// arbitrary bytes. The first byte picks the parser: even, url-encoded (the
// rest is the body); odd, multipart (the rest is `<Content-Type value>\n<body>`).
//
// Beyond "no crash", it checks the parsers' promises on every accepted body:
// at most max_fields fields, every name non-empty and within max_name_bytes,
// every value a non-empty string (an empty one is absent) within
// max_value_bytes; and every refusal is kInvalidArgument or kResourceExhausted.
#include <boost/json.hpp>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/ingest/form_body.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using branchline::Code;
using branchline::agent::FormLimits;

constexpr FormLimits kLimits{
    .max_fields = 16, .max_name_bytes = 32, .max_value_bytes = 256, .max_part_header_bytes = 256};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  boost::json::object out;
  branchline::Status status;
  if (data[0] % 2 == 0) {
    status = branchline::agent::parseUrlEncodedForm(rest, kLimits, out);
  } else {
    const size_t nl = rest.find('\n');
    const std::string_view type = rest.substr(0, nl);
    const std::string_view body = nl == std::string_view::npos ? "" : rest.substr(nl + 1);
    status = branchline::agent::parseMultipartForm(type, body, kLimits, out);
  }
  if (!status.isOk()) {
    FUZZ_CHECK(status.code() == Code::kInvalidArgument || status.code() == Code::kResourceExhausted,
               "a refusal is a bad form or a limit");
    return 0;
  }
  FUZZ_CHECK(out.size() <= kLimits.max_fields, "at most max_fields fields");
  for (const auto& [name, value] : out) {
    FUZZ_CHECK(!name.empty() && name.size() <= kLimits.max_name_bytes, "names are bounded");
    FUZZ_CHECK(value.is_string(), "values are strings");
    FUZZ_CHECK(!value.as_string().empty(), "an empty value is absent");
    FUZZ_CHECK(value.as_string().size() <= kLimits.max_value_bytes, "values are bounded");
  }
  return 0;
}
