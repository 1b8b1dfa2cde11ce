// Test helper: a private Mosquitto broker on a free loopback port, with its own
// config and data dir under /tmp, for tests that need a real broker. Never
// touches the system instance on 1883. The process is killed (SIGTERM, then
// SIGKILL) and the directory removed when the object goes away.
//
//   MosquittoProcess broker;
//   ASSERT_TRUE(broker.start()) << broker.error();
//   client_options.broker_uris = {broker.uri()};
//   broker.kill9(); broker.restart();   // same port, same persistence dir
//
// TLS mode (README "Security"): call useTls() before start(); the listener
// then demands a client certificate signed by `ca_file`, takes its CN as the
// user name and client id, refuses anonymous clients and enforces the access
// policy (pki::mosquittoDynamicSecurity()), and uri() is ssl://127.0.0.1:<port>.
// The broker limits are those `branchline up` writes (pki::mosquittoLimits()).
//
// Anonymous + ACL mode: useAnonymousAcl(text) before start() keeps plain TCP and
// anonymous clients but enforces the ACL text's anonymous rules (the `topic`
// lines before any `user` line). addConfig(lines) appends broker settings
// (e.g. "max_packet_size 10000\n"), after the limits, so they override them.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "shared/pki/broker_config.h"

namespace branchline::mqtt::testing {

class MosquittoProcess {
 public:
  MosquittoProcess() = default;
  MosquittoProcess(const MosquittoProcess&) = delete;
  MosquittoProcess& operator=(const MosquittoProcess&) = delete;
  ~MosquittoProcess() {
    stop();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // Picks a free port, writes the config and starts the broker; false (see
  // error()) if it does not accept connections within 10 s.
  bool start() {
    if (dir_.empty()) {
      std::string tmpl = "/tmp/bl-mosquitto-XXXXXX";
      if (::mkdtemp(tmpl.data()) == nullptr) return fail("mkdtemp failed");
      dir_ = tmpl;
    }
    if (port_ == 0) port_ = freePort();
    if (port_ == 0) return fail("no free loopback port");
    std::ofstream conf(dir_ / "mosquitto.conf", std::ios::trunc);
    conf << "listener " << port_ << " 127.0.0.1\n";
    if (tls_) {
      std::ofstream policy(dir_ / "dynamic-security.json", std::ios::trunc);
      policy << policy_text_;
      policy.close();
      if (!policy) return fail("cannot write the access policy file");
      auto plugin = pki::dynamicSecurityPlugin();
      if (!plugin.isOk()) return fail(plugin.status().message());
      tls_files_.policy_file = (dir_ / "dynamic-security.json").string();
      tls_files_.plugin_file = *plugin;
      conf << pki::mosquittoTlsSettings(tls_files_);
    } else {
      conf << "allow_anonymous true\n";
      if (!anonymous_acl_.empty()) {
        std::ofstream acl(dir_ / "acl", std::ios::trunc);
        acl << anonymous_acl_;
        acl.close();
        if (!acl) return fail("cannot write the acl file");
        conf << "acl_file " << (dir_ / "acl").string() << "\n";
      }
    }
    conf << "persistence true\n"
         << "persistence_location " << dir_.string() << "/\n"
         << pki::mosquittoLimits() << extra_config_ << "log_dest file " << dir_.string()
         << "/mosquitto.log\n";
    // Run as whoever we are: as root Mosquitto would otherwise switch to the
    // `mosquitto` user, which cannot write our private dir.
    if (const passwd* pw = ::getpwuid(::geteuid()); pw != nullptr)
      conf << "user " << pw->pw_name << "\n";
    conf.close();
    if (!conf) return fail("cannot write mosquitto.conf");
    return launch();
  }

  // Starts the broker again on the same port and persistence dir.
  bool restart() {
    stop();
    return launch();
  }

  // SIGHUP: Mosquitto 2.0 re-reads its config, certificates, ACL and CRL.
  void reload() {
    if (pid_ > 0) ::kill(pid_, SIGHUP);
  }

  // Crashes the broker: no chance to save its state.
  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // SIGTERM, then SIGKILL after 3 s.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 300; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    kill9();
  }

  // Before start(): TLS with client certificates and this access policy
  // (mosquittoDynamicSecurity() text), and a revocation list when `crl_file`
  // is given. The broker runs as the current user, so 0600 key files are fine.
  void useTls(std::string ca_file, std::string cert_file, std::string key_file,
              std::string policy_text, std::string crl_file = "") {
    tls_ = true;
    tls_files_.crl_file = std::move(crl_file);
    tls_files_.ca_file = std::move(ca_file);
    tls_files_.cert_file = std::move(cert_file);
    tls_files_.key_file = std::move(key_file);
    policy_text_ = std::move(policy_text);
  }
  // The broker's process id (0 when it is not running), e.g. for its memory use.
  pid_t pid() const { return pid_ > 0 ? pid_ : 0; }

  // Before start(): plain TCP, anonymous clients confined by this ACL text.
  void useAnonymousAcl(std::string acl_text) { anonymous_acl_ = std::move(acl_text); }
  // Before start(): more mosquitto.conf lines, each ending in a newline.
  void addConfig(const std::string& lines) { extra_config_ += lines; }
  // The broker's log so far (connects, refusals, disconnects).
  std::string log() const {
    std::ifstream in(dir_ / "mosquitto.log");
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // Before start(): listen on this port instead of a free one (e.g. a port a
  // client was told about before the broker existed).
  void setPort(uint16_t port) { port_ = port; }
  uint16_t port() const { return port_; }
  std::string uri() const {
    return (tls_ ? "ssl://127.0.0.1:" : "tcp://127.0.0.1:") + std::to_string(port_);
  }
  const std::filesystem::path& dir() const { return dir_; }
  const std::string& error() const { return error_; }
  bool running() const { return pid_ > 0; }

  static uint16_t freePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    uint16_t port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
    ::close(fd);
    return port;
  }

  static bool accepts(uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
  }

 private:
  bool launch() {
    const std::string conf = (dir_ / "mosquitto.conf").string();
    const std::string out = (dir_ / "mosquitto.out").string();
    pid_t pid = ::fork();
    if (pid < 0) return fail("fork failed");
    if (pid == 0) {
      // Its startup chatter goes to a file beside its log, not into the test's output.
      const int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
        ::close(fd);
      }
      ::execl("/usr/sbin/mosquitto", "mosquitto", "-c", conf.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    pid_ = pid;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      if (accepts(port_)) return true;
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return fail("mosquitto exited at startup; see " + (dir_ / "mosquitto.log").string());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    stop();
    return fail("mosquitto did not accept on port " + std::to_string(port_) + " within 10 s");
  }

  bool fail(std::string message) {
    error_ = std::move(message);
    return false;
  }

  std::filesystem::path dir_;
  bool tls_ = false;
  pki::BrokerTlsFiles tls_files_;
  std::string policy_text_;
  std::string anonymous_acl_;
  std::string extra_config_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
  std::string error_;
};

}  // namespace branchline::mqtt::testing
