#include "cli/pipeline/netns.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/pipeline/process.h"
#include "shared/core/log.h"

namespace branchline::cli {
namespace {

// Runs `ip <args>`; on failure the error quotes what ip printed.
Status runIp(const std::vector<std::string>& args) {
  const std::string ip = ipCommandPath();
  if (ip.empty()) return Status::notFound("no `ip` command (install the iproute2 package)");
  char tmpl[] = "/tmp/bl-ip-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  if (fd < 0) return Status::internal("mkstemp for the output of ip");
  ::close(fd);
  ProcessSpec spec;
  spec.executable = ip;
  spec.args = args;
  spec.log_path = tmpl;
  auto proc = Process::spawn(spec);
  if (!proc.isOk()) {
    std::filesystem::remove(tmpl);
    return proc.status().withContext("ip");
  }
  const bool exited = proc->waitFor(std::chrono::seconds(10));
  const int status = exited ? proc->waitStatus().value_or(-1) : proc->kill();
  std::ifstream in(tmpl);
  std::stringstream out;
  out << in.rdbuf();
  std::filesystem::remove(tmpl);
  if (exited && WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::ok();
  std::string command = "ip";
  for (const auto& a : args) command += " " + a;
  std::string text = out.str();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const std::string why = command + ": " + (exited ? describeWaitStatus(status) : "timed out") +
                          (text.empty() ? "" : " (" + text + ")");
  if (text.find("Operation not permitted") != std::string::npos ||
      text.find("Permission denied") != std::string::npos) {
    return Status(Code::kPermissionDenied, why);
  }
  return Status::unavailable(why);
}

}  // namespace

std::string ipCommandPath() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

Result<std::unique_ptr<NetworkNamespace>> NetworkNamespace::create(int index) {
  if (index < 1 || index > 120) {
    return Status::invalid("network namespace index " + std::to_string(index) +
                           " is not in 1..120");
  }
  if (::geteuid() != 0) {
    return Status(Code::kPermissionDenied,
                  "network namespaces need root (CAP_NET_ADMIN); this process is not root");
  }
  std::unique_ptr<NetworkNamespace> ns(new NetworkNamespace());
  const std::string pid = std::to_string(::getpid());
  const std::string tag = pid + "x" + std::to_string(index);
  const std::string net = "10." + std::to_string(100 + ::getpid() % 100) + ".";
  ns->name_ = "bl-" + pid + "-" + std::to_string(index);
  // Only this first step tells "namespaces are not permitted here"
  // (kPermissionDenied, which callers may skip on); any later failure is a
  // fault of ours or of the machine and stays an error.
  if (Status s = runIp({"netns", "add", ns->name_}); !s.isOk()) {
    return Status(Code::kPermissionDenied, "cannot create a network namespace: " + s.message());
  }
  ns->created_ = true;  // from here the destructor cleans up

  // One veth pair: host end `host_if` with <prefix>.1/30, inner end <prefix>.2/30.
  auto link = [&](const std::string& host_if, const std::string& inner_if,
                  const std::string& prefix) -> Status {
    BL_RETURN_IF_ERROR(runIp({"link", "add", host_if, "type", "veth", "peer", "name", inner_if}));
    ns->host_ifs_.push_back(host_if);
    BL_RETURN_IF_ERROR(runIp({"link", "set", inner_if, "netns", ns->name_}));
    BL_RETURN_IF_ERROR(runIp({"addr", "add", prefix + ".1/30", "dev", host_if}));
    BL_RETURN_IF_ERROR(runIp({"link", "set", host_if, "up"}));
    BL_RETURN_IF_ERROR(runIp({"-n", ns->name_, "addr", "add", prefix + ".2/30", "dev", inner_if}));
    return runIp({"-n", ns->name_, "link", "set", inner_if, "up"});
  };
  const std::string uplink = net + std::to_string(index) + ".0";
  const std::string local = net + std::to_string(index + 128) + ".0";
  BL_RETURN_IF_ERROR(link("blh" + tag, "bln" + tag, uplink.substr(0, uplink.size() - 2)));
  ns->uplink_inner_if_ = "bln" + tag;
  BL_RETURN_IF_ERROR(link("bll" + tag, "blm" + tag, local.substr(0, local.size() - 2)));
  BL_RETURN_IF_ERROR(runIp({"-n", ns->name_, "link", "set", "lo", "up"}));
  ns->uplink_host_ = uplink.substr(0, uplink.size() - 1) + "1";
  ns->uplink_inner_ = uplink.substr(0, uplink.size() - 1) + "2";
  ns->local_inner_ = local.substr(0, local.size() - 1) + "2";
  log::info("netns_created", {{"netns", ns->name_},
                              {"uplink_host", ns->uplink_host_},
                              {"uplink_inner", ns->uplink_inner_},
                              {"local_inner", ns->local_inner_}});
  return ns;
}

NetworkNamespace::~NetworkNamespace() {
  if (!created_) return;
  // The inner ends die with the namespace and take their peers (the host ends) along.
  if (Status s = runIp({"netns", "del", name_}); !s.isOk()) {
    log::warn("netns_delete_failed", {{"netns", name_}, {"error", s.toString()}});
  }
  // A host end whose peer never moved in is left behind otherwise.
  for (const auto& host_if : host_ifs_) {
    if (std::filesystem::exists("/sys/class/net/" + host_if)) (void)runIp({"link", "del", host_if});
  }
}

std::vector<std::string> NetworkNamespace::execPrefix() const {
  return {ipCommandPath(), "netns", "exec", name_};
}

Status NetworkNamespace::cut() {
  BL_RETURN_IF_ERROR(runIp({"link", "set", host_ifs_.front(), "down"}));
  cut_ = true;
  return Status::ok();
}

Status NetworkNamespace::heal() {
  BL_RETURN_IF_ERROR(runIp({"link", "set", host_ifs_.front(), "up"}));
  cut_ = false;
  // Addresses that went unanswered during the cut are cached as unreachable
  // for a while; forget them, so the first packet after the heal goes out.
  BL_RETURN_IF_ERROR(runIp({"neigh", "flush", "dev", host_ifs_.front()}));
  BL_RETURN_IF_ERROR(runIp({"-n", name_, "neigh", "flush", "dev", uplink_inner_if_}));
  // The carrier comes back a moment after `up`; until then both ends answer
  // "network unreachable". Healed means packets pass again.
  const std::string state = "/sys/class/net/" + host_ifs_.front() + "/operstate";
  for (int i = 0; i < 100; ++i) {
    std::ifstream in(state);
    std::string word;
    if (in >> word && word == "up") return Status::ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return Status::unavailable("heal " + name_ + ": " + host_ifs_.front() +
                             " did not come up within 5 s");
}

}  // namespace branchline::cli
