// NetworkNamespace: a Linux network namespace of its own for one process (an
// agent in a chaos run), joined to the host by two veth pairs: the uplink,
// which leads to the central side (the broker), and the local link, where the
// office's own clients reach it. The uplink can be cut (its host end taken
// down: every packet either way is dropped, as when an office loses its line
// while its LAN keeps working) and healed again without touching anything else
// on the machine. Creating one needs
// CAP_NET_ADMIN; create() says so plainly when it is not permitted, and the
// caller skips the network faults.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "shared/core/status.h"

namespace branchline::cli {

class NetworkNamespace {
 public:
  // Namespace "bl-<pid>-<index>"; uplink host end "blh<pid>x<index>" with
  // 10.<100 + pid % 100>.<index>.1/30 and its inner end .2; local link the
  // same with <index + 128>; loopback up inside. `index` is 1..120. kPermissionDenied when
  // namespaces are not permitted here (not root, no CAP_NET_ADMIN, a container without them),
  // kNotFound without the `ip` command (Debian package iproute2).
  static Result<std::unique_ptr<NetworkNamespace>> create(int index);
  ~NetworkNamespace();  // deletes the namespace, and with it the veth pair
  NetworkNamespace(const NetworkNamespace&) = delete;
  NetworkNamespace& operator=(const NetworkNamespace&) = delete;

  const std::string& name() const { return name_; }
  const std::string& uplinkHostAddress() const { return uplink_host_; }    // host end
  const std::string& uplinkInnerAddress() const { return uplink_inner_; }  // inside
  // Where the process inside listens for local clients: never cut.
  const std::string& localInnerAddress() const { return local_inner_; }
  // argv prefix that runs a program inside: {"/usr/sbin/ip", "netns", "exec", name}.
  // `ip netns exec` execs the program, so the pid is the program's own.
  std::vector<std::string> execPrefix() const;

  Status cut();   // uplink's host end down
  Status heal();  // and up again
  bool isCut() const { return cut_; }

 private:
  NetworkNamespace() = default;

  std::string name_;
  std::vector<std::string> host_ifs_;  // uplink first
  std::string uplink_inner_if_;
  std::string uplink_host_, uplink_inner_, local_inner_;
  bool created_ = false;
  bool cut_ = false;
};

// The `ip` binary, found in /usr/sbin, /sbin, /usr/bin or /bin; "" if none.
std::string ipCommandPath();

}  // namespace branchline::cli
