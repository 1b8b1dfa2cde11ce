#include "agent/buffer/record_cipher.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

namespace branchline::agent {
namespace {

using namespace std::chrono_literals;
constexpr size_t kNonceSize = 12;

DataKey testKey() {
  DataKey k;
  for (size_t i = 0; i < DataKey::kSize; ++i) k.data()[i] = static_cast<unsigned char>(i);
  return k;
}

std::unique_ptr<RecordCipher> cipherOrDie(const DataKey& key) {
  auto c = RecordCipher::create(key);
  if (!c.isOk()) {
    ADD_FAILURE() << c.status().toString();
    return nullptr;
  }
  return std::move(c).value();
}

std::string fromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::string nonceOf(const std::string& sealed) { return sealed.substr(1, kNonceSize); }

// Sealed by the cipher as it was before nonce runs (one DRBG per process): the format
// did not change, so buffers written then still open.
TEST(RecordCipherTest, ValueSealedByTheEarlierNonceGeneratorStillOpens) {
  auto c = cipherOrDie(testKey());
  ASSERT_TRUE(c);
  const std::string sealed = fromHex(
      "019a47b700ce8e15434769389dc5ecc9b0fe52509958c11632a2d4fd7b30a1bf7125b20ed51fe3763c98ddba1d"
      "b9250f611548f36e");
  std::string plain;
  ASSERT_TRUE(c->open("records.payload", 7, sealed, plain).isOk());
  EXPECT_EQ(plain, "sealed before nonce runs");
  EXPECT_EQ(c->open("records.payload", 8, sealed, plain).code(), Code::kDataLoss);
}

TEST(RecordCipherTest, ValuesSealedInAndOutOfRunsOpenAndNeverShareANonce) {
  auto c = cipherOrDie(testKey());
  ASSERT_TRUE(c);
  std::set<std::string> nonces;
  std::string sealed, plain;
  for (int run = 0; run < 50; ++run) {
    ASSERT_TRUE(c->beginRun().isOk());
    for (int i = 0; i < 200; ++i) {
      const std::string value = "value " + std::to_string(run) + "/" + std::to_string(i);
      ASSERT_TRUE(c->seal("records.payload", i, value, sealed).isOk());
      EXPECT_TRUE(nonces.insert(nonceOf(sealed)).second) << "nonce repeated";
      ASSERT_TRUE(c->open("records.payload", i, sealed, plain).isOk());
      EXPECT_EQ(plain, value);
    }
    c->endRun();
    ASSERT_TRUE(c->seal("key_check.sealed", 1, "outside a run", sealed).isOk());
    EXPECT_TRUE(nonces.insert(nonceOf(sealed)).second) << "nonce repeated";
  }
  EXPECT_EQ(nonces.size(), 50u * 201u);
}

// The resumed-snapshot case: a process with its cipher open and a run under way is
// forked twice; each child (and the parent) goes on sealing different values. The
// children inherit the run's memory but not the run (MADV_WIPEONFORK), so no nonce
// repeats between any two of them.
TEST(RecordCipherTest, ForkedChildrenOfAnOpenCipherNeverRepeatANonce) {
  auto c = cipherOrDie(testKey());
  ASSERT_TRUE(c);
  std::string sealed;
  ASSERT_TRUE(c->beginRun().isOk());
  ASSERT_TRUE(c->seal("records.payload", 1, "before the fork", sealed).isOk());

  constexpr int kPerProcess = 20000;
  // Seals kPerProcess distinct values, a third of them on the run state found at
  // the start, then in new runs and outside runs; returns their nonces, concatenated.
  auto sealMany = [&](char who) {
    std::string nonces;
    std::string out;
    for (int i = 0; i < kPerProcess; ++i) {
      if (i == kPerProcess / 3) {
        if (!c->beginRun().isOk()) std::abort();
      } else if (i == 2 * kPerProcess / 3) {
        c->endRun();
      }
      const std::string value = std::string(1, who) + " value " + std::to_string(i);
      if (!c->seal("records.payload", i, value, out).isOk()) std::abort();
      nonces += nonceOf(out);
    }
    return nonces;
  };

  char tmpl[] = "/tmp/bl-cipher-fork-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::filesystem::path dir = tmpl;
  std::vector<pid_t> children;
  for (char who : {'a', 'b'}) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      std::ofstream(dir / std::string(1, who), std::ios::binary) << sealMany(who);
      ::_exit(0);
    }
    children.push_back(pid);
  }
  std::vector<std::string> outputs = {sealMany('p')};
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (pid_t pid : children) {
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child " << pid;
  }
  for (const char* who : {"a", "b"}) {
    std::ifstream in(dir / who, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    outputs.push_back(ss.str());
  }
  std::filesystem::remove_all(dir);

  std::set<std::string> seen = {nonceOf(sealed)};
  size_t repeats = 0;
  for (const std::string& nonces : outputs) {
    ASSERT_EQ(nonces.size(), kPerProcess * kNonceSize);
    for (size_t at = 0; at < nonces.size(); at += kNonceSize) {
      if (!seen.insert(nonces.substr(at, kNonceSize)).second) ++repeats;
    }
  }
  EXPECT_EQ(repeats, 0u) << "nonces repeated between the parent and its forked children";
  EXPECT_EQ(seen.size(), 3u * kPerProcess + 1);
}

}  // namespace
}  // namespace branchline::agent
