#include "agent/buffer/record_cipher.h"

#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cassert>
#include <cstring>
#include <optional>
#include <span>

#include "shared/core/atomic_file.h"
#include "shared/crypto/aead.h"
#include "shared/crypto/key_file.h"
#include "shared/crypto/random.h"

namespace branchline::agent {
namespace {

constexpr unsigned char kFormatVersion = 1;
constexpr size_t kNonceSize = crypto::Aes256Gcm::kNonceSize;
constexpr size_t kTagSize = crypto::Aes256Gcm::kTagSize;
// Associated data: version byte, rowid (8 bytes LE), column name.
constexpr size_t kMaxColumnName = 48;

// The buffer's key file: exactly 32 bytes, refused when group/other may read it.
constexpr crypto::KeyFileRules kKeyFileRules{
    .label = "key file",
    .exposure = "group/other may access the buffer's data key",
    .advice = "(and check who has read it)",
    .max_bytes = 4096,
};

// Writes a key to a temp file and renames it into place. Without `replace`, a key
// another process created meanwhile is kept: kAlreadyExists.
Status writeKeyFile(const std::filesystem::path& file, const DataKey& key, bool replace) {
  Status s = writeFileAtomically(
      file, std::string_view(reinterpret_cast<const char*>(key.data()), key.size()), 0600,
      {.replace = replace});
  return s.isOk() || s.code() == Code::kAlreadyExists ? s : s.withContext("key file");
}

}  // namespace

Result<DataKey> loadOrCreateDataKey(const std::filesystem::path& file) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto existing = readDataKeyFile(file);
    if (existing.isOk() || existing.status().code() != Code::kNotFound) return existing;
    auto key = generateDataKey();
    if (!key.isOk()) return key;
    Status s = writeKeyFile(file, *key, /*replace=*/false);
    if (s.isOk()) return key;
    if (s.code() != Code::kAlreadyExists) return s;
    // Another process created it first: use theirs.
  }
  return Status::internal("key file " + file.string() + " keeps disappearing");
}

Result<DataKey> readDataKeyFile(const std::filesystem::path& file) {
  auto text = crypto::readKeyFile(file, kKeyFileRules);
  if (!text) return text.status();
  if (text->str().size() != DataKey::kSize) {
    return Status::dataLoss("key file " + file.string() + " holds " +
                            std::to_string(text->str().size()) + " bytes, expected " +
                            std::to_string(DataKey::kSize) +
                            "; restore the agent's original key file");
  }
  DataKey key;
  std::memcpy(key.data(), text->str().data(), DataKey::kSize);
  return key;
}

Status replaceDataKeyFile(const std::filesystem::path& from, const std::filesystem::path& to) {
  Status s = crypto::replaceFile(from, to);
  return s.isOk() ? s : s.withContext("key file");
}

Status writeDataKeyFile(const std::filesystem::path& file, const DataKey& key) {
  return writeKeyFile(file, key, /*replace=*/true);
}

Result<DataKey> generateDataKey() {
  DataKey key;
  BL_RETURN_IF_ERROR(crypto::fillRandom(key.span()));
  return key;
}

Status zeroDataKeyFile(const std::filesystem::path& file) {
  Status s = crypto::overwriteWithZeros(file);
  return s.isOk() ? s : s.withContext("key file");
}

// A run's nonce state, alone in an anonymous page marked MADV_WIPEONFORK: in a
// forked child the kernel hands back that page zeroed, so `active` reads 0 there.
struct NonceRun {
  uint64_t active;
  uint64_t counter;
  unsigned char base[kNonceSize];
};

struct RecordCipher::State {
  std::optional<crypto::Aes256Gcm> gcm;  // set once, at create()
  NonceRun* run = nullptr;  // null without MADV_WIPEONFORK: then every seal draws its own
  size_t run_page = 0;
  State() {
    const long page = ::sysconf(_SC_PAGESIZE);
    run_page = page > 0 ? size_t(page) : 4096;
    void* p = ::mmap(nullptr, run_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    if (::madvise(p, run_page, MADV_WIPEONFORK) != 0) {
      ::munmap(p, run_page);
      return;
    }
    run = static_cast<NonceRun*>(p);
  }
  ~State() {  // the Aes256Gcm zeroes its key schedule
    if (run != nullptr) {
      crypto::zeroize(run, sizeof *run);
      ::munmap(run, run_page);
    }
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Writes the next value's nonce: from the run when one is active in this process,
  // else fresh from the kernel.
  Status nextNonce(unsigned char* nonce) {
    if (run == nullptr || run->active == 0) {
      Status s = crypto::fillRandom({nonce, kNonceSize});
      return s.isOk() ? s : s.withContext("buffer cipher: nonce");
    }
    std::memcpy(nonce, run->base, kNonceSize);
    const uint64_t i = run->counter++;
    for (int b = 0; b < 8; ++b) nonce[4 + b] ^= static_cast<unsigned char>(i >> (8 * b));
    return Status::ok();
  }

  // The associated data binding a value to its place; returns its length.
  static size_t associatedData(std::string_view column, int64_t rowid,
                               unsigned char (&ad)[1 + 8 + kMaxColumnName]) {
    assert(column.size() <= kMaxColumnName && "column name too long for the AAD buffer");
    ad[0] = kFormatVersion;
    uint64_t id = uint64_t(rowid);
    for (int i = 0; i < 8; ++i) ad[1 + i] = static_cast<unsigned char>(id >> (8 * i));
    std::memcpy(ad + 9, column.data(), column.size());
    return 9 + column.size();
  }
};

RecordCipher::RecordCipher() : state_(std::make_unique<State>()) {}
RecordCipher::~RecordCipher() = default;

Result<std::unique_ptr<RecordCipher>> RecordCipher::create(const DataKey& key) {
  std::unique_ptr<RecordCipher> c(new RecordCipher());
  auto gcm = crypto::Aes256Gcm::create(key.span());
  if (!gcm) return gcm.status().withContext("buffer cipher");
  c->state_->gcm.emplace(std::move(gcm).value());
  return c;
}

Status RecordCipher::seal(std::string_view column, int64_t rowid, std::string_view plain,
                          std::string& out) {
  State& st = *state_;
  out.resize(kOverhead + plain.size());
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  p[0] = kFormatVersion;
  unsigned char* nonce = p + 1;
  unsigned char* body = nonce + kNonceSize;
  unsigned char* tag = body + plain.size();
  BL_RETURN_IF_ERROR(st.nextNonce(nonce));
  unsigned char ad[1 + 8 + kMaxColumnName];
  size_t ad_len = State::associatedData(column, rowid, ad);
  Status s = st.gcm->seal(std::span<const uint8_t, kNonceSize>(nonce, kNonceSize), {ad, ad_len},
                          crypto::bytesOf(plain), {body, plain.size()},
                          std::span<uint8_t, kTagSize>(tag, kTagSize));
  return s.isOk() ? s : s.withContext("buffer cipher");
}

Status RecordCipher::beginRun() {
  State& st = *state_;
  if (st.run == nullptr) return Status::ok();  // each seal draws from the kernel instead
  st.run->active = 0;                          // a failed draw leaves no run behind
  unsigned char base[kNonceSize];
  Status s = crypto::fillRandom(base);
  if (!s.isOk()) return s.withContext("buffer cipher: nonce run");
  // A hedge should a kernel without VM generation ID support hand two resumed copies
  // the same bytes: the clock they read then most likely differs.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t ns = uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
  for (int b = 0; b < 8; ++b) base[b] ^= static_cast<unsigned char>(ns >> (8 * b));
  std::memcpy(st.run->base, base, kNonceSize);
  st.run->counter = 0;
  st.run->active = 1;
  return Status::ok();
}

void RecordCipher::endRun() {
  if (state_->run != nullptr) state_->run->active = 0;
}

Status RecordCipher::open(std::string_view column, int64_t rowid, std::string_view sealed,
                          std::string& out) {
  const std::string where = std::string(column) + " of row " + std::to_string(rowid);
  if (sealed.size() < kOverhead) {
    return Status::dataLoss(where + ": sealed value is " + std::to_string(sealed.size()) +
                            " bytes, shorter than the " + std::to_string(kOverhead) +
                            "-byte envelope");
  }
  const auto* p = reinterpret_cast<const unsigned char*>(sealed.data());
  if (p[0] != kFormatVersion) {
    return Status::dataLoss(where + ": unknown sealed-value version " + std::to_string(p[0]));
  }
  const unsigned char* nonce = p + 1;
  const unsigned char* body = nonce + kNonceSize;
  const size_t n = sealed.size() - kOverhead;
  const unsigned char* tag = body + n;
  out.resize(n);
  unsigned char ad[1 + 8 + kMaxColumnName];
  size_t ad_len = State::associatedData(column, rowid, ad);
  Status s =
      state_->gcm->open(std::span<const uint8_t, kNonceSize>(nonce, kNonceSize), {ad, ad_len},
                        {body, n}, std::span<const uint8_t, kTagSize>(tag, kTagSize),
                        {reinterpret_cast<uint8_t*>(out.data()), n});
  if (s.code() == Code::kDataLoss) {
    out.clear();
    return Status::dataLoss(where +
                            ": failed authentication (the file is corrupt or was modified, or "
                            "the value was sealed under another data key)");
  }
  return s.isOk() ? s : s.withContext(where);
}

}  // namespace branchline::agent
