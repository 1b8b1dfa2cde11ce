// Prometheus-style metrics: counters and gauges registered once at startup,
// updated lock-free on the hot path, rendered in the text exposition format
// for `GET /metrics`. Counter names end in `_total` by convention.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace branchline {

class Counter {
 public:
  void inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void add(int64_t d) { value_.fetch_add(d, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// A counter family with one label (e.g. rejected records by `reason`). Label
// values are created on first use; keep their set small and bounded.
class LabeledCounter {
 public:
  explicit LabeledCounter(std::string label) : label_(std::move(label)) {}
  Counter& with(const std::string& value);
  std::map<std::string, uint64_t> snapshot() const;
  const std::string& label() const { return label_; }

 private:
  std::string label_;
  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<Counter>> counters_;
};

// Owns the metric objects of one process; references returned stay valid for
// the registry's life. Register at startup; render from any thread.
class MetricsRegistry {
 public:
  Counter& counter(const std::string& name, const std::string& help);
  Gauge& gauge(const std::string& name, const std::string& help);
  LabeledCounter& labeledCounter(const std::string& name, const std::string& help,
                                 const std::string& label);
  // A gauge computed when rendered (e.g. buffer depth read from the buffer).
  void callbackGauge(const std::string& name, const std::string& help,
                     std::function<double()> read);
  std::string renderPrometheus() const;

 private:
  struct Entry {
    std::string name, help, type;
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<LabeledCounter> labeled;
    std::function<double()> callback;
  };
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<Entry>> entries_;
};

}  // namespace branchline
