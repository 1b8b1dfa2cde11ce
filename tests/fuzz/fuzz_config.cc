// fuzz_config: the agent's and the aggregator's config loaders on arbitrary
// text (parseAgentConfig, parseAggregatorConfig: toml++ then our validation),
// followed, for an agent config that loads, by what branchline-agent does next:
// compiling its [sources.*] rules (RuleEngine::create, regex patterns included).
//
// Properties beyond "no crash": a refusal always says why, and a config that
// loads meets the documented invariants (a valid agent id, an absolute
// data_dir, at least one source, compilable or clearly refused rules).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include "agent/config/agent_config.h"
#include "aggregator/config/aggregator_config.h"
#include "shared/rules/rule_engine.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  // A folder that does not exist: parsing resolves paths but must not touch them.
  auto agent = branchline::agent::parseAgentConfig(text, "/nonexistent/branchline-fuzz");
  if (!agent.isOk()) {
    FUZZ_CHECK(!agent.status().message().empty(), "a refused agent config says why");
  } else {
    FUZZ_CHECK(!agent->id.empty() && agent->id.size() <= 64, "agent.id is 1 to 64 characters");
    FUZZ_CHECK(agent->data_dir.is_absolute(), "data_dir is absolute");
    FUZZ_CHECK(!agent->sources.empty(), "an agent has at least one source");
    auto engine = branchline::rules::RuleEngine::create(agent->sources);
    if (!engine.isOk()) {
      FUZZ_CHECK(!engine.status().message().empty(), "refused rules say why");
    } else {
      for (const auto& source : agent->sources) {
        FUZZ_CHECK((*engine)->find(source.name) != nullptr, "every source is found");
      }
    }
  }

  auto aggregator = branchline::aggregator::parseAggregatorConfig(text, "fuzz.toml");
  if (!aggregator.isOk()) {
    FUZZ_CHECK(!aggregator.status().message().empty(), "a refused aggregator config says why");
  } else {
    FUZZ_CHECK(!aggregator->name.empty(), "aggregator.name is set");
    FUZZ_CHECK(!aggregator->store_url.empty(), "store.url is set");
  }
  return 0;
}
