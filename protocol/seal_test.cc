#include "protocol/seal.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>

#include "protocol/batch_codec.h"

namespace branchline::protocol {
namespace {

X25519Key fromHex(std::string_view hex) {
  X25519Key k{};
  for (size_t i = 0; i < 32; ++i) {
    k[i] = static_cast<uint8_t>(std::stoi(std::string(hex.substr(2 * i, 2)), nullptr, 16));
  }
  return k;
}

std::string toHex(const X25519Key& k) {
  std::string out;
  char b[3];
  for (uint8_t v : k) {
    std::snprintf(b, sizeof b, "%02x", v);
    out += b;
  }
  return out;
}

// A folder removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "bl-seal-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// ~2000 records of ~250 bytes: the size of a full batch in the default config.
WireBatch makeBatch(const std::string& agent, uint64_t seq, size_t n) {
  WireBatch b;
  b.agent_id = agent;
  b.seq = seq;
  b.created_at_us = 1764000000000000;
  std::mt19937 rng(static_cast<unsigned>(seq));
  for (size_t i = 0; i < n; ++i) {
    std::string id = std::to_string(seq) + "-" + std::to_string(i);
    b.records.push_back(
        {"customer", "ext-" + id, 1764000000000000 + int64_t(i),
         R"({"email":"person-)" + id + R"(@example.org","external_id":"ext-)" + id +
             R"(","name":"Zoë Example )" + std::to_string(rng()) +
             R"(","notes":"intake call about the lease, callback requested","phone":"+4930)" +
             std::to_string(rng() % 10000000) + R"(","segment":"retail"})"});
  }
  b.rejects.push_back({"customer", R"({"email":"nope"})",
                       R"([{"field":"email","reason":"not an email address"}])", 7});
  return b;
}

struct Fleet {
  SealKeyPair aggregator = *generateSealKeyPair();
  SealKeyPair agent1 = *generateSealKeyPair();
  SealKeyPair agent2 = *generateSealKeyPair();
  AggregatorKeyRing ring;
  std::map<std::string, X25519Key> enrolled;
  int lookups = 0;

  Fleet() {
    ring.by_key_id[sealKeyId(aggregator.public_key)] = {aggregator, INT64_MAX};
    enrolled["agent-1"] = agent1.public_key;
    enrolled["agent-2"] = agent2.public_key;
  }
  OpenOptions options() {
    OpenOptions o;
    o.ring = &ring;
    o.agent_public_key = [this](const std::string& id) -> Result<X25519Key> {
      ++lookups;
      auto it = enrolled.find(id);
      if (it == enrolled.end()) return Status::notFound("no key for " + id);
      return it->second;
    };
    return o;
  }
  SealerKeys keysOf(const SealKeyPair& agent) { return {agent, aggregator.public_key}; }
};

// RFC 7748 section 5.2: the two single-call vectors (the second has the top bit
// of u set, which the function must mask) and one iteration of the loop.
TEST(SealTest, X25519MatchesRfc7748FunctionVectors) {
  auto a = x25519(fromHex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                  fromHex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"));
  ASSERT_TRUE(a.isOk()) << a.status().toString();
  EXPECT_EQ(toHex(*a), "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
  auto b = x25519(fromHex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
                  fromHex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493"));
  ASSERT_TRUE(b.isOk()) << b.status().toString();
  EXPECT_EQ(toHex(*b), "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957");
  X25519Key nine{9};
  auto once = x25519(nine, nine);
  ASSERT_TRUE(once.isOk());
  EXPECT_EQ(toHex(*once), "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079");
}

// RFC 7748 section 6.1: Alice and Bob derive their public keys and one shared secret.
TEST(SealTest, X25519MatchesRfc7748DiffieHellmanVectors) {
  X25519Key nine{9};
  X25519Key alice = fromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  X25519Key bob = fromHex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  auto alice_pub = x25519(alice, nine);
  auto bob_pub = x25519(bob, nine);
  ASSERT_TRUE(alice_pub.isOk() && bob_pub.isOk());
  EXPECT_EQ(toHex(*alice_pub), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(toHex(*bob_pub), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  auto k1 = x25519(alice, *bob_pub);
  auto k2 = x25519(bob, *alice_pub);
  ASSERT_TRUE(k1.isOk() && k2.isOk());
  EXPECT_EQ(toHex(*k1), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_EQ(*k1, *k2);
}

TEST(SealTest, X25519RefusesLowOrderPoints) {
  X25519Key scalar = *x25519(X25519Key{9}, X25519Key{9});  // any scalar
  EXPECT_FALSE(x25519(scalar, X25519Key{}).isOk());        // u = 0
  EXPECT_FALSE(x25519(scalar, X25519Key{1}).isOk());       // u = 1
}

TEST(SealTest, GeneratesDistinctPairsAndStableKeyIds) {
  auto a = generateSealKeyPair();
  auto b = generateSealKeyPair();
  ASSERT_TRUE(a.isOk() && b.isOk());
  EXPECT_NE(a->private_key, b->private_key);
  EXPECT_EQ(*x25519(a->private_key, X25519Key{9}), a->public_key);
  EXPECT_EQ(sealKeyId(a->public_key).size(), 16u);
  EXPECT_EQ(sealKeyId(a->public_key), sealKeyId(a->public_key));
  EXPECT_NE(sealKeyId(a->public_key), sealKeyId(b->public_key));
}

TEST(SealTest, KeyFilesRoundTripWith0600AndNoSecretInErrors) {
  TempDir dir;
  auto pair = *generateSealKeyPair();
  auto priv = dir.path() / "agents" / "agent-1.seal.key";
  auto pub = dir.path() / "agents" / "agent-1.seal.pub";
  ASSERT_TRUE(writeSealPrivateKey(priv, pair).isOk());
  ASSERT_TRUE(writeSealPublicKey(pub, pair.public_key).isOk());
  struct stat st {};
  ASSERT_EQ(::stat(priv.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = readSealPrivateKey(priv);
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(back->private_key, pair.private_key);
  EXPECT_EQ(back->public_key, pair.public_key);
  auto back_pub = readSealPublicKey(pub);
  ASSERT_TRUE(back_pub.isOk()) << back_pub.status().toString();
  EXPECT_EQ(*back_pub, pair.public_key);
  // Overwriting is atomic and leaves no temp files behind.
  ASSERT_TRUE(writeSealPrivateKey(priv, pair).isOk());
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(priv.parent_path()),
                          std::filesystem::directory_iterator{}),
            2);

  const std::string secret_hex = toHex(pair.private_key);
  auto expectNoSecret = [&](const Status& s) {
    EXPECT_EQ(s.message().find(secret_hex), std::string::npos) << s.message();
  };
  // A private key readable by group/other is refused, naming the file and the fix.
  ASSERT_EQ(::chmod(priv.c_str(), 0644), 0);
  auto open_mode = readSealPrivateKey(priv);
  ASSERT_FALSE(open_mode.isOk());
  EXPECT_EQ(open_mode.status().code(), Code::kPermissionDenied);
  EXPECT_NE(open_mode.status().message().find(priv.string()), std::string::npos);
  EXPECT_NE(open_mode.status().message().find("chmod 600"), std::string::npos);
  expectNoSecret(open_mode.status());
  ASSERT_EQ(::chmod(priv.c_str(), 0640), 0);
  EXPECT_EQ(readSealPrivateKey(priv).status().code(), Code::kPermissionDenied);
  ASSERT_EQ(::chmod(priv.c_str(), 0600), 0);

  // The wrong file for the job, a missing file, a garbled one.
  auto swapped = readSealPublicKey(priv);
  ASSERT_FALSE(swapped.isOk());
  EXPECT_NE(swapped.status().message().find("PRIVATE"), std::string::npos);
  expectNoSecret(swapped.status());
  auto pub_as_priv = readSealPrivateKey(pub);  // 0644: refused for its mode first
  EXPECT_FALSE(pub_as_priv.isOk());
  EXPECT_EQ(readSealPublicKey(dir.path() / "nope.pub").status().code(), Code::kNotFound);
  EXPECT_EQ(readSealPrivateKey(dir.path() / "nope.key").status().code(), Code::kNotFound);
  { std::ofstream(dir.path() / "garbled.pub") << "branchline-x25519-public-v1 zz\n"; }
  EXPECT_EQ(readSealPublicKey(dir.path() / "garbled.pub").status().code(), Code::kInvalidArgument);
}

TEST(SealTest, RoundTripsAndHidesTheRecords) {
  Fleet fleet;
  WireBatch in = makeBatch("agent-1", 7, 300);
  auto sealed = sealBatch(in, fleet.keysOf(fleet.agent1));
  ASSERT_TRUE(sealed.isOk()) << sealed.status().toString();
  EXPECT_EQ(sealed->find("person-7-1@example.org"), std::string::npos);
  for (int level : {0, 1}) {  // raw bodies are sealed too
    auto wire = sealBatch(in, fleet.keysOf(fleet.agent1), level);
    ASSERT_TRUE(wire.isOk());
    EXPECT_EQ(wire->find("person-7-1@example.org"), std::string::npos) << level;
    auto out = openBatch(*wire, {}, fleet.options());
    ASSERT_TRUE(out.isOk()) << out.status().toString();
    EXPECT_EQ(*out, in);
  }
  auto header = peekHeader(*sealed);
  ASSERT_TRUE(header.isOk());
  EXPECT_TRUE(header->sealed);
  EXPECT_EQ(header->key_id, sealKeyId(fleet.aggregator.public_key));
  EXPECT_EQ(header->agent_id, "agent-1");
  EXPECT_EQ(header->batch_seq, 7u);
  // The plain decoder does not pretend to open it.
  auto plain = decodeBatch(*sealed);
  ASSERT_FALSE(plain.isOk());
  EXPECT_NE(plain.status().message().find("sealed"), std::string::npos);
}

TEST(SealTest, EveryPublishUsesAFreshKey) {
  Fleet fleet;
  auto sealer = BatchSealer::create(fleet.keysOf(fleet.agent1));
  ASSERT_TRUE(sealer.isOk());
  WireBatch in = makeBatch("agent-1", 9, 50);
  auto a = (*sealer)->seal(in);
  auto b = (*sealer)->seal(in);
  ASSERT_TRUE(a.isOk() && b.isOk());
  EXPECT_NE(*a, *b);  // new ephemeral key, so a new AES key: no (key, nonce) repeats
  auto oa = openBatch(*a, {}, fleet.options());
  auto ob = openBatch(*b, {}, fleet.options());
  ASSERT_TRUE(oa.isOk() && ob.isOk());
  EXPECT_EQ(*oa, in);
  EXPECT_EQ(*ob, in);
}

TEST(SealTest, RefusesUnsealedUnlessAllowed) {
  Fleet fleet;
  WireBatch in = makeBatch("agent-1", 3, 10);
  std::string plain = encodeBatch(in);
  auto refused = openBatch(plain, {}, fleet.options());
  ASSERT_FALSE(refused.isOk());
  EXPECT_NE(refused.status().message().find("batch is not sealed"), std::string::npos);
  OpenOptions lax = fleet.options();
  lax.require_sealed = false;
  auto opened = openBatch(plain, {}, lax);
  ASSERT_TRUE(opened.isOk()) << opened.status().toString();
  EXPECT_EQ(*opened, in);
}

TEST(SealTest, RefusesABatchSealedByAnotherAgentsKey) {
  Fleet fleet;
  // agent-2 (or anyone holding broker access and agent-2's key) seals a batch
  // claiming to be agent-1.
  auto forged = sealBatch(makeBatch("agent-1", 4, 10), fleet.keysOf(fleet.agent2));
  ASSERT_TRUE(forged.isOk());
  auto out = openBatch(*forged, {}, fleet.options());
  ASSERT_FALSE(out.isOk());
  EXPECT_NE(out.status().message().find("not sealed by agent `agent-1`"), std::string::npos)
      << out.status().message();
  // A fresh key nobody enrolled fares no better.
  SealKeyPair stranger = *generateSealKeyPair();
  auto stranger_batch = sealBatch(makeBatch("agent-1", 4, 10), fleet.keysOf(stranger));
  EXPECT_FALSE(openBatch(*stranger_batch, {}, fleet.options()).isOk());
}

TEST(SealTest, RefusesUnknownAgentsAndHostileIdsBeforeLookingThemUp) {
  Fleet fleet;
  auto unknown = sealBatch(makeBatch("agent-9", 1, 5), fleet.keysOf(fleet.agent1));
  auto out = openBatch(*unknown, {}, fleet.options());
  ASSERT_FALSE(out.isOk());
  EXPECT_NE(out.status().message().find("agent `agent-9` is not enrolled"), std::string::npos);
  fleet.lookups = 0;
  auto hostile = sealBatch(makeBatch("../../etc/passwd", 1, 5), fleet.keysOf(fleet.agent1));
  auto refused = openBatch(*hostile, {}, fleet.options());
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(fleet.lookups, 0);
}

TEST(SealTest, RefusesUnknownKeyIds) {
  Fleet fleet;
  SealKeyPair other_aggregator = *generateSealKeyPair();
  auto wire = sealBatch(makeBatch("agent-1", 5, 5), {fleet.agent1, other_aggregator.public_key});
  auto out = openBatch(*wire, {}, fleet.options());
  ASSERT_FALSE(out.isOk());
  EXPECT_NE(out.status().message().find("unknown aggregator key id `" +
                                        sealKeyId(other_aggregator.public_key) + "`"),
            std::string::npos);
  OpenOptions no_ring = fleet.options();
  no_ring.ring = nullptr;
  EXPECT_FALSE(openBatch(*wire, {}, no_ring).isOk());
}

TEST(SealTest, HonoursARetiredKeyUntilItsGracePeriodEnds) {
  Fleet fleet;
  const SealKeyPair old_key = fleet.aggregator;
  const SealKeyPair new_key = *generateSealKeyPair();
  const int64_t until = 1800000000000000;  // 2027-01-15
  fleet.ring.by_key_id[sealKeyId(old_key.public_key)].honoured_until_us = until;
  fleet.ring.by_key_id[sealKeyId(new_key.public_key)] = {new_key, INT64_MAX};
  auto to_old = sealBatch(makeBatch("agent-1", 1, 5), {fleet.agent1, old_key.public_key});
  auto to_new = sealBatch(makeBatch("agent-1", 2, 5), {fleet.agent1, new_key.public_key});
  ASSERT_TRUE(to_old.isOk() && to_new.isOk());
  OpenOptions o = fleet.options();
  o.now_us = until - 1;
  EXPECT_TRUE(openBatch(*to_old, {}, o).isOk());
  EXPECT_TRUE(openBatch(*to_new, {}, o).isOk());
  o.now_us = until;
  auto retired = openBatch(*to_old, {}, o);
  ASSERT_FALSE(retired.isOk());
  EXPECT_NE(retired.status().message().find("retired at 2027-01-15T"), std::string::npos)
      << retired.status().message();
  o.now_us = until + int64_t(3650) * 86400 * 1000000;
  EXPECT_TRUE(openBatch(*to_new, {}, o).isOk());
}

// Every byte of a sealed payload flipped in turn: none may crash, and none may
// open to anything but the original (most fail: ciphertext, tag, header fields
// are all authenticated; a flip in Cap'n Proto padding changes no field).
TEST(SealTest, RefusesTamperedAndTruncatedPayloads) {
  Fleet fleet;
  WireBatch in = makeBatch("agent-1", 11, 20);
  std::string wire = *sealBatch(in, fleet.keysOf(fleet.agent1));
  size_t refused = 0;
  for (size_t i = 0; i < wire.size(); ++i) {
    std::string bad = wire;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    auto out = openBatch(bad, {}, fleet.options());
    if (out.isOk()) {
      EXPECT_EQ(*out, in) << "byte " << i;
    } else {
      ++refused;
    }
  }
  EXPECT_GT(refused, wire.size() * 9 / 10);
  // The last bytes are the GCM tag: a flip there is always refused, by name.
  std::string bad_tag = wire;
  bad_tag[wire.size() - 20] ^= 0x40;
  auto tag = openBatch(bad_tag, {}, fleet.options());
  ASSERT_FALSE(tag.isOk());
  EXPECT_NE(tag.status().message().find("batch does not open"), std::string::npos)
      << tag.status().message();
  for (size_t cut = 0; cut < wire.size(); cut += std::max<size_t>(1, wire.size() / 97)) {
    EXPECT_FALSE(openBatch(std::string_view(wire).substr(0, cut), {}, fleet.options()).isOk())
        << cut;
  }
}

TEST(SealTest, SealedBombsAreRefusedBeforeDecrypting) {
  Fleet fleet;
  DecodeLimits tight;
  tight.max_inflated_bytes = 4096;
  auto wire = sealBatch(makeBatch("agent-1", 12, 200), fleet.keysOf(fleet.agent1));
  auto out = openBatch(*wire, tight, fleet.options());
  ASSERT_FALSE(out.isOk());
  EXPECT_EQ(out.status().code(), Code::kResourceExhausted);
  EXPECT_EQ(fleet.lookups, 0);
}

// The consumer labels its refusal metric and audit row with these.
TEST(SealTest, ClassifiesEveryRefusal) {
  Fleet fleet;
  auto why = [&](std::string_view payload, OpenOptions o, const DecodeLimits& limits = {}) {
    OpenFailure f = OpenFailure::kNone;
    auto out = openBatch(payload, limits, o, &f);
    EXPECT_EQ(out.isOk(), f == OpenFailure::kNone);
    return std::string(openFailureLabel(f));
  };
  WireBatch b = makeBatch("agent-1", 1, 5);
  std::string good = *sealBatch(b, fleet.keysOf(fleet.agent1));
  EXPECT_EQ(why(good, fleet.options()), "");
  EXPECT_EQ(why(encodeBatch(b), fleet.options()), "not_sealed");
  EXPECT_EQ(why("garbage!", fleet.options()), "malformed");
  EXPECT_EQ(why(*sealBatch(b, fleet.keysOf(fleet.agent2)), fleet.options()), "seal_invalid");
  std::string flipped = good;
  // The middle is ciphertext (the body is most of the message); the last
  // bytes may be Cap'n Proto padding, which carries nothing to authenticate.
  flipped[flipped.size() / 2] ^= 1;
  EXPECT_EQ(why(flipped, fleet.options()), "seal_invalid");
  EXPECT_EQ(
      why(*sealBatch(makeBatch("agent-5", 1, 5), fleet.keysOf(fleet.agent1)), fleet.options()),
      "not_enrolled");
  SealKeyPair other = *generateSealKeyPair();
  EXPECT_EQ(why(*sealBatch(b, {fleet.agent1, other.public_key}), fleet.options()), "unknown_key");
  OpenOptions later = fleet.options();
  fleet.ring.by_key_id.begin()->second.honoured_until_us = 1000;
  later.now_us = 2000;
  EXPECT_EQ(why(good, later), "key_retired");
  DecodeLimits tiny;
  tiny.max_message_bytes = 64;
  EXPECT_EQ(why(good, fleet.options(), tiny), "too_large");
}

// A sealed full batch is the plain one plus the envelope (ephemeral key, key id,
// tag): sealing never costs wire size beyond that. (What it costs in time:
// branchline-microbench seal.)
TEST(SealTest, SealingAFullBatchAddsOnlyTheEnvelope) {
  Fleet fleet;
  WireBatch in = makeBatch("agent-1", 1, 2000);
  auto sealer = BatchSealer::create(fleet.keysOf(fleet.agent1));
  ASSERT_TRUE(sealer.isOk()) << sealer.status().toString();
  auto sealed = (*sealer)->seal(in);
  ASSERT_TRUE(sealed.isOk()) << sealed.status().toString();
  EXPECT_LE(sealed->size(), encodeBatch(in).size() + 128);
  auto opened = openBatch(*sealed, {}, fleet.options());
  ASSERT_TRUE(opened.isOk()) << opened.status().toString();
  EXPECT_EQ(opened->records.size(), in.records.size());
}

}  // namespace
}  // namespace branchline::protocol
