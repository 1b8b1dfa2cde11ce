// DurableBuffer throughput: append() and append -> formBatch -> ack of 60 groups
// of 1,000 records (~410-byte payloads), sealed (the product) and in clear (what
// sealing costs), each as a ratio to raw SQLite INSERTs measured in the same run:
// WAL + synchronous=FULL, integer keys in arrival order, 1,000 rows per
// transaction, one prepared INSERT. What the buffer adds on top (queueing, group
// commit, accounting, sealing) shows as the ratio.
#include <sqlite3.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "agent/buffer/durable_buffer.h"
#include "agent/buffer/testing/plaintext_buffer.h"
#include "bench/microbench.h"
#include "shared/core/clock.h"

namespace branchline::bench {
namespace {

using agent::BufferOptions;
using agent::DurableBuffer;
using protocol::WireRecord;

constexpr size_t kGroups = 60, kPerGroup = 1000, kPayloadBytes = 410;

// Group `g` of kPerGroup records: unique keys, a JSON-ish payload of kPayloadBytes.
std::vector<WireRecord> group(size_t g) {
  std::vector<WireRecord> out;
  out.reserve(kPerGroup);
  for (size_t i = 0; i < kPerGroup; ++i) {
    const uint64_t id = g * kPerGroup + i;
    std::string payload = R"({"external_id":"ext-)" + std::to_string(id) + R"(","pad":")";
    payload.resize(kPayloadBytes - 2, char('a' + id % 26));
    payload += "\"}";
    out.push_back({"customer", "k-" + std::to_string(id), 1764000000000000 + int64_t(id),
                   std::move(payload)});
  }
  return out;
}

Result<double> rawSqliteRowsPerSecond(const std::filesystem::path& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    sqlite3_close(db);
    return Status::internal("cannot open " + path.string());
  }
  sqlite3_exec(db,
               "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
               "CREATE TABLE t(id INTEGER PRIMARY KEY, source TEXT, record_key TEXT,"
               " ingested_at INTEGER, payload BLOB)",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* ins = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO t VALUES (?,?,?,?,?)", -1, &ins, nullptr);
  std::vector<std::vector<WireRecord>> groups;
  for (size_t g = 0; g < kGroups; ++g) groups.push_back(group(g));
  int64_t id = 0, rows = 0;
  const int64_t t0 = steadyMicros();
  for (const auto& g : groups) {
    sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    for (const auto& r : g) {
      sqlite3_bind_int64(ins, 1, ++id);
      sqlite3_bind_text(ins, 2, r.source.data(), int(r.source.size()), SQLITE_STATIC);
      sqlite3_bind_text(ins, 3, r.key.data(), int(r.key.size()), SQLITE_STATIC);
      sqlite3_bind_int64(ins, 4, r.ingested_at_us);
      sqlite3_bind_blob(ins, 5, r.payload.data(), int(r.payload.size()), SQLITE_STATIC);
      if (sqlite3_step(ins) == SQLITE_DONE) ++rows;
      sqlite3_reset(ins);
    }
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  const int64_t elapsed = steadyMicros() - t0;
  sqlite3_finalize(ins);
  sqlite3_close(db);
  if (rows != id) return Status::internal("raw SQLite baseline: an INSERT failed");
  return double(rows) * 1e6 / double(elapsed);
}

struct BufferRates {
  double append = 0, cycle = 0;
};

// append() and append -> formBatch -> ack rates of one buffer, sealed or in clear.
Result<BufferRates> measureBuffer(const BufferOptions& options, bool in_clear) {
  auto buf = in_clear ? agent::testing::openPlaintextBuffer(options) : DurableBuffer::open(options);
  if (!buf.isOk()) return buf.status();
  const agent::BatchLimits limits{.max_records = kPerGroup, .max_bytes = 1 << 30};

  int64_t t0 = steadyMicros();
  for (size_t g = 0; g < kGroups; ++g) BL_RETURN_IF_ERROR((*buf)->append(group(g), {}));
  const int64_t append_us = steadyMicros() - t0;

  // Drain what the first phase left, so the cycle measures steady state.
  while (true) {
    auto b = (*buf)->formBatch(limits, 1);
    if (!b.isOk()) return b.status();
    if (!b->has_value()) break;
    BL_RETURN_IF_ERROR((*buf)->ack((*b)->seq));
  }
  std::vector<std::vector<WireRecord>> groups;
  for (size_t g = 0; g < kGroups; ++g) groups.push_back(group(kGroups + g));
  t0 = steadyMicros();
  for (auto& g : groups) {
    BL_RETURN_IF_ERROR((*buf)->append(std::move(g), {}));
    auto b = (*buf)->formBatch(limits, 1);
    if (!b.isOk()) return b.status();
    if (!b->has_value() || (*b)->records.size() != kPerGroup) {
      return Status::internal("formBatch did not return the group just appended");
    }
    BL_RETURN_IF_ERROR((*buf)->ack((*b)->seq));
  }
  const int64_t cycle_us = steadyMicros() - t0;
  const double n = double(kGroups * kPerGroup);
  return BufferRates{n * 1e6 / double(append_us), n * 1e6 / double(cycle_us)};
}

}  // namespace

int runBufferBench() {
  ScratchDir raw_dir, sealed_dir, clear_dir;
  if (raw_dir.path().empty() || sealed_dir.path().empty() || clear_dir.path().empty()) {
    return failed("buffer", Status::internal("cannot create a temp dir"));
  }
  auto raw_rate = rawSqliteRowsPerSecond(raw_dir.path() / "raw.db");
  if (!raw_rate.isOk()) return failed("buffer", raw_rate.status());
  BufferOptions sealed, clear;
  sealed.path = sealed_dir.path() / "buffer.db";
  clear.path = clear_dir.path() / "buffer.db";
  auto sealed_rates = measureBuffer(sealed, /*in_clear=*/false);
  if (!sealed_rates.isOk()) return failed("buffer", sealed_rates.status());
  auto clear_rates = measureBuffer(clear, /*in_clear=*/true);
  if (!clear_rates.isOk()) return failed("buffer", clear_rates.status());
  const double raw = *raw_rate;
  std::printf("[ throughput  ] raw SQLite INSERT (same run, 1,000 rows/txn): %.0f rows/s\n", raw);
  for (auto [name, r] : {std::pair{"sealed", *sealed_rates}, std::pair{"clear ", *clear_rates}}) {
    std::printf(
        "[ throughput  ] %s append(): %.0f records/s (1,000-record groups, %zu-byte payloads), "
        "%.2fx raw\n",
        name, r.append, kPayloadBytes, r.append / raw);
    std::printf("[ throughput  ] %s append -> formBatch -> ack: %.0f records/s, %.2fx raw\n", name,
                r.cycle, r.cycle / raw);
  }
  std::printf("[ throughput  ] sealing costs: append %.1f%%, cycle %.1f%%\n",
              100.0 * (1.0 - sealed_rates->append / clear_rates->append),
              100.0 * (1.0 - sealed_rates->cycle / clear_rates->cycle));
  return 0;
}

}  // namespace branchline::bench
