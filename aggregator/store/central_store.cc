#include "aggregator/store/central_store.h"

#include "aggregator/store/postgres_store.h"
#include "aggregator/store/sqlite_store.h"

namespace branchline::aggregator {
namespace {

constexpr const char* kAccepted =
    "supported: sqlite:///absolute/path.db, postgresql://user@host:port/database";

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
    auto store = PostgresCentralStore::open(std::move(options));
    if (!store) return store.status();
    return std::unique_ptr<CentralStore>(std::move(store.value()));
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
