// SqliteFaultVfs: a SQLite VFS for tests that wraps the default one and, when
// armed, fails writes or fsyncs the way a failing disk does (EIO) or a full one
// (ENOSPC), or cuts the power: from a chosen I/O operation on nothing reaches
// the disk, and powerCut() then undoes every write that no fsync had made
// durable, leaving the files a real power cut would. The buffer's and the
// central store's answers are so tested on the real classes. While it lives it
// is SQLite's default VFS: every connection the process opens goes through it.
#pragma once

#include <sqlite3.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

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

  // Power loss. track() starts keeping, per file, an undo log of the writes and
  // truncations since that file's last fsync; operations() counts writes,
  // truncations and fsyncs from then on. crashAt(n): the n-th operation and
  // every later write, truncation, fsync or delete fails (SQLITE_IOERR), as
  // if the machine had stopped there. After the connections are closed,
  // powerCut() rolls every tracked file back to its last fsync (a file never
  // synced is emptied), removes the -shm files and stops tracking. With a
  // non-zero `keep_seed` each file keeps a random prefix of its unsynced writes
  // instead (the disk wrote back some of them, in order). False when the
  // rollback could not be done exactly (the trial proves nothing).
  // lieAboutFsync(true): fsyncs report success without making anything
  // durable, which a power cut then shows (the stand-in for synchronous=OFF).
  void track();
  void crashAt(uint64_t operation);
  void lieAboutFsync(bool lie) { lie_.store(lie); }
  uint64_t operations() const { return operations_.load(); }
  bool crashed() const { return crashed_.load(); }
  bool powerCut(uint64_t keep_seed = 0);

  // Calls failed since construction.
  uint64_t failures() const { return failures_.load(); }

  // Internal (the C callbacks): whether this call on `path` fails.
  bool shouldFail(Fault kind, const char* path);
  sqlite3_vfs* real() const { return real_; }
  // Before a write or truncation of `path` (file `f` of the real VFS): notes
  // the bytes it replaces. False when the power is out (the call must fail).
  bool beforeChange(const char* path, sqlite3_file* f, int64_t offset, int64_t length,
                    bool truncate);
  // An fsync of `path`; false when the power is out. Sets *pass to whether to
  // call the real fsync.
  bool onSync(const char* path, bool* pass);
  bool onDelete(const char* path);
  void fileOpened() { open_files_.fetch_add(1); }
  void fileClosed() { open_files_.fetch_sub(1); }

 private:
  std::string name_;
  sqlite3_vfs vfs_{};
  sqlite3_vfs* real_ = nullptr;
  std::atomic<int> fault_{0};  // read without mu_ first: unarmed calls take no lock
  std::mutex mu_;
  int remaining_ = 0;  // under mu_, as path_part_
  std::string path_part_;
  std::atomic<uint64_t> failures_{0};

  struct Undo {
    int64_t offset;       // where the replaced bytes were
    std::string before;   // the bytes there (short at the end of the file)
    int64_t size_before;  // the file's size before the change
  };
  struct Tracked {
    std::vector<Undo> undo;  // since the last fsync, oldest first
  };
  std::atomic<bool> tracking_{false};
  std::atomic<bool> crashed_{false};
  std::atomic<bool> lie_{false};
  std::atomic<uint64_t> operations_{0};
  std::atomic<int> open_files_{0};
  bool rollback_broken_ = false;            // under mu_: a pre-image could not be read
  uint64_t crash_at_ = 0;                   // under mu_; 0: no crash armed
  std::map<std::string, Tracked> tracked_;  // under mu_, by path
  bool countOperation();                    // under mu_: false once crashed
};

}  // namespace branchline::testing
