#include "shared/core/failpoint.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "shared/core/log.h"

namespace branchline::failpoint {
namespace {

struct Armed {
  uint64_t at = 1;  // the pass that kills
  std::atomic<uint64_t> passes{0};
};

// Parsed once from BRANCHLINE_FAILPOINTS; never changes afterwards, so the
// lookups need no lock.
std::map<std::string, Armed, std::less<>>& armed() {
  static std::map<std::string, Armed, std::less<>>* points = [] {
    auto* m = new std::map<std::string, Armed, std::less<>>();
    const char* env = std::getenv("BRANCHLINE_FAILPOINTS");
    std::string_view rest = env == nullptr ? "" : env;
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
      if (item.empty()) continue;
      uint64_t at = 1;
      if (const size_t amp = item.find('@'); amp != std::string_view::npos) {
        at = std::strtoull(std::string(item.substr(amp + 1)).c_str(), nullptr, 10);
        if (at == 0) at = 1;
        item = item.substr(0, amp);
      }
      (*m)[std::string(item)].at = at;
    }
    if (!m->empty()) log::warn("failpoints_armed", {{"spec", std::string(env)}});
    return m;
  }();
  return *points;
}

}  // namespace

void hit(std::string_view name) {
  auto& points = armed();
  if (points.empty()) return;
  auto it = points.find(name);
  if (it == points.end()) return;
  const uint64_t pass = it->second.passes.fetch_add(1) + 1;
  if (pass != it->second.at) return;
  log::warn("failpoint_hit", {{"name", std::string(name)}, {"pass", pass}});
  std::fflush(nullptr);
  ::kill(::getpid(), SIGKILL);
  ::_exit(137);  // not reached
}

}  // namespace branchline::failpoint
