// Batch and ack codec: turns the agent's batches and the aggregator's acks into
// MQTT payloads (a versioned Envelope around a zstd-compressed Cap'n Proto
// message) and back. Decoding treats every byte as hostile: sizes, inflation
// and Cap'n Proto traversal are bounded by DecodeLimits before any allocation
// they would cause.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shared/core/status.h"

namespace branchline::protocol {

inline constexpr uint16_t kFormatVersion = 1;

struct WireRecord {
  std::string source;
  std::string key;
  int64_t ingested_at_us = 0;
  std::string payload;  // canonical JSON of the normalized record
  bool operator==(const WireRecord&) const = default;
};

struct WireReject {
  std::string source;
  std::string raw;           // the input as received, as far as it could be read
  std::string reasons_json;  // [{"field":"email","reason":"not an email address"}]
  int64_t ingested_at_us = 0;
  bool operator==(const WireReject&) const = default;
};

// A buffer row the agent could not read back (schema `Damaged`): reported in
// place of the record it held. `reason` names the value, never its contents.
struct WireDamaged {
  std::string table;  // "records" or "quarantine"
  uint64_t row = 0;
  std::string source;
  int64_t ingested_at_us = 0;
  std::string reason;
  bool operator==(const WireDamaged&) const = default;
};

struct WireBatch {
  std::string agent_id;
  uint64_t seq = 0;
  int64_t created_at_us = 0;
  std::vector<WireRecord> records;
  std::vector<WireReject> rejects;
  std::vector<WireDamaged> damaged;
  bool operator==(const WireBatch&) const = default;
};

enum class AckStatus { kStored, kDuplicate, kRefused };

struct WireAck {
  std::string agent_id;
  uint64_t batch_seq = 0;
  AckStatus status = AckStatus::kStored;
  uint32_t stored_records = 0;
  uint32_t duplicate_records = 0;
  uint32_t rejects = 0;
  std::string message;
  std::string aggregator;
  // Authentication (protocol/ack_auth.h): the acked content's digest, the
  // aggregator key id and the tag over everything; empty when unauthenticated.
  std::string digest;
  std::string key_id;
  std::string tag;
  bool operator==(const WireAck&) const = default;
};

// An aggregator's online/offline announcement (schema `Announcement`).
struct WireAnnouncement {
  uint16_t format_version = kFormatVersion;
  std::string aggregator;
  bool online = true;
  uint64_t epoch = 0;
  int64_t issued_at_us = 0;
  std::string certificate_pem;  // "" when unsigned (no TLS identity)
  std::string signature;        // "" when unsigned
  bool operator==(const WireAnnouncement&) const = default;
};

// One thing an agent reports to the central audit trail (schema `AgentEvent`).
struct WireAgentEvent {
  std::string kind;
  int64_t at_us = 0;
  std::string detail;
  bool operator==(const WireAgentEvent&) const = default;
};

// An agent's status message (schema `AgentStatus`).
struct WireAgentStatus {
  uint16_t format_version = kFormatVersion;
  std::string agent_id;
  int64_t sent_at_us = 0;
  std::vector<WireAgentEvent> events;
  std::string key_id;  // authentication (ack_auth.h); empty when unsealed
  std::string tag;
  bool operator==(const WireAgentStatus&) const = default;
};

struct DecodeLimits {
  size_t max_message_bytes = 16 << 20;   // the MQTT payload as received
  size_t max_inflated_bytes = 64 << 20;  // the body after decompression
  // Inflated bytes per received body byte; past it the batch is refused before
  // it is inflated (0: no ratio bound). max_inflated_bytes applies regardless.
  double max_inflate_ratio = 0;
  uint64_t max_traversal_words = 16 << 20;  // Cap'n Proto read budget (8-byte words)
  int max_nesting = 16;
  size_t max_records = 100000;  // records + rejects + damaged reports in one batch
};

// The envelope header, readable before the body is opened.
struct EnvelopeHeader {
  uint16_t format_version = 0;
  std::string agent_id;
  uint64_t batch_seq = 0;
  bool is_ack = false;
  bool sealed = false;  // cipher is not none: open with openBatch (protocol/seal.h)
  std::string key_id;   // sealed: the aggregator key it names
};

// Encodes a batch as an MQTT payload. zstd_level 0 stores the body raw.
std::string encodeBatch(const WireBatch& batch, int zstd_level = 1);
// Decodes and validates a plain (unsealed) batch; kInvalidArgument names what was
// wrong ("body inflates past 67108864 bytes", "envelope agent `a` does not match
// batch agent `b`", "envelope is sealed ..."). Sealed batches: openBatch in seal.h.
Result<WireBatch> decodeBatch(std::string_view payload, const DecodeLimits& limits = {});
// Reads only the header (for audit context when the body is refused).
Result<EnvelopeHeader> peekHeader(std::string_view payload, const DecodeLimits& limits = {});

std::string encodeAck(const WireAck& ack);
Result<WireAck> decodeAck(std::string_view payload, const DecodeLimits& limits = {});

}  // namespace branchline::protocol

namespace branchline::protocol {

// Announcements are small: a name, a certificate and a signature.
inline constexpr size_t kMaxAnnouncementBytes = 16 << 10;

std::string encodeAnnouncement(const WireAnnouncement& announcement);
// kInvalidArgument for anything but a well-formed version-1 announcement of at
// most kMaxAnnouncementBytes.
Result<WireAnnouncement> decodeAnnouncement(std::string_view payload);
// What the signature covers: every field but the signature, length-prefixed.
std::string announcementSigningInput(const WireAnnouncement& announcement);

// Status messages are small: a few events, each a kind and a short reason.
inline constexpr size_t kMaxAgentStatusBytes = 16 << 10;
inline constexpr size_t kMaxAgentEvents = 16;
inline constexpr size_t kMaxAgentEventKind = 64;
inline constexpr size_t kMaxAgentEventDetail = 1024;

std::string encodeAgentStatus(const WireAgentStatus& status);
// kInvalidArgument for anything but a well-formed version-1 status of at most
// kMaxAgentStatusBytes, kMaxAgentEvents events and the field bounds above.
Result<WireAgentStatus> decodeAgentStatus(std::string_view payload);

}  // namespace branchline::protocol
