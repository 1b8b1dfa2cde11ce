// The generator and the rule engine must agree: every record the generator
// calls valid passes the built-in customer schema, and every invalid one is
// rejected for the field the generator broke. Otherwise the demo's and the
// tests' expected counts would be wrong.
#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <map>

#include "cli/loadgen/record_generator.h"
#include "shared/rules/rule_engine.h"

namespace branchline::loadgen {
namespace {

class GeneratorRulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = rules::RuleEngine::create({rules::defaultCustomerSchema()});
    ASSERT_TRUE(engine.isOk()) << engine.status().toString();
    engine_ = *engine;
    schema_ = engine_->find("customer");
    ASSERT_NE(schema_, nullptr);
  }
  rules::Outcome apply(const std::string& json) {
    return engine_->apply(*schema_, boost::json::parse(json).as_object());
  }
  std::shared_ptr<const rules::RuleEngine> engine_;
  const rules::CompiledSchema* schema_ = nullptr;
};

TEST_F(GeneratorRulesTest, EveryValidRecordPassesAndKeysByExternalId) {
  CustomerGenerator gen({.seed = 1, .duplicate_share = 0.05, .invalid_share = 0.0});
  for (uint64_t i = 0; i < 20000; ++i) {
    GeneratedRecord r = gen.generate(i);
    rules::Outcome out = apply(r.json);
    ASSERT_TRUE(out.ok()) << "record " << i << ": " << r.json << "\n  "
                          << (out.errors.empty()
                                  ? ""
                                  : out.errors[0].field + ": " + out.errors[0].reason);
    EXPECT_NE(out.record->key.find(r.external_id), std::string::npos) << out.record->key;
  }
}

TEST_F(GeneratorRulesTest, DuplicatesNormalizeIdentically) {
  CustomerGenerator gen({.seed = 2, .duplicate_share = 0.3});
  for (uint64_t i = 0; i < 2000; ++i) {
    GeneratedRecord r = gen.generate(i);
    if (!r.duplicate) continue;
    rules::Outcome a = apply(r.json), b = apply(gen.generate(r.original).json);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a.record->key, b.record->key);
    EXPECT_EQ(a.record->payload, b.record->payload);
  }
}

TEST_F(GeneratorRulesTest, EveryInvalidRecordIsRejectedForItsDefect) {
  CustomerGenerator gen({.seed = 3, .invalid_share = 1.0});
  std::map<std::string, int> by_field;
  for (uint64_t i = 0; i < 3000; ++i) {
    GeneratedRecord r = gen.generate(i);
    rules::Outcome out = apply(r.json);
    ASSERT_FALSE(out.ok()) << "accepted an invalid record (" << r.defect << "): " << r.json;
    bool named = false;
    for (const auto& e : out.errors) named |= e.field == r.defect;
    EXPECT_TRUE(named) << "defect " << r.defect
                       << " not reported; first error: " << out.errors[0].field << ": "
                       << out.errors[0].reason;
    ++by_field[r.defect];
  }
  EXPECT_EQ(by_field.size(), 9u);
}

}  // namespace
}  // namespace branchline::loadgen
