#include "agent/spool/spool_ingester.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/json/object.hpp>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "agent/ingest/record_intake.h"
#include "agent/spool/csv_reader.h"
#include "shared/core/atomic_file.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/private_path.h"
#include "shared/core/unique_fd.h"

namespace branchline::agent {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxErrorsInFile = 100000;  // errors.json stays readable

std::string errnoText(const std::string& what, const fs::path& path) {
  return what + " " + path.string() + ": " + std::strerror(errno);
}

// Opens a folder that must be a real directory (no symlink in its place).
UniqueFd openDirAt(int parent_fd, const char* name) {
  return UniqueFd(::openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

// Reads up to `expected_size` bytes through `fd` (never by name again).
Status readWholeFile(int fd, const fs::path& path, uint64_t expected_size, std::string& out) {
  out.resize(expected_size);
  size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::read(fd, out.data() + off, out.size() - off);
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

// The names in the folder open as `dir_fd`, each with its lstat (a name gone
// between the listing and the lstat is left out).
Status listFolder(int dir_fd, const fs::path& path,
                  const std::function<void(const std::string&, const struct stat&)>& each) {
  int listing = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (listing < 0) return Status::unavailable(errnoText("open folder", path));
  DIR* d = ::fdopendir(listing);
  if (d == nullptr) {
    ::close(listing);
    return Status::unavailable(errnoText("list folder", path));
  }
  errno = 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    struct stat st;
    if (name != "." && name != ".." &&
        ::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      each(name, st);
    }
    errno = 0;
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) {
    errno = err;
    return Status::unavailable(errnoText("list folder", path));
  }
  return Status::ok();
}

Result<uid_t> resolveOwner(const std::string& owner) {
  if (owner.empty()) return ::geteuid();
  if (std::all_of(owner.begin(), owner.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      owner.size() < 10) {
    return static_cast<uid_t>(std::stoul(owner));
  }
  struct passwd pw;
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwnam_r(owner.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return Status::invalid("spool.owner: no user `" + owner + "` on this machine");
  }
  return found->pw_uid;
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

int64_t mtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
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
    // Opened once at create(): every later name is resolved relative to
    // these, so a folder swapped for a symlink later is not followed.
    UniqueFd dir_fd{-1};
    UniqueFd done_fd{-1};
    UniqueFd failed_fd{-1};
    std::map<std::string, FileSig> seen;  // signature at the previous poll
  };

  SpoolOptions options;
  uid_t owner = 0;
  std::shared_ptr<const rules::RuleEngine> engine;
  DurableBuffer* buffer = nullptr;
  LabeledCounter* files = nullptr;
  LabeledCounter* records = nullptr;
  LabeledCounter* refused = nullptr;
  Counter* undeclared = nullptr;
  std::map<std::string, Source> sources;
  std::set<std::string> undeclared_reported;  // "<folder>/<file>" already logged

  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::vector<std::thread> threads;

  enum class Outcome { kDone, kFailed, kWaiting, kDeferred };

  // `reason` is the refusal's metric label; `why` the sentence for people.
  // `fd` is the file's descriptor when it was opened as a regular file: it is
  // made 0600 before it moves.
  Outcome fail(Source& src, const std::string& name, const char* reason, const std::string& why,
               int fd = -1) {
    refused->with(reason).inc();
    log::warn("spool_file_failed",
              {{"source", src.name}, {"file", name}, {"reason", reason}, {"detail", why}});
    const fs::path failed = src.dir / "failed";
    Status s =
        writeFileAtomically(failed / (name + ".errors.json"), errorsJson(name, 0, 0, {}, why), 0600,
                            {.dir_fd = src.failed_fd.get()});
    if (s.isOk() && fd >= 0) s = makePrivate(fd, src.dir / name);
    if (s.isOk()) s = moveInto(src, name, src.failed_fd.get(), failed);
    if (!s.isOk()) {
      log::error("spool_move_failed",
                 {{"source", src.name}, {"file", name}, {"error", s.toString()}});
      return Outcome::kDeferred;
    }
    return Outcome::kFailed;
  }

  // 0600 on a file we are about to keep. A file of another configured owner
  // cannot be changed by us; done/ and failed/ (0700) keep it private then.
  Status makePrivate(int fd, const fs::path& path) {
    if (::fchmod(fd, 0600) == 0 || (errno == EPERM && owner != ::geteuid())) return Status::ok();
    return Status::internal(errnoText("chmod", path));
  }

  Status moveInto(Source& src, const std::string& name, int to_fd, const fs::path& to_dir) {
    std::string target = name;
    struct stat st;
    if (::fstatat(to_fd, target.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      // A file of the same name was handled before: keep both.
      target += "." + std::to_string(nowMicros());
    }
    if (::renameat(src.dir_fd.get(), name.c_str(), to_fd, target.c_str()) != 0) {
      return Status::internal(errnoText("rename", src.dir / name));
    }
    if (::fsync(to_fd) != 0) return Status::internal(errnoText("fsync", to_dir));
    if (::fsync(src.dir_fd.get()) != 0) return Status::internal(errnoText("fsync", src.dir));
    return Status::ok();
  }

  Status remove(Source& src, const std::string& name) {
    if (::unlinkat(src.dir_fd.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
      return Status::internal(errnoText("delete", src.dir / name));
    }
    if (::fsync(src.dir_fd.get()) != 0) return Status::internal(errnoText("fsync", src.dir));
    return Status::ok();
  }

  Outcome process(Source& src, const std::string& name, const FileSig& sig) {
    const fs::path path = src.dir / name;
    // O_NONBLOCK: a FIFO swapped in opens at once instead of waiting for a
    // writer; O_NOFOLLOW: a symlink is refused, not resolved.
    UniqueFd fd(::openat(src.dir_fd.get(), name.c_str(),
                         O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (fd.get() < 0) {
      if (errno == ENOENT) return Outcome::kWaiting;  // gone since the listing
      if (errno == ELOOP) {
        return fail(src, name, "not_regular_file",
                    "a symbolic link; spool files must be regular files (it was not followed)");
      }
      return fail(src, name, "unreadable", "cannot open the file: " + errnoText("open", path));
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) {
      return fail(src, name, "unreadable", "cannot read the file: " + errnoText("fstat", path));
    }
    if (!S_ISREG(st.st_mode)) {
      return fail(src, name, "not_regular_file",
                  "not a regular file (a FIFO, socket or device); it was not read");
    }
    if (st.st_uid != owner) {
      return fail(src, name, "wrong_owner",
                  "owned by uid " + std::to_string(st.st_uid) + "; spool.owner allows uid " +
                      std::to_string(owner) + " only; it was not read");
    }
    const FileSig opened{static_cast<uint64_t>(st.st_size), mtimeNs(st)};
    if (opened != sig) return Outcome::kWaiting;  // another file, or changed, since the poll
    const auto refuse = [&](const char* reason, const std::string& why) {
      return fail(src, name, reason, why, fd.get());
    };
    const FileKind kind = kindOf(name);
    if (kind == FileKind::kUnsupported) {
      return refuse("unsupported_type", "unsupported file type; use .ndjson, .jsonl or .csv");
    }
    if (sig.size > options.max_file_bytes) {
      return refuse("file_too_large", "file is " + std::to_string(sig.size) +
                                          " bytes, past the limit of " +
                                          std::to_string(options.max_file_bytes));
    }
    std::string text;
    if (Status s = readWholeFile(fd.get(), path, sig.size, text); !s.isOk()) {
      return refuse("unreadable", "cannot read the file: " + s.message());
    }
    if (text.size() != sig.size) return Outcome::kWaiting;  // changed under us
    if (LongLine longest = longestLine(text); longest.bytes > options.max_line_bytes) {
      return refuse("line_too_long", "line " + std::to_string(longest.line) + " is " +
                                         std::to_string(longest.bytes) +
                                         " bytes, past the limit of " +
                                         std::to_string(options.max_line_bytes) + " per line");
    }
    if (size_t bad = firstInvalidUtf8(text); bad < text.size()) {
      return refuse("not_utf8", "not valid UTF-8 at byte " + std::to_string(bad));
    }

    const auto tooMany = [&] {
      return refuse("too_many_records", "more than " +
                                            std::to_string(options.max_records_per_file) +
                                            " records in one file; split it into smaller files");
    };
    RecordIntake intake(*engine, *src.schema, src.name, nowMicros());
    if (kind == FileKind::kNdjson) {
      NdjsonSummary summary =
          addNdjson(intake, text, options.max_depth, options.max_records_per_file);
      if (summary.too_many) return tooMany();
      if (summary.lines > 0 && summary.parsed == 0) {
        return refuse("no_valid_line", "no line is valid JSON (" + summary.first_error + ")");
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
      if (!parsed.isOk()) return refuse("broken_csv", "broken CSV: " + parsed.message());
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
    const fs::path done = src.dir / "done";
    Status s;
    if (rejected > 0) {
      s = writeFileAtomically(done / (name + ".errors.json"),
                              errorsJson(name, accepted, rejected, intake.errors(), ""), 0600,
                              {.dir_fd = src.done_fd.get()});
    }
    if (s.isOk() && options.keep_done) s = makePrivate(fd.get(), path);
    if (s.isOk())
      s = options.keep_done ? moveInto(src, name, src.done_fd.get(), done) : remove(src, name);
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
    // Folders (done/, failed/, any other) are not files; everything else is a
    // candidate, so a symlink or FIFO left here goes to failed/ once, with a
    // reason, instead of sitting unexplained.
    BL_RETURN_IF_ERROR(
        listFolder(src.dir_fd.get(), src.dir, [&](const std::string& name, const struct stat& st) {
          if (isIgnored(name) || S_ISDIR(st.st_mode)) return;
          candidates.emplace_back(name, FileSig{static_cast<uint64_t>(st.st_size), mtimeNs(st)});
        }));
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

  size_t pollUndeclared() {
    UniqueFd root(::open(options.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (root.get() < 0) {
      log::warn("spool_poll_failed", {{"error", errnoText("open folder", options.dir)}});
      return 0;
    }
    std::vector<std::string> folders;
    Status listed =
        listFolder(root.get(), options.dir, [&](const std::string& name, const struct stat& st) {
          if (!isIgnored(name) && S_ISDIR(st.st_mode) && sources.find(name) == sources.end()) {
            folders.push_back(name);
          }
        });
    if (!listed.isOk()) {
      log::warn("spool_poll_failed", {{"error", listed.toString()}});
      return 0;
    }
    std::sort(folders.begin(), folders.end());
    // Only what is there now is remembered: the set stays as small as the folders.
    std::set<std::string> present;
    size_t reported = 0;
    for (const std::string& folder : folders) {
      UniqueFd fd = openDirAt(root.get(), folder.c_str());
      if (fd.get() < 0) continue;
      std::vector<std::string> names;
      Status s = listFolder(fd.get(), options.dir / folder,
                            [&](const std::string& name, const struct stat& st) {
                              if (!isIgnored(name) && !S_ISDIR(st.st_mode)) names.push_back(name);
                            });
      if (!s.isOk()) continue;
      std::sort(names.begin(), names.end());
      for (const std::string& name : names) {
        std::string key = folder + "/" + name;
        if (undeclared_reported.count(key) == 0) {
          log::warn("spool_undeclared_source",
                    {{"folder", folder},
                     {"file", name},
                     {"detail",
                      "the folder is not a declared source; the file is not read. "
                      "Declare [sources." +
                          folder + "] or move the file to a source's folder"}});
          undeclared->inc();
          ++reported;
        }
        present.insert(std::move(key));
      }
    }
    undeclared_reported = std::move(present);
    return reported;
  }

  // Calls `body` every options.poll until stop().
  void loop(const std::function<void()>& body) {
    std::unique_lock lock(mutex);
    while (!stopping) {
      lock.unlock();
      body();
      lock.lock();
      wake.wait_for(lock, options.poll, [this] { return stopping; });
    }
  }

  void run(Source& src) {
    loop([&] {
      Result<SpoolPollReport> r = poll(src);
      if (!r.isOk())
        log::warn("spool_poll_failed", {{"source", src.name}, {"error", r.status().toString()}});
    });
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
    std::error_code ec;
    fs::create_directories(src.dir, ec);
    if (ec)
      return Status::internal("spool: cannot create " + src.dir.string() + ": " + ec.message());
    for (const fs::path& d : {src.dir / "done", src.dir / "failed"}) {
      // They hold customer data (kept files, errors): 0700.
      auto made = makePrivateDirectory(d);
      if (!made.isOk()) return made.status().withContext("spool");
      if (*made)
        log::warn("spool_folder_mode_narrowed", {{"folder", d.string()}, {"mode", "0700"}});
    }
    src.dir_fd = UniqueFd(::open(src.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (src.dir_fd.get() < 0) return Status::internal(errnoText("spool: cannot open", src.dir));
    src.done_fd = openDirAt(src.dir_fd.get(), "done");
    src.failed_fd = openDirAt(src.dir_fd.get(), "failed");
    if (src.done_fd.get() < 0 || src.failed_fd.get() < 0) {
      return Status::internal(errnoText("spool: cannot open done/ or failed/ of", src.dir));
    }
    impl.sources.emplace(name, std::move(src));
  }
  auto owner = resolveOwner(options.owner);
  if (!owner.isOk()) return owner.status();
  impl.owner = *owner;
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
  impl.undeclared = &metrics.counter(
      "bl_agent_spool_undeclared_files_total",
      "Files found in a spool folder that is not a declared source (logged once each, not read)");
  return ingester;
}

void SpoolIngester::start() {
  Impl& impl = *impl_;
  std::lock_guard lock(impl.mutex);
  if (!impl.threads.empty() || impl.stopping) return;
  for (auto& [name, src] : impl.sources) {
    impl.threads.emplace_back([&impl, &src = src] { impl.run(src); });
  }
  impl.threads.emplace_back([&impl] { impl.loop([&impl] { impl.pollUndeclared(); }); });
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

size_t SpoolIngester::pollUndeclaredOnce() { return impl_->pollUndeclared(); }

std::string SpoolIngester::fileToken(const std::string& source, const std::string& name,
                                     uint64_t size, int64_t mtime_ns) {
  return "spool:" + source + "/" + name + ":" + std::to_string(size) + ":" +
         std::to_string(mtime_ns);
}

}  // namespace branchline::agent
