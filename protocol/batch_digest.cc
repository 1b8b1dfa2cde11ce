#include "protocol/batch_digest.h"

#include <array>
#include <cstdint>
#include <string_view>

#include "shared/crypto/hash.h"

namespace branchline::protocol {
namespace {

// The canonical encoding of batch_digest.h over an incremental SHA-256.
class DigestWriter {
 public:
  void bytes(std::string_view b) { h_.update(b); }
  void u64(uint64_t v) {
    std::array<char, 8> be;
    for (int i = 0; i < 8; ++i) be[static_cast<size_t>(i)] = static_cast<char>(v >> (56 - 8 * i));
    bytes(std::string_view(be.data(), be.size()));
  }
  void field(std::string_view s) {
    u64(s.size());
    bytes(s);
  }
  std::string hex() { return crypto::toHex(h_.finish()); }

 private:
  crypto::Sha256 h_;
};

}  // namespace

std::string batchDigest(const WireBatch& batch) {
  DigestWriter h;
  h.bytes(std::string_view("branchline-batch-digest-v1\0", 27));
  h.u64(batch.records.size());
  for (const WireRecord& r : batch.records) {
    h.field(r.source);
    h.field(r.key);
    h.u64(static_cast<uint64_t>(r.ingested_at_us));
    h.field(r.payload);
  }
  h.u64(batch.rejects.size());
  for (const WireReject& r : batch.rejects) {
    h.field(r.source);
    h.field(r.raw);
    h.field(r.reasons_json);
    h.u64(static_cast<uint64_t>(r.ingested_at_us));
  }
  // Only a batch that reports damage hashes it, so every other batch keeps the
  // digest it had before damage reports existed (and in the ledger).
  if (!batch.damaged.empty()) {
    h.u64(batch.damaged.size());
    for (const WireDamaged& d : batch.damaged) {
      h.field(d.table);
      h.u64(d.row);
      h.field(d.source);
      h.u64(static_cast<uint64_t>(d.ingested_at_us));
      h.field(d.reason);
    }
  }
  return h.hex();
}

}  // namespace branchline::protocol
