// Revocation at the aggregator (README "Renewal, revocation, rotation"): once `branchline pki
// revoke` has marked an agent's sealing key (<id>.seal.pub.revoked), its
// batches are refused as `revoked`, even while its key is still cached.
#include "aggregator/consume/seal_keys.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>

#include "shared/core/clock.h"

namespace branchline::aggregator {
namespace {
namespace fs = std::filesystem;

TEST(SealKeys, RevokedAgentIsRefusedAtOnceEvenWithItsKeyCached) {
  std::string tmpl = "/tmp/bl_seal_keys_test_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  const fs::path dir = tmpl;
  std::shared_ptr<void> remove_dir(nullptr, [&dir](void*) { fs::remove_all(dir); });
  const protocol::SealKeyPair aggregator = *protocol::generateSealKeyPair();
  const protocol::SealKeyPair office1 = *protocol::generateSealKeyPair();
  const protocol::SealKeyPair office2 = *protocol::generateSealKeyPair();
  ASSERT_TRUE(protocol::writeSealPublicKey(dir / "office-1.seal.pub", office1.public_key).isOk());
  ASSERT_TRUE(protocol::writeSealPublicKey(dir / "office-2.seal.pub", office2.public_key).isOk());

  protocol::AggregatorKeyRing ring;
  ring.by_key_id[protocol::sealKeyId(aggregator.public_key)].pair = aggregator;
  EnrolledAgentKeys keys({.agents_dir = dir});  // default ttl: a minute of caching
  protocol::OpenOptions open;
  open.ring = &ring;
  open.agent_public_key = [&](const std::string& id) { return keys.lookup(id); };
  auto sealed = [&](const std::string& agent, const protocol::SealKeyPair& by, uint64_t seq) {
    protocol::WireBatch b;
    b.agent_id = agent;
    b.seq = seq;
    b.created_at_us = nowMicros();
    b.records.push_back({"customer", "k-" + std::to_string(seq), b.created_at_us, "{}"});
    auto s = protocol::sealBatch(b, {by, aggregator.public_key});
    EXPECT_TRUE(s.isOk()) << s.status().toString();
    return s.isOk() ? *s : std::string();
  };
  ASSERT_TRUE(protocol::openBatch(sealed("office-1", office1, 1), {}, open).isOk());  // cached

  // What `pki revoke office-1` leaves in the agents folder.
  fs::rename(dir / "office-1.seal.pub", dir / "office-1.seal.pub.revoked");
  protocol::OpenFailure failure = protocol::OpenFailure::kNone;
  auto refused = protocol::openBatch(sealed("office-1", office1, 2), {}, open, &failure);
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(failure, protocol::OpenFailure::kRevoked);
  EXPECT_STREQ(protocol::openFailureLabel(failure), "revoked");
  EXPECT_NE(refused.status().message().find("agent `office-1` is revoked"), std::string::npos)
      << refused.status().message();
  EXPECT_EQ(keys.lookup("office-1").status().code(), Code::kPermissionDenied);
  // Others are untouched.
  EXPECT_TRUE(protocol::openBatch(sealed("office-2", office2, 1), {}, open).isOk());
}

}  // namespace
}  // namespace branchline::aggregator
