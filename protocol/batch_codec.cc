#include "protocol/batch_codec.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>
#include <zstd.h>

#include <cstring>
#include <stdexcept>

#include "branchline.capnp.h"  // generated into the build tree

namespace branchline::protocol {
namespace {

capnp::Text::Reader text(const std::string& s) { return capnp::Text::Reader(s.c_str(), s.size()); }

std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

std::string flatten(capnp::MessageBuilder& msg) {
  kj::Array<capnp::word> words = capnp::messageToFlatArray(msg);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Cap'n Proto reads words in place; an MQTT payload has no alignment promise,
// so copy into an aligned array first (bounded by max_message_bytes already).
kj::Array<capnp::word> alignedCopy(std::string_view bytes) {
  auto words = kj::heapArray<capnp::word>((bytes.size() + sizeof(capnp::word) - 1) /
                                          sizeof(capnp::word));
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

std::string encodeEnvelope(wire::Kind kind, const std::string& agent_id, uint64_t seq,
                           const std::string& body, int zstd_level) {
  capnp::MallocMessageBuilder msg;
  auto env = msg.initRoot<wire::Envelope>();
  env.setFormatVersion(kFormatVersion);
  env.setKind(kind);
  env.setCipher(wire::Cipher::NONE);
  env.setAgentId(text(agent_id));
  env.setBatchSeq(seq);
  env.setRawSize(body.size());
  if (zstd_level > 0) {
    std::string compressed(ZSTD_compressBound(body.size()), '\0');
    size_t n = ZSTD_compress(compressed.data(), compressed.size(), body.data(), body.size(),
                             zstd_level);
    // Compression into a ZSTD_compressBound buffer cannot fail short of a bug.
    if (ZSTD_isError(n)) throw std::runtime_error(ZSTD_getErrorName(n));
    compressed.resize(n);
    env.setCodec(wire::Codec::ZSTD);
    env.setBody(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(compressed.data()), n));
  } else {
    env.setCodec(wire::Codec::NONE);
    env.setBody(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(body.data()), body.size()));
  }
  return flatten(msg);
}

struct OpenedEnvelope {
  EnvelopeHeader header;
  std::string body;  // decoded (decompressed) body
};

Result<EnvelopeHeader> readHeader(wire::Envelope::Reader env) {
  EnvelopeHeader h;
  h.format_version = env.getFormatVersion();
  if (h.format_version != kFormatVersion) {
    return Status::invalid("unsupported envelope format version " +
                           std::to_string(h.format_version));
  }
  h.agent_id = str(env.getAgentId());
  h.batch_seq = env.getBatchSeq();
  h.is_ack = env.getKind() == wire::Kind::ACK;
  return h;
}

Result<OpenedEnvelope> openEnvelope(std::string_view payload, const DecodeLimits& limits) {
  if (payload.empty()) return Status::invalid("empty payload");
  if (payload.size() > limits.max_message_bytes) {
    return Status::exhausted("payload of " + std::to_string(payload.size()) +
                             " bytes exceeds max_message_bytes " +
                             std::to_string(limits.max_message_bytes));
  }
  try {
    auto words = alignedCopy(payload);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto env = reader.getRoot<wire::Envelope>();
    auto header = readHeader(env);
    if (!header) return header.status();
    if (env.getCipher() != wire::Cipher::NONE) {
      return Status::invalid("envelope cipher not supported by this build");
    }
    uint64_t raw_size = env.getRawSize();
    if (raw_size > limits.max_inflated_bytes) {
      return Status::exhausted("body declares " + std::to_string(raw_size) +
                               " bytes, past max_inflated_bytes " +
                               std::to_string(limits.max_inflated_bytes));
    }
    auto body = env.getBody();
    OpenedEnvelope out{std::move(*header), {}};
    if (env.getCodec() == wire::Codec::NONE) {
      if (body.size() != raw_size) return Status::invalid("body size does not match rawSize");
      out.body.assign(reinterpret_cast<const char*>(body.begin()), body.size());
    } else if (env.getCodec() == wire::Codec::ZSTD) {
      unsigned long long frame = ZSTD_getFrameContentSize(body.begin(), body.size());
      if (frame == ZSTD_CONTENTSIZE_ERROR) return Status::invalid("body is not a zstd frame");
      if (frame != ZSTD_CONTENTSIZE_UNKNOWN && frame != raw_size) {
        return Status::invalid("zstd frame size " + std::to_string(frame) +
                               " does not match rawSize " + std::to_string(raw_size));
      }
      // Decompress into exactly rawSize bytes: a frame that inflates further fails
      // with dstSize_tooSmall instead of allocating (a compression bomb stops here).
      out.body.resize(raw_size);
      size_t n = ZSTD_decompress(out.body.data(), out.body.size(), body.begin(), body.size());
      if (ZSTD_isError(n)) {
        return Status::invalid(std::string("zstd body does not decode within rawSize: ") +
                               ZSTD_getErrorName(n));
      }
      if (n != raw_size) return Status::invalid("zstd body shorter than rawSize");
    } else {
      return Status::invalid("unknown codec");
    }
    return out;
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed envelope: ") + e.getDescription().cStr());
  }
}

}  // namespace

std::string encodeBatch(const WireBatch& batch, int zstd_level) {
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
  return encodeEnvelope(wire::Kind::BATCH, batch.agent_id, batch.seq, flatten(msg), zstd_level);
}

Result<EnvelopeHeader> peekHeader(std::string_view payload, const DecodeLimits& limits) {
  if (payload.empty()) return Status::invalid("empty payload");
  if (payload.size() > limits.max_message_bytes) {
    return Status::exhausted("payload of " + std::to_string(payload.size()) +
                             " bytes exceeds max_message_bytes");
  }
  try {
    auto words = alignedCopy(payload);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    return readHeader(reader.getRoot<wire::Envelope>());
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed envelope: ") + e.getDescription().cStr());
  }
}

Result<WireBatch> decodeBatch(std::string_view payload, const DecodeLimits& limits) {
  auto opened = openEnvelope(payload, limits);
  if (!opened) return opened.status();
  if (opened->header.is_ack) return Status::invalid("envelope holds an ack, not a batch");
  try {
    auto words = alignedCopy(opened->body);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto b = reader.getRoot<wire::Batch>();
    WireBatch out;
    out.agent_id = str(b.getAgentId());
    out.seq = b.getSeq();
    out.created_at_us = b.getCreatedAt();
    if (out.agent_id != opened->header.agent_id || out.seq != opened->header.batch_seq) {
      return Status::invalid("envelope names agent `" + opened->header.agent_id + "` batch " +
                             std::to_string(opened->header.batch_seq) + " but the body holds `" +
                             out.agent_id + "` batch " + std::to_string(out.seq));
    }
    auto records = b.getRecords();
    auto rejects = b.getRejects();
    if (static_cast<size_t>(records.size()) + rejects.size() > limits.max_records) {
      return Status::exhausted("batch holds " + std::to_string(records.size() + rejects.size()) +
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
    return out;
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed batch body: ") + e.getDescription().cStr());
  }
}

std::string encodeAck(const WireAck& ack) {
  capnp::MallocMessageBuilder msg;
  auto a = msg.initRoot<wire::Ack>();
  a.setAgentId(text(ack.agent_id));
  a.setBatchSeq(ack.batch_seq);
  switch (ack.status) {
    case AckStatus::kStored: a.setStatus(wire::AckStatus::STORED); break;
    case AckStatus::kDuplicate: a.setStatus(wire::AckStatus::DUPLICATE); break;
    case AckStatus::kRefused: a.setStatus(wire::AckStatus::REFUSED); break;
  }
  a.setStoredRecords(ack.stored_records);
  a.setDuplicateRecords(ack.duplicate_records);
  a.setRejects(ack.rejects);
  a.setMessage(text(ack.message));
  a.setAggregator(text(ack.aggregator));
  return encodeEnvelope(wire::Kind::ACK, ack.agent_id, ack.batch_seq, flatten(msg), 0);
}

Result<WireAck> decodeAck(std::string_view payload, const DecodeLimits& limits) {
  auto opened = openEnvelope(payload, limits);
  if (!opened) return opened.status();
  if (!opened->header.is_ack) return Status::invalid("envelope holds a batch, not an ack");
  try {
    auto words = alignedCopy(opened->body);
    capnp::FlatArrayMessageReader reader(words, readerOptions(limits));
    auto a = reader.getRoot<wire::Ack>();
    WireAck out;
    out.agent_id = str(a.getAgentId());
    out.batch_seq = a.getBatchSeq();
    switch (a.getStatus()) {
      case wire::AckStatus::STORED: out.status = AckStatus::kStored; break;
      case wire::AckStatus::DUPLICATE: out.status = AckStatus::kDuplicate; break;
      case wire::AckStatus::REFUSED: out.status = AckStatus::kRefused; break;
      default: return Status::invalid("unknown ack status");
    }
    out.stored_records = a.getStoredRecords();
    out.duplicate_records = a.getDuplicateRecords();
    out.rejects = a.getRejects();
    out.message = str(a.getMessage());
    out.aggregator = str(a.getAggregator());
    return out;
  } catch (const kj::Exception& e) {
    return Status::invalid(std::string("malformed ack body: ") + e.getDescription().cStr());
  }
}

}  // namespace branchline::protocol
