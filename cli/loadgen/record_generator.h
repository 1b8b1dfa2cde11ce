// Synthetic `customer` records for the demo, load tests and benchmarks: names,
// emails, phones and timestamps in the varied shapes real intake software
// sends (mixed case, stray spaces, national and international phone formats,
// UTC offsets, non-ASCII names and combining characters).
//
// Guarantee: record `i` is a pure function of (seed, i), so any thread can
// generate any record without coordination, a duplicate is byte-identical to
// the record it repeats, and the exact set of valid unique external_ids sent
// in indices [0, n) can be recomputed afterwards to check the central store.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace branchline::loadgen {

struct GeneratorOptions {
  uint64_t seed = 1;
  double duplicate_share = 0.0;  // of all records: resends of an earlier valid record
  double invalid_share = 0.0;    // of all records: one defect each (see `defect`)
};

enum class RecordKind { kValid, kDuplicate, kInvalid };

struct GeneratedRecord {
  std::string json;    // one JSON object, UTF-8
  bool valid = false;  // true for kValid and kDuplicate
  bool duplicate = false;
  std::string external_id;  // "" when the defect is a missing external_id
  uint64_t index = 0;       // position in the stream
  uint64_t original = 0;    // index of the record a duplicate repeats (else == index)
  std::string defect;       // invalid records: the field at fault ("email", "channel", ...)
};

class CustomerGenerator {
 public:
  explicit CustomerGenerator(GeneratorOptions options);

  RecordKind kindOf(uint64_t index) const;
  // The index whose record `index` carries: itself unless it is a duplicate.
  uint64_t originalOf(uint64_t index) const;
  // Fills `out` (reusing its buffers) with record `index`.
  void generate(uint64_t index, GeneratedRecord& out) const;
  GeneratedRecord generate(uint64_t index) const;
  // The next record of this generator's own sequence (0, 1, 2, ...).
  GeneratedRecord next() { return generate(next_index_++); }

  // external_id of the valid record at `index` (meaningful when kindOf(index) == kValid).
  std::string externalId(uint64_t index) const;
  // The external_ids of the distinct valid records among indices [0, count).
  std::vector<std::string> validUniqueIds(uint64_t count) const;

 private:
  GeneratorOptions options_;
  uint64_t next_index_ = 0;
};

}  // namespace branchline::loadgen
