// Encryption at rest for the agent's buffer: a per-agent 256-bit data key kept in
// a key file (mode 0600), and AES-256-GCM sealing of each sensitive column value.
//
// Guarantee: a copy of the buffer's files (buffer.db, buffer.db-wal) without the
// key file reveals no record content, and a sealed value that was changed, or moved
// to another row or column, fails to open (kDataLoss) instead of returning garbage.
// Nonces are 96 random bits per value (never a counter), so a restored disk image
// or a crash cannot make the agent reuse a (key, nonce) pair.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "shared/core/status.h"

namespace branchline::agent {

// 32 key bytes, zeroed when destroyed. Never logged, never in an error message.
class DataKey {
 public:
  static constexpr size_t kSize = 32;
  DataKey() = default;
  ~DataKey();
  DataKey(const DataKey&) = delete;
  DataKey& operator=(const DataKey&) = delete;
  DataKey(DataKey&& other) noexcept;
  DataKey& operator=(DataKey&& other) noexcept;

  const unsigned char* data() const { return bytes_.data(); }
  unsigned char* data() { return bytes_.data(); }

 private:
  std::array<unsigned char, kSize> bytes_{};
};

// Reads the key file, or creates it (random bytes, 0600, temp + fsync + rename +
// fsync of the folder) when it does not exist. kPermissionDenied when the file
// grants any group/other permission; kDataLoss when it is not exactly 32 bytes.
Result<DataKey> loadOrCreateDataKey(const std::filesystem::path& file);

// Seals and opens column values. Holds one GCM context (key schedule set once)
// and one random generator: one instance per SQLite connection, not thread-safe.
class RecordCipher {
 public:
  // version byte || 12-byte nonce || ciphertext || 16-byte tag
  static constexpr size_t kOverhead = 1 + 12 + 16;

  static Result<std::unique_ptr<RecordCipher>> create(const DataKey& key);
  ~RecordCipher();
  RecordCipher(const RecordCipher&) = delete;
  RecordCipher& operator=(const RecordCipher&) = delete;

  // `column` ("records.payload") and `rowid` are authenticated with the value, so
  // it opens only in the same place. `out` is overwritten (its capacity reused).
  Status seal(std::string_view column, int64_t rowid, std::string_view plain, std::string& out);
  // kDataLoss when the value is malformed or fails authentication (corrupt,
  // tampered, moved, or sealed under another key).
  Status open(std::string_view column, int64_t rowid, std::string_view sealed, std::string& out);

 private:
  RecordCipher();
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace branchline::agent
