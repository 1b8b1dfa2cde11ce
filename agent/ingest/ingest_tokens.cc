#include "agent/ingest/ingest_tokens.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "shared/core/atomic_file.h"
#include "shared/core/clock.h"
#include "shared/core/log.h"
#include "shared/core/unique_fd.h"
#include "shared/crypto/hash.h"
#include "shared/crypto/key_file.h"
#include "shared/crypto/random.h"

namespace branchline::agent {
namespace {

constexpr std::string_view kPrefix = "blt_";
constexpr size_t kIdChars = 8;
constexpr size_t kSecretBytes = 32;
constexpr size_t kTokenChars = kPrefix.size() + kIdChars + 1 + 2 * kSecretBytes;
constexpr std::string_view kHeader =
    "# branchline ingest tokens: <id> <created_unix> <sources> <sha256 of the token>\n"
    "# managed by `branchline-agent token add|list|revoke`; never holds a token itself\n";
// A token file past this is refused: a few thousand tokens fit many times over.
constexpr size_t kMaxFileBytes = 4 << 20;

bool isLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool validSourceName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

bool decodeHex(std::string_view hex, std::span<uint8_t> out) {
  if (hex.size() != out.size() * 2 || !isLowerHex(hex)) return false;
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  }
  return true;
}

std::vector<std::string_view> splitOn(std::string_view text, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t end = text.find(sep, start);
    parts.push_back(text.substr(start, end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return parts;
}

}  // namespace

std::string_view tokenId(std::string_view token) {
  if (token.size() != kTokenChars || token.substr(0, kPrefix.size()) != kPrefix) return {};
  std::string_view id = token.substr(kPrefix.size(), kIdChars);
  std::string_view secret = token.substr(kPrefix.size() + kIdChars + 1);
  if (token[kPrefix.size() + kIdChars] != '_' || !isLowerHex(id) || !isLowerHex(secret)) return {};
  return id;
}

std::string_view bearerCredential(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer";
  if (authorization.size() <= kScheme.size()) return {};
  for (size_t i = 0; i < kScheme.size(); ++i) {
    char c = authorization[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kScheme[i]) return {};
  }
  std::string_view rest = authorization.substr(kScheme.size());
  if (rest.front() != ' ') return {};
  rest.remove_prefix(std::min(rest.find_first_not_of(' '), rest.size()));
  // token68 (RFC 9110 §11.2): no spaces inside, nothing after it.
  while (!rest.empty() && (rest.back() == ' ' || rest.back() == '\t')) rest.remove_suffix(1);
  if (rest.empty() || rest.find_first_of(" \t,") != std::string_view::npos) return {};
  return rest;
}

Result<IngestTokens> IngestTokens::parse(std::string_view text) {
  IngestTokens out;
  size_t line_no = 0;
  for (std::string_view line : splitOn(text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    auto bad = [&](const std::string& why) {
      return Status::invalid("line " + std::to_string(line_no) + ": " + why);
    };
    std::vector<std::string_view> f = splitOn(line, ' ');
    if (f.size() != 4) return bad("expected `<id> <created_unix> <sources> <sha256>`");
    IngestToken t;
    if (f[0].size() != kIdChars || !isLowerHex(f[0]))
      return bad("id must be 8 lower-case hex digits");
    t.id = std::string(f[0]);
    if (f[1].empty() || f[1].size() > 12 ||
        f[1].find_first_not_of("0123456789") != std::string_view::npos) {
      return bad("created_unix must be a number of seconds");
    }
    t.created_unix = std::stoll(std::string(f[1]));
    for (std::string_view s : splitOn(f[2], ',')) {
      if (!validSourceName(s)) return bad("a source name must be 1-64 characters of [A-Za-z0-9_-]");
      t.sources.emplace_back(s);
    }
    if (!decodeHex(f[3], t.hash)) return bad("the hash must be 64 lower-case hex digits");
    for (const auto& other : out.tokens_) {
      if (other.id == t.id) return bad("id " + t.id + " appears twice");
    }
    out.tokens_.push_back(std::move(t));
  }
  return out;
}

std::string IngestTokens::render() const {
  std::string out(kHeader);
  for (const auto& t : tokens_) {
    out += t.id + " " + std::to_string(t.created_unix) + " ";
    for (size_t i = 0; i < t.sources.size(); ++i) {
      if (i > 0) out += ',';
      out += t.sources[i];
    }
    out += " " + crypto::toHex(t.hash) + "\n";
  }
  return out;
}

IngestTokens::Verdict IngestTokens::check(std::string_view authorization, std::string_view source,
                                          std::string* id_out) const {
  std::string_view token = bearerCredential(authorization);
  if (token.empty()) return authorization.empty() ? Verdict::kMissing : Verdict::kUnknown;
  std::string_view id = tokenId(token);
  if (id.empty()) return Verdict::kUnknown;
  if (id_out != nullptr) *id_out = std::string(id);
  auto it = std::find_if(tokens_.begin(), tokens_.end(),
                         [&](const IngestToken& t) { return t.id == id; });
  if (it == tokens_.end()) return Verdict::kUnknown;
  const crypto::Sha256Digest digest = crypto::sha256(token);
  if (!crypto::equalConstantTime(digest, it->hash)) return Verdict::kUnknown;
  if (std::find(it->sources.begin(), it->sources.end(), source) == it->sources.end()) {
    return Verdict::kWrongSource;
  }
  return Verdict::kOk;
}

Result<std::string> IngestTokens::add(const std::vector<std::string>& sources, int64_t now_unix) {
  if (sources.empty()) return Status::invalid("a token needs at least one source");
  for (const auto& s : sources) {
    if (!validSourceName(s)) {
      return Status::invalid("source `" + s + "`: must be 1-64 characters of [A-Za-z0-9_-]");
    }
  }
  uint8_t secret[kSecretBytes];
  std::string id;
  do {
    uint8_t id_bytes[kIdChars / 2];
    BL_RETURN_IF_ERROR(crypto::fillRandom(id_bytes));
    id = crypto::toHex(id_bytes);
  } while (std::any_of(tokens_.begin(), tokens_.end(),
                       [&](const IngestToken& t) { return t.id == id; }));
  BL_RETURN_IF_ERROR(crypto::fillRandom(secret));
  std::string token = std::string(kPrefix) + id + "_" + crypto::toHex(secret);
  IngestToken t;
  t.id = id;
  t.created_unix = now_unix;
  t.sources = sources;
  t.hash = crypto::sha256(token);
  tokens_.push_back(std::move(t));
  return token;
}

bool IngestTokens::revoke(std::string_view id) {
  auto it = std::find_if(tokens_.begin(), tokens_.end(),
                         [&](const IngestToken& t) { return t.id == id; });
  if (it == tokens_.end()) return false;
  tokens_.erase(it);
  return true;
}

Status IngestTokens::restore(std::string id, int64_t created_unix, std::vector<std::string> sources,
                             const std::array<uint8_t, 32>& hash) {
  if (std::any_of(tokens_.begin(), tokens_.end(),
                  [&](const IngestToken& t) { return t.id == id; })) {
    return Status::invalid("token " + id + " exists already");
  }
  tokens_.push_back(IngestToken{std::move(id), created_unix, std::move(sources), hash});
  return Status::ok();
}

Result<IngestTokens> readIngestTokens(const std::filesystem::path& file) {
  crypto::KeyFileRules rules;
  rules.label = "ingest token file";
  rules.exposure = "group/other may read the token hashes";
  rules.max_bytes = kMaxFileBytes;
  auto text = crypto::readKeyFile(file, rules);
  if (!text.isOk()) {
    if (text.status().code() == Code::kNotFound) return IngestTokens{};
    return text.status();
  }
  auto parsed = IngestTokens::parse(text->view());
  if (!parsed.isOk()) return parsed.status().withContext("ingest token file " + file.string());
  return parsed;
}

Status writeIngestTokens(const std::filesystem::path& file, const IngestTokens& tokens) {
  return writeFileAtomically(file, tokens.render(), 0600);
}

Status updateIngestTokens(const std::filesystem::path& file,
                          const std::function<Status(IngestTokens&)>& change) {
  const std::string lock_path = file.string() + ".lock";
  UniqueFd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (lock.get() < 0) return Status::internal("open " + lock_path + ": " + std::strerror(errno));
  if (::flock(lock.get(), LOCK_EX) != 0) {
    return Status::internal("lock " + lock_path + ": " + std::strerror(errno));
  }
  auto tokens = readIngestTokens(file);
  if (!tokens.isOk()) return tokens.status();
  BL_RETURN_IF_ERROR(change(*tokens));
  return writeIngestTokens(file, *tokens);
}

// What tells a rewritten token file from the one loaded (atomic writes change the inode).
IngestTokenFile::Stamp IngestTokenFile::stampOf(const std::filesystem::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return {};
  return Stamp{static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
               static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec, true};
}

IngestTokenFile::IngestTokenFile(std::filesystem::path file, std::chrono::milliseconds recheck)
    : file_(std::move(file)), recheck_(recheck), tokens_(std::make_shared<IngestTokens>()) {}

Status IngestTokenFile::loadNow() {
  const Stamp stamp = stampOf(file_);
  auto tokens = readIngestTokens(file_);
  if (!tokens.isOk()) return tokens.status();
  std::lock_guard lock(mutex_);
  tokens_ = std::make_shared<const IngestTokens>(std::move(tokens).value());
  stamp_ = stamp;
  next_check_us_ = steadyMicros() + recheck_.count() * 1000;
  return Status::ok();
}

std::shared_ptr<const IngestTokens> IngestTokenFile::current() {
  std::unique_lock lock(mutex_);
  const int64_t now = steadyMicros();
  if (now < next_check_us_) return tokens_;
  next_check_us_ = now + recheck_.count() * 1000;
  const Stamp stamp = stampOf(file_);
  if (stamp == stamp_) return tokens_;
  // The file is small; reading it under the lock keeps reloads single-file.
  auto tokens = readIngestTokens(file_);
  if (!tokens.isOk()) {
    log::error("ingest_tokens_reload_failed",
               {{"file", file_.string()}, {"error", tokens.status().message()}});
    return tokens_;
  }
  stamp_ = stamp;
  tokens_ = std::make_shared<const IngestTokens>(std::move(tokens).value());
  log::info(
      "ingest_tokens_reloaded",
      {{"file", file_.string()}, {"tokens", static_cast<uint64_t>(tokens_->tokens().size())}});
  return tokens_;
}

IngestTokens::Verdict IngestTokenFile::check(std::string_view authorization,
                                             std::string_view source, std::string* id) {
  return current()->check(authorization, source, id);
}

size_t IngestTokenFile::count() { return current()->tokens().size(); }

}  // namespace branchline::agent
