#include "shared/core/testing/sqlite_fault_vfs.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <new>
#include <random>

namespace branchline::testing {
namespace {

// The file SQLite allocates for us (szOsFile bytes): our header, then the real
// VFS's file right after it.
struct FaultFile {
  sqlite3_file base;  // pMethods: kMethods once the real open succeeded
  SqliteFaultVfs* owner;
  sqlite3_file* real;
  char path[512];
};

FaultFile* self(sqlite3_file* f) { return reinterpret_cast<FaultFile*>(f); }
sqlite3_file* real(sqlite3_file* f) { return self(f)->real; }

int xClose(sqlite3_file* f) {
  int rc = SQLITE_OK;
  if (real(f)->pMethods != nullptr) rc = real(f)->pMethods->xClose(real(f));
  self(f)->owner->fileClosed();
  return rc;
}
int xRead(sqlite3_file* f, void* p, int n, sqlite3_int64 off) {
  return real(f)->pMethods->xRead(real(f), p, n, off);
}
int xWrite(sqlite3_file* f, const void* p, int n, sqlite3_int64 off) {
  FaultFile* ff = self(f);
  if (ff->owner->shouldFail(SqliteFaultVfs::Fault::kWriteEio, ff->path)) return SQLITE_IOERR_WRITE;
  if (ff->owner->shouldFail(SqliteFaultVfs::Fault::kWriteFull, ff->path)) return SQLITE_FULL;
  if (!ff->owner->beforeChange(ff->path, real(f), off, n, false)) return SQLITE_IOERR_WRITE;
  return real(f)->pMethods->xWrite(real(f), p, n, off);
}
int xTruncate(sqlite3_file* f, sqlite3_int64 size) {
  FaultFile* ff = self(f);
  if (!ff->owner->beforeChange(ff->path, real(f), size, 0, true)) return SQLITE_IOERR_TRUNCATE;
  return real(f)->pMethods->xTruncate(real(f), size);
}
int xSync(sqlite3_file* f, int flags) {
  FaultFile* ff = self(f);
  if (ff->owner->shouldFail(SqliteFaultVfs::Fault::kSyncEio, ff->path)) return SQLITE_IOERR_FSYNC;
  bool pass = true;
  if (!ff->owner->onSync(ff->path, &pass)) return SQLITE_IOERR_FSYNC;
  return pass ? real(f)->pMethods->xSync(real(f), flags) : SQLITE_OK;
}
int xFileSize(sqlite3_file* f, sqlite3_int64* size) {
  return real(f)->pMethods->xFileSize(real(f), size);
}
int xLock(sqlite3_file* f, int level) { return real(f)->pMethods->xLock(real(f), level); }
int xUnlock(sqlite3_file* f, int level) { return real(f)->pMethods->xUnlock(real(f), level); }
int xCheckReservedLock(sqlite3_file* f, int* out) {
  return real(f)->pMethods->xCheckReservedLock(real(f), out);
}
int xFileControl(sqlite3_file* f, int op, void* arg) {
  return real(f)->pMethods->xFileControl(real(f), op, arg);
}
int xSectorSize(sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); }
int xDeviceCharacteristics(sqlite3_file* f) {
  return real(f)->pMethods->xDeviceCharacteristics(real(f));
}
int xShmMap(sqlite3_file* f, int page, int size, int extend, void volatile** out) {
  return real(f)->pMethods->xShmMap(real(f), page, size, extend, out);
}
int xShmLock(sqlite3_file* f, int offset, int n, int flags) {
  return real(f)->pMethods->xShmLock(real(f), offset, n, flags);
}
void xShmBarrier(sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); }
int xShmUnmap(sqlite3_file* f, int remove) { return real(f)->pMethods->xShmUnmap(real(f), remove); }
// No memory-mapped reads: every page goes through xRead (and SQLite falls back
// to it when xFetch hands out nothing).
int xFetch(sqlite3_file*, sqlite3_int64, int, void** out) {
  *out = nullptr;
  return SQLITE_OK;
}
int xUnfetch(sqlite3_file*, sqlite3_int64, void*) { return SQLITE_OK; }

const sqlite3_io_methods kMethods = {
    3,
    xClose,
    xRead,
    xWrite,
    xTruncate,
    xSync,
    xFileSize,
    xLock,
    xUnlock,
    xCheckReservedLock,
    xFileControl,
    xSectorSize,
    xDeviceCharacteristics,
    xShmMap,
    xShmLock,
    xShmBarrier,
    xShmUnmap,
    xFetch,
    xUnfetch,
};

int xOpen(sqlite3_vfs* vfs, const char* name, sqlite3_file* f, int flags, int* out_flags) {
  auto* owner = static_cast<SqliteFaultVfs*>(vfs->pAppData);
  FaultFile* ff = self(f);
  ff->base.pMethods = nullptr;
  ff->owner = owner;
  ff->real = reinterpret_cast<sqlite3_file*>(ff + 1);
  ff->real->pMethods = nullptr;
  std::strncpy(ff->path, name != nullptr ? name : "", sizeof ff->path - 1);
  ff->path[sizeof ff->path - 1] = '\0';
  const int rc = owner->real()->xOpen(owner->real(), name, ff->real, flags, out_flags);
  if (rc == SQLITE_OK) {
    ff->base.pMethods = &kMethods;
    owner->fileOpened();
  }
  return rc;
}

// Calls on the VFS itself go to the real one with the real one's handle (the
// unix VFS keeps its own state in pAppData).
sqlite3_vfs* realOf(sqlite3_vfs* vfs) {
  return static_cast<SqliteFaultVfs*>(vfs->pAppData)->real();
}
int xDelete(sqlite3_vfs* vfs, const char* name, int sync_dir) {
  if (!static_cast<SqliteFaultVfs*>(vfs->pAppData)->onDelete(name)) return SQLITE_IOERR_DELETE;
  return realOf(vfs)->xDelete(realOf(vfs), name, sync_dir);
}
int xAccess(sqlite3_vfs* vfs, const char* name, int flags, int* out) {
  return realOf(vfs)->xAccess(realOf(vfs), name, flags, out);
}
int xFullPathname(sqlite3_vfs* vfs, const char* name, int n, char* out) {
  return realOf(vfs)->xFullPathname(realOf(vfs), name, n, out);
}

}  // namespace

SqliteFaultVfs::SqliteFaultVfs(std::string name) : name_(std::move(name)) {
  real_ = sqlite3_vfs_find(nullptr);
  vfs_ = *real_;
  vfs_.iVersion = real_->iVersion;
  vfs_.szOsFile = static_cast<int>(sizeof(FaultFile)) + real_->szOsFile;
  vfs_.pNext = nullptr;
  vfs_.zName = name_.c_str();
  vfs_.pAppData = this;
  vfs_.xOpen = xOpen;
  vfs_.xDelete = xDelete;
  vfs_.xAccess = xAccess;
  vfs_.xFullPathname = xFullPathname;
  sqlite3_vfs_register(&vfs_, 1);
}

SqliteFaultVfs::~SqliteFaultVfs() {
  if (open_files_.load() != 0) {  // their callbacks would reach a destroyed object
    std::fprintf(stderr, "SqliteFaultVfs %s destroyed with %d files open\n", name_.c_str(),
                 open_files_.load());
    std::abort();
  }
  sqlite3_vfs_unregister(&vfs_);
  sqlite3_vfs_register(real_, 1);
}

void SqliteFaultVfs::arm(Fault fault, std::string path_part, int times) {
  std::lock_guard lock(mu_);
  path_part_ = std::move(path_part);
  remaining_ = times;
  fault_.store(static_cast<int>(fault));
}

bool SqliteFaultVfs::shouldFail(Fault kind, const char* path) {
  if (fault_.load() != static_cast<int>(kind)) return false;  // the common case: no lock
  std::lock_guard lock(mu_);
  if (fault_.load() != static_cast<int>(kind) || remaining_ == 0) return false;
  if (!path_part_.empty() && std::strstr(path, path_part_.c_str()) == nullptr) return false;
  if (remaining_ > 0) --remaining_;
  failures_.fetch_add(1);
  return true;
}

void SqliteFaultVfs::track() {
  std::lock_guard lock(mu_);
  tracked_.clear();
  rollback_broken_ = false;
  crash_at_ = 0;
  operations_.store(0);
  crashed_.store(false);
  tracking_.store(true);
}

void SqliteFaultVfs::crashAt(uint64_t operation) {
  std::lock_guard lock(mu_);
  crash_at_ = operation;
}

bool SqliteFaultVfs::countOperation() {
  if (crashed_.load()) return false;
  const uint64_t n = operations_.fetch_add(1) + 1;
  if (crash_at_ != 0 && n >= crash_at_) {
    crashed_.store(true);
    return false;
  }
  return true;
}

bool SqliteFaultVfs::beforeChange(const char* path, sqlite3_file* f, int64_t offset, int64_t length,
                                  bool truncate) {
  // A nameless temp file (SQLite deletes it on close) survives no power cut.
  if (!tracking_.load() || path[0] == '\0') return true;
  std::lock_guard lock(mu_);
  if (!countOperation()) return false;
  sqlite3_int64 size = 0;
  if (f->pMethods->xFileSize(f, &size) != SQLITE_OK) size = 0;
  Undo u{offset, {}, size};
  // The bytes the change replaces that exist now: a truncation drops the tail.
  const int64_t end = truncate ? size : std::min<int64_t>(offset + length, size);
  if (end > offset) {
    u.before.resize(static_cast<size_t>(end - offset));
    if (f->pMethods->xRead(f, u.before.data(), static_cast<int>(u.before.size()), offset) !=
        SQLITE_OK) {
      rollback_broken_ = true;
    }
  }
  tracked_[path].undo.push_back(std::move(u));
  return true;
}

bool SqliteFaultVfs::onSync(const char* path, bool* pass) {
  *pass = true;
  if (!tracking_.load() || path[0] == '\0') return true;
  std::lock_guard lock(mu_);
  if (!countOperation()) return false;
  if (lie_.load()) {
    *pass = false;  // "done", and nothing made durable: the undo log stays
    return true;
  }
  tracked_[path].undo.clear();
  return true;
}

bool SqliteFaultVfs::onDelete(const char* path) {
  if (!tracking_.load()) return true;
  std::lock_guard lock(mu_);
  if (crashed_.load()) return false;
  tracked_.erase(path);  // gone; SQLite syncs the directory when it matters
  return true;
}

bool SqliteFaultVfs::powerCut(uint64_t keep_seed) {
  std::lock_guard lock(mu_);
  bool exact = !rollback_broken_;
  std::mt19937_64 rng(keep_seed);
  for (auto& [path, t] : tracked_) {
    // The oldest `keep` unsynced writes reached the disk; the rest did not.
    const size_t keep = keep_seed == 0 ? 0 : static_cast<size_t>(rng() % (t.undo.size() + 1));
    if (t.undo.size() == keep) continue;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      exact = exact && errno == ENOENT;  // deleted since: nothing to roll back
      continue;
    }
    for (size_t i = t.undo.size(); i-- > keep;) {
      const Undo& u = t.undo[i];
      if (::ftruncate(fd, u.size_before) != 0 ||
          (!u.before.empty() && ::pwrite(fd, u.before.data(), u.before.size(), u.offset) !=
                                    static_cast<ssize_t>(u.before.size()))) {
        exact = false;
        break;
      }
    }
    if (::fsync(fd) != 0) exact = false;
    ::close(fd);
  }
  for (const auto& [path, t] : tracked_) {
    // Shared memory (the WAL index) is gone with the power; SQLite rebuilds it.
    const bool wal = path.size() > 4 && path.compare(path.size() - 4, 4, "-wal") == 0;
    std::error_code ec;
    std::filesystem::remove((wal ? path.substr(0, path.size() - 4) : path) + "-shm", ec);
  }
  tracked_.clear();
  tracking_.store(false);
  crashed_.store(false);
  rollback_broken_ = false;
  crash_at_ = 0;
  return exact;
}

}  // namespace branchline::testing
