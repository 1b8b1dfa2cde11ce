// fuzz_csv: the spool's CSV reader (agent/spool/csv_reader.h) over arbitrary bytes.
//
// Beyond "no crash", it checks the reader's promises: a refusal is
// kInvalidArgument; an accepted file has a header of non-empty, unique,
// trimmed names; rows come with consecutive indexes and strictly increasing
// start lines, each within the file, their text a piece of the input and their
// cells no more than its commas allow; the cells hold no more bytes than the
// input (output is bounded by input); and writing the header and rows back as
// RFC 4180 (every cell quoted, quotes doubled) reads back to the same header
// and the same rows, cell for cell.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/spool/csv_reader.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

using branchline::Code;
using branchline::Status;
using branchline::agent::CsvRow;

struct Parsed {
  Status status;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

Parsed parse(std::string_view text) {
  Parsed p;
  p.status = branchline::agent::readCsv(text, p.header, [&](const CsvRow& row) {
    FUZZ_CHECK(row.index == p.rows.size(), "rows are numbered 0, 1, 2, ...");
    FUZZ_CHECK(row.text.data() >= text.data() &&
                   row.text.data() + row.text.size() <= text.data() + text.size(),
               "a row's text is a piece of the input");
    size_t commas = 0;
    for (char c : row.text) commas += c == ',';
    FUZZ_CHECK(!row.cells.empty() && row.cells.size() <= commas + 1,
               "a row has at least one cell and no more than its commas allow");
    p.rows.push_back(row.cells);
  });
  return p;
}

// RFC 4180 with every cell quoted: nothing in a cell can end it early.
std::string render(const Parsed& p) {
  std::string out;
  auto line = [&out](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i > 0) out += ',';
      out += '"';
      for (char c : cells[i]) {
        if (c == '"') out += '"';
        out += c;
      }
      out += '"';
    }
    out += '\n';
  };
  line(p.header);
  for (const auto& row : p.rows) line(row);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  size_t newlines = 0;
  for (char c : text) newlines += c == '\n';
  std::vector<std::string> header;
  size_t last_line = 0, cell_bytes = 0;
  const Status status = branchline::agent::readCsv(text, header, [&](const CsvRow& row) {
    FUZZ_CHECK(row.line > last_line && row.line <= newlines + 1,
               "rows start on increasing lines within the file");
    last_line = row.line;
    for (const std::string& cell : row.cells) cell_bytes += cell.size();
  });
  if (!status.isOk()) {
    FUZZ_CHECK(status.code() == Code::kInvalidArgument, "a refusal is a broken file");
    FUZZ_CHECK(!parse(text).status.isOk(), "the same input is refused every time");
    return 0;
  }
  FUZZ_CHECK(!header.empty(), "an accepted file has a header");
  std::set<std::string> names;
  for (const std::string& name : header) {
    FUZZ_CHECK(!name.empty(), "header names are not empty");
    FUZZ_CHECK(
        name.front() != ' ' && name.front() != '\t' && name.back() != ' ' && name.back() != '\t',
        "header names are trimmed");
    FUZZ_CHECK(names.insert(name).second, "header names are unique");
    cell_bytes += name.size();
  }
  FUZZ_CHECK(cell_bytes <= size, "the cells hold no more bytes than the input");

  const Parsed first = parse(text);
  FUZZ_CHECK(first.status.isOk() && first.header == header, "the parse is deterministic");
  const Parsed again = parse(render(first));
  FUZZ_CHECK(again.status.isOk(), "a written file reads back");
  FUZZ_CHECK(again.header == first.header, "the header survives a write and read");
  FUZZ_CHECK(again.rows == first.rows, "every row survives a write and read, cell for cell");
  return 0;
}
