#include "agent/spool/spool_ingester.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json/object.hpp>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include "agent/ingest/record_intake.h"
#include "agent/spool/csv_reader.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/unique_fd.h"

namespace branchline::agent {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxErrorsInFile = 100000;  // errors.json stays readable

std::string errnoText(const std::string& what, const fs::path& path) {
  return what + " " + path.string() + ": " + std::strerror(errno);
}

Status fsyncDir(const fs::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return Status::internal(errnoText("open directory", dir));
  if (::fsync(fd.get()) != 0) return Status::internal(errnoText("fsync directory", dir));
  return Status::ok();
}

// Writes `content` to `path` so that a crash leaves either the old state or
// the whole new file: temp name, fsync, rename, fsync the directory.
Status writeFileDurably(const fs::path& path, const std::string& content) {
  fs::path tmp = path;
  tmp += ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) return Status::internal(errnoText("create", tmp));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd.get(), content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::internal(errnoText("write", tmp));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return Status::internal(errnoText("fsync", tmp));
  if (fd.release() != 0) return Status::internal(errnoText("close", tmp));
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::internal(errnoText("rename", tmp));
  return fsyncDir(path.parent_path());
}

Status readWholeFile(const fs::path& path, uint64_t expected_size, std::string& out) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Status::internal(errnoText("open", path));
  out.resize(expected_size);
  size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::read(fd.get(), out.data() + off, out.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::internal(errnoText("read", path));
    }
    if (n == 0) break;
    off += static_cast<size_t>(n);
  }
  out.resize(off);
  return Status::ok();
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool isIgnored(const std::string& name) {
  return name.empty() || name[0] == '.' || endsWith(name, ".tmp") || endsWith(name, ".part");
}

enum class FileKind { kNdjson, kCsv, kUnsupported };

FileKind kindOf(const std::string& name) {
  if (endsWith(name, ".ndjson") || endsWith(name, ".jsonl")) return FileKind::kNdjson;
  if (endsWith(name, ".csv")) return FileKind::kCsv;
  return FileKind::kUnsupported;
}

struct FileSig {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileSig&) const = default;
};

std::string errorsJson(const std::string& name, size_t accepted, size_t rejected,
                       const std::vector<RecordError>& errors, const std::string& failure) {
  std::string out = "{\"file\":";
  log::appendJsonString(out, name);
  out += ",\"accepted\":" + std::to_string(accepted);
  out += ",\"rejected\":" + std::to_string(rejected);
  if (!failure.empty()) {
    out += ",\"error\":";
    log::appendJsonString(out, failure);
  }
  out += ',';
  appendErrorsJson(out, errors, kMaxErrorsInFile);
  out += "}\n";
  return out;
}

struct LongLine {
  size_t line = 0;   // 1-based
  size_t bytes = 0;  // without its line ending
};

// The longest physical line ("\n"-separated) of `text`.
LongLine longestLine(std::string_view text) {
  LongLine longest;
  size_t line = 1;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    size_t bytes = end - pos;
    if (bytes > 0 && text[end - 1] == '\r') --bytes;
    if (bytes > longest.bytes) longest = {line, bytes};
    pos = end + 1;
    ++line;
  }
  return longest;
}

}  // namespace

struct SpoolIngester::Impl {
  struct Source {
    std::string name;
    const rules::CompiledSchema* schema = nullptr;
    fs::path dir;
    std::map<std::string, FileSig> seen;  // signature at the previous poll
  };

  SpoolOptions options;
  std::shared_ptr<const rules::RuleEngine> engine;
  DurableBuffer* buffer = nullptr;
  LabeledCounter* files = nullptr;
  LabeledCounter* records = nullptr;
  LabeledCounter* refused = nullptr;
  std::map<std::string, Source> sources;

  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::vector<std::thread> threads;

  enum class Outcome { kDone, kFailed, kWaiting, kDeferred };

  // `reason` is the refusal's metric label; `why` the sentence for people.
  Outcome fail(Source& src, const std::string& name, const char* reason, const std::string& why) {
    refused->with(reason).inc();
    log::warn("spool_file_failed",
              {{"source", src.name}, {"file", name}, {"reason", reason}, {"detail", why}});
    fs::path failed = src.dir / "failed";
    Status s = writeFileDurably(failed / (name + ".errors.json"), errorsJson(name, 0, 0, {}, why));
    if (s.isOk()) s = moveInto(src, name, failed);
    if (!s.isOk()) {
      log::error("spool_move_failed",
                 {{"source", src.name}, {"file", name}, {"error", s.toString()}});
      return Outcome::kDeferred;
    }
    return Outcome::kFailed;
  }

  Status moveInto(Source& src, const std::string& name, const fs::path& to_dir) {
    fs::path target = to_dir / name;
    if (::access(target.c_str(), F_OK) == 0) {
      // A file of the same name was handled before: keep both.
      target += "." + std::to_string(nowMicros());
    }
    fs::path from = src.dir / name;
    if (::rename(from.c_str(), target.c_str()) != 0) {
      return Status::internal(errnoText("rename", from));
    }
    BL_RETURN_IF_ERROR(fsyncDir(to_dir));
    return fsyncDir(src.dir);
  }

  Outcome process(Source& src, const std::string& name, const FileSig& sig) {
    const FileKind kind = kindOf(name);
    if (kind == FileKind::kUnsupported) {
      return fail(src, name, "unsupported_type",
                  "unsupported file type; use .ndjson, .jsonl or .csv");
    }
    if (sig.size > options.max_file_bytes) {
      return fail(src, name, "file_too_large",
                  "file is " + std::to_string(sig.size) + " bytes, past the limit of " +
                      std::to_string(options.max_file_bytes));
    }
    std::string text;
    if (Status s = readWholeFile(src.dir / name, sig.size, text); !s.isOk()) {
      return fail(src, name, "unreadable", "cannot read the file: " + s.message());
    }
    if (text.size() != sig.size) return Outcome::kWaiting;  // changed under us
    if (LongLine longest = longestLine(text); longest.bytes > options.max_line_bytes) {
      return fail(src, name, "line_too_long",
                  "line " + std::to_string(longest.line) + " is " + std::to_string(longest.bytes) +
                      " bytes, past the limit of " + std::to_string(options.max_line_bytes) +
                      " per line");
    }
    if (size_t bad = firstInvalidUtf8(text); bad < text.size()) {
      return fail(src, name, "not_utf8", "not valid UTF-8 at byte " + std::to_string(bad));
    }

    const auto tooMany = [&] {
      return fail(src, name, "too_many_records",
                  "more than " + std::to_string(options.max_records_per_file) +
                      " records in one file; split it into smaller files");
    };
    RecordIntake intake(*engine, *src.schema, src.name, nowMicros());
    if (kind == FileKind::kNdjson) {
      NdjsonSummary summary =
          addNdjson(intake, text, options.max_depth, options.max_records_per_file);
      if (summary.too_many) return tooMany();
      if (summary.lines > 0 && summary.parsed == 0) {
        return fail(src, name, "no_valid_line",
                    "no line is valid JSON (" + summary.first_error + ")");
      }
    } else {
      std::vector<std::string> header;
      boost::json::object object;
      bool too_many = false;
      Status parsed = readCsv(text, header, [&](const CsvRow& row) {
        if (too_many || row.index >= options.max_records_per_file) {
          too_many = true;  // the rest is read for its structure only
          return;
        }
        if (row.cells.size() != header.size()) {
          intake.addUnparsable(row.index, row.text,
                               "line " + std::to_string(row.line) + ": row has " +
                                   std::to_string(row.cells.size()) + " fields, the header has " +
                                   std::to_string(header.size()),
                               "invalid_csv_row");
          return;
        }
        object.clear();
        for (size_t i = 0; i < header.size(); ++i) {
          if (!row.cells[i].empty()) object[header[i]] = row.cells[i];
        }
        intake.addObject(row.index, object);
      });
      if (!parsed.isOk()) return fail(src, name, "broken_csv", "broken CSV: " + parsed.message());
      if (too_many) return tooMany();
    }

    const std::string token = fileToken(src.name, name, sig.size, sig.mtime_ns);
    Result<bool> committed = buffer->hasToken(token);
    if (!committed.isOk()) {
      log::error("spool_token_check_failed",
                 {{"source", src.name}, {"file", name}, {"error", committed.status().toString()}});
      return Outcome::kDeferred;
    }
    const size_t accepted = intake.accepted();
    const size_t rejected = intake.rejected();
    if (!*committed && intake.inputs() > 0) {
      std::vector<std::string> codes = intake.rejectCodes();
      Status appended = buffer->append(intake.takeRecords(), intake.takeRejects(), token);
      if (appended.code() == Code::kResourceExhausted) return Outcome::kDeferred;  // retry later
      if (!appended.isOk()) {
        log::error("spool_append_failed",
                   {{"source", src.name}, {"file", name}, {"error", appended.toString()}});
        return Outcome::kDeferred;
      }
      records->with("accepted").inc(accepted);
      records->with("rejected").inc(rejected);
    }
    // From here the file's records are committed: whatever happens next, the
    // token keeps a retry from appending them again.
    if (options.after_commit && !options.after_commit(src.dir / name)) return Outcome::kDeferred;
    fs::path done = src.dir / "done";
    Status s;
    if (rejected > 0) {
      s = writeFileDurably(done / (name + ".errors.json"),
                           errorsJson(name, accepted, rejected, intake.errors(), ""));
    }
    if (s.isOk()) s = moveInto(src, name, done);
    if (!s.isOk()) {
      log::error("spool_move_failed",
                 {{"source", src.name}, {"file", name}, {"error", s.toString()}});
      return Outcome::kDeferred;
    }
    log::info("spool_file_done", {{"source", src.name},
                                  {"file", name},
                                  {"accepted", static_cast<uint64_t>(accepted)},
                                  {"rejected", static_cast<uint64_t>(rejected)},
                                  {"already_committed", *committed}});
    return Outcome::kDone;
  }

  Result<SpoolPollReport> poll(Source& src) {
    std::vector<std::pair<std::string, FileSig>> candidates;
    std::error_code ec;
    for (fs::directory_iterator it(src.dir, ec), end; !ec && it != end; it.increment(ec)) {
      std::string name = it->path().filename().string();
      if (isIgnored(name)) continue;
      struct stat st;
      if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      FileSig sig{static_cast<uint64_t>(st.st_size),
                  static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
      candidates.emplace_back(std::move(name), sig);
    }
    if (ec) {
      return Status::unavailable("spool folder " + src.dir.string() + ": " + ec.message());
    }
    std::sort(candidates.begin(), candidates.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    SpoolPollReport report;
    std::map<std::string, FileSig> next_seen;
    for (const auto& [name, sig] : candidates) {
      auto it = src.seen.find(name);
      const bool stable = it != src.seen.end() && it->second == sig;
      next_seen[name] = sig;
      if (!stable) {
        ++report.waiting;
        continue;
      }
      switch (process(src, name, sig)) {
        case Outcome::kDone:
          ++report.done;
          files->with("done").inc();
          next_seen.erase(name);
          break;
        case Outcome::kFailed:
          ++report.failed;
          files->with("failed").inc();
          next_seen.erase(name);
          break;
        case Outcome::kWaiting:
          ++report.waiting;
          next_seen.erase(name);
          break;
        case Outcome::kDeferred:
          ++report.deferred;
          files->with("deferred").inc();
          break;
      }
    }
    src.seen = std::move(next_seen);
    return report;
  }

  void run(Source& src) {
    std::unique_lock lock(mutex);
    while (!stopping) {
      lock.unlock();
      Result<SpoolPollReport> r = poll(src);
      if (!r.isOk())
        log::warn("spool_poll_failed", {{"source", src.name}, {"error", r.status().toString()}});
      lock.lock();
      wake.wait_for(lock, options.poll, [this] { return stopping; });
    }
  }
};

SpoolIngester::SpoolIngester() : impl_(std::make_unique<Impl>()) {}

SpoolIngester::~SpoolIngester() { stop(); }

Result<std::unique_ptr<SpoolIngester>> SpoolIngester::create(
    SpoolOptions options, std::shared_ptr<const rules::RuleEngine> engine, DurableBuffer& buffer,
    MetricsRegistry& metrics) {
  std::unique_ptr<SpoolIngester> ingester(new SpoolIngester());
  Impl& impl = *ingester->impl_;
  for (const auto& name : options.sources) {
    Impl::Source src;
    src.name = name;
    src.schema = engine->find(name);
    if (!src.schema) return Status::invalid("spool: unknown source `" + name + "`");
    src.dir = options.dir / name;
    for (const fs::path& d : {src.dir, src.dir / "done", src.dir / "failed"}) {
      std::error_code ec;
      fs::create_directories(d, ec);
      if (ec) return Status::internal("spool: cannot create " + d.string() + ": " + ec.message());
    }
    impl.sources.emplace(name, std::move(src));
  }
  impl.options = std::move(options);
  impl.engine = std::move(engine);
  impl.buffer = &buffer;
  impl.files = &metrics.labeledCounter("bl_agent_spool_files_total",
                                       "Spool files handled, by outcome (done, failed, deferred)",
                                       "outcome");
  impl.records = &metrics.labeledCounter("bl_agent_spool_records_total",
                                         "Records taken from spool files, by result", "result");
  impl.refused = &metrics.labeledCounter(
      "bl_agent_spool_refused_total",
      "Spool files moved to failed/ whole, by reason (README \"Input limits\")", "reason");
  return ingester;
}

void SpoolIngester::start() {
  Impl& impl = *impl_;
  std::lock_guard lock(impl.mutex);
  if (!impl.threads.empty() || impl.stopping) return;
  for (auto& [name, src] : impl.sources) {
    impl.threads.emplace_back([&impl, &src = src] { impl.run(src); });
  }
}

void SpoolIngester::stop() {
  Impl& impl = *impl_;
  {
    std::lock_guard lock(impl.mutex);
    impl.stopping = true;
  }
  impl.wake.notify_all();
  for (auto& t : impl.threads) t.join();
  impl.threads.clear();
}

Result<SpoolPollReport> SpoolIngester::pollOnce(const std::string& source) {
  auto it = impl_->sources.find(source);
  if (it == impl_->sources.end()) return Status::notFound("spool: no source `" + source + "`");
  return impl_->poll(it->second);
}

std::string SpoolIngester::fileToken(const std::string& source, const std::string& name,
                                     uint64_t size, int64_t mtime_ns) {
  return "spool:" + source + "/" + name + ":" + std::to_string(size) + ":" +
         std::to_string(mtime_ns);
}

}  // namespace branchline::agent
