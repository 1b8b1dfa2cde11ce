#include "aggregator/store/seq_reuse.h"

#include "shared/core/clock.h"
#include "shared/core/log.h"

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

std::string bufferDamagedDetail(const protocol::WireDamaged& d) {
  return "agent buffer row " + log::printableExcerpt(d.table, 16) + "#" + std::to_string(d.row) +
         " (source `" + log::printableExcerpt(d.source, 64) + "`, ingested " +
         formatRfc3339Micros(d.ingested_at_us) + ") could not be read back and was kept aside " +
         "on the agent: " + log::printableExcerpt(d.reason, 300);
}

}  // namespace branchline::aggregator
