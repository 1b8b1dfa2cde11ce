#include "aggregator/store/testing/postgres_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

namespace branchline::testing {
namespace {

namespace fs = std::filesystem;

// A port the kernel just handed out on loopback; free unless someone races us.
int freeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string readTail(const fs::path& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > max_bytes ? s.substr(s.size() - max_bytes) : s;
}

// The pid in the first line of a postmaster.pid file, 0 when there is none.
pid_t postmasterPid(const fs::path& data) {
  std::ifstream pidfile(data / "postmaster.pid");
  long pid = 0;
  if (!(pidfile >> pid) || pid <= 1) return 0;
  return static_cast<pid_t>(pid);
}

// Field 4 (ppid) of /proc/<pid>/stat and whether the process still runs
// (exists and is not a zombie waiting to be reaped).
bool procStat(pid_t pid, pid_t* ppid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(in, text)) return false;
  // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(text.substr(close + 1));
  char state = 0;
  long parent = 0;
  rest >> state >> parent;
  if (ppid != nullptr) *ppid = static_cast<pid_t>(parent);
  return state != 'Z' && state != 'X';
}

struct ConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultCloser {
  void operator()(PGresult* r) const { PQclear(r); }
};

}  // namespace

Result<std::unique_ptr<PostgresServer>> PostgresServer::create(PostgresServerOptions options) {
  std::unique_ptr<PostgresServer> server(new PostgresServer());
  server->options_ = std::move(options);
  std::string tmpl = "/tmp/bl_pg_XXXXXX";
  if (!::mkdtemp(tmpl.data())) return Status::unavailable("mkdtemp failed");
  server->dir_ = tmpl;
  if (::geteuid() == 0) {
    // initdb and postgres refuse root: the data and socket dir belong to `postgres`.
    const passwd* pw = ::getpwnam("postgres");
    if (!pw) return Status::unavailable("running as root but there is no `postgres` user");
    if (::chown(server->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return Status::unavailable("chown " + server->dir_.string() + " to postgres failed");
    }
  }
  const fs::path data = server->dir_ / "data";
  BL_RETURN_IF_ERROR(
      server->run({(server->options_.bin_dir / "initdb").string(), "-D", data.string(), "-U",
                   "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"},
                  "initdb"));
  {
    // Appending as root keeps the file's owner; the server only reads it.
    std::ofstream conf(data / "postgresql.conf", std::ios::app);
    conf << "\n# branchline test server\n"
         << "listen_addresses = '127.0.0.1'\n"
         << "unix_socket_directories = '" << server->dir_.string() << "'\n"
         << "fsync = on\n"
         << "max_connections = 30\n"
         << "logging_collector = off\n";
    if (!conf) return Status::unavailable("cannot append to postgresql.conf");
  }
  // A racing process may take the port between our probe and the bind: try a few.
  Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    server->port_ = freeLoopbackPort();
    last = server->start();
    if (last) return server;
  }
  return last;
}

PostgresServer::~PostgresServer() {
  if (running_) (void)stop();
  if (!dir_.empty()) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
}

std::string PostgresServer::url(const std::string& database) const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" + database;
}

Status PostgresServer::start() {
  const std::string opts = "-p " + std::to_string(port_);
  Status s = run({(options_.bin_dir / "pg_ctl").string(), "-D", (dir_ / "data").string(), "-l",
                  (dir_ / "server.log").string(), "-o", opts, "-w", "-t",
                  std::to_string(options_.timeout.count()), "start"},
                 "pg_ctl start");
  if (!s) {
    // pg_ctl may leave a postmaster behind when it gives up waiting.
    running_ = true;
    (void)stop();
    return s;
  }
  running_ = true;
  return Status::ok();
}

Status PostgresServer::stop() {
  if (!running_) return Status::ok();
  Status s = run({(options_.bin_dir / "pg_ctl").string(), "-D", (dir_ / "data").string(), "-m",
                  "fast", "-w", "-t", std::to_string(options_.timeout.count()), "stop"},
                 "pg_ctl stop");
  if (!s) {
    // Kill only our own postmaster, named by its pid file.
    if (const pid_t pid = postmasterPid(dir_ / "data"); pid != 0) {
      ::kill(static_cast<pid_t>(pid), SIGKILL);
      for (int i = 0; i < 100 && ::kill(static_cast<pid_t>(pid), 0) == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
  }
  running_ = false;
  return s;
}

Status PostgresServer::kill9() {
  if (!running_) return Status::ok();
  const pid_t postmaster = postmasterPid(dir_ / "data");
  if (postmaster == 0) return Status::unavailable("kill9: no postmaster.pid in " + dir_.string());
  // Its children first: once the postmaster is gone they are reparented and
  // can no longer be told apart from anyone else's processes.
  std::vector<pid_t> victims{postmaster};
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    const pid_t pid = static_cast<pid_t>(std::atol(name.c_str()));
    pid_t ppid = 0;
    if (procStat(pid, &ppid) && ppid == postmaster) victims.push_back(pid);
  }
  for (pid_t pid : victims) ::kill(pid, SIGKILL);
  running_ = false;
  // The next postmaster refuses to start while an old backend still holds the
  // shared memory, so wait until every one has really gone.
  for (int i = 0; i < 200; ++i) {
    bool alive = false;
    for (pid_t pid : victims) alive = alive || procStat(pid, nullptr);
    if (!alive) {
      // A dead postmaster that nobody reaps stays a zombie, and the next one
      // would take its lock files (data dir and socket) for a live server's.
      if (postmasterPid(dir_ / "data") == postmaster) {
        fs::remove(dir_ / "data" / "postmaster.pid", ec);
      }
      fs::remove(dir_ / (".s.PGSQL." + std::to_string(port_) + ".lock"), ec);
      return Status::ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Status::unavailable("kill9: PostgreSQL processes still alive 10 s after SIGKILL");
}

std::string PostgresServer::logTail() const {
  return readTail(dir_ / "commands.log", 1500) + readTail(dir_ / "server.log", 1500);
}

// Runs one PostgreSQL binary (as `postgres` when we are root), output into
// commands.log, within options_.timeout; kills it past that.
Status PostgresServer::run(const std::vector<std::string>& args, const std::string& what) {
  std::vector<std::string> full;
  if (::geteuid() == 0) full = {"/usr/sbin/runuser", "-u", "postgres", "--"};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = (dir_ / "commands.log").string();
  const std::string cwd = dir_.string();

  pid_t pid = ::fork();
  if (pid < 0) return Status::unavailable(what + ": fork failed");
  if (pid == 0) {
    // Only async-signal-safe calls until exec.
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
      ::close(fd);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    // The postgres user may not be allowed into the test's working directory.
    if (::chdir(cwd.c_str()) != 0) ::_exit(126);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  const auto deadline =
      std::chrono::steady_clock::now() + options_.timeout + std::chrono::seconds(5);
  int wstatus = 0;
  for (;;) {
    pid_t r = ::waitpid(pid, &wstatus, WNOHANG);
    if (r == pid) break;
    if (r < 0) return Status::unavailable(what + ": waitpid failed");
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &wstatus, 0);
      return Status::unavailable(what + ": timed out\n" + logTail());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return Status::unavailable(what + " failed (status " + std::to_string(wstatus) + ")\n" +
                               logTail());
  }
  return Status::ok();
}

Status PostgresServer::createDatabase(const std::string& name) {
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') {
      return Status::invalid("database name `" + name + "`: letters, digits and _ only");
    }
  }
  auto r = query("postgres", "CREATE DATABASE " + name);
  return r.status();
}

Result<std::vector<std::vector<std::string>>> PostgresServer::query(const std::string& database,
                                                                    const std::string& sql) {
  std::unique_ptr<PGconn, ConnCloser> conn(PQconnectdb(url(database).c_str()));
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    return Status::unavailable("connect " + url(database) + ": " +
                               (conn ? PQerrorMessage(conn.get()) : "out of memory"));
  }
  PQsetNoticeProcessor(
      conn.get(), [](void*, const char*) {}, nullptr);
  std::unique_ptr<PGresult, ResultCloser> res(PQexec(conn.get(), sql.c_str()));
  ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    return Status::internal("`" + sql + "`: " + PQerrorMessage(conn.get()));
  }
  std::vector<std::vector<std::string>> rows;
  for (int r = 0; r < PQntuples(res.get()); ++r) {
    std::vector<std::string> row;
    for (int c = 0; c < PQnfields(res.get()); ++c) {
      row.emplace_back(PQgetisnull(res.get(), r, c) ? "<null>" : PQgetvalue(res.get(), r, c));
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

Result<int64_t> PostgresServer::count(const std::string& database, const std::string& sql) {
  auto rows = query(database, sql);
  if (!rows) return rows.status();
  if (rows->empty() || rows->front().empty()) return Status::notFound("`" + sql + "`: no rows");
  return static_cast<int64_t>(std::strtoll(rows->front().front().c_str(), nullptr, 10));
}

}  // namespace branchline::testing
