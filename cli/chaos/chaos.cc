#include "cli/chaos/chaos.h"

#include <sqlite3.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <future>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>

#include "aggregator/store/testing/postgres_server.h"
#include "cli/loadgen/load_client.h"
#include "cli/loadgen/record_generator.h"
#include "cli/net/http_client.h"
#include "cli/pipeline/netns.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/rules/rule_engine.h"

namespace branchline::cli {
namespace {

double secondsSince(int64_t start_us) { return (steadyMicros() - start_us) / 1e6; }

bool cancelled(const ChaosOptions& o) { return o.cancel != nullptr && o.cancel->load(); }

// Sleeps `d`, waking early when the run is cancelled.
void sleepFor(std::chrono::milliseconds d, const ChaosOptions& o) {
  const int64_t until = steadyMicros() + d.count() * 1000;
  while (!cancelled(o) && steadyMicros() < until) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::clamp<int64_t>((until - steadyMicros()) / 1000, 1, 100)));
  }
}

// Sum of one metric's samples in Prometheus text; nullopt when absent.
std::optional<double> metricSum(const std::string& text, const std::string& name) {
  std::optional<double> sum;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    if (line.size() > name.size() && line[name.size()] != ' ' && line[name.size()] != '{') continue;
    const size_t sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    sum = sum.value_or(0) + std::strtod(line.c_str() + sp + 1, nullptr);
  }
  return sum;
}

// Every agent answers /metrics and holds no record in its buffer.
bool buffersEmpty(LocalPipeline& pipeline) {
  for (const auto& url : pipeline.agentUrls()) {
    auto res = httpGet(url + "/metrics", std::chrono::milliseconds(3000));
    if (!res.isOk() || res->status != 200) return false;
    auto v = metricSum(res->body, "bl_agent_buffer_records");
    if (!v || *v > 0) return false;
  }
  return true;
}

// What the central store holds.
struct StoreContents {
  std::set<std::string> keys;  // record keys of source `customer`
  uint64_t rows = 0;           // all rows of `records`
  uint64_t distinct = 0;       // distinct (source, record_key)
  int64_t ledger_stored = 0;   // sum(stored_records) of batch_ledger and batch_conflicts
  int64_t ledger_records = 0;  // sum(records) of both: every record delivery committed
};

// The questions asked of the central store, in both dialects.
constexpr const char* kKeysSql = "SELECT record_key FROM records WHERE source = 'customer'";
constexpr const char* kCountsSql =
    "SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT source, record_key FROM records) d), "
    "(SELECT COALESCE(SUM(stored_records), 0) FROM batch_ledger) + "
    "(SELECT COALESCE(SUM(stored_records), 0) FROM batch_conflicts), "
    "(SELECT COALESCE(SUM(records), 0) FROM batch_ledger) + "
    "(SELECT COALESCE(SUM(records), 0) FROM batch_conflicts) FROM records";

Result<StoreContents> readSqliteStore(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string why = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Status::unavailable("open central store " + path + ": " + why);
  }
  sqlite3_busy_timeout(db, 10000);
  StoreContents out;
  auto run = [&](const char* sql, auto&& row) -> Status {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, nullptr) != SQLITE_OK) {
      return Status::unavailable(std::string("central store: ") + sqlite3_errmsg(db) + " (" + sql +
                                 ")");
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) row(stmt);
    sqlite3_finalize(stmt);
    return rc == SQLITE_DONE ? Status::ok()
                             : Status::unavailable(std::string("central store: ") +
                                                   sqlite3_errmsg(db) + " (" + sql + ")");
  };
  Status s = run(kKeysSql, [&](sqlite3_stmt* st) {
    const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    out.keys.emplace(t != nullptr ? t : "", static_cast<size_t>(sqlite3_column_bytes(st, 0)));
  });
  if (s.isOk()) {
    s = run(kCountsSql, [&](sqlite3_stmt* st) {
      out.rows = static_cast<uint64_t>(sqlite3_column_int64(st, 0));
      out.distinct = static_cast<uint64_t>(sqlite3_column_int64(st, 1));
      out.ledger_stored = sqlite3_column_int64(st, 2);
      out.ledger_records = sqlite3_column_int64(st, 3);
    });
  }
  sqlite3_close(db);
  if (!s.isOk()) return s;
  return out;
}

Result<StoreContents> readPostgresStore(testing::PostgresServer& server,
                                        const std::string& database) {
  StoreContents out;
  auto keys = server.query(database, kKeysSql);
  if (!keys.isOk()) return keys.status().withContext("central store");
  for (auto& row : *keys) out.keys.insert(std::move(row.at(0)));
  auto counts = server.query(database, kCountsSql);
  if (!counts.isOk()) return counts.status().withContext("central store");
  if (counts->size() != 1 || counts->front().size() != 4) {
    return Status::internal("central store: unexpected answer to the count query");
  }
  const auto& row = counts->front();
  out.rows = std::stoull(row[0]);
  out.distinct = std::stoull(row[1]);
  out.ledger_stored = std::stoll(row[2]);
  out.ledger_records = std::stoll(row[3]);
  return out;
}

constexpr const char* kPostgresComponent = "postgresql";
constexpr std::string_view kUplinkPrefix = "uplink:";

bool isUplink(const std::string& component) { return component.rfind(kUplinkPrefix, 0) == 0; }
constexpr const char* kPostgresDatabase = "branchline";

// The record keys of the generated records `indices`, as the rule engine derives them.
Result<std::set<std::string>> recordKeys(const std::vector<uint64_t>& indices,
                                         const loadgen::GeneratorOptions& gen) {
  auto engine = rules::RuleEngine::create({rules::defaultCustomerSchema()});
  if (!engine.isOk()) return engine.status();
  const rules::CompiledSchema* schema = (*engine)->find("customer");
  if (schema == nullptr) return Status::internal("built-in customer schema missing");
  loadgen::CustomerGenerator generator(gen);
  loadgen::GeneratedRecord rec;
  std::set<std::string> keys;
  for (uint64_t index : indices) {
    generator.generate(index, rec);
    boost::system::error_code ec;
    boost::json::value v = boost::json::parse(rec.json, ec);
    if (ec || !v.is_object()) {
      return Status::internal("generated record " + std::to_string(index) + " is not JSON");
    }
    rules::Outcome outcome = (*engine)->apply(*schema, v.as_object());
    if (!outcome.ok()) {
      return Status::internal("accepted record " + std::to_string(index) + " does not normalize");
    }
    keys.insert(outcome.record->key);
  }
  return keys;
}

}  // namespace

std::string ChaosVerdict::toJson() const {
  char buf[640];
  std::snprintf(
      buf, sizeof buf,
      "{\"passed\":%s,\"load_seconds\":%.1f,\"records_sent\":%llu,\"accepted\":%llu,"
      "\"stored\":%llu,\"lost\":%llu,\"duplicated\":%llu,\"unexpected\":%llu,"
      "\"recovered\":%llu,\"failed_records\":%llu,\"ledger_mismatch\":%llu,"
      "\"deliveries\":%llu,\"extra_deliveries\":%llu,\"drained\":%s,"
      "\"drain_seconds\":%.1f,\"max_ready_seconds\":%.2f,\"faults_injected\":%zu,"
      "\"seed\":%llu,",
      passed() ? "true" : "false", load_seconds, static_cast<unsigned long long>(records_sent),
      static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(stored),
      static_cast<unsigned long long>(lost), static_cast<unsigned long long>(duplicated),
      static_cast<unsigned long long>(unexpected), static_cast<unsigned long long>(recovered),
      static_cast<unsigned long long>(failed_records),
      static_cast<unsigned long long>(ledger_mismatch), static_cast<unsigned long long>(deliveries),
      static_cast<unsigned long long>(extra_deliveries), drained ? "true" : "false", drain_seconds,
      max_ready_seconds, faults.size(), static_cast<unsigned long long>(seed));
  std::string out = buf;
  out += "\"kills\":{";
  bool first = true;
  for (const auto& [name, n] : kills) {
    if (!first) out += ",";
    first = false;
    log::appendJsonString(out, name);
    out += ":" + std::to_string(n);
  }
  out += "},\"faults\":[";
  for (size_t i = 0; i < faults.size(); ++i) {
    const ChaosFault& f = faults[i];
    if (i > 0) out += ",";
    std::snprintf(buf, sizeof buf,
                  "{\"at_s\":%.1f,\"down_s\":%.2f,\"ready_s\":%.2f,\"component\":", f.at_s,
                  f.down_s, f.ready_s);
    out += buf;
    log::appendJsonString(out, f.component);
    if (!f.error.empty()) {
      out += ",\"error\":";
      log::appendJsonString(out, f.error);
    }
    out += "}";
  }
  out += "]";
  if (!network_cuts_skipped.empty()) {
    out += ",\"network_cuts_skipped\":";
    log::appendJsonString(out, network_cuts_skipped);
  }
  out += ",\"errors\":[";
  for (size_t i = 0; i < errors.size(); ++i) {
    if (i > 0) out += ",";
    log::appendJsonString(out, errors[i]);
  }
  out += "]";
  if (!load_json.empty()) out += ",\"load\":" + load_json;
  out += "}";
  return out;
}

Result<ChaosVerdict> runChaos(const ChaosOptions& options) {
  if (options.seconds <= 0 || options.rate <= 0) {
    return Status::invalid("chaos: --seconds and --rate must be positive");
  }
  if (options.min_gap > options.max_gap || options.min_down > options.max_down ||
      options.min_cut > options.max_cut) {
    return Status::invalid("chaos: a minimum is above its maximum");
  }
  if (options.store != "sqlite" && options.store != "postgresql") {
    return Status::invalid("chaos: --store must be sqlite or postgresql, not `" + options.store +
                           "`");
  }
  // Every run its own schedule unless one is asked for; the verdict and the
  // log say which, so any run can be replayed.
  uint64_t seed = options.seed;
  while (seed == 0) seed = (uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  log::info("chaos_seed", {{"seed", seed}});
  std::fprintf(stderr, "[ seed ] chaos seed %llu (replay: --seed %llu)\n",
               static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  // Declared before the pipeline, so it outlives the aggregators writing to it.
  std::unique_ptr<testing::PostgresServer> postgres;
  PipelineOptions pipeline_options = options.pipeline;
  if (options.store == "postgresql") {
    testing::PostgresServerOptions pg;
    pg.bin_dir = options.postgres_bin_dir;
    auto server = testing::PostgresServer::create(pg);
    if (!server.isOk()) return server.status().withContext("chaos: start a private PostgreSQL");
    postgres = std::move(server).value();
    BL_RETURN_IF_ERROR(postgres->createDatabase(kPostgresDatabase));
    pipeline_options.store_url = postgres->url(kPostgresDatabase);
  }
  std::string cuts_skipped;
  if (options.network_cuts) {
    // A throwaway namespace tells whether this machine permits them at all.
    auto probe = NetworkNamespace::create(120);
    if (probe.isOk()) {
      pipeline_options.isolate_agents = true;
    } else if (probe.status().code() != Code::kPermissionDenied) {
      // A namespace was made but not wired: a fault, not a lack of permission.
      return probe.status().withContext("chaos: network cuts");
    } else {
      cuts_skipped = probe.status().toString();
      log::warn("chaos_network_cuts_skipped", {{"reason", cuts_skipped}});
    }
  }
  LocalPipeline pipeline(pipeline_options);
  BL_RETURN_IF_ERROR(pipeline.start());

  std::vector<std::string> components;
  for (const auto& m : pipeline.members()) components.push_back(m->name);
  if (postgres) components.push_back(kPostgresComponent);
  if (pipeline_options.isolate_agents) {
    for (const auto& m : pipeline.members()) {
      if (m->role == Role::kAgent) components.push_back(std::string(kUplinkPrefix) + m->name);
    }
  }
  auto kill9 = [&](const std::string& name) {
    if (isUplink(name)) return pipeline.cutNetwork(name.substr(kUplinkPrefix.size()));
    return name == kPostgresComponent ? postgres->kill9() : pipeline.kill9(name);
  };
  auto restart = [&](const std::string& name) {
    if (isUplink(name)) return pipeline.healNetwork(name.substr(kUplinkPrefix.size()));
    return name == kPostgresComponent ? postgres->start() : pipeline.restart(name);
  };
  const std::chrono::milliseconds longest_down = pipeline_options.isolate_agents
                                                     ? std::max(options.max_down, options.max_cut)
                                                     : options.max_down;

  ChaosVerdict verdict;
  verdict.seed = seed;
  verdict.network_cuts_skipped = cuts_skipped;
  for (const auto& c : components) verdict.kills[c] = 0;

  std::atomic<bool> stop_load{false};
  loadgen::LoadOptions load;
  load.urls = pipeline.agentUrls();
  load.tokens = pipeline.agentTokens();
  load.seconds = options.seconds;
  load.rate = options.rate;
  load.concurrency = 2 * static_cast<int>(load.urls.size());
  load.batch = 50;
  load.generator.seed = seed;
  load.generator.duplicate_share = 0.05;
  load.generator.invalid_share = 0.02;
  load.cancel = &stop_load;
  const loadgen::GeneratorOptions gen = load.generator;

  std::mt19937_64 rng(seed);
  auto uniformMs = [&rng](std::chrono::milliseconds lo, std::chrono::milliseconds hi) {
    return std::chrono::milliseconds(
        std::uniform_int_distribution<int64_t>(lo.count(), hi.count())(rng));
  };

  const int64_t t0 = steadyMicros();
  auto running = std::async(std::launch::async, [load] { return loadgen::runLoad(load); });

  // Faults run on this thread: LocalPipeline restarts children from the thread
  // that owns them (PR_SET_PDEATHSIG).
  while (!cancelled(options)) {
    std::vector<std::string> short_of;
    int required = 0;
    for (const auto& c : components) {
      const int missing = std::max(0, options.min_kills_each - verdict.kills[c]);
      if (missing > 0) short_of.push_back(c);
      required += missing;
    }
    const double left_s = options.seconds - secondsSince(t0);
    if (left_s <= 0 && required == 0) break;

    std::chrono::milliseconds gap = uniformMs(options.min_gap, options.max_gap);
    if (required > 0) {
      // Leave room for the remaining required kills (each costs its downtime
      // and restart too) inside the load phase.
      const auto fit = std::chrono::milliseconds(static_cast<int64_t>(
          std::max(0.0, left_s * 1000.0 / (required + 1) - longest_down.count() - 2000.0)));
      gap = std::clamp(fit, std::chrono::milliseconds(500), gap);
    }
    sleepFor(gap, options);
    if (cancelled(options)) break;
    if (secondsSince(t0) >= options.seconds && required == 0) break;

    const std::vector<std::string>& pool = short_of.empty() ? components : short_of;
    const std::string victim = pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(rng)];
    ChaosFault fault;
    fault.at_s = secondsSince(t0);
    fault.component = victim;
    const std::chrono::milliseconds down = isUplink(victim)
                                               ? uniformMs(options.min_cut, options.max_cut)
                                               : uniformMs(options.min_down, options.max_down);
    log::info(isUplink(victim) ? "chaos_cut" : "chaos_kill",
              {{"component", victim}, {"at_s", fault.at_s}});
    if (Status s = kill9(victim); !s.isOk()) {
      fault.error = "kill: " + s.toString();
    } else {
      ++verdict.kills[victim];
      const int64_t killed = steadyMicros();
      sleepFor(down, options);
      fault.down_s = secondsSince(killed);
      const int64_t restarted = steadyMicros();
      Status s2 = restart(victim);
      for (int attempt = 1; !s2.isOk() && attempt < 3 && !cancelled(options); ++attempt) {
        log::warn("chaos_restart_retry", {{"component", victim}, {"error", s2.toString()}});
        std::this_thread::sleep_for(std::chrono::seconds(1));
        s2 = restart(victim);
      }
      fault.ready_s = secondsSince(restarted);
      if (!s2.isOk()) fault.error = "restart: " + s2.toString();
      verdict.max_ready_seconds = std::max(verdict.max_ready_seconds, fault.ready_s);
    }
    if (!fault.error.empty()) verdict.errors.push_back(victim + " " + fault.error);
    verdict.faults.push_back(std::move(fault));
  }
  if (cancelled(options)) stop_load = true;

  auto stats = running.get();
  if (!stats.isOk()) return stats.status();
  const int64_t load_end = steadyMicros();
  verdict.load_seconds = stats->seconds;
  verdict.records_sent = stats->records_sent;
  verdict.failed_records = stats->failed_records;
  verdict.load_json = stats->toJson();
  if (stats->failed_records > 0) {
    verdict.errors.push_back(std::to_string(stats->failed_records) +
                             " records were never acknowledged to the load client");
  }
  for (const auto& [name, status] : pipeline.pollExits()) {
    verdict.errors.push_back(name + " " + status + " outside the fault schedule");
  }

  // Drain: every agent's buffer empty (everything acknowledged by an aggregator
  // after its central commit).
  while (!cancelled(options) && secondsSince(load_end) < options.drain_timeout.count()) {
    if (buffersEmpty(pipeline)) {
      verdict.drained = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  verdict.drain_seconds = secondsSince(load_end);
  if (!verdict.drained) {
    verdict.errors.push_back("agent buffers not empty " +
                             std::to_string(options.drain_timeout.count()) + " s after the load");
  }
  pipeline.stop();

  auto accepted = recordKeys(stats->accepted_unique, gen);
  if (!accepted.isOk()) return accepted.status();
  auto store = postgres ? readPostgresStore(*postgres, kPostgresDatabase)
                        : readSqliteStore(pipeline.storePath());
  if (!store.isOk()) return store.status();
  verdict.accepted = accepted->size();
  for (const auto& key : *accepted) {
    if (store->keys.count(key) != 0) {
      ++verdict.stored;
    } else {
      ++verdict.lost;
    }
  }
  // Stored although their request's last answer was an error: recovered, not
  // unexpected (the agent committed before the answer was lost).
  auto failed_keys = recordKeys(stats->failed_unique, gen);
  if (!failed_keys.isOk()) return failed_keys.status();
  for (const auto& key : store->keys) {
    if (accepted->count(key) != 0) continue;
    if (failed_keys->count(key) != 0) {
      ++verdict.recovered;
    } else {
      ++verdict.unexpected;
    }
  }
  // Doubling, counted without the store's UNIQUE constraint: every record
  // delivery the ledger committed, against what the agents can have taken (each
  // acceptance, plus each record whose answer was lost and may have committed).
  verdict.deliveries = static_cast<uint64_t>(std::max<int64_t>(0, store->ledger_records));
  const uint64_t allowed = stats->accepted + stats->failed_records + stats->resent_after_error;
  verdict.extra_deliveries = verdict.deliveries > allowed ? verdict.deliveries - allowed : 0;
  verdict.duplicated = (store->rows - store->distinct) + verdict.extra_deliveries;
  verdict.ledger_mismatch =
      static_cast<uint64_t>(std::llabs(store->ledger_stored - static_cast<int64_t>(store->rows)));
  return verdict;
}

}  // namespace branchline::cli
