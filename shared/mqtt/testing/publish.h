// Test helper: publishes through an mqtt::Client and, when Paho's in-flight
// window is full (a test's burst of publishes), waits for room instead of
// failing. Tests only: product code backs off through its own loop.
#pragma once

#include <chrono>
#include <string>
#include <thread>

#include "shared/mqtt/mqtt_client.h"

namespace branchline::mqtt::testing {

// Retries kResourceExhausted for up to `patience`; any other result is returned as is.
inline Status publishWaitingForRoom(Client& client, const std::string& topic,
                                    const std::string& payload, int qos = 1,
                                    std::chrono::milliseconds patience = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  for (;;) {
    Status s = client.publish(topic, payload, qos);
    if (s.code() != Code::kResourceExhausted || std::chrono::steady_clock::now() > deadline) {
      return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace branchline::mqtt::testing
