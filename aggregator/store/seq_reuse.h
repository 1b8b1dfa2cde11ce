// The words of the audit rows a commit writes in its own transaction, the same
// in every store backend: `batch_seq_reused` (a batch sequence already in the
// ledger with another content digest (protocol/batch_digest.h) is stored
// anyway and said so) and `buffer_damaged` (a row the agent could not read
// back, reported in the batch it belonged to).
#pragma once

#include <cstdint>
#include <string>

#include "protocol/batch_codec.h"

namespace branchline::aggregator {

// The `detail` of a `batch_seq_reused` audit row: both digests, shortened, and
// what was stored. Never record contents.
std::string seqReusedDetail(uint64_t batch_seq, const std::string& ledger_digest,
                            const std::string& digest, uint32_t stored_records,
                            uint32_t duplicate_records, uint32_t rejects);

inline constexpr const char* kBufferDamagedAction = "buffer_damaged";

// The `detail` of a `buffer_damaged` audit row: the agent's buffer row, its
// source and time, and why it did not open (bounded, printable).
std::string bufferDamagedDetail(const protocol::WireDamaged& damaged);

}  // namespace branchline::aggregator
