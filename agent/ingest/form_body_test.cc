#include "agent/ingest/form_body.h"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <string>
#include <string_view>

namespace branchline::agent {
namespace {

namespace json = boost::json;

constexpr std::string_view kCt = "multipart/form-data; boundary=XyZ";

// The outcome of a parse as one comparable value: the fields, or the error.
struct Parsed {
  Status status;
  json::object fields;
};

Parsed urlencoded(std::string_view body, const FormLimits& limits = {}) {
  Parsed p;
  p.status = parseUrlEncodedForm(body, limits, p.fields);
  return p;
}

Parsed multipart(std::string_view body, std::string_view content_type = kCt,
                 const FormLimits& limits = {}) {
  Parsed p;
  p.status = parseMultipartForm(content_type, body, limits, p.fields);
  return p;
}

// One part as a browser writes it, CRLF line endings, then the delimiter's
// line break is added by form().
std::string part(std::string_view name, std::string_view value,
                 std::string_view extra_headers = "") {
  return "Content-Disposition: form-data; name=\"" + std::string(name) + "\"\r\n" +
         std::string(extra_headers) + "\r\n" + std::string(value);
}

// A body with boundary XyZ around `parts`.
std::string form(std::initializer_list<std::string> parts) {
  std::string body;
  for (const auto& p : parts) body += "--XyZ\r\n" + p + "\r\n";
  return body + "--XyZ--\r\n";
}

void expectOk(const Parsed& p, const json::object& expected) {
  ASSERT_TRUE(p.status.isOk()) << p.status.toString();
  EXPECT_EQ(p.fields, expected) << json::serialize(p.fields);
}

void expectError(const Parsed& p, Code code, std::string_view message_part) {
  ASSERT_FALSE(p.status.isOk()) << json::serialize(p.fields);
  EXPECT_EQ(p.status.code(), code) << p.status.toString();
  EXPECT_NE(p.status.message().find(message_part), std::string::npos) << p.status.toString();
}

TEST(UrlEncodedForm, PlainFields) {
  expectOk(urlencoded("name=Ada&email=ada@example.com&city=London"),
           {{"name", "Ada"}, {"email", "ada@example.com"}, {"city", "London"}});
  expectOk(urlencoded(""), {});
}

TEST(UrlEncodedForm, DecodesPlusAndPercentEscapes) {
  expectOk(
      urlencoded("full+name=Ada+Lovelace&city=S%C3%A9te&note=a%20b%2Bc%26d%3De&x%41=%7e"),
      {{"full name", "Ada Lovelace"}, {"city", "S\xC3\xA9te"}, {"note", "a b+c&d=e"}, {"xA", "~"}});
  // Only the first '=' splits; later ones belong to the value.
  expectOk(urlencoded("q=a=b"), {{"q", "a=b"}});
}

TEST(UrlEncodedForm, EmptyValueIsAbsentAndEmptyPairsAreSkipped) {
  expectOk(urlencoded("a=1&b=&c&&d=2&"), {{"a", "1"}, {"d", "2"}});
  // Absent fields still count as given: a second `b` is a duplicate.
  expectError(urlencoded("b=&b=1"), Code::kInvalidArgument, "field `b` is given twice");
}

TEST(UrlEncodedForm, DuplicateNameIsRefusedAfterDecoding) {
  expectError(urlencoded("email=a@x&email=b@x"), Code::kInvalidArgument,
              "field `email` is given twice");
  expectError(urlencoded("a+b=1&a%20b=2"), Code::kInvalidArgument, "field `a b` is given twice");
}

TEST(UrlEncodedForm, EmptyNameIsRefused) {
  expectError(urlencoded("=secret"), Code::kInvalidArgument, "empty name");
}

TEST(UrlEncodedForm, BadEscapesAreRefusedWithoutQuotingTheValue) {
  Parsed bad = urlencoded("token=abc%zzSECRET");
  expectError(bad, Code::kInvalidArgument, "field `token`: the value has a '%'");
  EXPECT_EQ(bad.status.message().find("SECRET"), std::string::npos);
  expectError(urlencoded("a=%4"), Code::kInvalidArgument, "field `a`");
  expectError(urlencoded("a=%"), Code::kInvalidArgument, "field `a`");
  expectError(urlencoded("a%g1=1"), Code::kInvalidArgument, "the name has a '%'");
}

TEST(UrlEncodedForm, InvalidUtf8IsRefusedNamingTheField) {
  Parsed value = urlencoded("city=S%E9te");  // Latin-1 é
  expectError(value, Code::kInvalidArgument, "field `city`: the value is not valid UTF-8");
  // An overlong encoding of '/' and a lone surrogate are not UTF-8 either.
  expectError(urlencoded("a=%C0%AF"), Code::kInvalidArgument, "not valid UTF-8");
  expectError(urlencoded("a=%ED%A0%80"), Code::kInvalidArgument, "not valid UTF-8");
  Parsed name = urlencoded("n%FFme=1");
  expectError(name, Code::kInvalidArgument, "the name is not valid UTF-8");
  // The name is shown sanitized: the bad byte becomes U+FFFD.
  EXPECT_NE(name.status.message().find("n\xEF\xBF\xBDme"), std::string::npos);
}

TEST(UrlEncodedForm, LimitsAreResourceExhausted) {
  FormLimits limits{.max_fields = 3, .max_name_bytes = 8, .max_value_bytes = 5};
  expectOk(urlencoded("a=12345&b=&c=%41%42%43%44%45", limits), {{"a", "12345"}, {"c", "ABCDE"}});
  expectError(urlencoded("a=1&b=2&c=3&d=4", limits), Code::kResourceExhausted,
              "more than 3 fields");
  expectError(urlencoded("a=123456", limits), Code::kResourceExhausted,
              "field `a`: the value is longer than 5 bytes");
  // Decoded length counts: six escapes decode to six bytes.
  expectError(urlencoded("a=%41%42%43%44%45%46", limits), Code::kResourceExhausted,
              "longer than 5");
  expectError(urlencoded("abcdefghi=1", limits), Code::kResourceExhausted,
              "the name is longer than 8 bytes");
}

TEST(UrlEncodedForm, LongNamesAreTruncatedAndSanitizedInMessages) {
  std::string name(300, 'n');
  Parsed p = urlencoded(name + "=1");
  expectError(p, Code::kResourceExhausted, "the name is longer than 256 bytes");
  EXPECT_NE(p.status.message().find("`" + std::string(64, 'n') + "...`"), std::string::npos);
  EXPECT_EQ(p.status.message().find(std::string(65, 'n')), std::string::npos);
  // A newline in a name cannot forge a log line.
  Parsed nl = urlencoded("a%0Ab=1&a%0Ab=2");
  expectError(nl, Code::kInvalidArgument, "field `a?b` is given twice");
}

TEST(UrlEncodedForm, HostileBodiesStayLinear) {
  // Millions of separators: skipped in one pass, no field, no error.
  expectOk(urlencoded(std::string(8 << 20, '&')), {});
  // Millions of pairs stop at max_fields.
  std::string pairs;
  for (int i = 0; i < 1000000; ++i) pairs += "a" + std::to_string(i) + "=1&";
  expectError(urlencoded(pairs), Code::kResourceExhausted, "more than 256 fields");
  // One huge value stops being decoded past the limit.
  std::string escapes;
  for (int i = 0; i < (1 << 20); ++i) escapes += "%41";
  expectError(urlencoded("v=" + escapes), Code::kResourceExhausted, "longer than 65536 bytes");
}

TEST(MultipartForm, FieldsWithQuotedAndUnquotedBoundary) {
  std::string body = form({part("name", "Ada"), part("email", "ada@example.com")});
  json::object expected{{"name", "Ada"}, {"email", "ada@example.com"}};
  expectOk(multipart(body), expected);
  expectOk(multipart(body, "multipart/form-data; boundary=\"XyZ\""), expected);
  expectOk(multipart(body, "Multipart/Form-Data;charset=utf-8;BOUNDARY=XyZ"), expected);

  // Browser-style boundary with characters that need quoting.
  std::string spaced = "--a b:c\r\n" + part("x", "1") + "\r\n--a b:c--";
  expectOk(multipart(spaced, "multipart/form-data; boundary=\"a b:c\""), {{"x", "1"}});
}

TEST(MultipartForm, ContentTypeHeaderIsChecked) {
  std::string body = form({part("x", "1")});
  expectError(multipart(body, "multipart/mixed; boundary=XyZ"), Code::kInvalidArgument,
              "not multipart/form-data");
  expectError(multipart(body, "multipart/form-data"), Code::kInvalidArgument, "without a boundary");
  expectError(multipart(body, "multipart/form-data; boundary=\"\""), Code::kInvalidArgument,
              "1 to 70");
  expectError(multipart(body, "multipart/form-data; boundary=\"" + std::string(71, 'b') + "\""),
              Code::kInvalidArgument, "1 to 70");
  expectError(multipart(body, "multipart/form-data; boundary=\"ab \""), Code::kInvalidArgument,
              "not ending in a space");
  expectError(multipart(body, "multipart/form-data; boundary=XyZ; boundary=Q"),
              Code::kInvalidArgument, "`boundary` is given twice");
  expectError(multipart(body, "multipart/form-data; boundary=\"XyZ"), Code::kInvalidArgument,
              "not closed");
}

TEST(MultipartForm, EmptyValueIsAbsent) {
  expectOk(multipart(form({part("a", ""), part("b", "2")})), {{"b", "2"}});
  expectOk(multipart("--XyZ--"), {});
}

TEST(MultipartForm, DuplicateAndEmptyNamesAreRefused) {
  expectError(multipart(form({part("email", "a@x"), part("email", "b@x")})), Code::kInvalidArgument,
              "part 2: field `email` is given twice");
  expectError(multipart(form({part("", "x")})), Code::kInvalidArgument, "empty name");
  expectError(multipart(form({"Content-Disposition: form-data\r\n\r\nx"})), Code::kInvalidArgument,
              "no name parameter");
  expectError(multipart(form({"Content-Type: text/plain\r\n\r\nx"})), Code::kInvalidArgument,
              "no Content-Disposition");
  expectError(multipart(form({"Content-Disposition: attachment; name=x\r\n\r\nx"})),
              Code::kInvalidArgument, "not form-data");
}

TEST(MultipartForm, UnquotedNameAndOtherHeadersAreAccepted) {
  expectOk(multipart(form({"content-disposition: FORM-DATA;name=city\r\n"
                           "X-Ignored: yes\r\n"
                           "Content-Type: text/plain; charset=UTF-8\r\n"
                           "Content-Transfer-Encoding: 8bit\r\n\r\n"
                           "S\xC3\xA9te"})),
           {{"city", "S\xC3\xA9te"}});
}

TEST(MultipartForm, FileUploadIsRefused) {
  Parsed p = multipart(
      form({part("photo", "\x89PNG...", "Content-Type: image/png\r\n").replace(0, 0, "")}));
  // The same part with a filename: refused for the filename, whatever its type.
  std::string upload =
      "Content-Disposition: form-data; name=\"photo\"; filename=\"me.txt\"\r\n"
      "Content-Type: text/plain\r\n\r\nhello";
  expectError(multipart(form({part("a", "1"), upload})), Code::kInvalidArgument,
              "part 2: field `photo`: file uploads are not accepted");
  expectError(multipart(form({"Content-Disposition: form-data; filename*=UTF-8''x; name=f\r\n"
                              "\r\nhello"})),
              Code::kInvalidArgument, "file uploads are not accepted");
  EXPECT_FALSE(p.status.isOk());
}

TEST(MultipartForm, NonTextContentTypeIsRefused) {
  expectError(multipart(form({part("photo", "\x89PNG", "Content-Type: image/png\r\n")})),
              Code::kInvalidArgument, "field `photo`: only text/plain");
  expectError(multipart(form({part("a", "x", "Content-Type: text/plain; charset=iso-8859-1\r\n")})),
              Code::kInvalidArgument, "only text/plain (charset utf-8 or none)");
  expectError(multipart(form({part("a", "eA==", "Content-Transfer-Encoding: base64\r\n")})),
              Code::kInvalidArgument, "Content-Transfer-Encoding must be 7bit, 8bit or binary");
  expectError(multipart(form({part("a", "x",
                                   "Content-Type: text/plain\r\n"
                                   "Content-Type: text/plain\r\n")})),
              Code::kInvalidArgument, "`Content-Type` is given twice");
}

TEST(MultipartForm, MissingCloseBoundaryIsRefused) {
  std::string body = "--XyZ\r\n" + part("a", "1") + "\r\n--XyZ\r\n" + part("b", "2");
  expectError(multipart(body), Code::kInvalidArgument,
              "part 2: the body ends before the closing boundary");
  expectError(multipart("--XyZ\r\n" + part("a", "1")), Code::kInvalidArgument,
              "part 1: the body ends before the closing boundary");
  expectError(multipart("no boundary at all"), Code::kInvalidArgument, "no boundary line");
}

TEST(MultipartForm, BoundaryLikeTextInsideAValueIsKept) {
  // Not at a line start, a partial boundary at a line start, another boundary.
  std::string value = "a --XyZ b\r\n--XyQ\r\n--Xy\r\n-XyZ\r\n\r\n--other--";
  expectOk(multipart(form({part("note", value)})), {{"note", value}});
  // A line starting with the full boundary but not ending there is refused,
  // never read as two fields.
  expectError(multipart(form({part("note", "x\r\n--XyZabc\r\ny")})), Code::kInvalidArgument,
              "text follows the boundary on its line");
}

TEST(MultipartForm, ValueKeepsCrLfAndTrailingWhitespace) {
  std::string value = "line 1\r\nline 2\r\n\r\n  ";
  expectOk(multipart(form({part("message", value)})), {{"message", value}});
  // A leading CRLF in the value is content too.
  expectOk(multipart(form({part("m", "\r\nx")})), {{"m", "\r\nx"}});
}

TEST(MultipartForm, PreambleAndEpilogueAreIgnored) {
  std::string body = "This is the preamble.\r\n-- XyZ is not a boundary\r\n--XyZ\r\n" +
                     part("a", "1") + "\r\n--XyZ--  \r\nepilogue\r\n--XyZ\r\n" + part("b", "2");
  expectOk(multipart(body), {{"a", "1"}});
}

TEST(MultipartForm, LfOnlyBodiesAreReadWithLfThroughout) {
  std::string body =
      "--XyZ\nContent-Disposition: form-data; name=\"a\"\n\nline 1\r\nline 2\n--XyZ\n"
      "Content-Disposition: form-data; name=\"b\"\n\n2\n--XyZ--\n";
  // In an LF body the CR before a line break is the value's own.
  expectOk(multipart(body), {{"a", "line 1\r\nline 2"}, {"b", "2"}});
  // Header lines that end in CRLF in an LF body: refused, not misread.
  std::string mixed = "--XyZ\nContent-Disposition: form-data; name=\"a\"\r\n\n1\n--XyZ--\n";
  expectError(multipart(mixed), Code::kInvalidArgument, "mixes line endings");
}

TEST(MultipartForm, MalformedPartsAreRefused) {
  expectError(multipart(form({"Content-Disposition: form-data; name=a"})), Code::kInvalidArgument,
              "no blank line after its headers");
  expectError(multipart(form({"Content-Disposition form-data\r\n\r\nx"})), Code::kInvalidArgument,
              "not `Name: value`");
  expectError(multipart(form({"Content-Disposition: form-data;\r\n name=a\r\n\r\nx"})),
              Code::kInvalidArgument, "folded");
  expectOk(multipart(form({part("a", "1")}) + "an epilogue"), {{"a", "1"}});
  expectError(multipart("--XyZ junk\r\n"), Code::kInvalidArgument, "first boundary line");
}

TEST(MultipartForm, InvalidUtf8IsRefusedNamingTheField) {
  expectError(multipart(form({part("city", "S\xE9te")})), Code::kInvalidArgument,
              "part 1: field `city`: the value is not valid UTF-8 (at byte 1");
  expectError(multipart(form({part("c\xFFty", "x")})), Code::kInvalidArgument,
              "the name is not valid UTF-8");
}

TEST(MultipartForm, LimitsAreResourceExhausted) {
  FormLimits limits{
      .max_fields = 2, .max_name_bytes = 4, .max_value_bytes = 3, .max_part_header_bytes = 64};
  expectOk(multipart(form({part("a", "123"), part("b", "")}), kCt, limits), {{"a", "123"}});
  expectError(multipart(form({part("a", "1"), part("b", "2"), part("c", "3")}), kCt, limits),
              Code::kResourceExhausted, "part 3: the form has more than 2 fields");
  expectError(multipart(form({part("a", "1234")}), kCt, limits), Code::kResourceExhausted,
              "field `a`: the value is longer than 3 bytes");
  expectError(multipart(form({part("abcde", "1")}), kCt, limits), Code::kResourceExhausted,
              "the name is longer than 4 bytes");
  std::string padding = "X-Pad: " + std::string(60, 'p') + "\r\n";
  expectError(multipart(form({part("a", "1", padding)}), kCt, limits), Code::kResourceExhausted,
              "headers are longer than 64 bytes");
  // A part with no blank line and a huge body: reported as over the header
  // limit after reading at most that much.
  expectError(multipart(form({"Content-Disposition: x" + std::string(1 << 20, 'h')}), kCt, limits),
              Code::kResourceExhausted, "headers are longer than 64 bytes");
}

TEST(MultipartForm, HostileBodiesStayLinear) {
  expectError(multipart(std::string(8 << 20, 'x')), Code::kInvalidArgument, "no boundary line");
  // Many near-boundaries: each costs a compare of at most the boundary.
  std::string near;
  for (int i = 0; i < 200000; ++i) near += "\r\n--XyZ-\r\n--Xy";
  expectError(multipart("--XyZ\r\n" + part("a", near)), Code::kInvalidArgument,
              "text follows the boundary");
  std::string parts = "--XyZ\r\n";
  for (int i = 0; i < 100000; ++i) parts += part("a" + std::to_string(i), "1") + "\r\n--XyZ\r\n";
  expectError(multipart(parts), Code::kResourceExhausted, "more than 256 fields");
}

}  // namespace
}  // namespace branchline::agent
