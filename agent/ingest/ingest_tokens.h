// Ingest tokens: the bearer credentials that let a client post records to a
// source (README "Authenticated ingest"). The agent keeps only their SHA-256
// hashes, in a 0600 file in its data directory, and `branchline-agent token
// add|list|revoke` manages them; a running agent picks up changes within a
// second, so a revoked token stops working without a restart.
//
// A token is `blt_<id>_<secret>`: an 8-hex-digit id, which names it in lists
// and logs and finds its entry in one lookup, and 32 random bytes in hex. Only
// the id is ever logged or listed; the secret is printed once, by `add`.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace branchline::agent {

struct IngestToken {
  std::string id;                    // 8 lower-case hex digits
  int64_t created_unix = 0;          // seconds since the epoch
  std::vector<std::string> sources;  // the sources it may post to
  std::array<uint8_t, 32> hash{};    // SHA-256 of the whole token text
};

// The id of a well-formed token text (`blt_<8 hex>_<64 hex>`), or "" when it is
// not one. Strict: exact lengths, lower-case hex only.
std::string_view tokenId(std::string_view token);

// The credential of an `Authorization` header value: "Bearer <token>" (scheme
// case-insensitive, one or more spaces, no trailing text). "" when the header
// is absent or not a Bearer credential.
std::string_view bearerCredential(std::string_view authorization);

// The parsed token file. Lines: `# comment`, blank, or
// `<id> <created_unix> <source>[,<source>...] <sha256 hex>`.
class IngestTokens {
 public:
  enum class Verdict {
    kOk,           // a known token that may post to the source
    kMissing,      // no Bearer credential: 401
    kUnknown,      // malformed, unknown or revoked: 401
    kWrongSource,  // a valid token of other sources: 403
  };

  // kInvalidArgument naming the line for a malformed file (a duplicated id, a
  // bad hash, an empty source list).
  static Result<IngestTokens> parse(std::string_view text);
  std::string render() const;

  // Constant time in the secret: the id only selects the entry, and the
  // hashes are compared with crypto::equalConstantTime. `id` (optional) gets
  // the token's id when it is well formed, for logs.
  Verdict check(std::string_view authorization, std::string_view source,
                std::string* id = nullptr) const;

  const std::vector<IngestToken>& tokens() const { return tokens_; }
  bool empty() const { return tokens_.empty(); }

  // Management (the `token` subcommand). add() returns the new token's text.
  Result<std::string> add(const std::vector<std::string>& sources, int64_t now_unix);
  bool revoke(std::string_view id);  // false when there is no such id
  // Puts back an entry (a revoke for some of a token's sources keeps the rest).
  Status restore(std::string id, int64_t created_unix, std::vector<std::string> sources,
                 const std::array<uint8_t, 32>& hash);

 private:
  std::vector<IngestToken> tokens_;
};

// Reads the token file; a missing file is an empty set. kPermissionDenied when
// it grants group/other access (`chmod 600` fixes it).
Result<IngestTokens> readIngestTokens(const std::filesystem::path& file);
// Writes it atomically, mode 0600.
Status writeIngestTokens(const std::filesystem::path& file, const IngestTokens& tokens);

// Read-modify-write of the token file under an exclusive lock (a lock file
// beside it), so two `token` commands at once cannot lose each other's change.
Status updateIngestTokens(const std::filesystem::path& file,
                          const std::function<Status(IngestTokens&)>& change);

// The running agent's view of the token file: checks it again at most once
// per `recheck` (by inode, size and mtime) and reloads it when it changed. A
// reload that fails keeps the last good set and is logged. Thread-safe.
class IngestTokenFile {
 public:
  explicit IngestTokenFile(std::filesystem::path file,
                           std::chrono::milliseconds recheck = std::chrono::milliseconds(1000));
  Status loadNow();  // at startup: an unreadable file is an error
  IngestTokens::Verdict check(std::string_view authorization, std::string_view source,
                              std::string* id = nullptr);
  size_t count();

 private:
  std::shared_ptr<const IngestTokens> current();

  std::filesystem::path file_;
  std::chrono::milliseconds recheck_;
  std::mutex mutex_;
  std::shared_ptr<const IngestTokens> tokens_;
  int64_t next_check_us_ = 0;
  struct Stamp {
    uint64_t ino = 0, size = 0;
    int64_t mtime_ns = 0;
    bool exists = false;
    bool operator==(const Stamp&) const = default;
  } stamp_;
  static Stamp stampOf(const std::filesystem::path& file);
};

}  // namespace branchline::agent
