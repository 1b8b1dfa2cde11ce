// The content digest of a batch: what tells a retransmission (same agent, same
// batch sequence, same content: a duplicate) from a batch sequence reused with
// other content (an agent restored from a disk image: new records that must
// not be lost). Stored in batch_ledger.digest (README "The central store"),
// and carried in every authenticated ack (ack_auth.h), so the agent can tell an
// ack for the content it holds from one for other content under the same seq.
//
// Canonical form, so any aggregator (and any later build) computes the same
// digest from the decoded batch whatever the envelope (codec, sealing, key):
// SHA-256 over "branchline-batch-digest-v1\0", then the record count and each
// record's source, key, ingested_at and payload, then the reject count and
// each reject's source, raw, reasons and ingested_at, then (only when the
// batch reports damaged rows) their count and each one's table, row, source,
// ingested_at and reason, in batch order; every
// string is its byte length (u64, big-endian) followed by its bytes, every
// count and time a u64 big-endian. The agent never reorders a batch's
// contents on a resend, so order is part of the content.
#pragma once

#include <string>

#include "protocol/batch_codec.h"

namespace branchline::protocol {

// 64 lower-case hex digits.
std::string batchDigest(const WireBatch& batch);

}  // namespace branchline::protocol
