// Realistic customer records for the default customer schema, shared by the rule
// engine's tests and its benchmark (bench/): mixed case, offsets, phone formats
// (every second record has one), some non-ASCII. Deterministic: record i is the
// same in every run.
#pragma once

#include <boost/json/object.hpp>
#include <cstddef>
#include <vector>

namespace branchline::rules::testing {

std::vector<boost::json::object> makeCustomers(size_t n);

}  // namespace branchline::rules::testing
