#include "shared/pki/certificate_expiry.h"

#include <ctime>

#include "shared/pki/pki.h"

namespace branchline::pki {

double daysLeft(int64_t not_after, int64_t now_unix_seconds) {
  return static_cast<double>(not_after - now_unix_seconds) / 86400.0;
}

Status addCertificateExpiryGauge(MetricsRegistry& metrics, const std::string& name,
                                 const std::filesystem::path& certificate_file,
                                 std::function<int64_t()> clock) {
  auto pem = readFile(certificate_file);
  if (!pem.isOk()) return pem.status();
  auto info = inspectCertificate(*pem);
  if (!info.isOk()) return info.status().withContext(certificate_file.string());
  if (!clock) clock = [] { return static_cast<int64_t>(::time(nullptr)); };
  metrics.callbackGauge(name, "Days until this process's TLS client certificate expires",
                        [not_after = info->not_after, clock = std::move(clock)] {
                          return daysLeft(not_after, clock());
                        });
  return Status::ok();
}

}  // namespace branchline::pki
