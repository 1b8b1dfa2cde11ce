#include "agent/spool/spool_ingester.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <boost/json.hpp>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "agent/spool/testing/name_swapper.h"

namespace branchline::agent {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;

std::string customer(int i, std::string email = "") {
  if (email.empty()) email = "p" + std::to_string(i) + "@example.com";
  return R"({"external_id":"s-)" + std::to_string(i) + R"(","name":"Grace Hopper","email":")" +
         email + R"(","channel":"office","created_at":"2026-11-25T11:53:47Z"})";
}

void writeFile(const fs::path& path, const std::string& content, bool append = false) {
  std::ofstream out(path, append ? std::ios::app | std::ios::binary : std::ios::binary);
  out << content;
}

std::string readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

mode_t modeOf(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

// The names in `dir` (not recursing), sorted.
std::vector<std::string> namesIn(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class SpoolIngesterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/bl-spool-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    auto engine = rules::RuleEngine::create({rules::defaultCustomerSchema()});
    ASSERT_TRUE(engine.isOk()) << engine.status().toString();
    engine_ = engine.value();
    openBuffer(1ull << 30);
  }
  void TearDown() override {
    buffer_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  void openBuffer(uint64_t max_bytes) {
    buffer_.reset();
    BufferOptions bo;
    bo.path = root_ / ("buffer-" + std::to_string(max_bytes) + ".db");
    bo.max_bytes = max_bytes;
    auto b = DurableBuffer::open(bo);
    ASSERT_TRUE(b.isOk()) << b.status().toString();
    buffer_ = std::move(b).value();
  }

  std::unique_ptr<SpoolIngester> ingester(SpoolOptions options = {}) {
    options.dir = root_ / "spool";
    options.sources = {"customer"};
    auto s = SpoolIngester::create(std::move(options), engine_, *buffer_, metrics_);
    EXPECT_TRUE(s.isOk()) << s.status().toString();
    return s.isOk() ? std::move(s).value() : nullptr;
  }

  // Two polls: the first sees the file, the second finds it stable and takes it.
  SpoolPollReport pollTwice(SpoolIngester& s) {
    auto first = s.pollOnce("customer");
    EXPECT_TRUE(first.isOk());
    auto second = s.pollOnce("customer");
    EXPECT_TRUE(second.isOk());
    return second.isOk() ? second.value() : SpoolPollReport{};
  }

  fs::path dir() const { return root_ / "spool" / "customer"; }

  fs::path root_;
  std::shared_ptr<const rules::RuleEngine> engine_;
  std::unique_ptr<DurableBuffer> buffer_;
  MetricsRegistry metrics_;
};

TEST_F(SpoolIngesterTest, NdjsonAndCsvFilesAreIngestedAndMoved) {
  auto s = ingester();
  ASSERT_TRUE(s);
  writeFile(dir() / "a.ndjson", customer(1) + "\n\n" + customer(2) + "\r\n" + customer(3));
  writeFile(dir() / "b.csv",
            "external_id,name,email,channel,created_at,phone,notes\r\n"
            "c-1,\"Hopper, Grace\",G@Example.com,web,2026-11-25T11:53:47Z,,\"said \"\"hi\"\"\n"
            "on two lines\"\r\n"
            "\n"
            "c-2,Ada,ada@example.com,mobile,2026-11-25T11:53:47Z,(415) 555-0132,\n");
  auto report = pollTwice(*s);
  EXPECT_EQ(report.done, 2u);
  EXPECT_EQ(report.failed, 0u);
  // Committed files are deleted: no plaintext copy stays behind.
  EXPECT_EQ(namesIn(dir() / "done"), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(dir() / "a.ndjson"));
  EXPECT_FALSE(fs::exists(dir() / "b.csv"));
  EXPECT_EQ(modeOf(dir() / "done"), 0700u);
  EXPECT_EQ(modeOf(dir() / "failed"), 0700u);
  EXPECT_EQ(buffer_->stats().records, 5u);
  EXPECT_EQ(buffer_->stats().rejects, 0u);

  auto batch = buffer_->formBatch({}, 0);
  ASSERT_TRUE(batch.isOk());
  ASSERT_TRUE(batch->has_value());
  bool found_quoted = false;
  for (const auto& r : (*batch)->records) {
    if (r.key != "c-1") continue;
    json::value v = json::parse(r.payload);
    EXPECT_EQ(v.at("name").as_string(), "Hopper, Grace");
    EXPECT_EQ(v.at("notes").as_string(), "said \"hi\"\non two lines");
    EXPECT_EQ(v.at("email").as_string(), "g@example.com");
    EXPECT_FALSE(v.as_object().contains("phone"));  // empty cell = absent
    found_quoted = true;
  }
  EXPECT_TRUE(found_quoted);
  EXPECT_NE(metrics_.renderPrometheus().find("bl_agent_spool_files_total{outcome=\"done\"} 2"),
            std::string::npos);
}

TEST_F(SpoolIngesterTest, RejectedRecordsAreListedInErrorsJson) {
  auto s = ingester();
  ASSERT_TRUE(s);
  writeFile(dir() / "mixed.ndjson",
            customer(1) + "\n" + customer(2, "nope") + "\n{\"broken\": \n" + customer(3) + "\n");
  writeFile(dir() / "rows.csv",
            "external_id,name,email,channel,created_at\n"
            "r-1,Ann,ann@example.com,web,2026-11-25T11:53:47Z\n"
            "r-2,Bob,bob@example.com,web\n"
            "r-3,Cy,cy@example.com,fax,2026-11-25T11:53:47Z\n");
  auto report = pollTwice(*s);
  EXPECT_EQ(report.done, 2u);
  EXPECT_EQ(buffer_->stats().records, 3u);
  EXPECT_EQ(buffer_->stats().rejects, 4u);

  // Only the errors files stay, 0600, and they hold no value from the input.
  EXPECT_EQ(namesIn(dir() / "done"),
            (std::vector<std::string>{"mixed.ndjson.errors.json", "rows.csv.errors.json"}));
  EXPECT_EQ(modeOf(dir() / "done" / "mixed.ndjson.errors.json"), 0600u);
  EXPECT_EQ(modeOf(dir() / "done" / "rows.csv.errors.json"), 0600u);
  const std::string text = readFile(dir() / "done" / "mixed.ndjson.errors.json") +
                           readFile(dir() / "done" / "rows.csv.errors.json");
  for (const char* value : {"nope", "Grace Hopper", "bob@example.com", "fax", "broken"}) {
    EXPECT_EQ(text.find(value), std::string::npos) << value << " in " << text;
  }
  json::value e = json::parse(readFile(dir() / "done" / "mixed.ndjson.errors.json"));
  EXPECT_EQ(e.at("file").as_string(), "mixed.ndjson");
  EXPECT_EQ(e.at("accepted").as_int64(), 2);
  EXPECT_EQ(e.at("rejected").as_int64(), 2);
  const auto& errors = e.at("errors").as_array();
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].at("index").as_int64(), 1);
  EXPECT_EQ(errors[0].at("field").as_string(), "email");
  EXPECT_EQ(errors[0].at("reason").as_string(), "not an email address");
  EXPECT_EQ(errors[1].at("index").as_int64(), 2);
  EXPECT_EQ(errors[1].at("field").as_string(), "");
  EXPECT_NE(std::string(errors[1].at("reason").as_string()).find("invalid JSON"),
            std::string::npos);

  json::value c = json::parse(readFile(dir() / "done" / "rows.csv.errors.json"));
  EXPECT_EQ(c.at("accepted").as_int64(), 1);
  EXPECT_EQ(c.at("rejected").as_int64(), 2);
  const auto& cerrors = c.at("errors").as_array();
  ASSERT_EQ(cerrors.size(), 2u);
  EXPECT_EQ(cerrors[0].at("index").as_int64(), 1);
  EXPECT_NE(std::string(cerrors[0].at("reason").as_string()).find("row has 4 fields"),
            std::string::npos);
  EXPECT_EQ(cerrors[1].at("index").as_int64(), 2);
  EXPECT_EQ(cerrors[1].at("field").as_string(), "channel");
}

TEST_F(SpoolIngesterTest, FileStillBeingWrittenWaits) {
  auto s = ingester();
  ASSERT_TRUE(s);
  writeFile(dir() / "growing.ndjson", customer(1) + "\n");
  writeFile(dir() / "upload.ndjson.part", customer(9) + "\n");
  writeFile(dir() / ".hidden.ndjson", customer(8) + "\n");
  auto r = s->pollOnce("customer");
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->waiting, 1u);
  writeFile(dir() / "growing.ndjson", customer(2) + "\n", /*append=*/true);
  r = s->pollOnce("customer");  // size changed since the last poll: still waiting
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->waiting, 1u);
  EXPECT_EQ(r->done, 0u);
  EXPECT_EQ(buffer_->stats().records, 0u);
  r = s->pollOnce("customer");
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->done, 1u);
  EXPECT_EQ(buffer_->stats().records, 2u);
  EXPECT_TRUE(fs::exists(dir() / "upload.ndjson.part"));  // ignored
  EXPECT_TRUE(fs::exists(dir() / ".hidden.ndjson"));
}

TEST_F(SpoolIngesterTest, CrashBetweenCommitAndMoveDoesNotIngestTwice) {
  {
    SpoolOptions crashing;
    crashing.after_commit = [](const fs::path&) { return false; };  // "dies" here
    auto s = ingester(crashing);
    ASSERT_TRUE(s);
    writeFile(dir() / "once.ndjson", customer(1) + "\n" + customer(2) + "\n" + customer(3, "x"));
    auto r = pollTwice(*s);
    EXPECT_EQ(r.deferred, 1u);
  }
  EXPECT_TRUE(fs::exists(dir() / "once.ndjson"));  // committed but not moved
  EXPECT_EQ(buffer_->stats().records, 2u);
  EXPECT_EQ(buffer_->stats().rejects, 1u);

  auto restarted = ingester();
  ASSERT_TRUE(restarted);
  auto r = pollTwice(*restarted);
  EXPECT_EQ(r.done, 1u);
  EXPECT_FALSE(fs::exists(dir() / "once.ndjson"));
  EXPECT_FALSE(fs::exists(dir() / "done" / "once.ndjson"));
  EXPECT_EQ(buffer_->stats().records, 2u);  // not appended again
  EXPECT_EQ(buffer_->stats().rejects, 1u);
  // The errors file is still written from the (deterministic) re-read.
  json::value e = json::parse(readFile(dir() / "done" / "once.ndjson.errors.json"));
  EXPECT_EQ(e.at("accepted").as_int64(), 2);
  EXPECT_EQ(e.at("rejected").as_int64(), 1);
}

TEST_F(SpoolIngesterTest, UnusableFilesGoToFailedWithAReason) {
  SpoolOptions options;
  options.max_file_bytes = 4096;
  auto s = ingester(options);
  ASSERT_TRUE(s);
  std::string garbage;
  for (int i = 0; i < 512; ++i) garbage.push_back(static_cast<char>((i * 37 + 128) & 0xff));
  writeFile(dir() / "garbage.ndjson", garbage);
  writeFile(dir() / "notjson.ndjson", "hello\nworld\n");
  writeFile(dir() / "broken.csv", "external_id,name\n\"r-1,Ann\n");
  writeFile(dir() / "big.ndjson", std::string(5000, ' '));
  writeFile(dir() / "notes.txt", "what is this");
  auto r = pollTwice(*s);
  EXPECT_EQ(r.failed, 5u);
  EXPECT_EQ(r.done, 0u);
  EXPECT_EQ(buffer_->stats().records, 0u);
  EXPECT_EQ(buffer_->stats().rejects, 0u);
  auto reason = [&](const std::string& name) {
    EXPECT_TRUE(fs::exists(dir() / "failed" / name)) << name;
    json::value e = json::parse(readFile(dir() / "failed" / (name + ".errors.json")));
    EXPECT_EQ(e.at("accepted").as_int64(), 0);
    return std::string(e.at("error").as_string());
  };
  EXPECT_NE(reason("garbage.ndjson").find("not valid UTF-8"), std::string::npos);
  EXPECT_NE(reason("notjson.ndjson").find("no line is valid JSON"), std::string::npos);
  EXPECT_NE(reason("broken.csv").find("never closed"), std::string::npos);
  EXPECT_NE(reason("big.ndjson").find("past the limit"), std::string::npos);
  EXPECT_NE(reason("notes.txt").find("unsupported file type"), std::string::npos);
}

TEST_F(SpoolIngesterTest, AFilePastALimitGoesToFailedWithItsReasonAndTheOthersContinue) {
  SpoolOptions options;
  options.max_file_bytes = 8192;
  options.max_line_bytes = 1000;
  options.max_records_per_file = 3;
  auto s = ingester(options);
  ASSERT_TRUE(s);
  const std::string csv_header = "external_id,name,email,channel,created_at\n";
  auto csvRow = [](int i) {
    return "v-" + std::to_string(i) + ",Ann,a" + std::to_string(i) +
           "@example.com,web,2026-11-25T11:53:47Z\n";
  };
  writeFile(dir() / "a-good.ndjson", customer(1) + "\n" + customer(2) + "\n");
  writeFile(dir() / "b-long-line.ndjson",
            customer(3) + "\n{\"external_id\":\"" + std::string(2000, 'x') + "\"}\n");
  writeFile(dir() / "c-many.ndjson",
            customer(4) + "\n" + customer(5) + "\n" + customer(6) + "\n" + customer(7) + "\n");
  writeFile(dir() / "d-many.csv", csv_header + csvRow(1) + csvRow(2) + csvRow(3) + csvRow(4));
  std::string big;
  for (int i = 0; big.size() <= 8192; ++i) big += customer(100 + i) + "\n";
  writeFile(dir() / "e-big.ndjson", big);
  writeFile(dir() / "f-good.csv", csv_header + csvRow(5) + csvRow(6) + csvRow(7));

  auto r = pollTwice(*s);
  EXPECT_EQ(r.done, 2u);
  EXPECT_EQ(r.failed, 4u);
  EXPECT_FALSE(fs::exists(dir() / "a-good.ndjson"));  // committed, then deleted
  EXPECT_FALSE(fs::exists(dir() / "f-good.csv"));
  EXPECT_EQ(buffer_->stats().records, 5u);  // 2 + 3 from the good files, nothing from the rest
  EXPECT_EQ(buffer_->stats().rejects, 0u);
  auto reason = [&](const std::string& name) {
    EXPECT_TRUE(fs::exists(dir() / "failed" / name)) << name;
    json::value e = json::parse(readFile(dir() / "failed" / (name + ".errors.json")));
    EXPECT_EQ(e.at("accepted").as_int64(), 0);
    return std::string(e.at("error").as_string());
  };
  EXPECT_EQ(reason("b-long-line.ndjson"), "line 2 is 2018 bytes, past the limit of 1000 per line");
  EXPECT_EQ(reason("c-many.ndjson"),
            "more than 3 records in one file; split it into smaller files");
  EXPECT_EQ(reason("d-many.csv"), "more than 3 records in one file; split it into smaller files");
  EXPECT_NE(reason("e-big.ndjson").find("past the limit of 8192"), std::string::npos);
  auto refused = metrics_.renderPrometheus();
  for (const char* line : {"bl_agent_spool_refused_total{reason=\"line_too_long\"} 1\n",
                           "bl_agent_spool_refused_total{reason=\"too_many_records\"} 2\n",
                           "bl_agent_spool_refused_total{reason=\"file_too_large\"} 1\n",
                           "bl_agent_spool_files_total{outcome=\"failed\"} 4\n"}) {
    EXPECT_NE(refused.find(line), std::string::npos) << line << refused;
  }
}

TEST_F(SpoolIngesterTest, FullBufferLeavesTheFileForLater) {
  openBuffer(/*max_bytes=*/200);
  auto s = ingester();
  ASSERT_TRUE(s);
  writeFile(dir() / "wait.ndjson", customer(1) + "\n" + customer(2) + "\n" + customer(3) + "\n");
  auto r = pollTwice(*s);
  EXPECT_EQ(r.deferred, 1u);
  EXPECT_TRUE(fs::exists(dir() / "wait.ndjson"));
  EXPECT_EQ(buffer_->stats().records, 0u);
  auto again = s->pollOnce("customer");  // still stable: retried at once, still full
  ASSERT_TRUE(again.isOk());
  EXPECT_EQ(again->deferred, 1u);
}

TEST_F(SpoolIngesterTest, PollingThreadPicksUpFiles) {
  SpoolOptions options;
  options.poll = 20ms;
  auto s = ingester(options);
  ASSERT_TRUE(s);
  s->start();
  writeFile(dir() / "bg.ndjson", customer(1) + "\n");
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (fs::exists(dir() / "bg.ndjson") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  s->stop();
  EXPECT_FALSE(fs::exists(dir() / "bg.ndjson"));
  EXPECT_EQ(buffer_->stats().records, 1u);
}

TEST_F(SpoolIngesterTest, KeepDoneKeepsCommittedFilesPrivate) {
  SpoolOptions options;
  options.keep_done = true;
  auto s = ingester(options);
  ASSERT_TRUE(s);
  writeFile(dir() / "kept.ndjson", customer(1) + "\n" + customer(2, "nope") + "\n");
  ASSERT_EQ(::chmod((dir() / "kept.ndjson").c_str(), 0644), 0);
  auto r = pollTwice(*s);
  EXPECT_EQ(r.done, 1u);
  EXPECT_EQ(modeOf(dir() / "done" / "kept.ndjson"), 0600u);
  EXPECT_EQ(modeOf(dir() / "done" / "kept.ndjson.errors.json"), 0600u);
}

TEST_F(SpoolIngesterTest, AFileOfAnotherOwnerIsNotRead) {
  SpoolOptions options;
  options.owner = std::to_string(::geteuid() + 1);  // our own files are then "someone else's"
  auto s = ingester(options);
  ASSERT_TRUE(s);
  writeFile(dir() / "theirs.ndjson", customer(1) + "\n");
  auto r = pollTwice(*s);
  EXPECT_EQ(r.failed, 1u);
  EXPECT_EQ(buffer_->stats().records, 0u);
  json::value e = json::parse(readFile(dir() / "failed" / "theirs.ndjson.errors.json"));
  EXPECT_NE(std::string(e.at("error").as_string()).find("owned by uid"), std::string::npos);
  EXPECT_NE(
      metrics_.renderPrometheus().find("bl_agent_spool_refused_total{reason=\"wrong_owner\"} 1"),
      std::string::npos);

  SpoolOptions unknown;
  unknown.owner = "no-such-user-for-branchline";
  unknown.dir = root_ / "spool";
  unknown.sources = {"customer"};
  auto refused = SpoolIngester::create(unknown, engine_, *buffer_, metrics_);
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
}

// Opens every FIFO in `dirs` for writing, without blocking: a reader stuck in
// open() on one is released (the test's way out should the spool block).
void releaseFifoReaders(const std::vector<fs::path>& dirs) {
  for (const fs::path& d : dirs) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec)) {
      if (!fs::is_fifo(e.symlink_status())) continue;
      int fd = ::open(e.path().c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
  }
}

// The attack of issue 14: the name the spool saw as a regular file is swapped
// for a symlink to a private file, or for a FIFO, between the poll's look and
// the open. Raced in a loop, and then each left in place: nothing of the
// target is ever read, and no poll blocks.
TEST_F(SpoolIngesterTest, SymlinkAndFifoSwappedInAreNeverReadAndNeverBlock) {
  auto s = ingester();
  ASSERT_TRUE(s);
  const std::string marker = "secret-marker-7f3a@example.com";
  const fs::path secret = root_ / "secret.ndjson";
  writeFile(secret, customer(777, marker) + "\n" + customer(778, "not-an-email-" + marker) + "\n");
  ASSERT_EQ(::chmod(secret.c_str(), 0600), 0);
  // The decoy is hard-linked in each time: same inode, same size and mtime,
  // so the poll finds the name stable and goes on to open it.
  const fs::path decoy = root_ / "decoy.ndjson";
  writeFile(decoy, customer(1) + "\n");
  const fs::path target = dir() / "x.ndjson";

  std::atomic<bool> racing{true};
  std::thread attacker([&] {
    for (int i = 0; racing; ++i) testing::swapName(target, decoy, secret, i);
  });
  auto polls = std::async(std::launch::async, [&] {
    int n = 0;
    for (auto end = std::chrono::steady_clock::now() + 2s; std::chrono::steady_clock::now() < end;
         ++n) {
      EXPECT_TRUE(s->pollOnce("customer").isOk());
    }
    return n;
  });
  const bool finished = polls.wait_for(20s) == std::future_status::ready;
  racing = false;
  attacker.join();
  if (!finished) {
    releaseFifoReaders({dir(), dir() / "failed"});
    ADD_FAILURE() << "a spool poll blocked on a FIFO";
  }
  EXPECT_GT(polls.get(), 10);

  // Each left in place long enough to be stable: refused, moved to failed/, unread.
  for (int kind = 1; kind <= 2; ++kind) {
    ::unlink(target.c_str());
    const int made =
        kind == 1 ? ::symlink(secret.c_str(), target.c_str()) : ::mkfifo(target.c_str(), 0600);
    ASSERT_EQ(made, 0);
    auto stable = std::async(std::launch::async, [&] { return pollTwice(*s); });
    if (stable.wait_for(20s) != std::future_status::ready) {
      releaseFifoReaders({dir(), dir() / "failed"});
      FAIL() << "a spool poll blocked on a FIFO left in place";
    }
    EXPECT_EQ(stable.get().failed, 1u) << kind;
  }
  EXPECT_NE(
      metrics_.renderPrometheus().find("bl_agent_spool_refused_total{reason=\"not_regular_file\"}"),
      std::string::npos);

  // What the spool took is the decoy only: nothing of the secret in records,
  // rejects or any file the spool wrote.
  auto batch = buffer_->formBatch({}, 0);
  ASSERT_TRUE(batch.isOk());
  if (batch->has_value()) {
    for (const auto& r : (*batch)->records) {
      EXPECT_EQ(r.payload.find(marker), std::string::npos);
    }
    for (const auto& r : (*batch)->rejects) {
      EXPECT_EQ(r.raw.find(marker), std::string::npos);
    }
    EXPECT_EQ((*batch)->rejects.size(), 0u);
  }
  for (const fs::path& d : {dir() / "done", dir() / "failed"}) {
    for (const auto& e : fs::directory_iterator(d)) {
      if (!fs::is_regular_file(e.symlink_status())) continue;
      EXPECT_EQ(readFile(e.path()).find(marker), std::string::npos) << e.path();
    }
  }
  EXPECT_EQ(readFile(secret).find(marker) != std::string::npos, true);  // untouched
}

TEST_F(SpoolIngesterTest, AFileInAnUndeclaredFolderIsReportedOnceAndCounted) {
  auto s = ingester();
  ASSERT_TRUE(s);
  fs::create_directories(root_ / "spool" / "orders");
  writeFile(root_ / "spool" / "orders" / "o1.ndjson", customer(1) + "\n");
  writeFile(root_ / "spool" / "orders" / "upload.part", "x");  // ignored, as in a source
  EXPECT_EQ(s->pollUndeclaredOnce(), 1u);
  EXPECT_EQ(s->pollUndeclaredOnce(), 0u);  // once per file, not every poll
  writeFile(root_ / "spool" / "orders" / "o2.ndjson", customer(2) + "\n");
  EXPECT_EQ(s->pollUndeclaredOnce(), 1u);
  EXPECT_NE(metrics_.renderPrometheus().find("bl_agent_spool_undeclared_files_total 2\n"),
            std::string::npos)
      << metrics_.renderPrometheus();
  EXPECT_EQ(buffer_->stats().records, 0u);
  EXPECT_TRUE(fs::exists(root_ / "spool" / "orders" / "o1.ndjson"));  // left alone
}

TEST_F(SpoolIngesterTest, UnknownSourceIsRefused) {
  SpoolOptions options;
  options.dir = root_ / "spool";
  options.sources = {"orders"};
  auto s = SpoolIngester::create(options, engine_, *buffer_, metrics_);
  ASSERT_FALSE(s.isOk());
  EXPECT_EQ(s.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace branchline::agent
