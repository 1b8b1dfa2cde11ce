// The envelope layer shared by the plain codec (batch_codec.cc) and sealing
// (seal.cc): one place that writes and reads the Cap'n Proto Envelope, compresses
// and inflates its body under DecodeLimits, and turns a body back into a batch.
// Internal to protocol/: other parts use batch_codec.h and seal.h.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/batch_codec.h"
#include "shared/core/status.h"

namespace branchline::protocol::envelope {

// Mirrors the schema's enums (branchline.capnp); values are the wire ordinals.
enum class Kind : uint8_t { kBatch = 0, kAck = 1 };
enum class Codec : uint8_t { kNone = 0, kZstd = 1 };
enum class Cipher : uint8_t { kNone = 0, kX25519Aes256Gcm = 1 };

struct Parts {
  uint16_t format_version = kFormatVersion;
  Kind kind = Kind::kBatch;
  Codec codec = Codec::kNone;
  Cipher cipher = Cipher::kNone;
  std::string key_id;  // sealed: the aggregator key it was sealed to
  std::string agent_id;
  uint64_t batch_seq = 0;
  uint64_t raw_size = 0;      // the body's size once decrypted and inflated
  std::string ephemeral_key;  // sealed: the sender's one-time public key
  std::string body;           // compressed (per codec), then encrypted (per cipher)
};

// The Cap'n Proto Batch message of `batch` (uncompressed).
std::string serializeBatch(const WireBatch& batch);
// Sets codec, raw_size and body: zstd at `zstd_level`, or raw when it is 0.
void setBody(Parts& parts, std::string_view raw, int zstd_level);
// The Envelope message as an MQTT payload.
std::string write(const Parts& parts);
// Reads the envelope under `limits` (payload size, Cap'n Proto traversal, format
// version, known enum values). Leaves the body as received: encrypted when
// cipher is not kNone. The declared raw size is not checked here, so a refused
// bomb still yields its header for the audit entry.
Result<Parts> read(std::string_view payload, const DecodeLimits& limits);
// kResourceExhausted when parts.raw_size is past limits.max_inflated_bytes.
Status checkDeclaredSize(const Parts& parts, const DecodeLimits& limits);
// Decodes `body` (already decrypted) per parts.codec into exactly parts.raw_size
// bytes, after checkDeclaredSize.
Result<std::string> inflate(const Parts& parts, std::string_view body, const DecodeLimits& limits);
// Turns an inflated body into a batch, checking it against the envelope's agent
// and seq and against limits.max_records.
Result<WireBatch> parseBatch(std::string_view raw, const Parts& parts, const DecodeLimits& limits);

}  // namespace branchline::protocol::envelope
