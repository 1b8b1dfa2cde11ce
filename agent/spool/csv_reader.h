// An RFC 4180 CSV reader for spool files: the first row names the fields, each
// later row becomes one record (an object of string values; an empty cell is
// an absent field). Quoted fields may hold commas, newlines and doubled quotes.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace branchline::agent {

struct CsvRow {
  size_t index = 0;                // 0-based among data rows (blank lines skipped)
  std::string_view text;           // the row as it appears in the file
  std::vector<std::string> cells;  // unquoted, doubled quotes undone
  size_t line = 0;                 // 1-based line where the row starts
};

// Calls `row` for every data row. kInvalidArgument when the file is broken as a
// whole (no header, empty or duplicate header names, an unterminated quote,
// text after a closing quote), naming the line. Rows with another cell count
// than the header are passed on; the caller rejects them.
Status readCsv(std::string_view text, std::vector<std::string>& header,
               const std::function<void(const CsvRow&)>& row);

}  // namespace branchline::agent
