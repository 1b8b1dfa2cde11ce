#include "protocol/batch_codec.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "branchline.capnp.h"  // generated into the build tree
#include "protocol/envelope.h"

namespace branchline::protocol {
namespace {

capnp::Text::Reader text(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }

std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

capnp::Data::Reader bytes(std::string_view s) {
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

std::string flatten(capnp::MessageBuilder& msg) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Cap'n Proto reads words in place; an MQTT payload has no alignment promise,
// so copy into an aligned array first (bounded by max_message_bytes already).
kj::Array<capnp::word> alignedCopy(std::string_view bytes) {
  auto words =
      kj::heapArray<capnp::word>((bytes.size() + sizeof(capnp::word) - 1) / sizeof(capnp::word));
  std::memset(words.begin(), 0, words.size() * sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  return words;
}

capnp::ReaderOptions readerOptions(const DecodeLimits& limits) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = limits.max_traversal_words;
  options.nestingLimit = limits.max_nesting;
  return options;
}

std::string encodeEnvelope(envelope::Kind kind, const std::string& agent_id, uint64_t seq,
                           std::string_view body, int zstd_level) {
  envelope::Parts parts;
  parts.kind = kind;
  parts.agent_id = agent_id;
  parts.batch_seq = seq;
  envelope::setBody(parts, body, zstd_level);
  return envelope::write(parts);
}

EnvelopeHeader headerOf(const envelope::Parts& parts) {
  EnvelopeHeader h;
  h.format_version = parts.format_version;
  h.agent_id = parts.agent_id;
  h.batch_seq = parts.batch_seq;
  h.is_ack = parts.kind == envelope::Kind::kAck;
  h.sealed = parts.cipher != envelope::Cipher::kNone;
  h.key_id = parts.key_id;
  return h;
}

// Reads a plain envelope and inflates its body.
Result<std::string> openPlain(std::string_view payload, const DecodeLimits& limits,
                              envelope::Kind expected, envelope::Parts& parts) {
  auto read = envelope::read(payload, limits);
  if (!read) return read.status();
  parts = std::move(*read);
  if (parts.kind != expected) {
    return Status::invalid(expected == envelope::Kind::kAck ? "envelope holds a batch, not an ack"
                                                            : "envelope holds an ack, not a batch");
  }
  if (parts.cipher != envelope::Cipher::kNone) {
    return Status::invalid("envelope is sealed (key `" + parts.key_id +
                           "`): open it with openBatch and the aggregator's keys");
  }
  return envelope::inflate(parts, parts.body, limits);
}

}  // namespace

namespace envelope {

std::string serializeBatch(const WireBatch& batch) {
  capnp::MallocMessageBuilder msg;
  auto b = msg.initRoot<wire::Batch>();
  b.setAgentId(text(batch.agent_id));
  b.setSeq(batch.seq);
  b.setCreatedAt(batch.created_at_us);
  auto records = b.initRecords(static_cast<unsigned>(batch.records.size()));
  for (size_t i = 0; i < batch.records.size(); ++i) {
    const WireRecord& r = batch.records[i];
    auto w = records[static_cast<unsigned>(i)];
    w.setSource(text(r.source));
    w.setKey(text(r.key));
    w.setIngestedAt(r.ingested_at_us);
    w.setPayload(text(r.payload));
  }
  auto rejects = b.initRejects(static_cast<unsigned>(batch.rejects.size()));
  for (size_t i = 0; i < batch.rejects.size(); ++i) {
    const WireReject& r = batch.rejects[i];
    auto w = rejects[static_cast<unsigned>(i)];
    w.setSource(text(r.source));
    w.setRaw(text(r.raw));
    w.setReasons(text(r.reasons_json));
    w.setIngestedAt(r.ingested_at_us);
  }
  if (!batch.damaged.empty()) {
    auto damaged = b.initDamaged(static_cast<unsigned>(batch.damaged.size()));
    for (size_t i = 0; i < batch.damaged.size(); ++i) {
      const WireDamaged& d = batch.damaged[i];
      auto w = damaged[static_cast<unsigned>(i)];
      w.setTable(text(d.table));
      w.setRow(d.row);
      w.setSource(text(d.source));
      w.setIngestedAt(d.ingested_at_us);
      w.setReason(text(d.reason));
    }
  }
  return flatten(msg);
}

void setBody(Parts& parts, std::string_view raw, int zstd_level) {
  parts.raw_size = raw.size();
  if (zstd_level > 0) {
    parts.body.resize(ZSTD_compressBound(raw.size()));
    size_t n =
        ZSTD_compress(parts.body.data(), parts.body.size(), raw.data(), raw.size(), zstd_level);
    // Compression into a ZSTD_compressBound buffer cannot fail short of a bug.
    if (ZSTD_isError(n)) throw std::runtime_error(ZSTD_getErrorName(n));
    parts.body.resize(n);
    parts.codec = Codec::kZstd;
  } else {
    parts.body.assign(raw);
    parts.codec = Codec::kNone;
  }
}

std::string write(const Parts& parts) {
  capnp::MallocMessageBuilder msg;
  auto env = msg.initRoot<wire::Envelope>();
  env.setFormatVersion(parts.format_version);
  env.setKind(static_cast<wire::Kind>(parts.kind));
  env.setCodec(static_cast<wire::Codec>(parts.codec));
  env.setCipher(static_cast<wire::Cipher>(parts.cipher));
  if (!parts.key_id.empty()) env.setKeyId(text(parts.key_id));
  env.setAgentId(text(parts.agent_id));
  env.setBatchSeq(parts.batch_seq);
  env.setRawSize(parts.raw_size);
  if (!parts.ephemeral_key.empty()) env.setEphemeralKey(bytes(parts.ephemeral_key));
  env.setBody(bytes(parts.body));
  return flatten(msg);
}

Result<Parts> read(std::string_view payload, const DecodeLimits& limits) {
  if (payload.empty()) return Status::invalid("empty payload");
  if (payload.size() > limits.max_message_bytes) {
    return Status::exhausted("payload of " + std::to_string(payload.size()) +
                             " bytes exceeds max_message_bytes " +
                             std::to_string(limits.max_message_bytes));
  }
  // A Cap'n Proto message is whole 8-byte words; anything else was cut short (or
  // padded), even when the missing bytes were only padding.
  if (payload.size() % sizeof(capnp::word) != 0) {
    return Status::invalid("payload of " + std::to_string(payload.size()) +
                           " bytes is not whole 8-byte words: truncated frame");
  }
  try {
    auto words = alignedCopy(payload);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto env = reader.getRoot<wire::Envelope>();
    Parts p;
    p.format_version = env.getFormatVersion();
    if (p.format_version != kFormatVersion) {
      return Status::invalid("unsupported envelope format version " +
                             std::to_string(p.format_version));
    }
    // Unknown enum values arrive as their raw ordinal; they are refused by name.
    auto kind = static_cast<uint16_t>(env.getKind());
    if (kind > uint16_t(Kind::kAck))
      return Status::invalid("unknown envelope kind " + std::to_string(kind));
    p.kind = static_cast<Kind>(kind);
    auto codec = static_cast<uint16_t>(env.getCodec());
    if (codec > uint16_t(Codec::kZstd))
      return Status::invalid("unknown codec " + std::to_string(codec));
    p.codec = static_cast<Codec>(codec);
    auto cipher = static_cast<uint16_t>(env.getCipher());
    if (cipher > uint16_t(Cipher::kX25519Aes256Gcm)) {
      return Status::invalid("unknown cipher " + std::to_string(cipher));
    }
    p.cipher = static_cast<Cipher>(cipher);
    p.key_id = str(env.getKeyId());
    p.agent_id = str(env.getAgentId());
    p.batch_seq = env.getBatchSeq();
    p.raw_size = env.getRawSize();
    auto eph = env.getEphemeralKey();
    p.ephemeral_key.assign(reinterpret_cast<const char*>(eph.begin()), eph.size());
    auto body = env.getBody();
    p.body.assign(reinterpret_cast<const char*>(body.begin()), body.size());
    return p;
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed envelope: ") + e.getDescription().cStr());
  }
}

Status checkDeclaredSize(const Parts& parts, const DecodeLimits& limits) {
  if (parts.raw_size > limits.max_inflated_bytes) {
    return Status::exhausted("body declares " + std::to_string(parts.raw_size) +
                             " bytes, past max_inflated_bytes " +
                             std::to_string(limits.max_inflated_bytes));
  }
  // Checked on the declared size, before inflating: a body that inflates
  // further than it declares fails in inflate() anyway.
  if (limits.max_inflate_ratio > 0 &&
      static_cast<double>(parts.raw_size) >
          limits.max_inflate_ratio * static_cast<double>(std::max<size_t>(parts.body.size(), 1))) {
    return Status::exhausted("body of " + std::to_string(parts.body.size()) + " bytes declares " +
                             std::to_string(parts.raw_size) + " inflated, past max_inflate_ratio " +
                             std::to_string(static_cast<uint64_t>(limits.max_inflate_ratio)));
  }
  return Status::ok();
}

Result<std::string> inflate(const Parts& parts, std::string_view body, const DecodeLimits& limits) {
  BL_RETURN_IF_ERROR(checkDeclaredSize(parts, limits));
  const uint64_t raw_size = parts.raw_size;
  if (parts.codec == Codec::kNone) {
    if (body.size() != raw_size) return Status::invalid("body size does not match rawSize");
    return std::string(body);
  }
  unsigned long long frame = ZSTD_getFrameContentSize(body.data(), body.size());
  if (frame == ZSTD_CONTENTSIZE_ERROR) return Status::invalid("body is not a zstd frame");
  if (frame != ZSTD_CONTENTSIZE_UNKNOWN && frame != raw_size) {
    return Status::invalid("zstd frame size " + std::to_string(frame) + " does not match rawSize " +
                           std::to_string(raw_size));
  }
  // Decompress into exactly rawSize bytes: a frame that inflates further fails
  // with dstSize_tooSmall instead of allocating (a compression bomb stops here).
  std::string out(raw_size, '\0');
  size_t n = ZSTD_decompress(out.data(), out.size(), body.data(), body.size());
  if (ZSTD_isError(n)) {
    return Status::invalid(std::string("zstd body does not decode within rawSize: ") +
                           ZSTD_getErrorName(n));
  }
  if (n != raw_size) return Status::invalid("zstd body shorter than rawSize");
  return out;
}

Result<WireBatch> parseBatch(std::string_view raw, const Parts& parts, const DecodeLimits& limits) {
  try {
    auto words = alignedCopy(raw);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto b = reader.getRoot<wire::Batch>();
    WireBatch out;
    out.agent_id = str(b.getAgentId());
    out.seq = b.getSeq();
    out.created_at_us = b.getCreatedAt();
    if (out.agent_id != parts.agent_id || out.seq != parts.batch_seq) {
      return Status::invalid("envelope names agent `" + parts.agent_id + "` batch " +
                             std::to_string(parts.batch_seq) + " but the body holds `" +
                             out.agent_id + "` batch " + std::to_string(out.seq));
    }
    auto records = b.getRecords();
    auto rejects = b.getRejects();
    auto damaged = b.getDamaged();
    const size_t entries = static_cast<size_t>(records.size()) + rejects.size() + damaged.size();
    if (entries > limits.max_records) {
      return Status::exhausted("batch holds " + std::to_string(entries) +
                               " entries, past max_records " + std::to_string(limits.max_records));
    }
    out.records.reserve(records.size());
    for (auto r : records) {
      out.records.push_back(
          {str(r.getSource()), str(r.getKey()), r.getIngestedAt(), str(r.getPayload())});
    }
    out.rejects.reserve(rejects.size());
    for (auto r : rejects) {
      out.rejects.push_back(
          {str(r.getSource()), str(r.getRaw()), str(r.getReasons()), r.getIngestedAt()});
    }
    out.damaged.reserve(damaged.size());
    for (auto d : damaged) {
      out.damaged.push_back({str(d.getTable()), d.getRow(), str(d.getSource()), d.getIngestedAt(),
                             str(d.getReason())});
    }
    return out;
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed batch body: ") + e.getDescription().cStr());
  }
}

}  // namespace envelope

std::string encodeBatch(const WireBatch& batch, int zstd_level) {
  return encodeEnvelope(envelope::Kind::kBatch, batch.agent_id, batch.seq,
                        envelope::serializeBatch(batch), zstd_level);
}

Result<EnvelopeHeader> peekHeader(std::string_view payload, const DecodeLimits& limits) {
  auto parts = envelope::read(payload, limits);
  if (!parts) return parts.status();
  return headerOf(*parts);
}

Result<WireBatch> decodeBatch(std::string_view payload, const DecodeLimits& limits) {
  envelope::Parts parts;
  auto raw = openPlain(payload, limits, envelope::Kind::kBatch, parts);
  if (!raw) return raw.status();
  return envelope::parseBatch(*raw, parts, limits);
}

std::string encodeAck(const WireAck& ack) {
  capnp::MallocMessageBuilder msg;
  auto a = msg.initRoot<wire::Ack>();
  a.setAgentId(text(ack.agent_id));
  a.setBatchSeq(ack.batch_seq);
  switch (ack.status) {
    case AckStatus::kStored:
      a.setStatus(wire::AckStatus::STORED);
      break;
    case AckStatus::kDuplicate:
      a.setStatus(wire::AckStatus::DUPLICATE);
      break;
    case AckStatus::kRefused:
      a.setStatus(wire::AckStatus::REFUSED);
      break;
  }
  a.setStoredRecords(ack.stored_records);
  a.setDuplicateRecords(ack.duplicate_records);
  a.setRejects(ack.rejects);
  a.setMessage(text(ack.message));
  a.setAggregator(text(ack.aggregator));
  a.setDigest(text(ack.digest));
  a.setKeyId(text(ack.key_id));
  a.setTag(bytes(ack.tag));
  return encodeEnvelope(envelope::Kind::kAck, ack.agent_id, ack.batch_seq, flatten(msg), 0);
}

Result<WireAck> decodeAck(std::string_view payload, const DecodeLimits& limits) {
  envelope::Parts parts;
  auto raw = openPlain(payload, limits, envelope::Kind::kAck, parts);
  if (!raw) return raw.status();
  try {
    auto words = alignedCopy(*raw);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto a = reader.getRoot<wire::Ack>();
    WireAck out;
    out.agent_id = str(a.getAgentId());
    out.batch_seq = a.getBatchSeq();
    // As for a batch: an envelope that disagrees with its body is malformed.
    if (out.agent_id != parts.agent_id || out.batch_seq != parts.batch_seq) {
      return Status::invalid("envelope names agent `" + parts.agent_id + "` batch " +
                             std::to_string(parts.batch_seq) + " but the ack body holds `" +
                             out.agent_id + "` batch " + std::to_string(out.batch_seq));
    }
    switch (a.getStatus()) {
      case wire::AckStatus::STORED:
        out.status = AckStatus::kStored;
        break;
      case wire::AckStatus::DUPLICATE:
        out.status = AckStatus::kDuplicate;
        break;
      case wire::AckStatus::REFUSED:
        out.status = AckStatus::kRefused;
        break;
      default:
        return Status::invalid("unknown ack status");
    }
    out.stored_records = a.getStoredRecords();
    out.duplicate_records = a.getDuplicateRecords();
    out.rejects = a.getRejects();
    out.message = str(a.getMessage());
    out.aggregator = str(a.getAggregator());
    out.digest = str(a.getDigest());
    out.key_id = str(a.getKeyId());
    auto tag = a.getTag();
    out.tag.assign(reinterpret_cast<const char*>(tag.begin()), tag.size());
    return out;
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed ack body: ") + e.getDescription().cStr());
  }
}

}  // namespace branchline::protocol

namespace branchline::protocol {

std::string encodeAnnouncement(const WireAnnouncement& a) {
  capnp::MallocMessageBuilder msg;
  auto w = msg.initRoot<wire::Announcement>();
  w.setFormatVersion(a.format_version);
  w.setAggregator(text(a.aggregator));
  w.setOnline(a.online);
  w.setEpoch(a.epoch);
  w.setIssuedAt(a.issued_at_us);
  w.setCertificate(text(a.certificate_pem));
  w.setSignature(bytes(a.signature));
  return flatten(msg);
}

// A small message of its own (not in an Envelope), read under tight bounds:
// checks size and framing, reads the root `Schema`, checks its format version,
// then `read(root)` fills the result.
template <typename Schema, typename Read>
auto decodeStandalone(std::string_view payload, size_t max_bytes, const char* what, Read read)
    -> decltype(read(std::declval<typename Schema::Reader>())) {
  if (payload.size() > max_bytes) {
    return Status::invalid(std::string(what) + " of " + std::to_string(payload.size()) +
                           " bytes is over the limit of " + std::to_string(max_bytes));
  }
  if (payload.empty() || payload.size() % sizeof(capnp::word) != 0) {
    return Status::invalid(std::string(what) + " is not a Cap'n Proto message");
  }
  DecodeLimits limits;
  limits.max_traversal_words = max_bytes / sizeof(capnp::word) * 2;
  limits.max_nesting = 4;
  try {
    auto words = alignedCopy(payload);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto r = reader.getRoot<Schema>();
    if (r.getFormatVersion() != kFormatVersion) {
      return Status::invalid(std::string(what) + " format version " +
                             std::to_string(r.getFormatVersion()) + " is not " +
                             std::to_string(kFormatVersion));
    }
    return read(r);
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed ") + what + ": " + e.getDescription().cStr());
  }
}

Result<WireAnnouncement> decodeAnnouncement(std::string_view payload) {
  return decodeStandalone<wire::Announcement>(
      payload, kMaxAnnouncementBytes, "announcement",
      [](wire::Announcement::Reader r) -> Result<WireAnnouncement> {
        WireAnnouncement a;
        a.format_version = r.getFormatVersion();
        a.aggregator = str(r.getAggregator());
        a.online = r.getOnline();
        a.epoch = r.getEpoch();
        a.issued_at_us = r.getIssuedAt();
        a.certificate_pem = str(r.getCertificate());
        auto sig = r.getSignature();
        a.signature.assign(reinterpret_cast<const char*>(sig.begin()), sig.size());
        return a;
      });
}

std::string encodeAgentStatus(const WireAgentStatus& s) {
  capnp::MallocMessageBuilder msg;
  auto w = msg.initRoot<wire::AgentStatus>();
  w.setFormatVersion(s.format_version);
  w.setAgentId(text(s.agent_id));
  w.setSentAt(s.sent_at_us);
  auto events = w.initEvents(static_cast<unsigned>(s.events.size()));
  for (size_t i = 0; i < s.events.size(); ++i) {
    auto e = events[static_cast<unsigned>(i)];
    e.setKind(text(s.events[i].kind));
    e.setAt(s.events[i].at_us);
    e.setDetail(text(s.events[i].detail));
  }
  w.setKeyId(text(s.key_id));
  w.setTag(bytes(s.tag));
  return flatten(msg);
}

Result<WireAgentStatus> decodeAgentStatus(std::string_view payload) {
  return decodeStandalone<wire::AgentStatus>(
      payload, kMaxAgentStatusBytes, "agent status",
      [](wire::AgentStatus::Reader r) -> Result<WireAgentStatus> {
        WireAgentStatus s;
        s.format_version = r.getFormatVersion();
        s.agent_id = str(r.getAgentId());
        s.sent_at_us = r.getSentAt();
        auto events = r.getEvents();
        if (events.size() > kMaxAgentEvents) {
          return Status::invalid("agent status carries " + std::to_string(events.size()) +
                                 " events, more than " + std::to_string(kMaxAgentEvents));
        }
        for (auto e : events) {
          WireAgentEvent out{str(e.getKind()), e.getAt(), str(e.getDetail())};
          if (out.kind.empty() || out.kind.size() > kMaxAgentEventKind) {
            return Status::invalid("agent event kind is empty or longer than " +
                                   std::to_string(kMaxAgentEventKind) + " bytes");
          }
          if (out.detail.size() > kMaxAgentEventDetail) {
            return Status::invalid("agent event detail is longer than " +
                                   std::to_string(kMaxAgentEventDetail) + " bytes");
          }
          s.events.push_back(std::move(out));
        }
        s.key_id = str(r.getKeyId());
        auto tag = r.getTag();
        s.tag.assign(reinterpret_cast<const char*>(tag.begin()), tag.size());
        return s;
      });
}

std::string announcementSigningInput(const WireAnnouncement& a) {
  std::string m;
  auto u64 = [&m](uint64_t v) {
    for (int i = 0; i < 8; ++i) m.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto field = [&](std::string_view b) {
    u64(b.size());
    m.append(b);
  };
  field("branchline announcement v1");
  u64(a.format_version);
  field(a.aggregator);
  u64(a.online ? 1 : 0);
  u64(a.epoch);
  u64(static_cast<uint64_t>(a.issued_at_us));
  field(a.certificate_pem);
  return m;
}

}  // namespace branchline::protocol
