// Encryption at rest for the agent's buffer: a per-agent 256-bit data key kept in
// a key file (mode 0600), and AES-256-GCM sealing of each sensitive column value.
//
// Guarantee: a copy of the buffer's files (buffer.db, buffer.db-wal) without the
// key file reveals no record content, and a sealed value that was changed, or moved
// to another row or column, fails to open (kDataLoss) instead of returning garbage.
//
// Nonces (96 bits) never come from state a copy of the process shares with the
// original, so a restored disk image, a crash, a fork, or a VM snapshot resumed
// twice cannot make two different values meet under one (key, nonce) pair:
// - Outside a run, each seal draws its nonce from the kernel (getrandom).
// - A run (beginRun() .. endRun()) draws 96 bits R from the kernel once, mixed with
//   the monotonic clock; its i-th seal uses R xor i. Call beginRun() only once the
//   values it will seal are fixed in memory (a group commit's appends): a copy
//   resumed after that point can only redo the same seals of the same values at the
//   same rows, which yields the same ciphertexts and reveals nothing. Across runs,
//   nonces collide only if two 96-bit random draws land within a run's length of
//   each other.
// - The run's state lives in a page the kernel wipes in a forked child
//   (MADV_WIPEONFORK): a child inherits no run and seals with its own kernel
//   randomness. Where the kernel lacks it, every seal draws from the kernel.
// This relies on the kernel handing each resumed copy different randomness: Linux
// reseeds on a VM restore when the hypervisor exposes a VM generation ID.
// Cost: a getrandom call (~2 us in a VM) per run instead of per value; the sealed
// format (version 1) is unchanged, so buffers written before still open.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "shared/core/status.h"
#include "shared/crypto/secret.h"

namespace branchline::agent {

// 32 key bytes, zeroed when destroyed. Never logged, never in an error message.
using DataKey = crypto::SecretBytes<32>;

// Reads the key file, or creates it (random bytes, 0600, temp + fsync + rename +
// fsync of the folder) when it does not exist. kPermissionDenied when the file
// grants any group/other permission; kDataLoss when it is not exactly 32 bytes.
Result<DataKey> loadOrCreateDataKey(const std::filesystem::path& file);

// Reads an existing key file, with the same checks; kNotFound when it does not exist.
Result<DataKey> readDataKeyFile(const std::filesystem::path& file);

// Writes `key` to `file` (0600; temp + fsync + rename + fsync of the folder),
// replacing a file already there. For a rotation's new key (durable_buffer.h).
Status writeDataKeyFile(const std::filesystem::path& file, const DataKey& key);

// A new random key (kernel randomness).
Result<DataKey> generateDataKey();

// Overwrites the key file's bytes with zeros in place and fsyncs it, so the old key
// does not stay readable in the file's blocks (best effort on copy-on-write file
// systems, which keep the old blocks).
Status zeroDataKeyFile(const std::filesystem::path& file);

// Renames key file `from` over `to` (atomically, in one folder) and fsyncs the folder.
Status replaceDataKeyFile(const std::filesystem::path& from, const std::filesystem::path& to);

// Seals and opens column values. Holds one GCM context (key schedule set once)
// and the nonce run state: one instance per SQLite connection, not thread-safe.
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
  // Starts a run (see the top of this file): the next seals derive their nonces from
  // one fresh kernel draw instead of one draw each. REQUIRES: the values to be sealed
  // until endRun() are already fixed in memory. A new beginRun() starts a new run.
  Status beginRun();
  void endRun();
  // kDataLoss when the value is malformed or fails authentication (corrupt,
  // tampered, moved, or sealed under another key).
  Status open(std::string_view column, int64_t rowid, std::string_view sealed, std::string& out);

 private:
  RecordCipher();
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace branchline::agent
