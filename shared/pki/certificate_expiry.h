// Certificate expiry as a metric (README "Metrics"): every process that holds a
// certificate exports the days left until its notAfter, so an alert fires
// weeks before a fleet identity stops connecting.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "shared/core/metrics.h"
#include "shared/core/status.h"

namespace branchline::pki {

// Days (fractional; negative once expired) from `now_unix_seconds` to `not_after`.
double daysLeft(int64_t not_after, int64_t now_unix_seconds);

// Registers the callback gauge `name` ("bl_agent_certificate_expiry_days"):
// daysLeft(notAfter of `certificate_file`, clock()) at every render. The file
// is read once, here (a renewed certificate is taken at the next restart).
// `clock` returns Unix seconds; empty means the system clock. kNotFound /
// kInvalidArgument (naming the file) when it is missing or not a certificate.
Status addCertificateExpiryGauge(MetricsRegistry& metrics, const std::string& name,
                                 const std::filesystem::path& certificate_file,
                                 std::function<int64_t()> clock = {});

}  // namespace branchline::pki
