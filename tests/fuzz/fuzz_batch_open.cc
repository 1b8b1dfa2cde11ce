// fuzz_batch_open: what the aggregator does with an MQTT payload before it
// trusts it: peekHeader, decodeBatch and decodeAck (envelope, zstd, Cap'n
// Proto) under DecodeLimits. The limits are tighter than the defaults so a
// compression bomb or a traversal bomb is refused in microseconds, which keeps
// the fuzzer fast; the code paths are the same.
//
// Properties beyond "no crash": a payload that decodes has a readable header
// that agrees with it; it is a batch or an ack, never both; and what decodes
// re-encodes to a payload that decodes to the same value.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol/batch_codec.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

namespace protocol = branchline::protocol;

protocol::DecodeLimits fuzzLimits() {
  protocol::DecodeLimits limits;
  limits.max_message_bytes = 1 << 20;
  limits.max_inflated_bytes = 4 << 20;
  limits.max_traversal_words = 1 << 20;
  limits.max_nesting = 16;
  limits.max_records = 10000;
  return limits;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const protocol::DecodeLimits kLimits = fuzzLimits();
  const std::string_view payload(reinterpret_cast<const char*>(data), size);

  auto header = protocol::peekHeader(payload, kLimits);
  auto batch = protocol::decodeBatch(payload, kLimits);
  auto ack = protocol::decodeAck(payload, kLimits);
  FUZZ_CHECK(!(batch.isOk() && ack.isOk()), "a payload is a batch or an ack, not both");
  if (!batch.isOk()) FUZZ_CHECK(!batch.status().message().empty(), "a refusal says why");
  if (!ack.isOk()) FUZZ_CHECK(!ack.status().message().empty(), "a refusal says why");

  if (batch.isOk()) {
    FUZZ_CHECK(header.isOk(), "a decodable batch has a readable header");
    FUZZ_CHECK(!header->is_ack, "the header of a batch says batch");
    FUZZ_CHECK(header->agent_id == batch->agent_id && header->batch_seq == batch->seq,
               "the header names the batch's agent and seq");
    FUZZ_CHECK(batch->records.size() + batch->rejects.size() <= kLimits.max_records,
               "max_records holds");
    for (int level : {0, 1}) {
      auto again = protocol::decodeBatch(protocol::encodeBatch(*batch, level));
      FUZZ_CHECK(again.isOk(), "a decoded batch re-encodes to a decodable payload");
      FUZZ_CHECK(*again == *batch, "batch round trip is lossless");
    }
  }
  if (ack.isOk()) {
    FUZZ_CHECK(header.isOk(), "a decodable ack has a readable header");
    FUZZ_CHECK(header->is_ack, "the header of an ack says ack");
    FUZZ_CHECK(header->agent_id == ack->agent_id && header->batch_seq == ack->batch_seq,
               "the header names the ack's agent and seq");
    auto again = protocol::decodeAck(protocol::encodeAck(*ack));
    FUZZ_CHECK(again.isOk(), "a decoded ack re-encodes to a decodable payload");
    FUZZ_CHECK(*again == *ack, "ack round trip is lossless");
  }
  return 0;
}
