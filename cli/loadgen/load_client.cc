#include "cli/loadgen/load_client.h"

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <charconv>
#include <cmath>
#include <thread>

#include "cli/net/http_client.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"

namespace branchline::loadgen {
namespace {

constexpr size_t kMaxReasons = 64;  // distinct reject reasons kept; the rest are "other"

struct WorkerStats {
  LoadStats s;
  std::vector<uint32_t> latencies_us;
};

// Shared by the workers: which records are next, and when the next batch may go.
struct Dispatcher {
  const LoadOptions& options;
  int64_t start_us;
  int64_t deadline_us;  // 0: none
  std::atomic<uint64_t> next_index{0};
  std::atomic<int64_t> next_send_us;

  // Claims the next batch: [first, first+count). False when the run is over.
  bool claim(uint64_t& first, uint64_t& count) {
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed)) return false;
    if (deadline_us != 0 && steadyMicros() >= deadline_us) return false;
    const uint64_t b = static_cast<uint64_t>(options.batch);
    first = next_index.fetch_add(b, std::memory_order_relaxed);
    count = b;
    if (options.records != 0) {
      if (first >= options.records) return false;
      count = std::min(b, options.records - first);
    }
    if (options.rate > 0) {
      // Pace by reserving a send slot proportional to the batch size.
      const int64_t slot_us = static_cast<int64_t>(static_cast<double>(count) * 1e6 / options.rate);
      const int64_t at = next_send_us.fetch_add(slot_us, std::memory_order_relaxed);
      const int64_t now = steadyMicros();
      if (at > now) {
        if (deadline_us != 0 && at >= deadline_us) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(at - now));
      }
    }
    return true;
  }
};

int64_t retryAfterMicros(const std::string& header) {
  unsigned secs = 1;
  if (!header.empty()) {
    auto [p, ec] = std::from_chars(header.data(), header.data() + header.size(), secs);
    if (ec != std::errc()) secs = 1;
  }
  // "Retry-After: 0" still deserves a pause, or we would spin on a full buffer.
  return std::clamp<int64_t>(int64_t{secs} * 1'000'000, 50'000, 30'000'000);
}

// Applies a 200 answer's counts and per-record errors to the stats.
void account(const std::string& body, const std::vector<GeneratedRecord>& batch, WorkerStats& w,
             std::vector<uint64_t>& accepted_originals) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(body, ec);
  const boost::json::object* obj = ec ? nullptr : v.if_object();
  std::vector<bool> rejected(batch.size(), false);
  uint64_t rejected_count = 0;
  if (obj != nullptr) {
    if (const auto* errors = obj->if_contains("errors"); errors && errors->is_array()) {
      for (const auto& e : errors->get_array()) {
        const auto* eo = e.if_object();
        if (eo == nullptr) continue;
        const auto* idx = eo->if_contains("index");
        if (idx != nullptr && idx->is_int64() && idx->get_int64() >= 0 &&
            static_cast<size_t>(idx->get_int64()) < batch.size() &&
            !rejected[static_cast<size_t>(idx->get_int64())]) {
          rejected[static_cast<size_t>(idx->get_int64())] = true;
          ++rejected_count;
        }
        std::string reason;
        if (const auto* f = eo->if_contains("field"); f && f->is_string()) {
          reason = std::string(f->get_string());
        }
        reason += ": ";
        if (const auto* r = eo->if_contains("reason"); r && r->is_string()) {
          reason += std::string(r->get_string());
        }
        auto& reasons = w.s.rejected_by_reason;
        if (reasons.size() >= kMaxReasons && !reasons.contains(reason)) reason = "other";
        ++reasons[reason];
      }
    }
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    const GeneratedRecord& r = batch[i];
    if (rejected[i]) {
      if (r.valid) ++w.s.unexpected_rejects;
    } else {
      if (!r.valid) ++w.s.unexpected_accepts;
      if (r.valid) accepted_originals.push_back(r.original);
    }
  }
  w.s.rejected += rejected_count;
  w.s.accepted += batch.size() - rejected_count;
}

void runWorker(const LoadOptions& options, Dispatcher& d, const CustomerGenerator& gen,
               const cli::Url& url, const std::string& token, WorkerStats& w) {
  cli::HttpConnection conn(url.host, url.port,
                           cli::HttpClientOptions{.bearer_token = token,
                                                  .tls = url.tls,
                                                  .ca_file = options.ca_file,
                                                  .cert_file = options.cert_file,
                                                  .key_file = options.key_file});
  std::string target = url.target;
  if (target.empty() || target.back() != '/') target.push_back('/');
  target += "v1/records/" + options.source;
  if (target.rfind("//", 0) == 0) target.erase(0, 1);
  const std::string content_type = options.ndjson ? "application/x-ndjson" : "application/json";

  std::vector<GeneratedRecord> batch(static_cast<size_t>(options.batch));
  std::vector<uint64_t> accepted_originals;
  std::vector<uint64_t> failed_originals;
  std::string body;
  uint64_t first = 0, count = 0;
  auto failed = [&] {
    w.s.failed_records += count;
    for (uint64_t i = 0; i < count; ++i) {
      if (batch[i].valid) failed_originals.push_back(batch[i].original);
    }
  };
  while (d.claim(first, count)) {
    batch.resize(count);
    body.clear();
    if (!options.ndjson) body.push_back('[');
    for (uint64_t i = 0; i < count; ++i) {
      gen.generate(first + i, batch[i]);
      if (i > 0 && !options.ndjson) body.push_back(',');
      body += batch[i].json;
      if (options.ndjson) body.push_back('\n');
      if (batch[i].duplicate) ++w.s.duplicates_sent;
      if (batch[i].valid) {
        ++w.s.valid_sent;
      } else {
        ++w.s.invalid_sent;
      }
    }
    if (!options.ndjson) body.push_back(']');
    w.s.records_sent += count;

    const int64_t give_up_at = steadyMicros() + options.give_up_after.count() * 1000;
    int transport_failures = 0;
    while (true) {
      const int64_t t0 = steadyMicros();
      auto res = conn.request("POST", target, content_type, body, options.request_timeout);
      const int64_t took = steadyMicros() - t0;
      ++w.s.requests;
      w.latencies_us.push_back(static_cast<uint32_t>(std::min<int64_t>(took, UINT32_MAX)));
      if (!res.isOk()) {
        ++w.s.transport_errors;
        // The agent may have committed the batch before the connection broke;
        // resending is safe because the central store deduplicates by key.
        // An agent being restarted refuses connections for a few seconds: keep
        // trying until the request's own time budget is spent.
        ++transport_failures;
        if (steadyMicros() >= give_up_at) {
          log::warn("loadgen_request_failed", {{"url", url.host + ":" + std::to_string(url.port)},
                                               {"first_record", first},
                                               {"error", res.status().message()}});
          failed();
          break;
        }
        w.s.resent_after_error += count;
        std::this_thread::sleep_for(
            std::chrono::milliseconds(std::min(100 * transport_failures, 1000)));
        continue;
      }
      ++w.s.http_status[res->status];
      if (res->status == 200) {
        account(res->body, batch, w, accepted_originals);
        break;
      }
      if (res->status == 503 && steadyMicros() < give_up_at) {
        ++w.s.retries_503;
        std::this_thread::sleep_for(std::chrono::microseconds(retryAfterMicros(res->retry_after)));
        continue;
      }
      ++w.s.http_errors;
      failed();
      break;
    }
  }
  std::sort(accepted_originals.begin(), accepted_originals.end());
  accepted_originals.erase(std::unique(accepted_originals.begin(), accepted_originals.end()),
                           accepted_originals.end());
  w.s.accepted_unique = std::move(accepted_originals);
  std::sort(failed_originals.begin(), failed_originals.end());
  failed_originals.erase(std::unique(failed_originals.begin(), failed_originals.end()),
                         failed_originals.end());
  w.s.failed_unique = std::move(failed_originals);
}

double percentileMs(const std::vector<uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  i = std::clamp<size_t>(i, 1, sorted.size()) - 1;
  return sorted[i] / 1000.0;
}

void appendNumber(std::string& out, double v) {
  char buf[32];
  int n = std::snprintf(buf, sizeof(buf), "%.3f", v);
  out.append(buf, static_cast<size_t>(n));
}

}  // namespace

std::string LoadStats::toJson() const {
  std::string out = "{";
  auto num = [&out](const char* k, uint64_t v) {
    out += "\"";
    out += k;
    out += "\":" + std::to_string(v) + ",";
  };
  auto dbl = [&out](const char* k, double v) {
    out += "\"";
    out += k;
    out += "\":";
    appendNumber(out, v);
    out += ",";
  };
  dbl("seconds", seconds);
  num("requests", requests);
  num("records_sent", records_sent);
  num("accepted", accepted);
  num("rejected", rejected);
  num("failed_records", failed_records);
  num("resent_after_error", resent_after_error);
  num("valid_sent", valid_sent);
  num("duplicates_sent", duplicates_sent);
  num("invalid_sent", invalid_sent);
  num("accepted_unique", accepted_unique.size());
  num("unexpected_rejects", unexpected_rejects);
  num("unexpected_accepts", unexpected_accepts);
  num("retries_503", retries_503);
  num("transport_errors", transport_errors);
  num("http_errors", http_errors);
  dbl("records_per_s", recordsPerSecond());
  out += "\"latency_ms\":{";
  appendNumber((out += "\"p50\":", out), latency_p50_ms);
  appendNumber((out += ",\"p99\":", out), latency_p99_ms);
  appendNumber((out += ",\"max\":", out), latency_max_ms);
  out += "},\"http_status\":{";
  bool first = true;
  for (const auto& [status, n] : http_status) {
    if (!first) out += ",";
    first = false;
    out += "\"" + std::to_string(status) + "\":" + std::to_string(n);
  }
  out += "},\"rejected_by_reason\":{";
  first = true;
  for (const auto& [reason, n] : rejected_by_reason) {
    if (!first) out += ",";
    first = false;
    log::appendJsonString(out, reason);
    out += ":" + std::to_string(n);
  }
  out += "}}";
  return out;
}

Result<LoadStats> runLoad(const LoadOptions& options) {
  if (options.urls.empty()) return Status::invalid("loadgen: no --url given");
  if (options.tokens.size() > 1 && options.tokens.size() != options.urls.size()) {
    return Status::invalid("loadgen: give one --token for every --url, or one for all");
  }
  const std::string empty;
  if (options.records == 0 && options.seconds <= 0) {
    return Status::invalid("loadgen: give --records N or --seconds S");
  }
  if (options.concurrency < 1 || options.concurrency > 1024) {
    return Status::invalid("loadgen: --concurrency must be 1..1024");
  }
  if (options.batch < 1 || options.batch > 100000) {
    return Status::invalid("loadgen: --batch must be 1..100000");
  }
  const double dup = options.generator.duplicate_share, inv = options.generator.invalid_share;
  if (dup < 0 || inv < 0 || dup + inv > 1) {
    return Status::invalid("loadgen: --duplicates and --invalid must be fractions summing to <= 1");
  }
  if (options.rate < 0) return Status::invalid("loadgen: --rate must be >= 0");
  std::vector<cli::Url> urls;
  for (const auto& u : options.urls) {
    auto parsed = cli::parseUrl(u);
    if (!parsed.isOk()) return parsed.status();
    if (parsed->tls) {  // a TLS file that does not load fails here, not on every request
      cli::HttpConnection probe(parsed->host, parsed->port,
                                cli::HttpClientOptions{.tls = true,
                                                       .ca_file = options.ca_file,
                                                       .cert_file = options.cert_file,
                                                       .key_file = options.key_file});
      BL_RETURN_IF_ERROR(probe.prepare().withContext("loadgen --url " + u));
    }
    urls.push_back(std::move(parsed).value());
  }

  const CustomerGenerator gen(options.generator);
  const int64_t start = steadyMicros();
  Dispatcher d{options,
               start,
               options.seconds > 0 ? start + static_cast<int64_t>(options.seconds * 1e6) : 0,
               {},
               {start}};
  std::vector<WorkerStats> workers(static_cast<size_t>(options.concurrency));
  {
    std::vector<std::jthread> threads;
    for (int i = 0; i < options.concurrency; ++i) {
      threads.emplace_back([&, i] {
        const size_t u = static_cast<size_t>(i) % urls.size();
        const std::string& token = options.tokens.empty()       ? empty
                                   : options.tokens.size() == 1 ? options.tokens[0]
                                                                : options.tokens[u];
        runWorker(options, d, gen, urls[u], token, workers[static_cast<size_t>(i)]);
      });
    }
  }
  LoadStats total;
  total.seconds = static_cast<double>(steadyMicros() - start) / 1e6;
  std::vector<uint32_t> latencies;
  for (auto& w : workers) {
    const LoadStats& s = w.s;
    total.requests += s.requests;
    total.records_sent += s.records_sent;
    total.accepted += s.accepted;
    total.rejected += s.rejected;
    total.failed_records += s.failed_records;
    total.resent_after_error += s.resent_after_error;
    total.failed_unique.insert(total.failed_unique.end(), s.failed_unique.begin(),
                               s.failed_unique.end());
    total.valid_sent += s.valid_sent;
    total.duplicates_sent += s.duplicates_sent;
    total.invalid_sent += s.invalid_sent;
    total.unexpected_rejects += s.unexpected_rejects;
    total.unexpected_accepts += s.unexpected_accepts;
    total.retries_503 += s.retries_503;
    total.transport_errors += s.transport_errors;
    total.http_errors += s.http_errors;
    for (const auto& [k, n] : s.rejected_by_reason) total.rejected_by_reason[k] += n;
    for (const auto& [k, n] : s.http_status) total.http_status[k] += n;
    total.accepted_unique.insert(total.accepted_unique.end(), s.accepted_unique.begin(),
                                 s.accepted_unique.end());
    latencies.insert(latencies.end(), w.latencies_us.begin(), w.latencies_us.end());
  }
  std::sort(total.accepted_unique.begin(), total.accepted_unique.end());
  total.accepted_unique.erase(
      std::unique(total.accepted_unique.begin(), total.accepted_unique.end()),
      total.accepted_unique.end());
  std::sort(total.failed_unique.begin(), total.failed_unique.end());
  total.failed_unique.erase(std::unique(total.failed_unique.begin(), total.failed_unique.end()),
                            total.failed_unique.end());
  std::sort(latencies.begin(), latencies.end());
  total.latency_p50_ms = percentileMs(latencies, 0.50);
  total.latency_p99_ms = percentileMs(latencies, 0.99);
  total.latency_max_ms = latencies.empty() ? 0 : latencies.back() / 1000.0;
  return total;
}

}  // namespace branchline::loadgen
