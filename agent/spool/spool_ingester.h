// SpoolIngester: takes record files dropped into <spool_dir>/<source>/ (for
// software that writes files rather than calling the HTTP API) and feeds them
// through the same RecordIntake as HTTP ingest.
//
// Files: *.ndjson / *.jsonl (one JSON object per line) and *.csv (RFC 4180,
// header row = field names, empty cell = absent field). Dotfiles and names
// ending .tmp/.part are ignored; a file is taken only once its size and mtime
// are unchanged across two polls (its writer is done).
//
// Race-free: a file is opened once, relative to its folder's descriptor, with
// O_NOFOLLOW | O_NONBLOCK, then checked on that descriptor (a regular file,
// owned by SpoolOptions::owner, the size and mtime seen at the poll) and read
// through it. A symlink, FIFO, socket or device swapped in under the name is
// never followed, never read and never blocks: it goes to failed/
// (reason not_regular_file; wrong_owner for another owner).
//
// Guarantee: a file's records are committed in ONE DurableBuffer append that
// carries the file's identity token ("spool:<source>/<name>:<size>:<mtime_ns>"),
// checked before appending, so a crash between the commit and the removal
// never ingests a file twice. After the commit the file is deleted (moved to
// done/ at mode 0600 with keep_done), with done/<name>.errors.json (0600, the
// index, field and reason of each rejected record, no values) when any record
// was rejected; a file that cannot be read, is not UTF-8, is broken CSV as a
// whole or is too large moves to failed/ with an .errors.json saying why, and
// nothing of it is accepted (so does a file past a limit in SpoolOptions).
// done/ and failed/ are 0700. When the buffer is full the file stays and is
// retried on a later poll. A file in a folder of spool_dir that is not a
// declared source is logged once (spool_undeclared_source) and counted in
// bl_agent_spool_undeclared_files_total.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/buffer/durable_buffer.h"
#include "shared/core/metrics.h"
#include "shared/core/status.h"
#include "shared/rules/rule_engine.h"

namespace branchline::agent {

struct SpoolOptions {
  std::filesystem::path dir;         // files go in dir/<source>/
  std::vector<std::string> sources;  // each must be known to the rule engine
  std::chrono::milliseconds poll{500};
  // Hostile-input limits (README "Input limits"): a file past any of them goes
  // to failed/ whole, with the reason, and counts in
  // bl_agent_spool_refused_total{reason}; the other files carry on.
  uint64_t max_file_bytes = 64ull << 20;  // reason file_too_large
  size_t max_line_bytes = 1 << 20;        // any physical line; reason line_too_long
  size_t max_records_per_file = 200000;   // NDJSON lines / CSV rows; reason too_many_records
  size_t max_depth = 32;                  // JSON nesting past it: the line is rejected
  // Who may own a spool file: a user name or a numeric uid; empty: the user
  // the agent runs as. A file owned by anyone else goes to failed/ unread.
  std::string owner;
  // Keep committed files in done/ (mode 0600) rather than deleting them.
  bool keep_done = false;
  // Test seam for crash tests: called after a file's append committed and
  // before it moves; returning false stops there, as if the process died.
  std::function<bool(const std::filesystem::path& file)> after_commit;
};

// What one poll of one source did.
struct SpoolPollReport {
  size_t done = 0;      // committed (or found committed) and moved to done/
  size_t failed = 0;    // moved to failed/
  size_t waiting = 0;   // not yet stable (still being written) or first seen
  size_t deferred = 0;  // buffer full or failing: left for a later poll
};

class SpoolIngester {
 public:
  // Creates <dir>/<source>/{,done,failed} for every source (done/ and failed/
  // at 0700, narrowed when wider); kInvalidArgument for a source the rule
  // engine does not know or an owner that is no user, kInternal if a folder
  // cannot be made or opened. Does not start polling.
  static Result<std::unique_ptr<SpoolIngester>> create(
      SpoolOptions options, std::shared_ptr<const rules::RuleEngine> engine, DurableBuffer& buffer,
      MetricsRegistry& metrics);
  ~SpoolIngester();  // stops and joins the polling threads

  // Starts one polling thread per source, and one for undeclared folders.
  void start();
  void stop();

  // One poll of one source, on the calling thread (the polling threads call
  // this). Not to be called concurrently for the same source.
  Result<SpoolPollReport> pollOnce(const std::string& source);

  // One look at the folders of `dir` that are not declared sources; logs and
  // counts each file there not reported before. Returns how many were new.
  // Not to be called concurrently with itself (the polling thread calls it).
  size_t pollUndeclaredOnce();

  // The token an append of `name` (size, mtime in ns) carries.
  static std::string fileToken(const std::string& source, const std::string& name, uint64_t size,
                               int64_t mtime_ns);

 private:
  SpoolIngester();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace branchline::agent
