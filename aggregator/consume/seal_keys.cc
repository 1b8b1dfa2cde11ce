#include "aggregator/consume/seal_keys.h"

#include <algorithm>

#include "shared/core/clock.h"

namespace branchline::aggregator {
namespace {

bool validAgentId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

}  // namespace

Result<protocol::AggregatorKeyRing> loadAggregatorKeyRing(
    const std::vector<std::filesystem::path>& current,
    const std::vector<RetiredSealKeyFile>& retired) {
  protocol::AggregatorKeyRing ring;
  std::map<std::string, std::filesystem::path> seen;
  auto add = [&](const std::filesystem::path& file, int64_t until_us) -> Status {
    auto pair = protocol::readSealPrivateKey(file);
    if (!pair) return pair.status();
    const std::string id = protocol::sealKeyId(pair->public_key);
    if (auto [it, fresh] = seen.emplace(id, file); !fresh) {
      return Status::invalid("aggregator sealing key `" + id +
                             "` is listed twice: " + it->second.string() + " and " + file.string());
    }
    ring.by_key_id[id] = {*pair, until_us};
    return Status::ok();
  };
  for (const auto& file : current) BL_RETURN_IF_ERROR(add(file, INT64_MAX));
  for (const auto& r : retired) BL_RETURN_IF_ERROR(add(r.file, r.until_us));
  return ring;
}

EnrolledAgentKeys::EnrolledAgentKeys(Options options) : options_(std::move(options)) {}

Result<protocol::X25519Key> EnrolledAgentKeys::lookup(const std::string& agent_id) {
  if (!validAgentId(agent_id)) {
    return Status::invalid("agent id is not [A-Za-z0-9_-]{1,64}");
  }
  // Revocation (`branchline pki revoke`) holds at once, cached key or not:
  // one stat per batch.
  std::error_code ec;
  if (std::filesystem::exists(options_.agents_dir / (agent_id + ".seal.pub.revoked"), ec)) {
    return Status(Code::kPermissionDenied, "agent `" + agent_id + "` is revoked");
  }
  const int64_t now = steadyMicros();
  const int64_t ttl_us =
      std::chrono::duration_cast<std::chrono::microseconds>(options_.ttl).count();
  {
    std::lock_guard lock(mutex_);
    auto it = cache_.find(agent_id);
    if (it != cache_.end() && now - it->second.read_at_us < ttl_us) return it->second.key;
  }
  // Read outside the lock: a slow disk holds up only this lookup.
  auto key = protocol::readSealPublicKey(options_.agents_dir / (agent_id + ".seal.pub"));
  std::lock_guard lock(mutex_);
  if (!key) {
    cache_.erase(agent_id);  // un-enrolled (file removed): stop honouring the old key
    return key.status();
  }
  if (cache_.size() >= options_.max_entries && !cache_.count(agent_id)) cache_.clear();
  cache_[agent_id] = {*key, now};
  return key;
}

}  // namespace branchline::aggregator
