// The seed corpora stay meaningful: the inputs named valid-* are still accepted
// by the code they seed. A wire-format or config change that silently turned
// every seed into garbage would leave the fuzzers starting from nothing; this
// test fails instead (regenerate batch seeds with fuzz_seed_gen, fix the text
// seeds by hand).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "agent/config/agent_config.h"
#include "agent/ingest/record_intake.h"
#include "agent/spool/csv_reader.h"
#include "aggregator/config/aggregator_config.h"
#include "protocol/batch_codec.h"
#include "protocol/seal.h"
#include "shared/http/http_server.h"
#include "shared/http/request_framing.h"
#include "shared/rules/rule_engine.h"
#include "tests/fuzz/seal_test_keys.h"

namespace {

namespace fs = std::filesystem;
namespace protocol = branchline::protocol;

const fs::path kCorpus = fs::path(BRANCHLINE_FUZZ_DIR) / "corpus";

// The files of corpus/<target>/ whose name starts with `prefix`, sorted.
std::vector<fs::path> seeds(const std::string& target, const std::string& prefix) {
  std::vector<fs::path> out;
  for (const auto& entry : fs::directory_iterator(kCorpus / target)) {
    if (entry.path().filename().string().rfind(prefix, 0) == 0) out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string readFile(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << file;
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(FuzzSeeds, ValidBatchSeedsDecode) {
  auto files = seeds("fuzz_batch_open", "valid-");
  ASSERT_GE(files.size(), 3u);
  for (const auto& file : files) {
    std::string payload = readFile(file);
    auto header = protocol::peekHeader(payload);
    ASSERT_TRUE(header.isOk()) << file << ": " << header.status().toString();
    if (header->is_ack) {
      auto ack = protocol::decodeAck(payload);
      EXPECT_TRUE(ack.isOk()) << file << ": " << ack.status().toString();
    } else {
      auto batch = protocol::decodeBatch(payload);
      EXPECT_TRUE(batch.isOk()) << file << ": " << batch.status().toString();
    }
  }
}

TEST(FuzzSeeds, ValidSealedSeedsOpenWithTheTestKeys) {
  const auto& keys = branchline::fuzz::sealTestKeys();
  protocol::DecodeLimits limits;
  auto sealed = seeds("fuzz_sealed_open", "valid-sealed-");
  ASSERT_GE(sealed.size(), 2u);
  for (const auto& file : sealed) {
    auto batch = protocol::openBatch(readFile(file), limits, keys.openOptions(true));
    EXPECT_TRUE(batch.isOk()) << file << ": " << batch.status().toString();
  }
  auto plain = seeds("fuzz_sealed_open", "valid-plain-");
  ASSERT_GE(plain.size(), 1u);
  for (const auto& file : plain) {
    auto batch = protocol::openBatch(readFile(file), limits, keys.openOptions(false));
    EXPECT_TRUE(batch.isOk()) << file << ": " << batch.status().toString();
  }
  // The refused seeds stay refused for the reason their name gives.
  const std::pair<const char*, protocol::OpenFailure> refused[] = {
      {"sealed-retired-key", protocol::OpenFailure::kKeyRetired},
      {"sealed-unknown-key", protocol::OpenFailure::kUnknownKey},
      {"sealed-forged-by-office-2", protocol::OpenFailure::kForgedOrAltered},
      {"sealed-not-enrolled", protocol::OpenFailure::kNotEnrolled},
      {"sealed-seq-changed", protocol::OpenFailure::kForgedOrAltered},
  };
  for (const auto& [name, why] : refused) {
    protocol::OpenFailure failure = protocol::OpenFailure::kNone;
    auto batch = protocol::openBatch(readFile(kCorpus / "fuzz_sealed_open" / name), limits,
                                     keys.openOptions(true), &failure);
    EXPECT_FALSE(batch.isOk()) << name;
    EXPECT_EQ(protocol::openFailureLabel(failure), std::string(protocol::openFailureLabel(why)))
        << name << ": " << batch.status().toString();
  }
}

TEST(FuzzSeeds, ValidCustomerBodiesAreAccepted) {
  auto created =
      branchline::rules::RuleEngine::create({branchline::rules::defaultCustomerSchema()});
  ASSERT_TRUE(created.isOk());
  const auto& engine = **created;
  auto files = seeds("fuzz_ingest", "customer-valid-");
  ASSERT_GE(files.size(), 2u);
  for (const auto& file : files) {
    std::string body = readFile(file);
    branchline::agent::RecordIntake intake(engine, *engine.find("customer"), "customer", 1);
    if (file.extension() == ".ndjson") {
      auto summary = branchline::agent::addNdjson(intake, body, 32, 10000);
      EXPECT_EQ(summary.parsed, summary.lines) << file;
    } else {
      auto parsed = branchline::agent::addJsonDocument(intake, body, 32, 10000);
      EXPECT_TRUE(parsed.isOk()) << file << ": " << parsed.toString();
    }
    EXPECT_GE(intake.accepted(), 1u) << file;
    for (const auto& e : intake.errors()) {
      ADD_FAILURE() << file << ": input " << e.index << ": " << e.field << ": " << e.reason;
    }
  }
}

TEST(FuzzSeeds, ValidConfigsLoad) {
  auto agents = seeds("fuzz_config", "agent-valid-");
  auto aggregators = seeds("fuzz_config", "aggregator-valid-");
  ASSERT_GE(agents.size(), 2u);
  ASSERT_GE(aggregators.size(), 2u);
  for (const auto& file : agents) {
    auto cfg = branchline::agent::parseAgentConfig(readFile(file), "/nonexistent");
    ASSERT_TRUE(cfg.isOk()) << file << ": " << cfg.status().toString();
    auto engine = branchline::rules::RuleEngine::create(cfg->sources);
    EXPECT_TRUE(engine.isOk()) << file << ": " << engine.status().toString();
  }
  for (const auto& file : aggregators) {
    auto cfg = branchline::aggregator::parseAggregatorConfig(readFile(file), file.string());
    EXPECT_TRUE(cfg.isOk()) << file << ": " << cfg.status().toString();
  }
}

// Each valid-* HTTP seed frames every request it holds, to the last byte;
// each invalid-* one is refused.
TEST(FuzzSeeds, HttpSeedsFrameAsNamed) {
  auto valid = seeds("fuzz_http_framing", "valid-");
  auto invalid = seeds("fuzz_http_framing", "invalid-");
  ASSERT_GE(valid.size(), 3u);
  ASSERT_GE(invalid.size(), 3u);
  auto frameAll = [](const std::string& bytes) {
    std::string_view rest = bytes;
    while (!rest.empty()) {
      const branchline::http::ServerOptions server;  // its defaults
      branchline::http::RequestFramer framer(
          {.max_header_bytes = server.max_header_bytes, .max_body_bytes = server.max_body_bytes});
      while (!rest.empty() && !framer.done() && !framer.failed()) {
        rest.remove_prefix(framer.feed(rest));
      }
      if (!framer.done()) return false;
    }
    return true;
  };
  for (const auto& file : valid) EXPECT_TRUE(frameAll(readFile(file))) << file;
  for (const auto& file : invalid) EXPECT_FALSE(frameAll(readFile(file))) << file;
}

// Each valid-* CSV seed reads with at least one row; each invalid-* one is refused.
TEST(FuzzSeeds, CsvSeedsReadAsNamed) {
  auto valid = seeds("fuzz_csv", "valid-");
  auto invalid = seeds("fuzz_csv", "invalid-");
  ASSERT_GE(valid.size(), 3u);
  ASSERT_GE(invalid.size(), 3u);
  auto rowsOf = [](const std::string& text) -> long {
    std::vector<std::string> header;
    long rows = 0;
    auto s = branchline::agent::readCsv(text, header, [&](const auto&) { ++rows; });
    return s.isOk() ? rows : -1;
  };
  for (const auto& file : valid) EXPECT_GT(rowsOf(readFile(file)), 0) << file;
  for (const auto& file : invalid) EXPECT_EQ(rowsOf(readFile(file)), -1) << file;
}

}  // namespace
