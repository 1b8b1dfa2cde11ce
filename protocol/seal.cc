#include "protocol/seal.h"

#include <cstring>

#include "protocol/ack_auth.h"
#include "protocol/envelope.h"
#include "shared/core/atomic_file.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/crypto/aead.h"
#include "shared/crypto/hash.h"
#include "shared/crypto/key_file.h"
#include "shared/crypto/secret.h"

namespace branchline::protocol {
namespace {

constexpr std::string_view kPrivateTag = "branchline-x25519-private-v1";
constexpr std::string_view kPublicTag = "branchline-x25519-public-v1";
constexpr size_t kTagSize = crypto::Aes256Gcm::kTagSize;
constexpr size_t kNonceSize = crypto::Aes256Gcm::kNonceSize;
constexpr size_t kAesKeySize = crypto::Aes256Gcm::kKeySize;

// A shared secret, zeroed when it leaves scope (every return path).
using SharedSecret = crypto::SecretBytes<32>;

Status newPair(SealKeyPair& pair) {
  return crypto::generateX25519KeyPair(pair.private_key, pair.public_key);
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<tag> <64 hex>" with optional trailing whitespace -> 32 bytes.
bool parseKeyLine(std::string_view text, std::string_view tag, X25519Key& out) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.remove_suffix(1);
  }
  if (text.size() != tag.size() + 1 + 64 || text.substr(0, tag.size()) != tag ||
      text[tag.size()] != ' ') {
    return false;
  }
  std::string_view hex = text.substr(tag.size() + 1);
  for (size_t i = 0; i < 32; ++i) {
    int hi = hexValue(hex[2 * i]), lo = hexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

// Key files are one short line; a private one is refused when group/other may read it.
constexpr size_t kMaxKeyFileBytes = 256;
constexpr crypto::KeyFileRules kPrivateKeyFile{
    .label = "seal private key file",
    .exposure = "group/other may read the private sealing key",
    .advice = "(and consider the key exposed: rotate it)",
    .max_bytes = kMaxKeyFileBytes,
};
// Not secret, but read the same way: a private key given by mistake would be.
constexpr crypto::KeyFileRules kPublicKeyFile{
    .label = "seal public key file", .check_mode = false, .max_bytes = kMaxKeyFileBytes};

Status writeKeyFile(const std::filesystem::path& file, std::string_view line, mode_t mode) {
  Status s = writeFileAtomically(file, line, mode);
  return s.isOk() ? s : s.withContext("key file");
}

// --- the seal construction -------------------------------------------------

constexpr std::string_view kHkdfInfo = "branchline sealed batch v1";
constexpr std::string_view kAadTag = "branchline envelope v1";

void putU64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void putBytes(std::string& s, std::string_view b) {
  uint32_t n = static_cast<uint32_t>(b.size());
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(n >> (8 * i)));
  s.append(b);
}
std::string_view view(const X25519Key& k) {
  return {reinterpret_cast<const char*>(k.data()), k.size()};
}

// Every envelope field but the body, length-prefixed so no two headers encode alike.
std::string associatedData(const envelope::Parts& p) {
  std::string ad;
  ad.reserve(kAadTag.size() + 64 + p.key_id.size() + p.agent_id.size() + p.ephemeral_key.size());
  putBytes(ad, kAadTag);
  ad.push_back(static_cast<char>(p.format_version & 0xff));
  ad.push_back(static_cast<char>(p.format_version >> 8));
  ad.push_back(static_cast<char>(p.kind));
  ad.push_back(static_cast<char>(p.codec));
  ad.push_back(static_cast<char>(p.cipher));
  putBytes(ad, p.key_id);
  putBytes(ad, p.agent_id);
  putU64(ad, p.batch_seq);
  putU64(ad, p.raw_size);
  putBytes(ad, p.ephemeral_key);
  return ad;
}

// AES key and nonce for one batch. The ephemeral secret makes each batch's key
// fresh (so a fixed nonce would already be safe; deriving it costs nothing);
// the static secret proves the agent; salt and info bind every public key, the
// agent id and the key id, so a key agreed for one context opens no other.
struct BatchKey {
  crypto::SecretBytes<kAesKeySize + kNonceSize> okm;
  std::span<const uint8_t, kAesKeySize> key() const { return okm.span().first<kAesKeySize>(); }
  std::span<const uint8_t, kNonceSize> nonce() const {
    return okm.span().subspan<kAesKeySize, kNonceSize>();
  }
};

Status deriveBatchKey(const X25519Key& ephemeral_secret, const X25519Key& static_secret,
                      const X25519Key& ephemeral_public, const X25519Key& agent_public,
                      const X25519Key& aggregator_public, const std::string& agent_id,
                      const std::string& key_id, BatchKey& out) {
  crypto::SecretBytes<64> ikm;
  std::memcpy(ikm.data(), ephemeral_secret.data(), 32);
  std::memcpy(ikm.data() + 32, static_secret.data(), 32);
  std::array<unsigned char, 96> salt;
  std::memcpy(salt.data(), ephemeral_public.data(), 32);
  std::memcpy(salt.data() + 32, agent_public.data(), 32);
  std::memcpy(salt.data() + 64, aggregator_public.data(), 32);
  std::string info;
  putBytes(info, kHkdfInfo);
  putBytes(info, agent_id);
  putBytes(info, key_id);
  return crypto::hkdfSha256(salt, ikm.span(), crypto::bytesOf(info), out.okm.span());
}

bool validAgentId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

SealKeyPair::~SealKeyPair() { crypto::zeroize(private_key.data(), private_key.size()); }

Result<SealKeyPair> generateSealKeyPair() {
  SealKeyPair pair;
  BL_RETURN_IF_ERROR(newPair(pair));
  return pair;
}

std::string sealKeyId(const X25519Key& public_key) {
  const crypto::Sha256Digest digest = crypto::sha256(public_key);
  return crypto::toHex(std::span(digest).first(8));
}

Result<X25519Key> x25519(const X25519Key& scalar, const X25519Key& u) {
  X25519Key out{};
  BL_RETURN_IF_ERROR(crypto::x25519(scalar, u, out));
  return out;
}

Status writeSealPrivateKey(const std::filesystem::path& file, const SealKeyPair& pair) {
  crypto::SecretString line;
  line.str().reserve(kPrivateTag.size() + 66);
  line.str().append(kPrivateTag).append(" ");
  crypto::SecretString hex(crypto::toHex(pair.private_key));
  line.str() += hex.str();
  line.str() += "\n";
  return writeKeyFile(file, line.view(), 0600);
}

Status writeSealPublicKey(const std::filesystem::path& file, const X25519Key& public_key) {
  std::string line = std::string(kPublicTag) + " " + crypto::toHex(public_key) + "\n";
  return writeKeyFile(file, line, 0644);
}

Result<SealKeyPair> readSealPrivateKey(const std::filesystem::path& file) {
  auto text = crypto::readKeyFile(file, kPrivateKeyFile);
  if (!text) return text.status();
  SealKeyPair pair;
  if (!parseKeyLine(text->view(), kPrivateTag, pair.private_key)) {
    X25519Key ignored;
    const bool is_public = parseKeyLine(text->view(), kPublicTag, ignored);
    return Status::invalid("seal private key file " + file.string() +
                           (is_public ? " holds a public key; name the private .key file"
                                      : " is not a branchline X25519 private key (expected one "
                                        "line `" +
                                            std::string(kPrivateTag) + " <64 hex digits>`)"));
  }
  auto pub = x25519(pair.private_key, crypto::kX25519BasePoint);
  if (!pub) return pub.status().withContext("seal private key file " + file.string());
  pair.public_key = *pub;
  return pair;
}

Result<X25519Key> readSealPublicKey(const std::filesystem::path& file) {
  auto text = crypto::readKeyFile(file, kPublicKeyFile);
  if (!text) return text.status();
  X25519Key key{};
  if (!parseKeyLine(text->view(), kPublicTag, key)) {
    crypto::SecretBytes<32> ignored;
    if (parseKeyLine(text->view(), kPrivateTag, ignored.array())) {
      return Status::invalid("seal public key file " + file.string() +
                             " holds a PRIVATE key; name the .pub file (and check who can read "
                             "this one)");
    }
    return Status::invalid("seal public key file " + file.string() +
                           " is not a branchline X25519 public key (expected one line `" +
                           std::string(kPublicTag) + " <64 hex digits>`)");
  }
  return key;
}

// --- BatchSealer -------------------------------------------------------------

struct BatchSealer::State {
  SealKeyPair agent;
  X25519Key aggregator_public{};
  std::string key_id;
  SharedSecret static_secret;  // DH(agent, aggregator): the same for every batch
  AckKey ack_key;
};

BatchSealer::BatchSealer() : state_(std::make_unique<State>()) {}
BatchSealer::~BatchSealer() = default;

Result<std::unique_ptr<BatchSealer>> BatchSealer::create(const SealerKeys& keys) {
  std::unique_ptr<BatchSealer> s(new BatchSealer());
  State& st = *s->state_;
  st.agent = keys.agent;
  st.aggregator_public = keys.aggregator_public;
  st.key_id = sealKeyId(keys.aggregator_public);
  Status agreed =
      crypto::x25519(st.agent.private_key, st.aggregator_public, st.static_secret.array());
  if (!agreed.isOk()) return agreed.withContext("aggregator key `" + st.key_id + "`");
  auto ack_key = deriveAckKey(st.static_secret.array(), st.agent.public_key, st.aggregator_public);
  if (!ack_key) return ack_key.status();
  st.ack_key = std::move(ack_key).value();
  return s;
}

const std::string& BatchSealer::keyId() const { return state_->key_id; }
const AckKey& BatchSealer::ackKey() const { return state_->ack_key; }

Result<std::string> BatchSealer::seal(const WireBatch& batch, int zstd_level) {
  State& st = *state_;
  envelope::Parts parts;
  parts.kind = envelope::Kind::kBatch;
  parts.cipher = envelope::Cipher::kX25519Aes256Gcm;
  parts.key_id = st.key_id;
  parts.agent_id = batch.agent_id;
  parts.batch_seq = batch.seq;
  envelope::setBody(parts, envelope::serializeBatch(batch), zstd_level);

  // A fresh ephemeral pair per call: a resend of the same batch gets a new key,
  // so no (key, nonce) pair ever repeats, whatever the disk or the seq counter did.
  SealKeyPair ephemeral;
  BL_RETURN_IF_ERROR(newPair(ephemeral));
  SharedSecret ephemeral_secret;
  Status agreed =
      crypto::x25519(ephemeral.private_key, st.aggregator_public, ephemeral_secret.array());
  if (!agreed.isOk()) return agreed;
  parts.ephemeral_key.assign(view(ephemeral.public_key));

  BatchKey key;
  Status derived =
      deriveBatchKey(ephemeral_secret.array(), st.static_secret.array(), ephemeral.public_key,
                     st.agent.public_key, st.aggregator_public, batch.agent_id, st.key_id, key);
  BL_RETURN_IF_ERROR(derived);

  const std::string ad = associatedData(parts);
  std::string sealed(parts.body.size() + kTagSize, '\0');
  auto* out = reinterpret_cast<unsigned char*>(sealed.data());
  auto gcm = crypto::Aes256Gcm::create(key.key());
  Status sealed_ok =
      gcm ? gcm->seal(key.nonce(), crypto::bytesOf(ad), crypto::bytesOf(parts.body),
                      {out, parts.body.size()},
                      std::span<uint8_t, kTagSize>(out + parts.body.size(), kTagSize))
          : gcm.status();
  if (!sealed_ok.isOk()) {
    return sealed_ok.withContext("sealing agent `" + batch.agent_id + "` batch " +
                                 std::to_string(batch.seq));
  }
  parts.body = std::move(sealed);
  return envelope::write(parts);
}

Result<std::string> sealBatch(const WireBatch& batch, const SealerKeys& keys, int zstd_level) {
  auto sealer = BatchSealer::create(keys);
  if (!sealer) return sealer.status();
  return (*sealer)->seal(batch, zstd_level);
}

// --- openBatch ---------------------------------------------------------------

const char* openFailureLabel(OpenFailure failure) {
  switch (failure) {
    case OpenFailure::kNone:
      return "";
    case OpenFailure::kMalformed:
      return "malformed";
    case OpenFailure::kTooLarge:
      return "too_large";
    case OpenFailure::kNotSealed:
      return "not_sealed";
    case OpenFailure::kUnknownKey:
      return "unknown_key";
    case OpenFailure::kKeyRetired:
      return "key_retired";
    case OpenFailure::kNotEnrolled:
      return "not_enrolled";
    case OpenFailure::kForgedOrAltered:
      return "seal_invalid";
    case OpenFailure::kRevoked:
      return "revoked";
  }
  return "malformed";
}

namespace {

Result<WireBatch> openClassified(std::string_view payload, const DecodeLimits& limits,
                                 const OpenOptions& options, OpenFailure& failure,
                                 AckKey* ack_key) {
  auto read = envelope::read(payload, limits);
  if (!read) return read.status();
  envelope::Parts& parts = *read;
  if (parts.kind != envelope::Kind::kBatch) {
    return Status::invalid("envelope holds an ack, not a batch");
  }
  if (parts.cipher == envelope::Cipher::kNone) {
    if (options.require_sealed) {
      failure = OpenFailure::kNotSealed;
      return Status::invalid(
          "batch is not sealed (agent `" + log::printableExcerpt(parts.agent_id) + "` batch " +
          std::to_string(parts.batch_seq) + "), and this aggregator requires sealed batches");
    }
    auto raw = envelope::inflate(parts, parts.body, limits);
    if (!raw) return raw.status();
    return envelope::parseBatch(*raw, parts, limits);
  }
  BL_RETURN_IF_ERROR(envelope::checkDeclaredSize(parts, limits));
  if (!validAgentId(parts.agent_id)) {
    return Status::invalid("envelope agent id `" + log::printableExcerpt(parts.agent_id) +
                           "` is not [A-Za-z0-9_-]{1,64}");
  }
  const std::string& agent = parts.agent_id;
  if (options.ring == nullptr) {
    failure = OpenFailure::kUnknownKey;
    return Status::invalid("batch is sealed but this aggregator has no sealing keys");
  }
  auto entry = options.ring->by_key_id.find(parts.key_id);
  if (entry == options.ring->by_key_id.end()) {
    failure = OpenFailure::kUnknownKey;
    return Status::invalid("unknown aggregator key id `" + log::printableExcerpt(parts.key_id) +
                           "`");
  }
  const int64_t now = options.now_us != 0 ? options.now_us : nowMicros();
  if (now >= entry->second.honoured_until_us) {
    failure = OpenFailure::kKeyRetired;
    return Status::invalid("aggregator key `" + parts.key_id + "` retired at " +
                           formatRfc3339Micros(entry->second.honoured_until_us));
  }
  if (!options.agent_public_key) {
    failure = OpenFailure::kNotEnrolled;
    return Status::invalid("batch is sealed but this aggregator has no enrolled-agent keys");
  }
  auto agent_public = options.agent_public_key(agent);
  if (!agent_public) {
    if (agent_public.status().code() == Code::kNotFound) {
      failure = OpenFailure::kNotEnrolled;
      return Status::invalid("agent `" + agent + "` is not enrolled");
    }
    if (agent_public.status().code() == Code::kPermissionDenied) {
      failure = OpenFailure::kRevoked;
      return Status::invalid("agent `" + agent + "` is revoked");
    }
    return agent_public.status().withContext("agent `" + agent + "` public sealing key");
  }
  if (parts.ephemeral_key.size() != 32) {
    return Status::invalid("sealed batch " + std::to_string(parts.batch_seq) + " of agent `" +
                           agent + "` carries a " + std::to_string(parts.ephemeral_key.size()) +
                           "-byte ephemeral key, expected 32");
  }
  const std::string does_not_open = "batch does not open: not sealed by agent `" + agent +
                                    "`, or altered (batch " + std::to_string(parts.batch_seq) +
                                    ", key `" + parts.key_id + "`)";
  failure = OpenFailure::kForgedOrAltered;  // from here on, any refusal is one
  if (parts.body.size() < kTagSize) return Status::invalid(does_not_open);

  X25519Key ephemeral_public;
  std::memcpy(ephemeral_public.data(), parts.ephemeral_key.data(), 32);
  const SealKeyPair& aggregator = entry->second.pair;
  SharedSecret ephemeral_secret, static_secret;
  Status s1 = crypto::x25519(aggregator.private_key, ephemeral_public, ephemeral_secret.array());
  Status s2 = s1.isOk()
                  ? crypto::x25519(aggregator.private_key, *agent_public, static_secret.array())
                  : Status::ok();
  BatchKey key;
  Status derived =
      (s1.isOk() && s2.isOk())
          ? deriveBatchKey(ephemeral_secret.array(), static_secret.array(), ephemeral_public,
                           *agent_public, aggregator.public_key, agent, parts.key_id, key)
          : Status::ok();
  if (!s1.isOk() || !s2.isOk()) return Status::invalid(does_not_open);
  BL_RETURN_IF_ERROR(derived);

  const std::string ad = associatedData(parts);
  const size_t n = parts.body.size() - kTagSize;
  std::string plain(n, '\0');
  const auto* body = reinterpret_cast<const unsigned char*>(parts.body.data());
  auto gcm = crypto::Aes256Gcm::create(key.key());
  Status opened = gcm ? gcm->open(key.nonce(), crypto::bytesOf(ad), {body, n},
                                  std::span<const uint8_t, kTagSize>(body + n, kTagSize),
                                  {reinterpret_cast<uint8_t*>(plain.data()), n})
                      : gcm.status();
  if (opened.code() == Code::kDataLoss) return Status::invalid(does_not_open);
  if (!opened.isOk()) {
    return opened.withContext("opening agent `" + agent + "` batch " +
                              std::to_string(parts.batch_seq));
  }
  // Authentic from here: what fails now is the sealing agent's own content.
  failure = OpenFailure::kNone;
  if (ack_key != nullptr) {
    auto k = deriveAckKey(static_secret.array(), *agent_public, aggregator.public_key);
    if (!k) return k.status();
    *ack_key = std::move(k).value();
  }
  auto raw = envelope::inflate(parts, plain, limits);
  if (!raw) return raw.status();
  return envelope::parseBatch(*raw, parts, limits);
}

}  // namespace

Result<WireBatch> openBatch(std::string_view payload, const DecodeLimits& limits,
                            const OpenOptions& options, OpenFailure* failure, AckKey* ack_key) {
  OpenFailure why = OpenFailure::kNone;
  auto out = openClassified(payload, limits, options, why, ack_key);
  if (!out.isOk() && why == OpenFailure::kNone) {
    why = out.status().code() == Code::kResourceExhausted ? OpenFailure::kTooLarge
                                                          : OpenFailure::kMalformed;
  }
  if (failure != nullptr) *failure = out.isOk() ? OpenFailure::kNone : why;
  return out;
}

}  // namespace branchline::protocol
