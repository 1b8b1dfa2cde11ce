#include "protocol/ack_auth.h"

#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "protocol/batch_digest.h"

namespace branchline::protocol {
namespace {

struct Keys {
  SealKeyPair agent = *generateSealKeyPair();
  SealKeyPair aggregator = *generateSealKeyPair();
};

WireBatch sampleBatch(uint64_t seq) {
  WireBatch b;
  b.agent_id = "office-1";
  b.seq = seq;
  b.records = {{"customer", "k1", 1, R"({"external_id":"k1"})"},
               {"customer", "k2", 2, R"({"external_id":"k2"})"}};
  return b;
}

WireAck sampleAck(const WireBatch& b) {
  WireAck a;
  a.agent_id = b.agent_id;
  a.batch_seq = b.seq;
  a.status = AckStatus::kStored;
  a.stored_records = 2;
  a.aggregator = "agg-1";
  a.digest = batchDigest(b);
  return a;
}

TEST(AckAuthTest, BothSidesDeriveTheSameKeyAndASignedAckVerifiesAfterTheWire) {
  Keys k;
  auto agent_side = agentAckKey(k.agent, k.aggregator.public_key);
  auto aggregator_side = aggregatorAckKey(k.aggregator, k.agent.public_key);
  ASSERT_TRUE(agent_side.isOk() && aggregator_side.isOk());
  EXPECT_EQ(agent_side->secret, aggregator_side->secret);
  EXPECT_EQ(agent_side->key_id, sealKeyId(k.aggregator.public_key));

  WireAck ack = sampleAck(sampleBatch(7));
  signAck(*aggregator_side, ack);
  EXPECT_EQ(ack.tag.size(), 32u);
  auto decoded = decodeAck(encodeAck(ack));
  ASSERT_TRUE(decoded.isOk()) << decoded.status().toString();
  EXPECT_EQ(*decoded, ack);
  EXPECT_EQ(checkAck(*agent_side, *decoded), AckCheck::kAuthentic);
}

TEST(AckAuthTest, ChangingAnyFieldOfASignedAckFailsItsTag) {
  Keys k;
  const AckKey key = *aggregatorAckKey(k.aggregator, k.agent.public_key);
  WireAck signed_ack = sampleAck(sampleBatch(7));
  signAck(key, signed_ack);
  const std::vector<std::pair<const char*, std::function<void(WireAck&)>>> changes = {
      {"agent id", [](WireAck& a) { a.agent_id = "office-2"; }},
      {"seq (a real ack moved to another batch)", [](WireAck& a) { a.batch_seq = 8; }},
      {"status", [](WireAck& a) { a.status = AckStatus::kDuplicate; }},
      {"stored records", [](WireAck& a) { a.stored_records = 3; }},
      {"duplicate records", [](WireAck& a) { a.duplicate_records = 1; }},
      {"rejects", [](WireAck& a) { a.rejects = 1; }},
      {"digest",
       [](WireAck& a) {
         WireBatch other = sampleBatch(7);
         other.records.pop_back();
         a.digest = batchDigest(other);
       }},
      {"aggregator", [](WireAck& a) { a.aggregator = "agg-2"; }},
      {"message", [](WireAck& a) { a.message = "x"; }},
      {"tag byte", [](WireAck& a) { a.tag[5] = static_cast<char>(a.tag[5] ^ 1); }},
  };
  for (const auto& [what, change] : changes) {
    WireAck a = signed_ack;
    change(a);
    EXPECT_EQ(checkAck(key, a), AckCheck::kBadTag) << what;
  }
  EXPECT_EQ(checkAck(key, signed_ack), AckCheck::kAuthentic);
}

TEST(AckAuthTest, UntaggedAcksAndOtherKeysAreNotAuthentic) {
  Keys k;
  const AckKey key = *agentAckKey(k.agent, k.aggregator.public_key);
  WireAck plain = sampleAck(sampleBatch(1));
  EXPECT_EQ(checkAck(key, plain), AckCheck::kUnauthenticated);

  // Signed for another agent (the same aggregator key): the key id matches,
  // the tag does not.
  const SealKeyPair other_agent = *generateSealKeyPair();
  WireAck for_other = plain;
  signAck(*aggregatorAckKey(k.aggregator, other_agent.public_key), for_other);
  EXPECT_EQ(checkAck(key, for_other), AckCheck::kBadTag);

  // Keyed to another aggregator key (a stranger's, or a retired one).
  const SealKeyPair stranger = *generateSealKeyPair();
  WireAck by_stranger = plain;
  signAck(*aggregatorAckKey(stranger, k.agent.public_key), by_stranger);
  EXPECT_EQ(checkAck(key, by_stranger), AckCheck::kUnauthenticated);

  WireAck short_tag = plain;
  short_tag.key_id = key.key_id;
  short_tag.tag = "abc";
  EXPECT_EQ(checkAck(key, short_tag), AckCheck::kUnauthenticated);
}

TEST(AckAuthTest, OpeningABatchYieldsTheKeyItsSealerVerifiesAcksWith) {
  Keys k;
  auto sealer = BatchSealer::create({k.agent, k.aggregator.public_key});
  ASSERT_TRUE(sealer.isOk());
  auto payload = (*sealer)->seal(sampleBatch(3));
  ASSERT_TRUE(payload.isOk());
  AggregatorKeyRing ring;
  ring.by_key_id[sealKeyId(k.aggregator.public_key)] = {k.aggregator, INT64_MAX};
  OpenOptions open;
  open.ring = &ring;
  open.agent_public_key = [&](const std::string&) -> Result<X25519Key> {
    return k.agent.public_key;
  };
  AckKey key;
  auto batch = openBatch(*payload, {}, open, nullptr, &key);
  ASSERT_TRUE(batch.isOk()) << batch.status().toString();
  EXPECT_EQ(key.secret, (*sealer)->ackKey().secret);
  EXPECT_EQ(key.key_id, (*sealer)->ackKey().key_id);

  // A batch that does not authenticate yields no key.
  std::string altered = *payload;
  altered[altered.size() / 2] = static_cast<char>(altered[altered.size() / 2] ^ 1);
  AckKey none;
  EXPECT_FALSE(openBatch(altered, {}, open, nullptr, &none).isOk());
  EXPECT_TRUE(none.key_id.empty());
}

// Agent status messages share the agents' ack key, under their own domain: a
// tagged status survives the wire, any changed field or a moved event fails,
// and an ack's tag never passes as a status's.
TEST(AckAuthTest, AgentStatusIsTaggedWithTheAckKeyAndAnyChangeFailsIt) {
  Keys k;
  auto agent_side = agentAckKey(k.agent, k.aggregator.public_key);
  auto aggregator_side = aggregatorAckKey(k.aggregator, k.agent.public_key);
  ASSERT_TRUE(agent_side.isOk() && aggregator_side.isOk());
  WireAgentStatus status;
  status.agent_id = "office-1";
  status.sent_at_us = 1700000000000000;
  status.events = {{"duplicate_identity", 1700000000000001, "seen twice"}};
  signAgentStatus(*agent_side, status);
  auto wire = decodeAgentStatus(encodeAgentStatus(status));
  ASSERT_TRUE(wire.isOk()) << wire.status().toString();
  EXPECT_EQ(*wire, status);
  EXPECT_EQ(checkAgentStatus(*aggregator_side, *wire), AckCheck::kAuthentic);

  std::vector<std::function<void(WireAgentStatus&)>> changes = {
      [](WireAgentStatus& s) { s.agent_id = "office-2"; },
      [](WireAgentStatus& s) { s.sent_at_us += 1; },
      [](WireAgentStatus& s) { s.events[0].kind = "other"; },
      [](WireAgentStatus& s) { s.events[0].at_us += 1; },
      [](WireAgentStatus& s) { s.events[0].detail += "!"; },
      [](WireAgentStatus& s) { s.events.push_back(s.events[0]); },
      [](WireAgentStatus& s) { s.events.clear(); },
      [](WireAgentStatus& s) { s.tag[0] = static_cast<char>(s.tag[0] ^ 1); },
  };
  for (size_t i = 0; i < changes.size(); ++i) {
    WireAgentStatus changed = status;
    changes[i](changed);
    EXPECT_EQ(checkAgentStatus(*aggregator_side, changed), AckCheck::kBadTag) << "change " << i;
  }
  WireAgentStatus untagged = status;
  untagged.tag.clear();
  EXPECT_EQ(checkAgentStatus(*aggregator_side, untagged), AckCheck::kUnauthenticated);

  // An ack's tag over the same key is no status tag.
  WireAck ack = sampleAck(sampleBatch(1));
  signAck(*agent_side, ack);
  WireAgentStatus borrowed = status;
  borrowed.tag = ack.tag;
  EXPECT_EQ(checkAgentStatus(*aggregator_side, borrowed), AckCheck::kBadTag);
}

TEST(AckAuthTest, AgentStatusDecodingEnforcesItsBounds) {
  WireAgentStatus s;
  s.agent_id = "office-1";
  s.events.assign(kMaxAgentEvents + 1, {"duplicate_identity", 1, "x"});
  EXPECT_FALSE(decodeAgentStatus(encodeAgentStatus(s)).isOk());
  s.events.assign(1, {"", 1, "x"});
  EXPECT_FALSE(decodeAgentStatus(encodeAgentStatus(s)).isOk());
  s.events.assign(1, {"duplicate_identity", 1, std::string(kMaxAgentEventDetail + 1, 'd')});
  EXPECT_FALSE(decodeAgentStatus(encodeAgentStatus(s)).isOk());
  EXPECT_FALSE(decodeAgentStatus("not capnp").isOk());
  EXPECT_FALSE(decodeAgentStatus(std::string(kMaxAgentStatusBytes + 8, '\0')).isOk());
  s.events.assign(1, {"duplicate_identity", 1, std::string(kMaxAgentEventDetail, 'd')});
  EXPECT_TRUE(decodeAgentStatus(encodeAgentStatus(s)).isOk());
}

}  // namespace
}  // namespace branchline::protocol
