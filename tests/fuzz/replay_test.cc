// Replays one fuzz target's committed inputs through its LLVMFuzzerTestOneInput
// without libFuzzer: the seed corpus (tests/fuzz/corpus/<target>/) and every
// crash kept as a regression (tests/fuzz/regressions/<target>/). Built with the
// normal compiler into the normal and the ASan builds, so `ctest` exercises the
// corpora there too; a crash aborts the test, naming the input on stderr first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

// Regular files under `dir`, sorted, so a run is reproducible; none if it is absent.
std::vector<fs::path> inputsIn(const fs::path& dir) {
  std::vector<fs::path> out;
  if (!fs::is_directory(dir)) return out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && entry.path().filename().string().front() != '.') {
      out.push_back(entry.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Runs every input; returns how many ran.
size_t replay(const fs::path& dir) {
  size_t ran = 0;
  for (const fs::path& file : inputsIn(dir)) {
    std::ifstream in(file, std::ios::binary);
    EXPECT_TRUE(in.good()) << "cannot read " << file;
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    // Printed before the run: if the target aborts, this is the last line.
    std::fprintf(stderr, "replay %s (%zu bytes)\n", file.c_str(), bytes.size());
    EXPECT_EQ(LLVMFuzzerTestOneInput(bytes.data(), bytes.size()), 0) << file;
    ++ran;
  }
  return ran;
}

const fs::path kFuzzDir = BRANCHLINE_FUZZ_DIR;
const std::string kTarget = BRANCHLINE_FUZZ_TARGET;

TEST(FuzzReplay, SeedCorpusRunsClean) {
  // A target without seeds would start from nothing in CI: keep a handful.
  EXPECT_GE(replay(kFuzzDir / "corpus" / kTarget), 3u) << "seed corpus of " << kTarget;
}

TEST(FuzzReplay, RegressionsRunClean) {
  // Usually few or none; each is an input that once crashed this target.
  size_t ran = replay(kFuzzDir / "regressions" / kTarget);
  std::fprintf(stderr, "%zu regression inputs of %s ran clean\n", ran, kTarget.c_str());
}

}  // namespace
