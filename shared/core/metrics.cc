#include "shared/core/metrics.h"

#include <cmath>
#include <cstdio>

namespace branchline {
namespace {

std::string escapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

std::string formatDouble(double v) {
  if (std::isnan(v)) return "NaN";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

Counter& LabeledCounter::with(const std::string& value) {
  std::lock_guard lock(mutex_);
  auto& slot = counters_[value];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

std::map<std::string, uint64_t> LabeledCounter::snapshot() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, uint64_t> out;
  for (const auto& [k, c] : counters_) out[k] = c->value();
  return out;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  auto e = std::make_unique<Entry>();
  e->name = name;
  e->help = help;
  e->type = "counter";
  e->counter = std::make_unique<Counter>();
  Counter& ref = *e->counter;
  entries_.push_back(std::move(e));
  return ref;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help) {
  std::lock_guard lock(mutex_);
  auto e = std::make_unique<Entry>();
  e->name = name;
  e->help = help;
  e->type = "gauge";
  e->gauge = std::make_unique<Gauge>();
  Gauge& ref = *e->gauge;
  entries_.push_back(std::move(e));
  return ref;
}

LabeledCounter& MetricsRegistry::labeledCounter(const std::string& name, const std::string& help,
                                                const std::string& label) {
  std::lock_guard lock(mutex_);
  auto e = std::make_unique<Entry>();
  e->name = name;
  e->help = help;
  e->type = "counter";
  e->labeled = std::make_unique<LabeledCounter>(label);
  LabeledCounter& ref = *e->labeled;
  entries_.push_back(std::move(e));
  return ref;
}

void MetricsRegistry::callbackGauge(const std::string& name, const std::string& help,
                                    std::function<double()> read) {
  std::lock_guard lock(mutex_);
  auto e = std::make_unique<Entry>();
  e->name = name;
  e->help = help;
  e->type = "gauge";
  e->callback = std::move(read);
  entries_.push_back(std::move(e));
}

std::string MetricsRegistry::renderPrometheus() const {
  std::lock_guard lock(mutex_);
  std::string out;
  for (const auto& e : entries_) {
    out += "# HELP " + e->name + " " + e->help + "\n";
    out += "# TYPE " + e->name + " " + e->type + "\n";
    if (e->counter) {
      out += e->name + " " + std::to_string(e->counter->value()) + "\n";
    } else if (e->gauge) {
      out += e->name + " " + std::to_string(e->gauge->value()) + "\n";
    } else if (e->labeled) {
      for (const auto& [value, n] : e->labeled->snapshot()) {
        out += e->name + "{" + e->labeled->label() + "=\"" + escapeLabel(value) + "\"} " +
               std::to_string(n) + "\n";
      }
    } else if (e->callback) {
      out += e->name + " " + formatDouble(e->callback()) + "\n";
    }
  }
  return out;
}

}  // namespace branchline
