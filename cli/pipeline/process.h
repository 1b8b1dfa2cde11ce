// A child process owned by the `branchline` command: started with an explicit
// argv, environment, working directory and log file, and always reaped. The
// guarantee: a Process never outlives its owner (the destructor kills and reaps
// it), and signalling one child never touches another (signals go to the pid,
// never to the process group; a pid is never signalled after it was reaped).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shared/core/status.h"

namespace branchline::cli {

struct ProcessSpec {
  std::string executable;                                // path to the binary (no PATH search)
  std::vector<std::string> args;                         // argv[1..]
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing in) ours
  std::string working_dir;                               // "" keeps ours
  std::string log_path;  // stdout and stderr are appended here; "" keeps ours
  // SIGKILL the child if the spawning *thread* exits (Linux PR_SET_PDEATHSIG), so
  // a crashed test or CLI leaves no orphans. Spawn from a long-lived thread.
  bool die_with_parent = true;
};

class Process {
 public:
  // Starts the child. kNotFound/kPermissionDenied/kInternal name the executable and
  // the errno of a failed exec (reported back from the child before it exits).
  static Result<Process> spawn(const ProcessSpec& spec);

  Process() = default;
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process();  // SIGKILL and reap if still running

  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0; }
  // Reaps without blocking; false once the child has exited.
  bool isRunning();
  // Sends `sig` to this child only. kNotFound once it has exited.
  Status signal(int sig);
  // Waits up to `timeout` for the child to exit; true once it has.
  bool waitFor(std::chrono::milliseconds timeout);
  // SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns the wait status.
  int terminate(std::chrono::milliseconds grace);
  // SIGKILL and reap. Returns the wait status.
  int kill();
  // The raw wait status once exited.
  std::optional<int> waitStatus() const { return wait_status_; }

 private:
  explicit Process(pid_t pid) : pid_(pid) {}
  bool reap(bool block);

  pid_t pid_ = -1;
  std::optional<int> wait_status_;
};

// "exited with status 3", "killed by signal 9 (Killed)".
std::string describeWaitStatus(int wait_status);

}  // namespace branchline::cli
