#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "shared/core/atomic_file.h"
#include "shared/crypto/aead.h"
#include "shared/crypto/ecdsa.h"
#include "shared/crypto/hash.h"
#include "shared/crypto/key_file.h"
#include "shared/crypto/random.h"
#include "shared/crypto/secret.h"
#include "shared/crypto/x25519.h"

namespace branchline::crypto {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> fromHex(std::string_view hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoul(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

X25519Key key32(std::string_view hex) {
  X25519Key k{};
  const auto bytes = fromHex(hex);
  std::copy(bytes.begin(), bytes.end(), k.begin());
  return k;
}

TEST(HashTest, Sha256KnownAnswerOneShotAndIncremental) {
  // FIPS 180-2 appendix B.1.
  const std::string abc_hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  EXPECT_EQ(toHex(sha256("abc")), abc_hex);
  Sha256 h;
  h.update("a");
  h.update(std::string_view("bc"));
  EXPECT_EQ(toHex(h.finish()), abc_hex);
}

TEST(HashTest, HmacSha256Rfc4231Case2) {
  EXPECT_EQ(toHex(hmacSha256(bytesOf("Jefe"), bytesOf("what do ya want for nothing?"))),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST(HashTest, HkdfSha256Rfc5869Case1) {
  const std::vector<uint8_t> ikm(22, 0x0b);
  const auto salt = fromHex("000102030405060708090a0b0c");
  const auto info = fromHex("f0f1f2f3f4f5f6f7f8f9");
  std::array<uint8_t, 42> okm{};
  ASSERT_TRUE(hkdfSha256(salt, ikm, info, okm).isOk());
  EXPECT_EQ(toHex(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST(HashTest, ConstantTimeEqualityComparesLengthAndBytes) {
  EXPECT_TRUE(equalConstantTime(bytesOf("tag"), bytesOf("tag")));
  EXPECT_FALSE(equalConstantTime(bytesOf("tag"), bytesOf("taG")));
  EXPECT_FALSE(equalConstantTime(bytesOf("tag"), bytesOf("tags")));
}

// The GCM specification's (McGrew and Viega) test case 16: AES-256, 60-byte
// plaintext, 20-byte associated data.
struct GcmVector {
  std::vector<uint8_t> key =
      fromHex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
  std::vector<uint8_t> nonce = fromHex("cafebabefacedbaddecaf888");
  std::vector<uint8_t> ad = fromHex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
  std::vector<uint8_t> plain = fromHex(
      "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
  std::string cipher_hex =
      "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
  std::string tag_hex = "76fc6ece0f4e1768cddf8853bb2d551b";
};

TEST(AeadTest, Aes256GcmKnownAnswerAndRoundTrip) {
  GcmVector v;
  auto gcm = Aes256Gcm::create(std::span<const uint8_t, 32>(v.key.data(), 32));
  ASSERT_TRUE(gcm.isOk()) << gcm.status().toString();
  const std::span<const uint8_t, 12> nonce(v.nonce.data(), 12);
  std::vector<uint8_t> cipher(v.plain.size());
  std::array<uint8_t, 16> tag{};
  ASSERT_TRUE(gcm->seal(nonce, v.ad, v.plain, cipher, tag).isOk());
  EXPECT_EQ(toHex(cipher), v.cipher_hex);
  EXPECT_EQ(toHex(tag), v.tag_hex);

  std::vector<uint8_t> back(cipher.size());
  ASSERT_TRUE(gcm->open(nonce, v.ad, cipher, tag, back).isOk());
  EXPECT_EQ(back, v.plain);
}

TEST(AeadTest, TamperedCiphertextTagOrAssociatedDataDoesNotOpen) {
  GcmVector v;
  auto gcm = Aes256Gcm::create(std::span<const uint8_t, 32>(v.key.data(), 32));
  ASSERT_TRUE(gcm.isOk());
  const std::span<const uint8_t, 12> nonce(v.nonce.data(), 12);
  std::vector<uint8_t> cipher(v.plain.size());
  std::array<uint8_t, 16> tag{};
  ASSERT_TRUE(gcm->seal(nonce, v.ad, v.plain, cipher, tag).isOk());
  std::vector<uint8_t> out(cipher.size());

  auto flipped = cipher;
  flipped[7] ^= 1;
  Status s = gcm->open(nonce, v.ad, flipped, tag, out);
  EXPECT_EQ(s.code(), Code::kDataLoss) << s.toString();
  EXPECT_EQ(out, std::vector<uint8_t>(out.size(), 0)) << "no unauthentic plaintext handed back";

  auto bad_tag = tag;
  bad_tag[15] ^= 0x80;
  EXPECT_EQ(gcm->open(nonce, v.ad, cipher, bad_tag, out).code(), Code::kDataLoss);

  auto other_ad = v.ad;
  other_ad[0] ^= 1;
  EXPECT_EQ(gcm->open(nonce, other_ad, cipher, tag, out).code(), Code::kDataLoss);

  std::array<uint8_t, 32> other_key{};
  auto other = Aes256Gcm::create(other_key);
  ASSERT_TRUE(other.isOk());
  EXPECT_EQ(other->open(nonce, v.ad, cipher, tag, out).code(), Code::kDataLoss);
}

TEST(X25519Test, Rfc7748Section5VectorAndSection6Agreement) {
  X25519Key out{};
  ASSERT_TRUE(x25519(key32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                     key32("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"), out)
                  .isOk());
  EXPECT_EQ(toHex(out), "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");

  const X25519Key alice = key32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const X25519Key bob = key32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  X25519Key alice_public{}, bob_public{}, s1{}, s2{};
  ASSERT_TRUE(x25519(alice, kX25519BasePoint, alice_public).isOk());
  ASSERT_TRUE(x25519(bob, kX25519BasePoint, bob_public).isOk());
  EXPECT_EQ(toHex(alice_public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(toHex(bob_public), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  ASSERT_TRUE(x25519(alice, bob_public, s1).isOk());
  ASSERT_TRUE(x25519(bob, alice_public, s2).isOk());
  EXPECT_EQ(toHex(s1), "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
  EXPECT_EQ(s1, s2);
}

TEST(X25519Test, LowOrderPointIsRefusedAndNewPairsAgree) {
  X25519Key out{};
  Status s = x25519(key32("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
                    X25519Key{}, out);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.toString();

  X25519Key a_priv{}, a_pub{}, b_priv{}, b_pub{}, s1{}, s2{};
  ASSERT_TRUE(generateX25519KeyPair(a_priv, a_pub).isOk());
  ASSERT_TRUE(generateX25519KeyPair(b_priv, b_pub).isOk());
  EXPECT_NE(a_priv, b_priv);
  EXPECT_EQ(a_priv[0] & 7, 0) << "stored clamped";
  EXPECT_EQ(a_priv[31] & 0xc0, 0x40);
  ASSERT_TRUE(x25519(a_priv, b_pub, s1).isOk());
  ASSERT_TRUE(x25519(b_priv, a_pub, s2).isOk());
  EXPECT_EQ(s1, s2);
}

TEST(EcdsaTest, SignsAndVerifiesAndRefusesAnotherMessageOrKey) {
  auto key = generateEcdsaP256Key();
  ASSERT_TRUE(key.isOk()) << key.status().toString();
  EXPECT_EQ(key->view().rfind("-----BEGIN EC PRIVATE KEY-----", 0), 0u);
  auto pub = ecdsaPublicKeyPem(key->view());
  ASSERT_TRUE(pub.isOk()) << pub.status().toString();
  auto sig = ecdsaSign(key->view(), "rotate to key 7");
  ASSERT_TRUE(sig.isOk()) << sig.status().toString();
  EXPECT_TRUE(ecdsaVerify(*pub, "rotate to key 7", *sig).isOk());
  EXPECT_EQ(ecdsaVerify(*pub, "rotate to key 8", *sig).code(), Code::kPermissionDenied);

  auto other = generateEcdsaP256Key();
  ASSERT_TRUE(other.isOk());
  auto other_pub = ecdsaPublicKeyPem(other->view());
  ASSERT_TRUE(other_pub.isOk());
  EXPECT_EQ(ecdsaVerify(*other_pub, "rotate to key 7", *sig).code(), Code::kPermissionDenied);

  Status garbled = ecdsaSign("not a key", "m").status();
  EXPECT_EQ(garbled.code(), Code::kInvalidArgument);
}

TEST(RandomTest, DrawsDifferAndAForkedChildDrawsItsOwn) {
  std::array<uint8_t, 32> a{}, b{};
  ASSERT_TRUE(fillRandom(a).isOk());
  ASSERT_TRUE(fillRandom(b).isOk());
  EXPECT_NE(a, b);

  auto drbg = threadDrbg();
  ASSERT_TRUE(drbg.isOk());
  ASSERT_TRUE((*drbg)->fill(a).isOk());  // the generator exists before the fork
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::array<uint8_t, 32> c{};
    const bool ok = (*drbg)->fill(c).isOk();
    _exit(ok && ::write(fds[1], c.data(), c.size()) == ssize_t(c.size()) ? 0 : 1);
  }
  ASSERT_TRUE((*drbg)->fill(a).isOk());
  std::array<uint8_t, 32> from_child{};
  ASSERT_EQ(::read(fds[0], from_child.data(), from_child.size()), ssize_t(from_child.size()));
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_NE(a, from_child) << "a forked child must not replay the parent's stream";
}

TEST(SecretTest, MoveLeavesNoCopyBehind) {
  SecretBytes<4> a;
  a.array() = {1, 2, 3, 4};
  SecretBytes<4> b(std::move(a));
  EXPECT_EQ(b.array(), (std::array<uint8_t, 4>{1, 2, 3, 4}));
  EXPECT_EQ(a.array(), (std::array<uint8_t, 4>{}));  // NOLINT(bugprone-use-after-move)

  std::string text = "secret";
  zeroize(text);
  EXPECT_TRUE(text.empty());
}

class KeyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "bl-crypto-test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

unsigned modeOf(const fs::path& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? unsigned(st.st_mode & 07777) : 0u;
}

TEST_F(KeyFileTest, WritesExactModeAtomicallyAndNeverReplacesSilently) {
  const fs::path key = dir_ / "sub" / "k.key";
  ASSERT_TRUE(writeFileAtomically(key, "first", 0600, {.replace = false}).isOk());
  EXPECT_EQ(modeOf(key), 0600u);
  EXPECT_EQ(writeFileAtomically(key, "second", 0600, {.replace = false}).code(),
            Code::kAlreadyExists);
  auto read = readKeyFile(key, {});
  ASSERT_TRUE(read.isOk()) << read.status().toString();
  EXPECT_EQ(read->view(), "first");
  ASSERT_TRUE(writeFileAtomically(key, "third", 0600).isOk());
  EXPECT_EQ(readKeyFile(key, {})->view(), "third");
  ASSERT_TRUE(writeFileAtomically(dir_ / "k.pub", "public", 0644).isOk());
  EXPECT_EQ(modeOf(dir_ / "k.pub"), 0644u);
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_ / "sub")) ++entries;
  EXPECT_EQ(entries, 1u) << "no temp file left behind";
}

TEST_F(KeyFileTest, RefusesGroupOrOtherAccessNamingTheFileAndTheFix) {
  const fs::path key = dir_ / "k.key";
  ASSERT_TRUE(writeFileAtomically(key, "s3cr3t-bytes", 0600).isOk());
  KeyFileRules rules;
  rules.label = "seal private key file";
  rules.exposure = "group/other may read the private sealing key";
  rules.advice = "(and consider the key exposed: rotate it)";
  for (unsigned mode : {0640u, 0604u, 0660u}) {
    ASSERT_EQ(::chmod(key.c_str(), mode), 0);
    auto r = readKeyFile(key, rules);
    ASSERT_FALSE(r.isOk()) << mode;
    EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
    const std::string& m = r.status().message();
    EXPECT_NE(m.find("seal private key file " + key.string()), std::string::npos) << m;
    EXPECT_NE(m.find("chmod 600 " + key.string()), std::string::npos) << m;
    EXPECT_NE(m.find("rotate it"), std::string::npos) << m;
    EXPECT_EQ(m.find("s3cr3t"), std::string::npos) << "no contents in errors: " << m;
  }
  rules.check_mode = false;  // a public key may be world-readable
  EXPECT_TRUE(readKeyFile(key, rules).isOk());

  EXPECT_EQ(readKeyFile(dir_ / "missing", {}).status().code(), Code::kNotFound);
  EXPECT_EQ(readKeyFile(dir_, {}).status().code(), Code::kInvalidArgument) << "a folder";
  KeyFileRules small;
  small.max_bytes = 4;
  ASSERT_EQ(::chmod(key.c_str(), 0600), 0);
  EXPECT_EQ(readKeyFile(key, small).status().code(), Code::kInvalidArgument);
}

TEST_F(KeyFileTest, OverwriteWithZerosAndReplace) {
  const fs::path key = dir_ / "k.key";
  const fs::path next = dir_ / "k.key.next";
  ASSERT_TRUE(writeFileAtomically(key, "old key", 0600).isOk());
  ASSERT_TRUE(writeFileAtomically(next, "new key", 0600).isOk());
  ASSERT_TRUE(overwriteWithZeros(key).isOk());
  EXPECT_EQ(readKeyFile(key, {})->str(), std::string(7, '\0'));
  ASSERT_TRUE(replaceFile(next, key).isOk());
  EXPECT_EQ(readKeyFile(key, {})->view(), "new key");
  EXPECT_FALSE(fs::exists(next));
}

}  // namespace
}  // namespace branchline::crypto
