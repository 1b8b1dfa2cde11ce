// SqliteFaultVfs: a SQLite VFS for tests that wraps the default one and, when
// armed, fails writes or fsyncs the way a failing disk does (EIO) or a full one
// (ENOSPC), so the buffer's and the central store's answers to those errors are
// tested on the real classes. While it lives it is SQLite's default VFS: every
// connection the process opens goes through it.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

namespace branchline::testing {

class SqliteFaultVfs {
 public:
  // What an armed fault makes the next matching calls return.
  enum class Fault {
    kNone,
    kSyncEio,    // xSync: SQLITE_IOERR_FSYNC (the data did not reach the disk)
    kWriteEio,   // xWrite: SQLITE_IOERR_WRITE
    kWriteFull,  // xWrite: SQLITE_FULL (ENOSPC)
  };

  // Registers itself as the default VFS; `name` must be unique in the process.
  explicit SqliteFaultVfs(std::string name = "bl-fault");
  ~SqliteFaultVfs();  // unregisters; the previous default is the default again
  SqliteFaultVfs(const SqliteFaultVfs&) = delete;
  SqliteFaultVfs& operator=(const SqliteFaultVfs&) = delete;

  // Fails the matching calls on files whose path contains `path_part` ("" for
  // any file), `times` times (-1: until disarm()).
  void arm(Fault fault, std::string path_part = "", int times = 1);
  void disarm() { arm(Fault::kNone); }

  // Calls failed since construction, and fsyncs passed through.
  uint64_t failures() const { return failures_.load(); }
  uint64_t syncs() const { return syncs_.load(); }

  // Internal (the C callbacks): whether this call on `path` fails.
  bool shouldFail(Fault kind, const char* path);
  void countSync() { syncs_.fetch_add(1); }
  sqlite3_vfs* real() const { return real_; }

 private:
  std::string name_;
  sqlite3_vfs vfs_{};
  sqlite3_vfs* real_ = nullptr;
  std::atomic<int> fault_{0};  // read without mu_ first: unarmed calls take no lock
  std::mutex mu_;
  int remaining_ = 0;  // under mu_, as path_part_
  std::string path_part_;
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> syncs_{0};
};

}  // namespace branchline::testing
