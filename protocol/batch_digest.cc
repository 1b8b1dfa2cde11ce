#include "protocol/batch_digest.h"

#include <mbedtls/sha256.h>

#include <array>
#include <cassert>
#include <cstdint>
#include <string_view>

namespace branchline::protocol {
namespace {

class Sha256 {
 public:
  Sha256() {
    mbedtls_sha256_init(&ctx_);
    [[maybe_unused]] int rc = mbedtls_sha256_starts_ret(&ctx_, /*is224=*/0);
    assert(rc == 0);  // fails only on hardware-accelerator errors, none configured
  }
  ~Sha256() { mbedtls_sha256_free(&ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void bytes(std::string_view b) {
    [[maybe_unused]] int rc = mbedtls_sha256_update_ret(
        &ctx_, reinterpret_cast<const unsigned char*>(b.data()), b.size());
    assert(rc == 0);
  }
  void u64(uint64_t v) {
    std::array<char, 8> be;
    for (int i = 0; i < 8; ++i) be[static_cast<size_t>(i)] = static_cast<char>(v >> (56 - 8 * i));
    bytes(std::string_view(be.data(), be.size()));
  }
  void field(std::string_view s) {
    u64(s.size());
    bytes(s);
  }
  std::string hex() {
    std::array<unsigned char, 32> out;
    [[maybe_unused]] int rc = mbedtls_sha256_finish_ret(&ctx_, out.data());
    assert(rc == 0);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string text;
    text.reserve(64);
    for (unsigned char c : out) {
      text.push_back(kHex[c >> 4]);
      text.push_back(kHex[c & 0xf]);
    }
    return text;
  }

 private:
  mbedtls_sha256_context ctx_;
};

}  // namespace

std::string batchDigest(const WireBatch& batch) {
  Sha256 h;
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
  return h.hex();
}

}  // namespace branchline::protocol
