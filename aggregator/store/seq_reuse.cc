#include "aggregator/store/seq_reuse.h"

namespace branchline::aggregator {

std::string seqReusedDetail(uint64_t batch_seq, const std::string& ledger_digest,
                            const std::string& digest, uint32_t stored_records,
                            uint32_t duplicate_records, uint32_t rejects) {
  return "batch " + std::to_string(batch_seq) +
         " was already stored with other content (ledger digest " + ledger_digest.substr(0, 16) +
         ", this batch " + digest.substr(0, 16) + "): the agent reused the sequence (restored " +
         "from an old disk image?); stored " + std::to_string(stored_records) + " new records (" +
         std::to_string(duplicate_records) + " already stored) and " + std::to_string(rejects) +
         " rejects; see batch_conflicts";
}

}  // namespace branchline::aggregator
