// Parsers for HTML form bodies (application/x-www-form-urlencoded and
// multipart/form-data) that turn one request body into one record: an object
// of string values, fed to RecordIntake::addObject like a parsed JSON object.
// Pure functions over bytes already read; no I/O.
//
// Both parsers take what a browser sends and refuse what is ambiguous: a field
// given twice, an empty name, a name or value that is not UTF-8 after
// decoding. An empty value means the field is absent (not added), as an empty
// CSV cell does. Error messages name the field (sanitized, at most 64 bytes)
// and never quote a value: values are personal data. Work is linear in the
// body whatever it holds.
#pragma once

#include <boost/json/fwd.hpp>
#include <cstddef>
#include <string_view>

#include "shared/core/status.h"

namespace branchline::agent {

// Bounds on one form body. A body past any of them is refused with
// kResourceExhausted (HTTP 413); malformed input is kInvalidArgument (400).
struct FormLimits {
  size_t max_fields = 256;            // name=value pairs or parts, empty ones included
  size_t max_name_bytes = 256;        // one field name, decoded
  size_t max_value_bytes = 64 << 10;  // one value, decoded (the caller passes http.max_field_bytes)
  size_t max_part_header_bytes = 8 << 10;  // multipart: one part's header block
};

// application/x-www-form-urlencoded (WHATWG URL standard): '&'-separated
// name=value pairs, '+' is a space, %XX is a byte; a pair without '=' has the
// value "" (so it is absent) and empty pairs ("a=1&&b=2") are skipped. Unlike
// WHATWG, a '%' not followed by two hex digits is an error, not kept as is.
//
// `out` is cleared first. On error it may hold some fields: the caller
// discards it.
Status parseUrlEncodedForm(std::string_view body, const FormLimits& limits,
                           boost::json::object& out);

// multipart/form-data (RFC 7578 over RFC 2046). `content_type_header` is the
// whole Content-Type value as sent: multipart/form-data with a boundary
// parameter (token or quoted string, 1-70 characters of RFC 2046 bchars).
//
// Each part needs `Content-Disposition: form-data; name="..."`; the name is
// taken as sent between the quotes (browsers send '"', CR and LF in names as
// %22, %0D, %0A; these are not decoded). A part with a filename (a file
// upload) is refused, and so is a part whose Content-Type is other than
// text/plain with charset utf-8 or none, or whose Content-Transfer-Encoding is
// other than 7bit, 8bit or binary. Other part headers are ignored.
//
// Line endings are CRLF as the RFC requires; a body whose first boundary line
// ends in a bare LF is read with LF line endings throughout (a body mixing the
// two is refused). The preamble before the first boundary and the epilogue
// after the closing one are ignored; a body without the closing boundary is
// an error. A value keeps its bytes exactly, CRLFs included.
//
// `out` is cleared first. On error it may hold some fields: the caller
// discards it.
Status parseMultipartForm(std::string_view content_type_header, std::string_view body,
                          const FormLimits& limits, boost::json::object& out);

}  // namespace branchline::agent
