// Test helper for the spool attack of issue 14: someone who can write to a
// spool folder replaces the name the spool saw as a regular file, between its
// look and its open, with a symlink to a private file or with a FIFO.
#pragma once

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

namespace branchline::agent::testing {

// Puts swap number `i` at `target`, atomically (made under a dotfile name,
// then renamed over it): i % 3 == 0 a hard link to `decoy` (same inode, so
// its size and mtime look stable across polls), 1 a symlink to `secret`, 2 a
// FIFO. Then waits a few hundred microseconds, varying with `i`.
inline void swapName(const std::filesystem::path& target, const std::filesystem::path& decoy,
                     const std::filesystem::path& secret, int i) {
  const std::filesystem::path tmp = target.parent_path() / ".swap.tmp";
  ::unlink(tmp.c_str());
  switch (i % 3) {
    case 0:
      ::link(decoy.c_str(), tmp.c_str());
      break;
    case 1:
      ::symlink(secret.c_str(), tmp.c_str());
      break;
    default:
      ::mkfifo(tmp.c_str(), 0600);
      break;
  }
  ::rename(tmp.c_str(), target.c_str());
  std::this_thread::sleep_for(std::chrono::microseconds(100 + (i * 37) % 600));
}

}  // namespace branchline::agent::testing
