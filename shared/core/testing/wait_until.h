// Test helper: poll a condition until it holds or a deadline passes, so a test
// waits for an outcome instead of sleeping a fixed time and hoping.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace branchline::testing {

// True as soon as `done()` is; false if it still is not after `timeout`
// (checked once more at the deadline). Polls every `every`.
inline bool waitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout,
                      std::chrono::milliseconds every = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(every);
  }
  return done();
}

}  // namespace branchline::testing
