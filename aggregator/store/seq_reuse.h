// The words of a `batch_seq_reused` audit row, the same in every store backend:
// a batch sequence already in the ledger with another content digest
// (protocol/batch_digest.h) is stored anyway and said so.
#pragma once

#include <cstdint>
#include <string>

namespace branchline::aggregator {

// The `detail` of a `batch_seq_reused` audit row: both digests, shortened, and
// what was stored. Never record contents.
std::string seqReusedDetail(uint64_t batch_seq, const std::string& ledger_digest,
                            const std::string& digest, uint32_t stored_records,
                            uint32_t duplicate_records, uint32_t rejects);

}  // namespace branchline::aggregator
