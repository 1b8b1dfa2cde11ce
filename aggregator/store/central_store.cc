#include "aggregator/store/central_store.h"

#include <mutex>

#include "aggregator/store/postgres_store.h"
#include "aggregator/store/sqlite_store.h"
#include "shared/core/clock.h"

namespace branchline::aggregator {
namespace {

constexpr const char* kAccepted =
    "supported: sqlite:///absolute/path.db, postgresql://user@host:port/database";

// A PostgreSQL store whose server did not answer when the aggregator started:
// every call first tries to connect (at most once a second) and answers
// kUnavailable until that works. So the aggregator starts anyway, reports not
// ready, acks nothing (agents keep their batches) and begins storing by itself
// once the database is reachable.
class DeferredPostgresStore final : public CentralStore {
 public:
  explicit DeferredPostgresStore(PostgresStoreOptions options, Status first_error)
      : options_(std::move(options)), last_error_(std::move(first_error)) {}

  Result<std::vector<BatchOutcome>> commit(const std::vector<protocol::WireBatch>& batches,
                                           const std::string& aggregator) override {
    std::lock_guard lock(mutex_);
    BL_RETURN_IF_ERROR(connect());
    return inner_->commit(batches, aggregator);
  }
  Status audit(const AuditEntry& entry) override {
    std::lock_guard lock(mutex_);
    BL_RETURN_IF_ERROR(connect());
    return inner_->audit(entry);
  }
  Status health() override {
    std::lock_guard lock(mutex_);
    BL_RETURN_IF_ERROR(connect());
    return inner_->health();
  }

 private:
  Status connect() {
    if (inner_) return Status::ok();
    const int64_t now = steadyMicros();
    if (now - last_attempt_us_ >= 1'000'000) {
      last_attempt_us_ = now;
      auto store = PostgresCentralStore::open(options_);
      if (store) {
        inner_ = std::move(store.value());
        return Status::ok();
      }
      last_error_ = store.status();
    }
    // A schema from a newer build or a bad URL is not an outage; say so as it is.
    return last_error_.code() == Code::kUnavailable ? last_error_
                                                    : Status::unavailable(last_error_.toString());
  }

  std::mutex mutex_;
  PostgresStoreOptions options_;
  std::unique_ptr<PostgresCentralStore> inner_;
  Status last_error_;
  int64_t last_attempt_us_ = steadyMicros();
};

}  // namespace

Status checkCentralStoreUrl(const std::string& url) {
  if (isPostgresUrl(url)) return checkPostgresUrl(url);
  if (url.rfind("sqlite:", 0) == 0) return parseSqliteUrl(url).status();
  return Status::invalid("store.url `" + redactPostgresUrl(url) + "`: unsupported scheme (" +
                         kAccepted + ")");
}

Result<std::unique_ptr<CentralStore>> openCentralStore(const std::string& url) {
  BL_RETURN_IF_ERROR(checkCentralStoreUrl(url));
  if (isPostgresUrl(url)) {
    PostgresStoreOptions options;
    options.url = url;
    auto store = PostgresCentralStore::open(options);
    if (store) return std::unique_ptr<CentralStore>(std::move(store.value()));
    if (store.status().code() != Code::kUnavailable) return store.status();
    return std::unique_ptr<CentralStore>(
        std::make_unique<DeferredPostgresStore>(std::move(options), store.status()));
  }
  auto path = parseSqliteUrl(url);
  if (!path) return path.status();
  SqliteStoreOptions options;
  options.path = *path;
  auto store = SqliteCentralStore::open(std::move(options));
  if (!store) return store.status();
  return std::unique_ptr<CentralStore>(std::move(store.value()));
}

}  // namespace branchline::aggregator
