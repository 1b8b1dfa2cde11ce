#include "agent/spool/csv_reader.h"

#include <set>

namespace branchline::agent {
namespace {

// Reads one record starting at `pos`; advances `pos` past its line end and
// `line` past the newlines it consumed (quoted cells may span lines).
Status readRecord(std::string_view text, size_t& pos, size_t& line,
                  std::vector<std::string>& cells) {
  cells.clear();
  const size_t n = text.size();
  while (true) {
    std::string cell;
    if (pos < n && text[pos] == '"') {
      const size_t start_line = line;
      ++pos;
      while (true) {
        if (pos >= n) {
          return Status::invalid("line " + std::to_string(start_line) +
                                 ": a quoted field is never closed");
        }
        char c = text[pos++];
        if (c == '"') {
          if (pos < n && text[pos] == '"') {
            cell.push_back('"');
            ++pos;
            continue;
          }
          break;
        }
        if (c == '\n') ++line;
        cell.push_back(c);
      }
      if (pos < n && text[pos] != ',' && text[pos] != '\n' &&
          !(text[pos] == '\r' && (pos + 1 == n || text[pos + 1] == '\n'))) {
        return Status::invalid("line " + std::to_string(line) +
                               ": text after the closing quote of a field");
      }
    } else {
      size_t end = text.find_first_of(",\n", pos);
      if (end == std::string_view::npos) end = n;
      std::string_view raw = text.substr(pos, end - pos);
      if (end < n && text[end] == '\n' && !raw.empty() && raw.back() == '\r')
        raw.remove_suffix(1);
      else if (end == n && !raw.empty() && raw.back() == '\r')
        raw.remove_suffix(1);
      cell.assign(raw);
      pos = end;
    }
    cells.push_back(std::move(cell));
    if (pos < n && text[pos] == '\r') ++pos;  // "\r\n" after a quoted cell
    if (pos >= n) return Status::ok();
    if (text[pos] == ',') {
      ++pos;
      continue;
    }
    // '\n': end of record
    ++pos;
    ++line;
    return Status::ok();
  }
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

Status readCsv(std::string_view text, std::vector<std::string>& header,
               const std::function<void(const CsvRow&)>& row) {
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // UTF-8 BOM
  size_t pos = 0;
  size_t line = 1;
  header.clear();
  CsvRow current;
  bool have_header = false;
  while (pos < text.size()) {
    const size_t start = pos;
    const size_t start_line = line;
    BL_RETURN_IF_ERROR(readRecord(text, pos, line, current.cells));
    if (current.cells.size() == 1 && current.cells[0].empty() && text.substr(start, 1) != "\"") {
      continue;  // a blank line
    }
    if (!have_header) {
      std::set<std::string_view> seen;
      for (auto& name : current.cells) {
        name = std::string(trim(name));
        if (name.empty()) {
          return Status::invalid("line " + std::to_string(start_line) +
                                 ": the header row has an empty field name");
        }
        if (!seen.insert(name).second) {
          return Status::invalid("line " + std::to_string(start_line) + ": the header row names `" +
                                 name + "` twice");
        }
      }
      header = std::move(current.cells);
      have_header = true;
      continue;
    }
    std::string_view row_text = text.substr(start, pos - start);
    while (!row_text.empty() && (row_text.back() == '\n' || row_text.back() == '\r')) {
      row_text.remove_suffix(1);
    }
    current.text = row_text;
    current.line = start_line;
    row(current);
    ++current.index;
  }
  if (!have_header) return Status::invalid("no header row");
  return Status::ok();
}

}  // namespace branchline::agent
