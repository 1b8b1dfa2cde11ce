// fuzz_sealed_open: what the aggregator does with a sealed batch from the broker:
// openBatch (envelope, key ring lookup, X25519 + HKDF, AES-256-GCM with the
// header as associated data, zstd, Cap'n Proto) with fixed test keys
// (seal_test_keys.h): a current and a retired aggregator key, two enrolled
// agents. Each input is opened twice, with sealing required and not.
//
// Properties beyond "no crash": a refusal names its kind (OpenFailure) and says
// why; a batch that opens names an enrolled agent, matches its header, and,
// when sealing is required, was sealed to a key that is honoured now.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/seal_test_keys.h"

namespace {

namespace protocol = branchline::protocol;

protocol::DecodeLimits fuzzLimits() {
  protocol::DecodeLimits limits;
  limits.max_message_bytes = 1 << 20;
  limits.max_inflated_bytes = 4 << 20;
  limits.max_traversal_words = 1 << 20;
  limits.max_records = 10000;
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const protocol::DecodeLimits kLimits = fuzzLimits();
  const auto& keys = branchline::fuzz::sealTestKeys();
  static const protocol::OpenOptions kSealed = keys.openOptions(true);
  static const protocol::OpenOptions kAny = keys.openOptions(false);
  const std::string_view payload(reinterpret_cast<const char*>(data), size);

  for (const protocol::OpenOptions* options : {&kSealed, &kAny}) {
    protocol::OpenFailure failure = protocol::OpenFailure::kNone;
    auto batch = protocol::openBatch(payload, kLimits, *options, &failure);
    if (!batch.isOk()) {
      FUZZ_CHECK(failure != protocol::OpenFailure::kNone, "a refusal has a kind");
      FUZZ_CHECK(*protocol::openFailureLabel(failure) != '\0', "a refusal kind has a label");
      FUZZ_CHECK(!batch.status().message().empty(), "a refusal says why");
      continue;
    }
    FUZZ_CHECK(failure == protocol::OpenFailure::kNone, "an opened batch has no failure");
    auto header = protocol::peekHeader(payload, kLimits);
    FUZZ_CHECK(header.isOk(), "an opened batch has a readable header");
    FUZZ_CHECK(!header->is_ack, "an opened batch is a batch");
    FUZZ_CHECK(header->agent_id == batch->agent_id && header->batch_seq == batch->seq,
               "the header names the batch's agent and seq");
    if (options->require_sealed) {
      FUZZ_CHECK(header->sealed, "sealing required: only sealed batches open");
      FUZZ_CHECK(batch->agent_id == "office-1" || batch->agent_id == "office-2",
                 "a sealed batch opens only for an enrolled agent");
      const auto& ring = keys.ring.by_key_id;
      auto key = ring.find(header->key_id);
      FUZZ_CHECK(key != ring.end() && key->second.honoured_until_us > branchline::fuzz::kSealNowUs,
                 "a sealed batch opens only under a key honoured now");
    }
  }
  return 0;
}
