// The content digest of a batch: what tells a retransmission (same agent, same
// batch sequence, same content: a duplicate) from a batch sequence reused with
// other content (an agent restored from a disk image: new records that must
// not be lost). Stored in batch_ledger.digest (README "The central store").
//
// Canonical form, so any aggregator (and any later build) computes the same
// digest from the decoded batch whatever the envelope (codec, sealing, key):
// SHA-256 over "branchline-batch-digest-v1\0", then the record count and each
// record's source, key, ingested_at and payload, then the reject count and
// each reject's source, raw, reasons and ingested_at, in batch order; every
// string is its byte length (u64, big-endian) followed by its bytes, every
// count and time a u64 big-endian. The agent never reorders a batch's
// contents on a resend, so order is part of the content.
#pragma once

#include <string>

#include "protocol/batch_codec.h"

namespace branchline::aggregator {

// 64 lower-case hex digits.
std::string batchDigest(const protocol::WireBatch& batch);

// The `detail` of a `batch_seq_reused` audit row (the same in every backend):
// both digests, shortened, and what was stored. Never record contents.
std::string seqReusedDetail(uint64_t batch_seq, const std::string& ledger_digest,
                            const std::string& digest, uint32_t stored_records,
                            uint32_t duplicate_records, uint32_t rejects);

}  // namespace branchline::aggregator
