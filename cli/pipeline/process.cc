#include "cli/pipeline/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <thread>

#include "shared/core/clock.h"

extern char** environ;

namespace branchline::cli {
namespace {

// argv/envp as the NUL-terminated arrays execve wants, built before fork: the
// child of a multi-threaded parent may only make async-signal-safe calls, so
// nothing in it allocates.
struct CStringArray {
  std::vector<std::string> storage;
  std::vector<char*> pointers;
  void seal() {
    pointers.clear();
    for (auto& s : storage) pointers.push_back(s.data());
    pointers.push_back(nullptr);
  }
};

CStringArray buildEnv(const ProcessSpec& spec) {
  CStringArray env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    std::string_view name = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& [k, v] : spec.env) overridden |= (k == name);
    if (!overridden) env.storage.emplace_back(entry);
  }
  for (const auto& [k, v] : spec.env) env.storage.push_back(k + "=" + v);
  env.seal();
  return env;
}

void writeAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    size -= static_cast<size_t>(n);
  }
}

// Runs in the forked child: async-signal-safe calls only. Reports a failure's
// errno on `err_fd` (close-on-exec, so a successful exec reports nothing).
[[noreturn]] void execChild(const char* exe, char* const* argv, char* const* envp, const char* dir,
                            const char* log, bool die_with_parent, pid_t parent, int err_fd) {
  auto fail = [err_fd](int stage) {
    int report[2] = {stage, errno};
    writeAll(err_fd, report, sizeof(report));
    _exit(127);
  };
  if (die_with_parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(1);
    if (::getppid() != parent) _exit(127);  // the parent died before prctl
  }
  // Its own process group: a terminal's Ctrl-C then reaches only the parent
  // (`branchline up`), which stops the children in order (agents first). The
  // death signal above still takes the child down if the parent dies.
  if (::setpgid(0, 0) != 0) fail(6);
  // The parent may block or handle signals (`branchline up` blocks SIGINT and
  // SIGTERM to sigwait for them); the child starts with the defaults.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0 || ::dup2(devnull, STDIN_FILENO) < 0) fail(2);
  if (log != nullptr) {
    int fd = ::open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) fail(3);
    if (::dup2(fd, STDOUT_FILENO) < 0 || ::dup2(fd, STDERR_FILENO) < 0) fail(3);
  }
  if (dir != nullptr && ::chdir(dir) != 0) fail(4);
  ::execve(exe, argv, envp);
  fail(5);
  _exit(127);
}

}  // namespace

Result<Process> Process::spawn(const ProcessSpec& spec) {
  if (spec.executable.empty()) return Status::invalid("spawn: no executable given");
  CStringArray argv;
  argv.storage.push_back(spec.executable);
  for (const auto& a : spec.args) argv.storage.push_back(a);
  argv.seal();
  CStringArray envp = buildEnv(spec);
  const char* dir = spec.working_dir.empty() ? nullptr : spec.working_dir.c_str();
  const char* log = spec.log_path.empty() ? nullptr : spec.log_path.c_str();

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return Status::internal(std::string("spawn ") + spec.executable + ": pipe: " + strerror(errno));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return Status::internal("spawn " + spec.executable + ": fork: " + strerror(err));
  }
  if (pid == 0) {
    ::close(pipe_fds[0]);
    execChild(spec.executable.c_str(), argv.pointers.data(), envp.pointers.data(), dir, log,
              spec.die_with_parent, parent, pipe_fds[1]);
  }
  ::close(pipe_fds[1]);
  Process child(pid);
  int report[2] = {0, 0};
  ssize_t n;
  do {
    n = ::read(pipe_fds[0], report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  ::close(pipe_fds[0]);
  if (n <= 0) return child;  // the pipe closed on exec: the child runs

  child.reap(/*block=*/true);
  std::string stage;
  switch (report[0]) {
    case 1:
      stage = "prctl";
      break;
    case 2:
      stage = "open /dev/null";
      break;
    case 3:
      stage = "open log " + spec.log_path;
      break;
    case 4:
      stage = "chdir " + spec.working_dir;
      break;
    case 6:
      stage = "setpgid";
      break;
    default:
      stage = "exec";
      break;
  }
  std::string message = "spawn " + spec.executable + ": " + stage + ": " + strerror(report[1]);
  if (report[1] == ENOENT) return Status::notFound(message);
  if (report[1] == EACCES) return Status(Code::kPermissionDenied, message);
  return Status::internal(message);
}

Process::Process(Process&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), wait_status_(std::exchange(other.wait_status_, {})) {}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0 && !wait_status_) kill();
    pid_ = std::exchange(other.pid_, -1);
    wait_status_ = std::exchange(other.wait_status_, {});
  }
  return *this;
}

Process::~Process() {
  if (pid_ > 0 && !wait_status_) kill();
}

bool Process::reap(bool block) {
  if (pid_ <= 0 || wait_status_) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    wait_status_ = status;
    return true;
  }
  // ECHILD: someone else reaped it (should not happen: we own our children).
  assert(!(r < 0 && errno == ECHILD) && "child reaped behind Process's back");
  return false;
}

bool Process::isRunning() { return pid_ > 0 && !reap(/*block=*/false); }

Status Process::signal(int sig) {
  if (!isRunning()) return Status::notFound("process " + std::to_string(pid_) + " has exited");
  if (::kill(pid_, sig) != 0) {
    return Status::internal("kill " + std::to_string(pid_) + ": " + strerror(errno));
  }
  return Status::ok();
}

bool Process::waitFor(std::chrono::milliseconds timeout) {
  const int64_t deadline = steadyMicros() + timeout.count() * 1000;
  int64_t sleep_us = 1000;
  while (!reap(/*block=*/false)) {
    if (steadyMicros() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    sleep_us = std::min<int64_t>(sleep_us * 2, 50'000);
  }
  return true;
}

int Process::terminate(std::chrono::milliseconds grace) {
  if (pid_ <= 0) return 0;
  if (signal(SIGTERM).isOk() && waitFor(grace)) return *wait_status_;
  return kill();
}

int Process::kill() {
  if (pid_ <= 0) return 0;
  if (!wait_status_) {
    ::kill(pid_, SIGKILL);
    reap(/*block=*/true);
  }
  return *wait_status_;
}

std::string describeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status))
    return "exited with status " + std::to_string(WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    int sig = WTERMSIG(wait_status);
    return "killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "wait status " + std::to_string(wait_status);
}

}  // namespace branchline::cli
