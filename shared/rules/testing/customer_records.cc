#include "shared/rules/testing/customer_records.h"

#include <cstdio>

namespace branchline::rules::testing {

std::vector<boost::json::object> makeCustomers(size_t n) {
  static const char* kNames[] = {"Ada Lovelace",      "José Álvarez", "Grace Hopper",
                                 "Zoë Müller",        "Alan Turing",  "Linus Torvalds",
                                 "Margaret Hamilton", "李小龙"};
  static const char* kChannels[] = {"web", "Mobile", "PARTNER", "office"};
  static const char* kPhones[] = {"(415) 555-0132", "+44 20 7946 0958", "415.555.0132",
                                  "+1 212 555 0199"};
  std::vector<boost::json::object> out;
  out.reserve(n);
  char buf[64];
  for (size_t i = 0; i < n; ++i) {
    boost::json::object r;
    std::snprintf(buf, sizeof buf, "CRM-%08zu", i);
    r["external_id"] = buf;
    r["name"] = kNames[i % 8];
    std::snprintf(buf, sizeof buf, " Customer.%zu@Example-Mail.com ", i);
    r["email"] = buf;
    r["channel"] = kChannels[i % 4];
    std::snprintf(buf, sizeof buf, "2026-%02zu-%02zuT%02zu:%02zu:%02zu%s", 1 + i % 12, 1 + i % 28,
                  i % 24, i % 60, (i * 7) % 60, i % 2 ? "Z" : ".250+02:00");
    r["created_at"] = buf;
    if (i % 2 == 0) r["phone"] = kPhones[i % 4];
    if (i % 3 == 0) r["consent_marketing"] = i % 2 == 0;
    if (i % 5 == 0) r["notes"] = "Prefers email contact; renewal due next quarter.";
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace branchline::rules::testing
