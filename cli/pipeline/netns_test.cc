// NetworkNamespace against the real kernel: a process inside reaches the host
// end, nothing gets through while the link is cut, it does again once healed,
// and nothing is left behind. Skipped (with the reason) where namespaces are
// not permitted, as the chaos run's network faults are.
#include "cli/pipeline/netns.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "cli/pipeline/process.h"

namespace branchline::cli {
namespace {

// A TCP listener on `address`, any free port; the socket closes with the object.
struct Listener {
  int fd = -1;
  int port = 0;
  explicit Listener(const std::string& address) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
    socklen_t len = sizeof a;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 16) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
      port = ntohs(a.sin_port);
    }
  }
  ~Listener() { ::close(fd); }
};

// Exit status of a TCP connect from inside the namespace (bash's /dev/tcp),
// given up after 2 s: 0 when it got through.
int connectFromInside(const NetworkNamespace& ns, const std::string& address, int port) {
  ProcessSpec spec;
  auto prefix = ns.execPrefix();
  spec.executable = prefix.front();
  spec.args.assign(prefix.begin() + 1, prefix.end());
  spec.args.insert(spec.args.end(), {"timeout", "2", "bash", "-c",
                                     "exec 3<>/dev/tcp/" + address + "/" + std::to_string(port)});
  spec.log_path = "/dev/null";
  auto proc = Process::spawn(spec);
  if (!proc.isOk()) return -1;
  if (!proc->waitFor(std::chrono::seconds(10))) return -2;
  const int status = proc->waitStatus().value_or(-1);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -3;
}

// A TCP connect from the host to `address` (port 9: nothing listens, so a
// refusal, exit 1, proves the packet got there and back) within 2 s. Returns 0
// when the peer answered, refused or accepted; 124 when it timed out.
int pingFromHost(const std::string& address) {
  ProcessSpec spec;
  spec.executable = "/usr/bin/timeout";
  spec.args = {"2", "bash", "-c", "exec 3<>/dev/tcp/" + address + "/9; exit 0"};
  spec.log_path = "/dev/null";
  auto proc = Process::spawn(spec);
  if (!proc.isOk()) return -1;
  if (!proc->waitFor(std::chrono::seconds(10))) return -2;
  const int status = proc->waitStatus().value_or(-1);
  if (!WIFEXITED(status)) return -3;
  return WEXITSTATUS(status) == 124 ? 124 : 0;
}

bool namespaceListed(const std::string& name) {
  std::ifstream probe("/var/run/netns/" + name);
  return probe.good();
}

// Whether this machine lets us make a namespace at all, asked of `ip` itself
// (so that a fault in NetworkNamespace is a failure, not a skip): "" if yes,
// else what `ip netns add` said.
std::string namespacesUnavailable() {
  const std::string ip = ipCommandPath();
  if (ip.empty()) return "no `ip` command (iproute2)";
  if (::geteuid() != 0) return "not root (network namespaces need CAP_NET_ADMIN)";
  const std::string probe = "bl-probe-" + std::to_string(::getpid());
  const std::string out = "/tmp/" + probe + ".out";
  const int rc = std::system((ip + " netns add " + probe + " >" + out + " 2>&1").c_str());
  std::ifstream in(out);
  std::stringstream said;
  said << in.rdbuf();
  std::remove(out.c_str());
  if (rc != 0) return "`ip netns add` failed: " + said.str();
  (void)std::system((ip + " netns del " + probe + " >/dev/null 2>&1").c_str());
  return "";
}

TEST(NetworkNamespaceTest, CutDropsEverythingAndHealRestoresIt) {
  if (const std::string why = namespacesUnavailable(); !why.empty()) {
    GTEST_SKIP() << "network namespaces not permitted here: " << why;
  }
  auto created = NetworkNamespace::create(1);
  ASSERT_TRUE(created.isOk()) << created.status().toString();
  std::string name;
  {
    auto ns = std::move(created).value();
    name = ns->name();
    EXPECT_TRUE(namespaceListed(name));
    Listener host(ns->uplinkHostAddress());
    ASSERT_GT(host.port, 0);
    // The host reaching in over the local link: a listener inside on the local address.
    const std::string local = ns->localInnerAddress();

    EXPECT_EQ(connectFromInside(*ns, ns->uplinkHostAddress(), host.port), 0);
    // Loopback inside is the namespace's own: the host's listener is not there.
    EXPECT_NE(connectFromInside(*ns, "127.0.0.1", host.port), 0);

    ASSERT_TRUE(ns->cut().isOk());
    EXPECT_TRUE(ns->isCut());
    EXPECT_NE(connectFromInside(*ns, ns->uplinkHostAddress(), host.port), 0);
    // The local link stays up: the inside end still answers a ping from here.
    EXPECT_EQ(pingFromHost(local), 0) << local;

    ASSERT_TRUE(ns->heal().isOk());
    EXPECT_FALSE(ns->isCut());
    EXPECT_EQ(connectFromInside(*ns, ns->uplinkHostAddress(), host.port), 0);
  }
  EXPECT_FALSE(namespaceListed(name)) << name << " left behind";
}

TEST(NetworkNamespaceTest, IndexOutOfRangeIsRefused) {
  auto bad = NetworkNamespace::create(0);
  ASSERT_FALSE(bad.isOk());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace branchline::cli
