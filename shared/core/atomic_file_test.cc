#include "shared/core/atomic_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shared/core/unique_fd.h"

namespace branchline {
namespace {

namespace fs = std::filesystem;

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/bl-atomic-file-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Every name in `dir`: a leftover temp file shows up here.
  static std::vector<std::string> namesIn(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
    return out;
  }

  fs::path dir_;
};

std::string contentsOf(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

mode_t modeOf(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

// Sets the umask for one scope.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : old_(::umask(mask)) {}
  ~ScopedUmask() { ::umask(old_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t old_;
};

TEST_F(AtomicFileTest, WritesTheBytesWithExactlyTheModeWhateverTheUmask) {
  const std::string bytes = std::string("binary\0bytes\n", 13) + std::string(1 << 20, 'x');
  {
    ScopedUmask wide(0);  // would widen a 0666 create
    ASSERT_TRUE(writeFileAtomically(dir_ / "private", bytes, 0600).isOk());
  }
  {
    ScopedUmask narrow(077);  // would narrow 0644 to 0600
    ASSERT_TRUE(writeFileAtomically(dir_ / "public", "pub", 0644).isOk());
  }
  EXPECT_EQ(contentsOf(dir_ / "private"), bytes);
  EXPECT_EQ(modeOf(dir_ / "private"), 0600u);
  EXPECT_EQ(contentsOf(dir_ / "public"), "pub");
  EXPECT_EQ(modeOf(dir_ / "public"), 0644u);
  EXPECT_EQ(namesIn(dir_).size(), 2u) << "no temp file left behind";
}

TEST_F(AtomicFileTest, CreatesAMissingFolder) {
  const fs::path file = dir_ / "a" / "b" / "f";
  ASSERT_TRUE(writeFileAtomically(file, "x", 0600).isOk());
  EXPECT_EQ(contentsOf(file), "x");
}

TEST_F(AtomicFileTest, ReplacesAnExistingFileAsAWhole) {
  const fs::path file = dir_ / "state.json";
  ASSERT_TRUE(writeFileAtomically(file, "old", 0644).isOk());
  // A reader holding the old file keeps reading the old bytes: a new inode
  // replaced it, the old one was never written in place.
  UniqueFd old_reader(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_GE(old_reader.get(), 0);
  ASSERT_TRUE(writeFileAtomically(file, "new and longer", 0600).isOk());
  EXPECT_EQ(contentsOf(file), "new and longer");
  EXPECT_EQ(modeOf(file), 0600u);
  char buf[16] = {};
  ASSERT_EQ(::pread(old_reader.get(), buf, sizeof buf, 0), 3);
  EXPECT_EQ(std::string(buf, 3), "old");
  EXPECT_EQ(namesIn(dir_), std::vector<std::string>{"state.json"});
}

TEST_F(AtomicFileTest, WithoutReplaceKeepsAnExistingFile) {
  const fs::path file = dir_ / "k.key";
  ASSERT_TRUE(writeFileAtomically(file, "first", 0600, {.replace = false}).isOk());
  Status again = writeFileAtomically(file, "second", 0600, {.replace = false});
  EXPECT_EQ(again.code(), Code::kAlreadyExists) << again.toString();
  EXPECT_NE(again.message().find(file.string()), std::string::npos) << again.message();
  EXPECT_EQ(contentsOf(file), "first");
  EXPECT_EQ(namesIn(dir_), std::vector<std::string>{"k.key"});
}

TEST_F(AtomicFileTest, WritesThroughAnOpenFolder) {
  fs::create_directory(dir_ / "done");
  UniqueFd folder(::open((dir_ / "done").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_GE(folder.get(), 0);
  // The folder moves after it was opened: the write follows the descriptor.
  fs::rename(dir_ / "done", dir_ / "moved");
  ASSERT_TRUE(
      writeFileAtomically(dir_ / "done" / "f.errors.json", "{}", 0600, {.dir_fd = folder.get()})
          .isOk());
  EXPECT_EQ(contentsOf(dir_ / "moved" / "f.errors.json"), "{}");
  EXPECT_FALSE(fs::exists(dir_ / "done"));
  EXPECT_EQ(namesIn(dir_ / "moved"), std::vector<std::string>{"f.errors.json"});
}

TEST_F(AtomicFileTest, AFailedRenameLeavesNoTempFileAndNamesPathStepAndReason) {
  // The target is a folder that is not empty, so the rename over it fails
  // after the temp file was written (as root too, unlike a read-only folder).
  const fs::path target = dir_ / "target";
  fs::create_directories(target / "inside");
  Status s = writeFileAtomically(target, "bytes", 0600);
  ASSERT_FALSE(s.isOk());
  EXPECT_EQ(s.code(), Code::kInternal) << s.toString();
  EXPECT_NE(s.message().find(target.string()), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("rename"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::strerror(EISDIR)), std::string::npos) << s.message();
  EXPECT_EQ(namesIn(dir_), std::vector<std::string>{"target"});
}

TEST_F(AtomicFileTest, AFolderThatCannotBeCreatedIsAnError) {
  ASSERT_TRUE(writeFileAtomically(dir_ / "plain", "x", 0600).isOk());
  Status s = writeFileAtomically(dir_ / "plain" / "f", "x", 0600);
  EXPECT_EQ(s.code(), Code::kInternal) << s.toString();
  EXPECT_NE(s.message().find("create folder"), std::string::npos) << s.message();
  EXPECT_EQ(namesIn(dir_), std::vector<std::string>{"plain"});
}

TEST_F(AtomicFileTest, ConcurrentWritersNeverShareATempFile) {
  // With one fixed temp name, two writers truncate and rename each other's
  // half-written file; with unique names each rename installs one whole file.
  const fs::path file = dir_ / "shared";
  const std::string a(256 * 1024, 'a');
  const std::string b(256 * 1024, 'b');
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        EXPECT_TRUE(writeFileAtomically(file, t % 2 ? a : b, 0600).isOk());
      }
    });
  }
  for (auto& w : writers) w.join();
  const std::string got = contentsOf(file);
  EXPECT_TRUE(got == a || got == b) << "a mixed file of " << got.size() << " bytes";
  EXPECT_EQ(namesIn(dir_), std::vector<std::string>{"shared"});
}

TEST_F(AtomicFileTest, AFullDiskIsResourceExhaustedAndLeavesNoTempFile) {
  const fs::path small = dir_ / "small";
  fs::create_directory(small);
  if (::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "cannot mount a 64 KiB tmpfs (needs root): " << std::strerror(errno);
  }
  const std::string big(1 << 20, 'z');
  Status s = writeFileAtomically(small / "f", big, 0600);
  std::vector<std::string> left = namesIn(small);
  // The old file survives a failed replace.
  Status first = writeFileAtomically(small / "kept", "kept", 0600);
  Status over = writeFileAtomically(small / "kept", big, 0600);
  const std::string kept = contentsOf(small / "kept");
  std::vector<std::string> after = namesIn(small);
  ::umount(small.c_str());

  EXPECT_EQ(s.code(), Code::kResourceExhausted) << s.toString();
  EXPECT_NE(s.message().find((small / "f").string()), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::strerror(ENOSPC)), std::string::npos) << s.message();
  EXPECT_TRUE(left.empty()) << "left behind: " << left.front();
  EXPECT_TRUE(first.isOk()) << first.toString();
  EXPECT_EQ(over.code(), Code::kResourceExhausted) << over.toString();
  EXPECT_EQ(kept, "kept");
  EXPECT_EQ(after, std::vector<std::string>{"kept"});
}

}  // namespace
}  // namespace branchline
