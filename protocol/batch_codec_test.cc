#include "protocol/batch_codec.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include "protocol/batch_digest.h"

namespace branchline::protocol {
namespace {

WireBatch sampleBatch(size_t n) {
  WireBatch b;
  b.agent_id = "office-1";
  b.seq = 42;
  b.created_at_us = 1764000000000000;
  for (size_t i = 0; i < n; ++i) {
    b.records.push_back({"customer", "ext-" + std::to_string(i), 1764000000000000 + int64_t(i),
                         R"({"external_id":"ext-)" + std::to_string(i) + R"(","name":"Zoë"})"});
  }
  b.rejects.push_back({"customer", R"({"email":"nope"})",
                       R"([{"field":"email","reason":"not an email address"}])", 7});
  return b;
}

TEST(BatchCodecTest, RoundTripsRecordsAndRejects) {
  for (int level : {0, 1, 3}) {
    WireBatch in = sampleBatch(500);
    std::string wire = encodeBatch(in, level);
    auto out = decodeBatch(wire);
    ASSERT_TRUE(out.isOk()) << out.status().toString();
    EXPECT_EQ(*out, in);
    auto header = peekHeader(wire);
    ASSERT_TRUE(header.isOk());
    EXPECT_EQ(header->agent_id, "office-1");
    EXPECT_EQ(header->batch_seq, 42u);
    EXPECT_FALSE(header->is_ack);
  }
}

TEST(BatchCodecTest, RoundTripsDamageReportsAndCountsThemAgainstMaxRecords) {
  WireBatch in = sampleBatch(3);
  in.damaged.push_back({"records", 17, "customer", 1'790'000'000'000'017,
                        "records.payload of row 17: failed authentication"});
  in.damaged.push_back({"quarantine", 2, "lead", 1'790'000'000'000'002, "quarantine.raw"});
  auto out = decodeBatch(encodeBatch(in, 1));
  ASSERT_TRUE(out.isOk()) << out.status().toString();
  EXPECT_EQ(*out, in);
  EXPECT_NE(batchDigest(in), batchDigest(sampleBatch(3))) << "the reports are content";
  DecodeLimits tight;
  tight.max_records = in.records.size() + in.rejects.size() + 1;
  auto refused = decodeBatch(encodeBatch(in, 1), tight);
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(refused.status().code(), Code::kResourceExhausted) << refused.status().toString();
}

TEST(BatchCodecTest, CompressesBatches) {
  WireBatch in = sampleBatch(1000);
  EXPECT_LT(encodeBatch(in, 1).size() * 3, encodeBatch(in, 0).size());
}

TEST(BatchCodecTest, RoundTripsAcks) {
  WireAck ack{"office-1", 9, AckStatus::kDuplicate, 0, 12, 1, "already stored", "agg-a"};
  auto out = decodeAck(encodeAck(ack));
  ASSERT_TRUE(out.isOk()) << out.status().toString();
  EXPECT_EQ(*out, ack);
  EXPECT_FALSE(decodeBatch(encodeAck(ack)).isOk());
  EXPECT_FALSE(decodeAck(encodeBatch(sampleBatch(1))).isOk());
}

TEST(BatchCodecTest, RefusesGarbageTruncationAndFlippedBytes) {
  std::string wire = encodeBatch(sampleBatch(50), 1);
  EXPECT_FALSE(decodeBatch("").isOk());
  EXPECT_FALSE(decodeBatch("not a capnp message at all").isOk());
  for (size_t cut : {size_t{1}, size_t{8}, wire.size() / 2, wire.size() - 9}) {
    EXPECT_FALSE(decodeBatch(std::string_view(wire).substr(0, cut)).isOk()) << cut;
  }
  // Flipping any one byte must never crash; most flips are detected (zstd checks,
  // capnp bounds), and those that pass still decode to a well-formed batch.
  for (size_t i = 0; i < wire.size(); i += 7) {
    std::string bad = wire;
    bad[i] ^= 0x5a;
    (void)decodeBatch(bad);
  }
}

TEST(BatchCodecTest, RefusesOversizeAndCompressionBombs) {
  DecodeLimits limits;
  limits.max_message_bytes = 1024;
  std::string wire = encodeBatch(sampleBatch(100), 1);
  auto r = decodeBatch(wire, limits);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);

  // A batch whose body would inflate past the limit is refused before inflating.
  WireBatch big = sampleBatch(0);
  big.records.push_back({"customer", "k", 1, std::string(4 << 20, 'a')});
  std::string bomb = encodeBatch(big, 3);
  EXPECT_LT(bomb.size(), 4096u);
  DecodeLimits tight;
  tight.max_inflated_bytes = 1 << 20;
  auto b = decodeBatch(bomb, tight);
  ASSERT_FALSE(b.isOk());
  EXPECT_NE(b.status().message().find("max_inflated_bytes"), std::string::npos)
      << b.status().toString();
}

TEST(BatchCodecTest, RefusesEnvelopeBodyMismatch) {
  WireBatch a = sampleBatch(3);
  std::string wire_a = encodeBatch(a, 0);
  WireBatch b = a;
  b.agent_id = "office-2";
  std::string wire_b = encodeBatch(b, 0);
  // Same length envelopes; splice b's header agent into a by re-encoding is not
  // possible from outside, so check the decoder's own consistency rule instead.
  auto ok = decodeBatch(wire_b);
  ASSERT_TRUE(ok.isOk());
  EXPECT_EQ(ok->agent_id, "office-2");
  size_t pos = wire_a.find("office-1");
  ASSERT_NE(pos, std::string::npos);  // first occurrence: the envelope's agentId
  wire_a.replace(pos, 8, "office-9");
  auto mismatch = decodeBatch(wire_a);
  ASSERT_FALSE(mismatch.isOk());
  EXPECT_NE(mismatch.status().message().find("office-9"), std::string::npos)
      << mismatch.status().toString();
}

// Found by fuzz_batch_open (tests/fuzz/regressions/fuzz_batch_open/): an ack
// whose envelope names another agent or batch than its body is refused too.
TEST(BatchCodecTest, RefusesAckEnvelopeBodyMismatch) {
  WireAck ack;
  ack.agent_id = "office-1";
  ack.batch_seq = 7;
  std::string wire = encodeAck(ack);
  ASSERT_TRUE(decodeAck(wire).isOk());
  size_t pos = wire.find("office-1");
  ASSERT_NE(pos, std::string::npos);  // first occurrence: the envelope's agentId
  wire.replace(pos, 8, "office-9");
  auto mismatch = decodeAck(wire);
  ASSERT_FALSE(mismatch.isOk());
  EXPECT_NE(mismatch.status().message().find("office-9"), std::string::npos)
      << mismatch.status().toString();
}

}  // namespace
}  // namespace branchline::protocol
