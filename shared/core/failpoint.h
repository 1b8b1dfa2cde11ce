// Failpoints: named places where a test makes the process die at once
// (SIGKILL to itself), to aim a crash at one window, e.g. after the agent's
// commit and before its HTTP answer (README "Failpoints"). Compiled in only
// with -DBRANCHLINE_FAILPOINTS=ON (the CI builds); a package build has none,
// so nothing can arm them there. Armed by the environment:
//   BRANCHLINE_FAILPOINTS="agent.after_commit_before_reply@3,aggregator.after_commit_before_ack"
// kills the process the 3rd time the first point is reached (default: the 1st).
#pragma once

#include <string_view>

namespace branchline::failpoint {

// Whether this build has failpoints at all.
constexpr bool kCompiledIn =
#ifdef BRANCHLINE_FAILPOINTS_ENABLED
    true;
#else
    false;
#endif

// Counts a pass through `name`; SIGKILLs the process when it is the armed
// pass. Logs `failpoint_hit` (to stderr, flushed) first. Cheap when unarmed.
void hit(std::string_view name);

}  // namespace branchline::failpoint

#ifdef BRANCHLINE_FAILPOINTS_ENABLED
#define BL_FAILPOINT(name) ::branchline::failpoint::hit(name)
#else
#define BL_FAILPOINT(name) ((void)0)
#endif
