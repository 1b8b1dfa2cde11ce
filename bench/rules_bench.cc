// RuleEngine::apply() records/s on one core, the default customer schema, with
// and without the phone field (libphonenumber is the expensive part).
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "bench/microbench.h"
#include "shared/rules/rule_engine.h"
#include "shared/rules/testing/customer_records.h"

namespace branchline::bench {
namespace {

namespace json = boost::json;
using rules::CompiledSchema;
using rules::Outcome;
using rules::RuleEngine;

// CPU time of the calling thread: on a shared 2-core machine wall time mostly
// measures the neighbours, CPU time measures the engine.
double threadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Records per CPU-second of apply() over `records`, running for about `budget`
// CPU-seconds (and never more than 4x that in wall time); an error for a record
// the schema refuses (the sample records are all valid).
Result<double> measure(const RuleEngine& engine, const CompiledSchema& schema,
                       const std::vector<json::object>& records, double budget) {
  size_t done = 0;
  const double cpu0 = threadCpuSeconds();
  const auto wall0 = std::chrono::steady_clock::now();
  while (threadCpuSeconds() - cpu0 < budget &&
         std::chrono::steady_clock::now() - wall0 < std::chrono::duration<double>(4 * budget)) {
    for (const json::object& r : records) {
      Outcome o = engine.apply(schema, r);
      if (!o.ok()) {
        std::string why;
        for (const rules::FieldError& e : o.errors) why += " " + e.field + ": " + e.reason + ";";
        return Status::internal("a sample record was refused:" + why);
      }
    }
    done += records.size();
  }
  return static_cast<double>(done) / (threadCpuSeconds() - cpu0);
}

}  // namespace

int runRulesBench() {
  auto engine = RuleEngine::create({rules::defaultCustomerSchema()});
  if (!engine.isOk()) return failed("rules", engine.status());
  const CompiledSchema& customer = *(*engine)->find("customer");
  const std::vector<json::object> records = rules::testing::makeCustomers(20000);
  std::vector<json::object> no_phone = records;
  for (json::object& r : no_phone) r.erase("phone");
  auto mixed = measure(**engine, customer, records, 1.0);
  if (!mixed.isOk()) return failed("rules", mixed.status());
  auto without = measure(**engine, customer, no_phone, 0.5);
  if (!without.isOk()) return failed("rules", without.status());
  std::printf(
      "[ throughput ] rule engine, customer schema, half with phone: %.0f records/s "
      "per core\n[ throughput ] rule engine, customer schema, no phone:        "
      "%.0f records/s per core\n",
      *mixed, *without);
  return 0;
}

}  // namespace branchline::bench
