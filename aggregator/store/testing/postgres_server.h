// PostgresServer: a private, throwaway PostgreSQL for tests. It runs
// initdb into a fresh temp dir, listens only on 127.0.0.1 on a free port (its
// unix socket in the same temp dir, trust auth, fsync on), and is stopped
// (pg_ctl -m fast, then SIGKILL of its own postmaster if that fails) and
// deleted when the object goes. When the test runs as root (as in CI), every
// PostgreSQL binary runs as the `postgres` system user via runuser, because
// initdb and postgres refuse to run as root.
//
// stop() and start() keep the data and the port, so a test can take the
// server away under a client and bring it back.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "shared/core/status.h"

namespace branchline::testing {

struct PostgresServerOptions {
  std::filesystem::path bin_dir = "/usr/lib/postgresql/15/bin";
  std::chrono::seconds timeout{30};  // per initdb / pg_ctl call
};

class PostgresServer {
 public:
  // initdb + start. kUnavailable with the tail of the server log when it
  // cannot (binaries missing, no `postgres` user when root, no free port).
  static Result<std::unique_ptr<PostgresServer>> create(PostgresServerOptions options = {});
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  Status start();  // pg_ctl start -w on the same data dir and port
  Status stop();   // pg_ctl stop -m fast -w; SIGKILL if that fails
  // A crash: SIGKILL to the postmaster and every backend at once, as when the
  // machine loses power or the OOM killer takes the service's whole cgroup;
  // returns once they are all gone. start() then runs crash recovery (WAL replay).
  Status kill9();
  bool running() const { return running_; }

  int port() const { return port_; }
  const std::filesystem::path& dir() const { return dir_; }
  // postgresql://postgres@127.0.0.1:<port>/<database>
  std::string url(const std::string& database = "postgres") const;

  // CREATE DATABASE <name> (a plain identifier: letters, digits, _).
  Status createDatabase(const std::string& name);
  // Runs `sql` on `database`; every value as text, NULL as "<null>".
  Result<std::vector<std::vector<std::string>>> query(const std::string& database,
                                                      const std::string& sql);
  // The first column of the first row of query() as an integer.
  Result<int64_t> count(const std::string& database, const std::string& sql);

 private:
  PostgresServer() = default;
  Status run(const std::vector<std::string>& args, const std::string& what);
  std::string logTail() const;

  PostgresServerOptions options_;
  std::filesystem::path dir_;  // temp dir: data/, server.log, commands.log, socket
  int port_ = 0;
  bool running_ = false;
};

}  // namespace branchline::testing
