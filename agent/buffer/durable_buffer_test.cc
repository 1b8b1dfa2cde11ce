#include "agent/buffer/durable_buffer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "agent/buffer/testing/plaintext_buffer.h"
#include "shared/core/clock.h"
#include "shared/core/testing/sqlite_fault_vfs.h"

namespace branchline::agent {
namespace {

using namespace std::chrono_literals;

constexpr int64_t kBaseTime = 1764000000000000;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/bl-buffer-test-XXXXXX";
    char* p = mkdtemp(tmpl);
    if (p == nullptr) std::abort();
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A deterministic ~`size`-byte payload for record `id`, so content can be checked
// after a crash without remembering what was written.
std::string payloadFor(uint64_t id, size_t size = 410) {
  std::string p = R"({"external_id":"ext-)" + std::to_string(id) + R"(","name":"Zoë","pad":")";
  while (p.size() + 2 < size) p.push_back(char('a' + (id + p.size()) % 26));
  p += "\"}";
  return p;
}

WireRecord recordFor(uint64_t id, size_t size = 410) {
  return {"customer", "k-" + std::to_string(id), kBaseTime + int64_t(id), payloadFor(id, size)};
}

std::vector<WireRecord> recordsFor(uint64_t first, size_t n, size_t size = 410) {
  std::vector<WireRecord> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) v.push_back(recordFor(first + i, size));
  return v;
}

WireReject rejectFor(uint64_t id) {
  return {"customer", "raw-" + std::to_string(id) + "\xff\xfe not utf-8",
          R"([{"field":"email","reason":"not an email address"}])", kBaseTime + int64_t(id)};
}

uint64_t idOf(const WireRecord& r) { return std::stoull(r.key.substr(2)); }

std::unique_ptr<DurableBuffer> orFail(Result<std::unique_ptr<DurableBuffer>> b) {
  if (!b.isOk()) {
    ADD_FAILURE() << b.status().toString();
    return nullptr;
  }
  return std::move(b).value();
}

std::unique_ptr<DurableBuffer> openOrDie(const BufferOptions& options) {
  return orFail(DurableBuffer::open(options));
}

// Values in clear (agent/buffer/testing): for tests whose premise needs them readable.
std::unique_ptr<DurableBuffer> openInClearOrDie(const BufferOptions& options) {
  return orFail(testing::openPlaintextBuffer(options));
}

// The seed of a randomized test: BRANCHLINE_TEST_SEED when set (to replay a
// failure), else a fresh one. Printed first, with the command that replays it:
// the same seed makes the same random choices (batch sizes, acks, kill delays);
// where a kill lands still depends on the machine's timing.
unsigned testSeed() {
  unsigned seed = std::random_device{}();
  if (const char* s = std::getenv("BRANCHLINE_TEST_SEED"); s != nullptr && *s != '\0') {
    seed = unsigned(std::strtoul(s, nullptr, 10));
  }
  const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string name = std::string(test->test_suite_name()) + "." + test->name();
  std::printf(
      "[ seed       ] %u (replay: BRANCHLINE_TEST_SEED=%u durable_buffer_test "
      "--gtest_filter=%s)\n",
      seed, seed, name.c_str());
  std::fflush(stdout);
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

BufferOptions optionsIn(const TempDir& dir) {
  BufferOptions o;
  o.path = dir.path() / "buffer.db";
  return o;
}

std::string fileBytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(DurableBufferTest, AppendFormLoadAckRoundTrip) {
  TempDir dir;
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  auto records = recordsFor(1, 10);
  std::vector<WireReject> rejects = {rejectFor(100), rejectFor(101)};
  ASSERT_TRUE(buf->append(records, rejects).isOk());

  BufferStats st = buf->stats();
  EXPECT_EQ(st.records, 10u);
  EXPECT_EQ(st.rejects, 2u);
  EXPECT_EQ(st.unbatched_records, 12u);
  EXPECT_EQ(st.bytes, 10 * payloadFor(1).size() + rejects[0].raw.size() + rejects[1].raw.size());
  EXPECT_EQ(st.oldest_unbatched_us, kBaseTime + 1);
  EXPECT_EQ(st.batches, 0u);

  auto formed = buf->formBatch({}, 777);
  ASSERT_TRUE(formed.isOk()) << formed.status().toString();
  ASSERT_TRUE(formed->has_value());
  const PendingBatch& b = **formed;
  EXPECT_EQ(b.seq, 1u);
  EXPECT_EQ(b.created_at_us, 777);
  EXPECT_EQ(b.records, records);
  EXPECT_EQ(b.rejects, rejects);  // rejects travel in batches

  st = buf->stats();
  EXPECT_EQ(st.unbatched_records, 0u);
  EXPECT_EQ(st.oldest_unbatched_us, 0);
  EXPECT_EQ(st.batches, 1u);
  EXPECT_EQ(st.oldest_unacked_us, 777);

  for (int i = 0; i < 2; ++i) {
    auto loaded = buf->loadBatch(1);
    ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
    EXPECT_EQ(loaded->seq, 1u);
    EXPECT_EQ(loaded->created_at_us, 777);
    EXPECT_EQ(loaded->records, records);
    EXPECT_EQ(loaded->rejects, rejects);
  }
  auto none = buf->formBatch({}, 778);
  ASSERT_TRUE(none.isOk());
  EXPECT_FALSE(none->has_value());

  ASSERT_TRUE(buf->ack(1).isOk());
  st = buf->stats();
  EXPECT_EQ(st.records, 0u);
  EXPECT_EQ(st.rejects, 0u);
  EXPECT_EQ(st.bytes, 0u);
  EXPECT_EQ(st.batches, 0u);
  EXPECT_EQ(st.oldest_unacked_us, 0);
  auto gone = buf->loadBatch(1);
  ASSERT_FALSE(gone.isOk());
  EXPECT_EQ(gone.status().code(), Code::kNotFound);
  EXPECT_TRUE(buf->ack(1).isOk()) << "a repeated ack is OK";
  EXPECT_TRUE(buf->ack(999).isOk()) << "an unknown ack is OK";
}

TEST(DurableBufferTest, BatchLimitsByCountAndBytes) {
  TempDir dir;
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  ASSERT_TRUE(buf->append(recordsFor(1, 25, 100), {}).isOk());

  std::vector<size_t> sizes;
  uint64_t next_id = 1;
  while (true) {
    auto b = buf->formBatch({.max_records = 10, .max_bytes = 1 << 20}, 1);
    ASSERT_TRUE(b.isOk());
    if (!b->has_value()) break;
    sizes.push_back((*b)->records.size());
    for (const auto& r : (*b)->records) EXPECT_EQ(idOf(r), next_id++) << "arrival order kept";
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{10, 10, 5}));

  // Bytes: 100-byte payloads, 350 bytes per batch -> 3 per batch; a 1000-byte record
  // alone is larger than the limit and still forms a batch of one.
  ASSERT_TRUE(buf->append(recordsFor(100, 7, 100), {}).isOk());
  ASSERT_TRUE(buf->append(recordsFor(200, 1, 1000), {}).isOk());
  ASSERT_TRUE(buf->append(recordsFor(300, 1, 100), {}).isOk());
  sizes.clear();
  while (true) {
    auto b = buf->formBatch({.max_records = 100, .max_bytes = 350}, 1);
    ASSERT_TRUE(b.isOk());
    if (!b->has_value()) break;
    sizes.push_back((*b)->records.size());
  }
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 1, 1, 1}));
}

TEST(DurableBufferTest, RejectsAloneAndAlongsideRecordsFormBatches) {
  TempDir dir;
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  ASSERT_TRUE(buf->append({}, {rejectFor(1), rejectFor(2)}).isOk());
  auto b = buf->formBatch({}, 5);
  ASSERT_TRUE(b.isOk());
  ASSERT_TRUE(b->has_value());
  EXPECT_TRUE((*b)->records.empty());
  EXPECT_EQ((*b)->rejects, (std::vector<WireReject>{rejectFor(1), rejectFor(2)}));

  // While records wait, rejects get at most half of the batch: neither starves.
  std::vector<WireReject> many;
  for (int i = 0; i < 20; ++i) many.push_back(rejectFor(100 + i));
  ASSERT_TRUE(buf->append(recordsFor(1, 20, 50), many).isOk());
  size_t records = 0, rejects = 0;
  while (true) {
    auto next = buf->formBatch({.max_records = 10, .max_bytes = 1 << 20}, 6);
    ASSERT_TRUE(next.isOk());
    if (!next->has_value()) break;
    EXPECT_LE((*next)->records.size() + (*next)->rejects.size(), 10u);
    if (records < 20) {
      EXPECT_FALSE((*next)->records.empty());
    }
    records += (*next)->records.size();
    rejects += (*next)->rejects.size();
  }
  EXPECT_EQ(records, 20u);
  EXPECT_EQ(rejects, 20u);
}

TEST(DurableBufferTest, OutOfOrderAcksDeleteOnlyTheirBatch) {
  TempDir dir;
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  // 1 reject + 29 records: three batches of 10 entries.
  ASSERT_TRUE(buf->append(recordsFor(1, 29), {rejectFor(1)}).isOk());
  std::vector<PendingBatch> formed;
  for (int i = 0; i < 3; ++i) {
    auto b = buf->formBatch({.max_records = 10}, 100 + i);
    ASSERT_TRUE(b.isOk() && b->has_value());
    formed.push_back(std::move(**b));
  }
  EXPECT_EQ(*buf->unackedBatches(), (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_TRUE(buf->ack(2).isOk());
  EXPECT_EQ(*buf->unackedBatches(), (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(buf->stats().records, 19u);
  EXPECT_EQ(buf->stats().rejects, 1u);
  EXPECT_EQ(buf->stats().oldest_unacked_us, 100);
  ASSERT_TRUE(buf->ack(1).isOk());
  EXPECT_EQ(buf->stats().oldest_unacked_us, 102);
  auto third = buf->loadBatch(3);
  ASSERT_TRUE(third.isOk());
  EXPECT_EQ(third->records, formed[2].records);
  ASSERT_TRUE(buf->ack(3).isOk());
  ASSERT_TRUE(buf->ack(2).isOk());
  EXPECT_EQ(buf->stats().records, 0u);
  EXPECT_EQ(buf->stats().bytes, 0u);
  EXPECT_TRUE(buf->unackedBatches()->empty());
}

TEST(DurableBufferTest, ReopenKeepsBatchesUnbatchedRecordsAndSequence) {
  TempDir dir;
  std::vector<PendingBatch> formed;
  {
    auto buf = openOrDie(optionsIn(dir));
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(recordsFor(1, 25), {rejectFor(7)}).isOk());
    for (int i = 0; i < 2; ++i) {
      auto b = buf->formBatch({.max_records = 10}, 5000 + i);
      ASSERT_TRUE(b.isOk() && b->has_value());
      formed.push_back(std::move(**b));
    }
    ASSERT_TRUE(buf->ack(1).isOk());
  }
  {
    auto buf = openOrDie(optionsIn(dir));
    ASSERT_TRUE(buf);
    BufferStats st = buf->stats();
    EXPECT_EQ(st.batches, 1u);
    EXPECT_EQ(st.records, 25u - formed[0].records.size());
    EXPECT_EQ(st.unbatched_records, 25u - formed[0].records.size() - formed[1].records.size());
    EXPECT_EQ(st.oldest_unacked_us, 5001);
    EXPECT_EQ(*buf->unackedBatches(), std::vector<uint64_t>{2});
    auto again = buf->loadBatch(2);
    ASSERT_TRUE(again.isOk()) << again.status().toString();
    EXPECT_EQ(again->seq, formed[1].seq);
    EXPECT_EQ(again->created_at_us, formed[1].created_at_us);
    EXPECT_EQ(again->records, formed[1].records);
    EXPECT_EQ(again->rejects, formed[1].rejects);

    auto rest = buf->formBatch({}, 6000);
    ASSERT_TRUE(rest.isOk() && rest->has_value());
    EXPECT_EQ((*rest)->seq, 3u);
    // The first batch held the reject and records 1-9, the second 10-19.
    EXPECT_EQ((*rest)->records, recordsFor(20, 6));
    ASSERT_TRUE(buf->ack(2).isOk());
    ASSERT_TRUE(buf->ack(3).isOk());
    EXPECT_EQ(buf->stats().records, 0u);
  }
  {
    // Everything acked, then a restart: seqs and record ids continue, never reused.
    auto buf = openOrDie(optionsIn(dir));
    ASSERT_TRUE(buf);
    EXPECT_EQ(buf->stats().records, 0u);
    ASSERT_TRUE(buf->append(recordsFor(500, 3), {}).isOk());
    auto b = buf->formBatch({}, 7000);
    ASSERT_TRUE(b.isOk() && b->has_value());
    EXPECT_EQ((*b)->seq, 4u);
    EXPECT_EQ((*b)->records, recordsFor(500, 3));
  }
}

TEST(DurableBufferTest, ByteBoundRefusesWholeAppendsAndRoomComesBackAfterAck) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  o.max_bytes = 10000;
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  ASSERT_TRUE(buf->append(recordsFor(1, 6, 1000), {}).isOk());  // 6000 bytes
  BufferStats before = buf->stats();

  Status full = buf->append(recordsFor(10, 5, 1000), {}, "tok-refused");  // would be 11000
  EXPECT_EQ(full.code(), Code::kResourceExhausted);
  EXPECT_NE(full.message().find("buffer full: 6000 of 10000 bytes used"), std::string::npos)
      << full.message();
  BufferStats after = buf->stats();
  EXPECT_EQ(after.records, before.records);
  EXPECT_EQ(after.bytes, before.bytes);
  EXPECT_EQ(after.unbatched_records, before.unbatched_records);
  EXPECT_FALSE(*buf->hasToken("tok-refused"));

  ASSERT_TRUE(buf->append(recordsFor(20, 4, 1000), {}).isOk()) << "exactly at the bound fits";
  EXPECT_EQ(buf->stats().bytes, 10000u);
  EXPECT_EQ(buf->append({}, {rejectFor(1)}).code(), Code::kResourceExhausted);

  // Everything still held is exactly what was accepted.
  auto b = buf->formBatch({.max_records = 100, .max_bytes = 1 << 20}, 1);
  ASSERT_TRUE(b.isOk() && b->has_value());
  std::vector<WireRecord> expected = recordsFor(1, 6, 1000);
  for (auto& r : recordsFor(20, 4, 1000)) expected.push_back(r);
  EXPECT_EQ((*b)->records, expected);
  EXPECT_TRUE((*b)->rejects.empty());

  ASSERT_TRUE(buf->ack((*b)->seq).isOk());
  EXPECT_EQ(buf->stats().bytes, 0u);
  EXPECT_TRUE(buf->append(recordsFor(10, 5, 1000), {}).isOk()) << "room came back after ack";
}

// Holds the committer inside a `done` callback, so that later appends queue up
// behind it deterministically.
class CommitterGate {
 public:
  DurableBuffer::AppendDone holdingDone() {
    return [this](Status) {
      std::unique_lock lock(mu_);
      held_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_; });
    };
  }
  void waitHeld() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return held_; });
  }
  void release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false, released_ = false;
};

struct DoneLog {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<int, Status>> calls;
  DurableBuffer::AppendDone recorder(int tag) {
    return [this, tag](Status s) {
      std::lock_guard lock(mu);
      calls.emplace_back(tag, std::move(s));
      cv.notify_all();
    };
  }
  bool waitFor(size_t n) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 30s, [&] { return calls.size() >= n; });
  }
};

TEST(DurableBufferTest, OneGroupCommitsWhatFitsAndRefusesTheRestWhole) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  o.max_bytes = 5000;
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  CommitterGate gate;
  buf->appendAsync(recordsFor(1, 1, 1000), {}, gate.holdingDone());
  gate.waitHeld();
  DoneLog log;
  buf->appendAsync(recordsFor(10, 2, 1000), {}, log.recorder(0));  // 3000 held
  buf->appendAsync(recordsFor(20, 3, 1000), {}, log.recorder(1));  // would be 6000
  buf->appendAsync(recordsFor(30, 2, 1000), {}, log.recorder(2));  // 5000: fits
  const uint64_t commits_before = buf->stats().commits;
  gate.release();
  ASSERT_TRUE(log.waitFor(3));
  ASSERT_EQ(log.calls.size(), 3u);
  EXPECT_EQ(log.calls[0].first, 0) << "callbacks run in order";
  EXPECT_EQ(log.calls[1].first, 1);
  EXPECT_EQ(log.calls[2].first, 2);
  EXPECT_TRUE(log.calls[0].second.isOk());
  EXPECT_EQ(log.calls[1].second.code(), Code::kResourceExhausted);
  EXPECT_TRUE(log.calls[2].second.isOk());
  EXPECT_EQ(buf->stats().commits, commits_before + 1) << "the three shared one transaction";
  EXPECT_EQ(buf->stats().bytes, 5000u);
  auto b = buf->formBatch({}, 1);
  ASSERT_TRUE(b.isOk() && b->has_value());
  std::vector<uint64_t> ids;
  for (const auto& r : (*b)->records) ids.push_back(idOf(r));
  EXPECT_EQ(ids, (std::vector<uint64_t>{1, 10, 11, 30, 31}));
}

TEST(DurableBufferTest, FullQueueRefusesAtOnceAndTokensAppearOnlyAfterCommit) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  o.max_queued_bytes = 20000;
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  CommitterGate gate;
  buf->appendAsync(recordsFor(1, 1), {}, gate.holdingDone());
  gate.waitHeld();

  DoneLog log;
  buf->appendAsync(recordsFor(10, 5), {}, log.recorder(0), "spool-file-1");
  EXPECT_FALSE(*buf->hasToken("spool-file-1")) << "queued is not committed";
  int refused = 0, queued = 1;
  for (int i = 1; i < 50 && refused == 0; ++i) {
    buf->appendAsync(recordsFor(100 + 10 * i, 5), {}, log.recorder(i));
    std::lock_guard lock(log.mu);
    if (!log.calls.empty()) {
      EXPECT_EQ(log.calls.back().first, i);
      EXPECT_EQ(log.calls.back().second.code(), Code::kResourceExhausted);
      EXPECT_NE(log.calls.back().second.message().find("queue full"), std::string::npos);
      ++refused;
    } else {
      ++queued;
    }
  }
  EXPECT_EQ(refused, 1) << "the queue bound was never reached";
  gate.release();
  ASSERT_TRUE(log.waitFor(size_t(queued + refused)));
  for (const auto& [tag, s] : log.calls) {
    if (tag < queued) {
      EXPECT_TRUE(s.isOk()) << tag << ": " << s.toString();
    }
  }
  EXPECT_TRUE(*buf->hasToken("spool-file-1"));
  EXPECT_FALSE(*buf->hasToken("spool-file-2"));
  EXPECT_EQ(buf->stats().records, 1u + 5u * size_t(queued));
}

TEST(DurableBufferTest, TokensSurviveRestart) {
  TempDir dir;
  {
    auto buf = openOrDie(optionsIn(dir));
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append({}, {}, "empty-spool-file").isOk());
    ASSERT_TRUE(buf->append(recordsFor(1, 2), {}, "spool-a").isOk());
  }
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  EXPECT_TRUE(*buf->hasToken("spool-a"));
  EXPECT_TRUE(*buf->hasToken("empty-spool-file"));
  EXPECT_FALSE(*buf->hasToken("spool-b"));
}

TEST(DurableBufferTest, ConcurrentAppendsShareGroupCommits) {
  TempDir dir;
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  constexpr int kThreads = 8, kAppendsPerThread = 100, kRecordsPerAppend = 5;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kAppendsPerThread; ++i) {
        uint64_t first = uint64_t(t) * 1000000 + uint64_t(i) * kRecordsPerAppend;
        if (!buf->append(recordsFor(first, kRecordsPerAppend), {}).isOk()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  BufferStats st = buf->stats();
  constexpr uint64_t kAppends = kThreads * kAppendsPerThread;
  EXPECT_EQ(st.records, kAppends * kRecordsPerAppend);
  std::printf("[ group commit ] %llu appends from %d threads in %llu transactions\n",
              (unsigned long long)kAppends, kThreads, (unsigned long long)st.commits);
  EXPECT_LT(st.commits, kAppends / 2) << "appends did not share transactions";

  // Every record exactly once, each thread's records in its own order.
  std::map<uint64_t, int> seen;
  std::vector<uint64_t> last(kThreads, 0);
  while (true) {
    auto b = buf->formBatch({.max_records = 1000, .max_bytes = 1 << 30}, 1);
    ASSERT_TRUE(b.isOk());
    if (!b->has_value()) break;
    for (const auto& r : (*b)->records) {
      uint64_t id = idOf(r);
      ++seen[id];
      size_t t = id / 1000000;
      if (id % 1000000 != 0) {
        EXPECT_GT(id, last[t]);
      }
      last[t] = id;
    }
  }
  EXPECT_EQ(seen.size(), kAppends * kRecordsPerAppend);
  for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id;
}

TEST(DurableBufferTest, DestructorFinishesPendingAppends) {
  TempDir dir;
  DoneLog log;
  {
    auto buf = openOrDie(optionsIn(dir));
    ASSERT_TRUE(buf);
    for (int i = 0; i < 50; ++i)
      buf->appendAsync(recordsFor(uint64_t(i) * 10, 3), {}, log.recorder(i));
  }
  ASSERT_EQ(log.calls.size(), 50u) << "each done exactly once, before the destructor returns";
  for (const auto& [tag, s] : log.calls) EXPECT_TRUE(s.isOk()) << tag << ": " << s.toString();
  auto buf = openOrDie(optionsIn(dir));
  ASSERT_TRUE(buf);
  EXPECT_EQ(buf->stats().records, 150u);
}

TEST(DurableBufferTest, CorruptFileIsDataLossNamingThePath) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  {
    std::ofstream out(o.path, std::ios::binary);
    std::string junk(8192, '\0');
    for (size_t i = 0; i < junk.size(); ++i) junk[i] = char(i * 131 + 7);
    out << junk;
  }
  auto b = DurableBuffer::open(o);
  ASSERT_FALSE(b.isOk());
  EXPECT_EQ(b.status().code(), Code::kDataLoss) << b.status().toString();
  EXPECT_NE(b.status().message().find(o.path.string()), std::string::npos) << b.status().toString();
}

TEST(DurableBufferTest, DamagedPagesAreDataLoss) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(recordsFor(1, 200), {}).isOk());
  }  // checkpointed: the rows are in the main file
  {
    // Overwrite everything past the first two pages (schema) with junk.
    std::fstream f(o.path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(8192);
    std::string junk(40960, '\x5a');
    f.write(junk.data(), std::streamsize(junk.size()));
  }
  auto b = DurableBuffer::open(o);
  ASSERT_FALSE(b.isOk());
  EXPECT_EQ(b.status().code(), Code::kDataLoss) << b.status().toString();
  EXPECT_NE(b.status().message().find(o.path.string()), std::string::npos);
}

// Issue 15 part 3, the "fsyncgate" rule: a commit whose fsync failed is never
// reported done, and the buffer does not retry and carry on as if the next
// fsync made everything durable (after a failed fsync Linux may drop the
// unwritten pages and report the next fsync clean). It stops taking records,
// says so (stats, log), and keeps what it had committed before.
TEST(DurableBufferFaultTest, FailedFsyncIsNeverReportedDoneAndStopsAppendsUntilReopened) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  branchline::testing::SqliteFaultVfs vfs;
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(recordsFor(1, 20), {}).isOk());
    EXPECT_FALSE(buf->stats().io_failed);

    vfs.arm(branchline::testing::SqliteFaultVfs::Fault::kSyncEio, "buffer.db", 1);
    const Status failed = buf->append(recordsFor(21, 5), {});
    EXPECT_FALSE(failed.isOk()) << "a commit whose fsync failed was reported done";
    EXPECT_EQ(vfs.failures(), 1u);
    EXPECT_TRUE(buf->stats().io_failed);

    // The disk "works" again: the buffer still refuses, naming the first error.
    vfs.disarm();
    const Status after = buf->append(recordsFor(26, 5), {});
    ASSERT_FALSE(after.isOk());
    EXPECT_EQ(after.code(), Code::kUnavailable) << after.toString();
    EXPECT_NE(after.message().find("stopped taking records after an I/O error"), std::string::npos)
        << after.toString();
    EXPECT_NE(after.message().find(o.path.string()), std::string::npos) << after.toString();

    // What was committed before the error is still there to forward.
    auto formed = buf->formBatch({}, 777);
    ASSERT_TRUE(formed.isOk()) << formed.status().toString();
    ASSERT_TRUE(formed->has_value());
    ASSERT_GE((*formed)->records.size(), 20u);
    for (size_t i = 0; i < 20; ++i) EXPECT_EQ(idOf((*formed)->records[i]), i + 1);
  }
  // A restart (the operator checked the disk) takes records again and still
  // holds the 20 answered ones.
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  EXPECT_FALSE(buf->stats().io_failed);
  ASSERT_TRUE(buf->append(recordsFor(100, 3), {}).isOk());
  EXPECT_GE(buf->stats().records, 23u);
}

// A write that fails with EIO counts the same as a failed fsync; a full disk
// (SQLITE_FULL) does not: it is refused as "exhausted" and the next append
// after space is freed works.
TEST(DurableBufferFaultTest, WriteEioStopsAppendsButAFullDiskOnlyRefusesUntilSpaceIsBack) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  branchline::testing::SqliteFaultVfs vfs;
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  ASSERT_TRUE(buf->append(recordsFor(1, 5), {}).isOk());

  vfs.arm(branchline::testing::SqliteFaultVfs::Fault::kWriteFull, "buffer.db", -1);
  const Status full = buf->append(recordsFor(6, 5), {});
  ASSERT_FALSE(full.isOk());
  EXPECT_EQ(full.code(), Code::kResourceExhausted) << full.toString();
  EXPECT_FALSE(buf->stats().io_failed);
  vfs.disarm();
  ASSERT_TRUE(buf->append(recordsFor(11, 5), {}).isOk()) << "a freed disk takes records again";

  vfs.arm(branchline::testing::SqliteFaultVfs::Fault::kWriteEio, "buffer.db", 1);
  EXPECT_FALSE(buf->append(recordsFor(16, 5), {}).isOk());
  vfs.disarm();
  EXPECT_TRUE(buf->stats().io_failed);
  EXPECT_EQ(buf->append(recordsFor(21, 5), {}).code(), Code::kUnavailable);
}

TEST(DurableBufferTest, SecondOpenerIsRefusedWhileInUse) {
  TempDir dir;
  auto first = openOrDie(optionsIn(dir));
  ASSERT_TRUE(first);
  ASSERT_TRUE(first->append(recordsFor(1, 1), {}).isOk());
  auto second = DurableBuffer::open(optionsIn(dir));
  ASSERT_FALSE(second.isOk());
  EXPECT_EQ(second.status().code(), Code::kUnavailable) << second.status().toString();
}

TEST(DurableBufferTest, AckedDataLeavesTheFilesAndTheWalIsTruncatedWhenEmpty) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  o.checkpoint_interval = 50ms;
  // The premise (the marker is in the file before the ack) needs values in clear;
  // sealed buffers are covered by the encryption tests below.
  auto buf = openInClearOrDie(o);
  ASSERT_TRUE(buf);
  const std::string secret = "SECRET-CUSTOMER-MARKER-0123456789";
  std::vector<WireRecord> records = recordsFor(1, 300);
  for (auto& r : records) r.payload += secret;
  ASSERT_TRUE(buf->append(records, {}).isOk());
  std::this_thread::sleep_for(200ms);  // checkpointed into the main file
  EXPECT_NE(fileBytes(o.path).find(secret), std::string::npos) << "test premise";
  while (true) {
    auto b = buf->formBatch({.max_records = 50}, 1);
    ASSERT_TRUE(b.isOk());
    if (!b->has_value()) break;
    ASSERT_TRUE(buf->ack((*b)->seq).isOk());
  }
  std::filesystem::path wal = o.path;
  wal += "-wal";
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::filesystem::file_size(wal) != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(std::filesystem::file_size(wal), 0u) << "the WAL of an empty buffer is truncated";
  EXPECT_EQ(fileBytes(o.path).find(secret), std::string::npos) << "secure_delete zeroes pages";
}

// ------------------------------------------------------------------ encryption at rest

// Distinctive customer data: none of it may appear in the buffer's files.
const std::vector<std::string>& piiMarkers() {
  static const std::vector<std::string> m = {"zelda.quarrington@example-pii.test",
                                             "Quarrington-Wexbridge", "+41 79 555 01 23",
                                             "ext-id-QX7731-alpha", "Ottoline Fairweather-Byng"};
  return m;
}

std::vector<WireRecord> piiRecords(uint64_t first, size_t n) {
  std::vector<WireRecord> v;
  for (size_t i = 0; i < n; ++i) {
    const std::string& email = piiMarkers()[0];
    v.push_back({"customer", email + "#" + std::to_string(first + i), kBaseTime + int64_t(i),
                 R"({"email":")" + email + R"(","name":")" + piiMarkers()[1] + R"(","phone":")" +
                     piiMarkers()[2] + R"(","external_id":")" + piiMarkers()[3] + R"("})"});
  }
  return v;
}

WireReject piiReject() {
  return {"customer", R"({"email":"not-an-email","name":")" + piiMarkers()[4] + "\"}",
          R"([{"field":"email","value":")" + piiMarkers()[4] + R"("}])", kBaseTime};
}

// Which markers occur anywhere in `bytes` (empty: none).
std::vector<std::string> markersIn(const std::string& bytes) {
  std::vector<std::string> found;
  for (const auto& m : piiMarkers()) {
    if (bytes.find(m) != std::string::npos) found.push_back(m);
  }
  return found;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += "[" + s + "]";
  return out;
}

std::filesystem::path walOf(const std::filesystem::path& db) {
  std::filesystem::path wal = db;
  wal += "-wal";
  return wal;
}

struct SqliteHandle {
  sqlite3* db = nullptr;
  explicit SqliteHandle(const std::filesystem::path& p) {
    if (sqlite3_open(p.c_str(), &db) != SQLITE_OK) ADD_FAILURE() << sqlite3_errmsg(db);
  }
  ~SqliteHandle() { sqlite3_close(db); }
  // Every value of the query's rows, as bytes.
  std::vector<std::string> values(const char* sql) {
    std::vector<std::string> out;
    sqlite3_stmt* s = nullptr;
    if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
      ADD_FAILURE() << sql << ": " << sqlite3_errmsg(db);
      return out;
    }
    while (sqlite3_step(s) == SQLITE_ROW) {
      for (int i = 0; i < sqlite3_column_count(s); ++i) {
        const void* p = sqlite3_column_blob(s, i);
        out.emplace_back(p ? static_cast<const char*>(p) : "", size_t(sqlite3_column_bytes(s, i)));
      }
    }
    sqlite3_finalize(s);
    return out;
  }
  void exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      ADD_FAILURE() << sql << ": " << (err ? err : "?");
    }
    sqlite3_free(err);
  }
  void setBlob(const std::string& sql, const std::string& blob) {
    sqlite3_stmt* s = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << sql;
    sqlite3_bind_blob(s, 1, blob.data(), int(blob.size()), SQLITE_TRANSIENT);
    EXPECT_EQ(sqlite3_step(s), SQLITE_DONE) << sql << ": " << sqlite3_errmsg(db);
    sqlite3_finalize(s);
  }
};

TEST(DurableBufferEncryptionTest, CustomerDataIsNotInTheFilesButLoadsExactly) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  o.checkpoint_interval = std::chrono::hours(1);  // keep the rows in the WAL for the first look
  const std::vector<WireRecord> records = piiRecords(1, 50);
  const WireReject reject = piiReject();
  uint64_t seq = 0;
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(records, {reject}).isOk());
    uint64_t plain = 0;
    for (const auto& r : records) plain += r.payload.size();
    EXPECT_EQ(buf->stats().bytes, plain + reject.raw.size()) << "the bound counts plaintext";
    const std::string wal = fileBytes(walOf(o.path));
    ASSERT_GT(wal.size(), 0u) << "test premise: the rows are in the WAL";
    EXPECT_EQ(joined(markersIn(wal)), "") << "customer data in clear in buffer.db-wal";
    EXPECT_EQ(joined(markersIn(fileBytes(o.path))), "") << "customer data in clear in buffer.db";
    auto b = buf->formBatch({.max_records = 1000}, 1);
    ASSERT_TRUE(b.isOk() && b->has_value()) << b.status().toString();
    EXPECT_EQ((*b)->records, records);
    ASSERT_EQ((*b)->rejects.size(), 1u);
    EXPECT_EQ((*b)->rejects[0], reject);
    seq = (*b)->seq;
  }  // closed: checkpointed into the main file
  EXPECT_EQ(joined(markersIn(fileBytes(o.path))), "") << "customer data in clear in buffer.db";
  EXPECT_EQ(joined(markersIn(fileBytes(walOf(o.path)))), "");
  {
    SqliteHandle h(o.path);  // what anyone with a copy of the disk reads
    std::vector<std::string> values = h.values("SELECT payload, record_key FROM records");
    ASSERT_EQ(values.size(), 2 * records.size());
    std::vector<std::string> q = h.values("SELECT raw, reasons FROM quarantine");
    ASSERT_EQ(q.size(), 2u);
    values.insert(values.end(), q.begin(), q.end());
    for (const auto& v : values) {
      EXPECT_EQ(joined(markersIn(v)), "") << "a column value holds customer data in clear";
    }
    EXPECT_EQ(h.values("SELECT source FROM records LIMIT 1"), std::vector<std::string>{"customer"})
        << "sources stay in clear";
  }
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  auto loaded = buf->loadBatch(seq);
  ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
  EXPECT_EQ(loaded->records, records);
  ASSERT_EQ(loaded->rejects.size(), 1u);
  EXPECT_EQ(loaded->rejects[0], reject);
}

TEST(DurableBufferEncryptionTest, KeyFileIsCreated0600AndReusedAndTheBoundCountsPlaintext) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  const std::filesystem::path key = dir.path() / "buffer.key";
  uint64_t bytes = 0;
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(recordsFor(1, 20), {rejectFor(1)}).isOk());
    bytes = buf->stats().bytes;
    EXPECT_EQ(bytes, 20 * payloadFor(1).size() + rejectFor(1).raw.size());
  }
  struct stat st {};
  ASSERT_EQ(::stat(key.c_str(), &st), 0) << "the key file is created beside the buffer";
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, 32);
  const std::string key_bytes = fileBytes(key);
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf) << "reopening with the same key works";
  EXPECT_EQ(buf->stats().bytes, bytes) << "recovery counts plaintext too";
  EXPECT_EQ(fileBytes(key), key_bytes) << "the key is not replaced";
  auto b = buf->formBatch({}, 1);
  ASSERT_TRUE(b.isOk() && b->has_value());
  EXPECT_EQ((*b)->records, recordsFor(1, 20));

  // An explicit key file elsewhere (config buffer.key_file).
  TempDir other;
  BufferOptions o2 = optionsIn(other);
  o2.key_file = other.path() / "keys" / "agent.key";
  auto buf2 = openOrDie(o2);
  ASSERT_TRUE(buf2);
  EXPECT_TRUE(std::filesystem::exists(o2.key_file));
  EXPECT_FALSE(std::filesystem::exists(other.path() / "buffer.key"));
}

TEST(DurableBufferEncryptionTest, AnotherKeyIsRefusedNotGarbage) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  const std::filesystem::path key = dir.path() / "buffer.key";
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(piiRecords(1, 3), {}).isOk());
  }
  const std::string original = fileBytes(key);
  {
    std::string other = original;
    for (char& c : other) c = char(c ^ 0x5a);
    std::filesystem::remove(key);
    std::ofstream(key, std::ios::binary) << other;
    std::filesystem::permissions(
        key, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }
  auto wrong = DurableBuffer::open(o);
  ASSERT_FALSE(wrong.isOk());
  EXPECT_EQ(wrong.status().code(), Code::kPermissionDenied) << wrong.status().toString();
  EXPECT_NE(wrong.status().message().find(key.string()), std::string::npos)
      << wrong.status().toString();

  // A lost key file: a fresh key is made, and the old rows are still refused.
  std::filesystem::remove(key);
  auto lost = DurableBuffer::open(o);
  ASSERT_FALSE(lost.isOk());
  EXPECT_EQ(lost.status().code(), Code::kPermissionDenied) << lost.status().toString();

  // The original key back: everything is there.
  std::filesystem::remove(key);
  std::ofstream(key, std::ios::binary) << original;
  std::filesystem::permissions(
      key, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  auto b = buf->formBatch({}, 1);
  ASSERT_TRUE(b.isOk() && b->has_value()) << b.status().toString();
  EXPECT_EQ((*b)->records, piiRecords(1, 3));
}

TEST(DurableBufferEncryptionTest, KeyFileOpenToGroupOrOthersIsRefused) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  { ASSERT_TRUE(openOrDie(o)); }
  const std::filesystem::path key = dir.path() / "buffer.key";
  ASSERT_EQ(::chmod(key.c_str(), 0644), 0);
  auto b = DurableBuffer::open(o);
  ASSERT_FALSE(b.isOk());
  EXPECT_EQ(b.status().code(), Code::kPermissionDenied) << b.status().toString();
  EXPECT_NE(b.status().message().find(key.string()), std::string::npos) << b.status().toString();
  EXPECT_NE(b.status().message().find("chmod 600"), std::string::npos) << b.status().toString();
  ASSERT_EQ(::chmod(key.c_str(), 0600), 0);
  EXPECT_TRUE(openOrDie(o)) << "the fix named in the error works";
}

TEST(DurableBufferEncryptionTest, ChangedOrMovedCiphertextCostsOnlyItsRowAndIsReported) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  uint64_t seq = 0;
  uint64_t bytes_before = 0;
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(piiRecords(1, 3), {}).isOk());
    auto b = buf->formBatch({}, 1);
    ASSERT_TRUE(b.isOk() && b->has_value());
    seq = (*b)->seq;
    ASSERT_TRUE(buf->append(piiRecords(4, 3), {}).isOk());  // rows 4-6, unbatched
    ASSERT_TRUE(buf->append({}, {piiReject()}).isOk());     // quarantine row 1, unbatched
    bytes_before = buf->stats().bytes;
  }
  std::string row2_payload, row1_payload;
  {
    SqliteHandle h(o.path);
    std::vector<std::string> p = h.values("SELECT payload FROM records WHERE id = 2");
    ASSERT_EQ(p.size(), 1u);
    p[0][20] = char(p[0][20] ^ 0x01);  // one bit of the ciphertext
    row2_payload = p[0];
    h.setBlob("UPDATE records SET payload = ? WHERE id = 2", p[0]);
    // Row 1's (valid) payload moved into row 5: sealed for another row.
    row1_payload = h.values("SELECT payload FROM records WHERE id = 1").at(0);
    h.setBlob("UPDATE records SET payload = ? WHERE id = 5", row1_payload);
    // The reject's reasons flipped too.
    std::vector<std::string> r = h.values("SELECT reasons FROM quarantine WHERE id = 1");
    r.at(0)[25] = char(r.at(0)[25] ^ 0x80);
    h.setBlob("UPDATE quarantine SET reasons = ? WHERE id = 1", r[0]);
  }
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  EXPECT_EQ(buf->stats().damaged, 0u) << "found when read, not at open";

  // The formed batch: rows 1 and 3 travel, row 2 is reported in their place.
  auto loaded = buf->loadBatch(seq);
  ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
  std::vector<WireRecord> expected = piiRecords(1, 3);
  expected.erase(expected.begin() + 1);
  EXPECT_EQ(loaded->records, expected);
  ASSERT_EQ(loaded->damaged.size(), 1u);
  EXPECT_EQ(loaded->damaged[0].table, "records");
  EXPECT_EQ(loaded->damaged[0].row, 2u);
  EXPECT_EQ(loaded->damaged[0].source, piiRecords(1, 3)[1].source);
  EXPECT_EQ(loaded->damaged[0].ingested_at_us, piiRecords(1, 3)[1].ingested_at_us);
  EXPECT_NE(loaded->damaged[0].reason.find("records.payload of row 2"), std::string::npos)
      << loaded->damaged[0].reason;
  EXPECT_EQ(loaded->damaged[0].reason.find(o.path.string()), std::string::npos)
      << "the report names the row, not the file";
  EXPECT_EQ(joined(markersIn(loaded->damaged[0].reason)), "") << "no content in reports";
  EXPECT_EQ(buf->stats().damaged, 1u);
  EXPECT_EQ(buf->stats().damaged_found, 1u);

  // Loading again gives the same batch: the row was moved aside once.
  auto again = buf->loadBatch(seq);
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_EQ(again->records, loaded->records);
  EXPECT_EQ(again->damaged, loaded->damaged);
  EXPECT_EQ(buf->stats().damaged_found, 1u);

  // Forming the next batch skips row 5 (sealed for row 1) and the reject.
  auto formed = buf->formBatch({}, 1);
  ASSERT_TRUE(formed.isOk()) << formed.status().toString();
  ASSERT_TRUE(formed->has_value());
  std::vector<WireRecord> expected_next = piiRecords(4, 3);
  expected_next.erase(expected_next.begin() + 1);
  EXPECT_EQ((*formed)->records, expected_next);
  EXPECT_TRUE((*formed)->rejects.empty());
  ASSERT_EQ((*formed)->damaged.size(), 2u);
  EXPECT_EQ((*formed)->damaged[0].table, "quarantine");
  EXPECT_NE((*formed)->damaged[0].reason.find("quarantine.reasons of row 1"), std::string::npos)
      << (*formed)->damaged[0].reason;
  EXPECT_EQ((*formed)->damaged[1].table, "records");
  EXPECT_EQ((*formed)->damaged[1].row, 5u);
  const BufferStats st = buf->stats();
  EXPECT_EQ(st.unbatched_records, 0u);
  EXPECT_EQ(st.records, 4u);
  EXPECT_EQ(st.rejects, 0u);
  EXPECT_EQ(st.damaged, 3u);
  EXPECT_LT(st.bytes, bytes_before) << "damaged rows no longer count against max_bytes";
  const uint64_t next_seq = (*formed)->seq;
  auto reloaded = buf->loadBatch(next_seq);
  ASSERT_TRUE(reloaded.isOk()) << reloaded.status().toString();
  EXPECT_EQ(reloaded->records, (*formed)->records);
  EXPECT_EQ(reloaded->damaged, (*formed)->damaged);

  // Acking delivers the rest and keeps the damaged bytes, unchanged, for forensics.
  ASSERT_TRUE(buf->ack(seq).isOk());
  ASSERT_TRUE(buf->ack(next_seq).isOk());
  EXPECT_EQ(buf->stats().records, 0u);
  EXPECT_EQ(buf->stats().bytes, 0u);
  EXPECT_EQ(buf->stats().damaged, 3u);
  buf.reset();
  {
    SqliteHandle h(o.path);
    EXPECT_EQ(h.values("SELECT value_b FROM damaged WHERE from_table = 'records' AND row_id = 2"),
              std::vector<std::string>{row2_payload});
    EXPECT_EQ(h.values("SELECT value_b FROM damaged WHERE from_table = 'records' AND row_id = 5"),
              std::vector<std::string>{row1_payload});
    EXPECT_EQ(h.values("SELECT count(*) FROM damaged WHERE acked_at IS NULL"),
              std::vector<std::string>{"0"});
  }
  auto reopened = openOrDie(o);
  ASSERT_TRUE(reopened);
  EXPECT_EQ(reopened->stats().damaged, 3u) << "counted again at open";
}

TEST(DurableBufferEncryptionTest, ABatchOfOnlyDamagedRowsIsFormedToCarryTheReports) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(piiRecords(1, 1), {}).isOk());
  }
  {
    SqliteHandle h(o.path);
    std::vector<std::string> k = h.values("SELECT record_key FROM records WHERE id = 1");
    k.at(0)[15] = char(k.at(0)[15] ^ 0x10);
    h.setBlob("UPDATE records SET record_key = ? WHERE id = 1", k[0]);
  }
  auto buf = openOrDie(o);
  ASSERT_TRUE(buf);
  auto formed = buf->formBatch({}, 1);
  ASSERT_TRUE(formed.isOk()) << formed.status().toString();
  ASSERT_TRUE(formed->has_value());
  EXPECT_TRUE((*formed)->records.empty());
  ASSERT_EQ((*formed)->damaged.size(), 1u);
  EXPECT_NE((*formed)->damaged[0].reason.find("records.record_key of row 1"), std::string::npos);
  auto none = buf->formBatch({}, 2);
  ASSERT_TRUE(none.isOk());
  EXPECT_FALSE(none->has_value()) << "nothing else waits";
}

TEST(DurableBufferEncryptionTest, PlaintextVersion1BufferIsSealedInPlaceOnOpen) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  const std::vector<WireRecord> records = piiRecords(1, 5);
  const WireReject reject = piiReject();
  {
    SqliteHandle h(o.path);  // the version-1 layout, as the previous release wrote it
    h.exec(
        "PRAGMA journal_mode=WAL;"
        "CREATE TABLE records(id INTEGER PRIMARY KEY, source TEXT NOT NULL,"
        " record_key TEXT NOT NULL, ingested_at INTEGER NOT NULL, payload BLOB NOT NULL);"
        "CREATE TABLE quarantine(id INTEGER PRIMARY KEY, source TEXT NOT NULL,"
        " raw BLOB NOT NULL, reasons TEXT NOT NULL, ingested_at INTEGER NOT NULL);"
        "CREATE TABLE batches(seq INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,"
        " first_record INTEGER NOT NULL, last_record INTEGER NOT NULL,"
        " first_reject INTEGER NOT NULL, last_reject INTEGER NOT NULL,"
        " record_count INTEGER NOT NULL, reject_count INTEGER NOT NULL, bytes INTEGER NOT NULL);"
        "CREATE TABLE meta(id INTEGER PRIMARY KEY CHECK (id = 1),"
        " schema_version INTEGER NOT NULL, next_batch_seq INTEGER NOT NULL,"
        " last_batched_record INTEGER NOT NULL, last_batched_reject INTEGER NOT NULL);"
        "CREATE TABLE tokens(token TEXT PRIMARY KEY, committed_at INTEGER NOT NULL) WITHOUT ROWID;"
        "INSERT INTO meta VALUES (1, 1, 1, 0, 0);");
    for (size_t i = 0; i < records.size(); ++i) {
      h.setBlob("INSERT INTO records VALUES (" + std::to_string(i + 1) + ", 'customer', '" +
                    records[i].key + "', " + std::to_string(records[i].ingested_at_us) + ", ?)",
                records[i].payload);
    }
    h.setBlob("INSERT INTO quarantine VALUES (1, 'customer', ?, '" + reject.reasons_json + "', " +
                  std::to_string(reject.ingested_at_us) + ")",
              reject.raw);
  }
  ASSERT_FALSE(markersIn(fileBytes(o.path) + fileBytes(walOf(o.path))).empty()) << "premise";
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    EXPECT_EQ(buf->stats().records, records.size());
    auto b = buf->formBatch({}, 1);
    ASSERT_TRUE(b.isOk() && b->has_value()) << b.status().toString();
    EXPECT_EQ((*b)->records, records);
    ASSERT_EQ((*b)->rejects.size(), 1u);
    EXPECT_EQ((*b)->rejects[0], reject);
  }
  EXPECT_EQ(joined(markersIn(fileBytes(o.path) + fileBytes(walOf(o.path)))), "")
      << "clear version-1 values left in the files after sealing";
}

TEST(DurableBufferEncryptionTest, PlaintextBenchmarkModeAndSealedBuffersDoNotMix) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  { ASSERT_TRUE(openOrDie(o)); }
  auto b = testing::openPlaintextBuffer(o);
  ASSERT_FALSE(b.isOk());
  EXPECT_EQ(b.status().code(), Code::kInvalidArgument) << b.status().toString();

  TempDir dir2;
  BufferOptions p2 = optionsIn(dir2);
  { ASSERT_TRUE(openInClearOrDie(p2)); }
  EXPECT_FALSE(std::filesystem::exists(dir2.path() / "buffer.key"));
  auto c = DurableBuffer::open(p2);
  ASSERT_FALSE(c.isOk());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().toString();
}

// ------------------------------------------------------------------ kill -9

// Messages from the crash child: fixed 25 bytes, atomic on a pipe (< PIPE_BUF).
struct ChildMsg {
  char type;  // 'P' appended ids [a, b]; 'B' acking seq a = ids [b, c]; 'K' acked seq a
  uint64_t a, b, c;
};
constexpr size_t kMsgSize = 25;

void writeMsg(int fd, char type, uint64_t a, uint64_t b, uint64_t c) {
  char buf[kMsgSize];
  buf[0] = type;
  std::memcpy(buf + 1, &a, 8);
  std::memcpy(buf + 9, &b, 8);
  std::memcpy(buf + 17, &c, 8);
  if (write(fd, buf, kMsgSize) != ssize_t(kMsgSize)) _exit(3);
}

// Runs in the forked child until killed: appends with several in flight, forms
// batches and acks some of them out of order, reporting each step on `fd`.
[[noreturn]] void crashChild(const BufferOptions& options, int fd, uint64_t first_id,
                             unsigned seed) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto opened = DurableBuffer::open(options);
  if (!opened.isOk()) _exit(2);
  std::unique_ptr<DurableBuffer> buf = std::move(opened).value();
  std::mt19937 rng(seed);
  std::atomic<int> in_flight{0};
  std::vector<std::pair<uint64_t, std::pair<uint64_t, uint64_t>>> formed;
  uint64_t next_id = first_id;
  const int64_t give_up = steadyMicros() + 20'000'000;
  for (int step = 0; steadyMicros() < give_up; ++step) {
    size_t n = 1 + rng() % 40;
    std::vector<WireReject> rejects;
    if (step % 3 == 0) rejects.push_back(rejectFor(next_id));
    ++in_flight;
    buf->appendAsync(recordsFor(next_id, n), std::move(rejects),
                     [fd, lo = next_id, hi = next_id + n - 1, &in_flight](Status s) {
                       if (!s.isOk()) _exit(4);
                       writeMsg(fd, 'P', lo, hi, 0);
                       --in_flight;
                     });
    next_id += n;
    while (in_flight.load() >= 4) std::this_thread::yield();
    if (step % 5 == 4) {
      auto b = buf->formBatch({.max_records = 60, .max_bytes = 1 << 20}, nowMicros());
      if (!b.isOk()) _exit(5);
      if (b->has_value() && !(*b)->records.empty()) {
        formed.push_back({(*b)->seq, {idOf((*b)->records.front()), idOf((*b)->records.back())}});
      }
    }
    if (formed.size() > 3) {
      size_t pick = rng() % formed.size();
      auto [seq, range] = formed[pick];
      formed.erase(formed.begin() + long(pick));
      writeMsg(fd, 'B', seq, range.first, range.second);
      if (!buf->ack(seq).isOk()) _exit(6);
      writeMsg(fd, 'K', seq, 0, 0);
    }
  }
  _exit(7);
}

TEST(DurableBufferTest, KillNineLosesNothingReportedAndDoublesNothing) {
  TempDir dir;
  BufferOptions o = optionsIn(dir);
  o.checkpoint_interval = 20ms;  // let kills land inside checkpoints too
  const unsigned seed = testSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (BRANCHLINE_TEST_SEED replays it)");
  std::mt19937 rng(seed);
  uint64_t max_seq_seen = 0;
  uint64_t total_reported = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const uint64_t first_id = uint64_t(round + 1) * 10'000'000;
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      crashChild(o, fds[1], first_id, unsigned(rng()));
    }
    close(fds[1]);

    std::string bytes;
    auto drain = [&](int timeout_ms) {
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, timeout_ms) <= 0) return true;
      char chunk[4096];
      ssize_t n = read(fds[0], chunk, sizeof chunk);
      if (n <= 0) return false;
      bytes.append(chunk, size_t(n));
      return true;
    };
    const auto kill_at =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(30 + rng() % 700);
    while (std::chrono::steady_clock::now() < kill_at && drain(5)) {
    }
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited early with " << WEXITSTATUS(wstatus);
    while (drain(1000)) {
    }
    close(fds[0]);
    ASSERT_EQ(bytes.size() % kMsgSize, 0u);

    std::set<uint64_t> appended;
    std::map<uint64_t, std::pair<uint64_t, uint64_t>> acking;  // seq -> id range
    std::set<uint64_t> acked;
    for (size_t off = 0; off < bytes.size(); off += kMsgSize) {
      ChildMsg m{bytes[off], 0, 0, 0};
      std::memcpy(&m.a, bytes.data() + off + 1, 8);
      std::memcpy(&m.b, bytes.data() + off + 9, 8);
      std::memcpy(&m.c, bytes.data() + off + 17, 8);
      if (m.type == 'P') {
        for (uint64_t id = m.a; id <= m.b; ++id) appended.insert(id);
      } else if (m.type == 'B') {
        EXPECT_GT(m.a, max_seq_seen) << "a batch seq was reused after a restart";
        acking[m.a] = {m.b, m.c};
      } else {
        ASSERT_EQ(m.type, 'K');
        acked.insert(m.a);
      }
    }
    total_reported += appended.size();

    auto reopened = DurableBuffer::open(o);
    ASSERT_TRUE(reopened.isOk()) << reopened.status().toString();
    auto buf = std::move(reopened).value();
    std::map<uint64_t, int> present;
    std::map<uint64_t, uint64_t> batch_of;  // id -> seq
    std::set<std::string> reject_raws;
    auto take = [&](const PendingBatch& b) {
      EXPECT_GT(b.seq, max_seq_seen);
      for (size_t i = 0; i < b.records.size(); ++i) {
        const WireRecord& r = b.records[i];
        uint64_t id = idOf(r);
        EXPECT_EQ(r, recordFor(id)) << "record " << id << " damaged";
        if (i > 0) {
          EXPECT_EQ(id, idOf(b.records[i - 1]) + 1) << "batch " << b.seq << " has a gap";
        }
        ++present[id];
        batch_of[id] = b.seq;
      }
      for (const WireReject& r : b.rejects) {
        EXPECT_TRUE(reject_raws.insert(r.raw).second) << "reject doubled";
        uint64_t id = std::stoull(r.raw.substr(4));
        EXPECT_EQ(r, rejectFor(id));
      }
    };
    auto seqs = buf->unackedBatches();
    ASSERT_TRUE(seqs.isOk());
    for (uint64_t seq : *seqs) {
      EXPECT_EQ(acked.count(seq), 0u) << "acked batch " << seq << " came back";
      auto b = buf->loadBatch(seq);
      ASSERT_TRUE(b.isOk()) << b.status().toString();
      take(*b);
    }
    std::vector<uint64_t> parent_batches;
    while (true) {
      auto b = buf->formBatch({.max_records = 5000, .max_bytes = 1 << 30}, nowMicros());
      ASSERT_TRUE(b.isOk()) << b.status().toString();
      if (!b->has_value()) break;
      take(**b);
      parent_batches.push_back((*b)->seq);
    }

    auto in_acked_range = [&](uint64_t id, bool confirmed) -> std::optional<uint64_t> {
      for (const auto& [seq, range] : acking) {
        if (id >= range.first && id <= range.second && (acked.count(seq) > 0) == confirmed) {
          return seq;
        }
      }
      return std::nullopt;
    };
    const uint64_t max_reported = appended.empty() ? 0 : *appended.rbegin();
    for (uint64_t id : appended) {
      auto it = present.find(id);
      int n = it == present.end() ? 0 : it->second;
      if (in_acked_range(id, true)) {
        EXPECT_EQ(n, 0) << "record " << id << " of an acked batch is back";
      } else if (auto seq = in_acked_range(id, false)) {
        // Killed around the ack: the whole batch is either still there or gone.
        EXPECT_LE(n, 1) << "record " << id;
        auto [lo, hi] = acking[*seq];
        EXPECT_EQ(present.count(lo), present.count(hi)) << "batch " << *seq << " half deleted";
      } else {
        EXPECT_EQ(n, 1) << "record " << id << " was reported appended";
      }
    }
    for (const auto& [id, n] : present) {
      EXPECT_EQ(n, 1) << "record " << id << " doubled";
      if (appended.count(id) == 0) {
        // Committed but killed before the report: only the last appends can be so.
        EXPECT_GT(id, max_reported) << "record " << id << " appeared from nowhere";
      }
    }

    // Clean up for the next round; seqs must keep growing across restarts.
    seqs = buf->unackedBatches();
    ASSERT_TRUE(seqs.isOk());
    for (uint64_t seq : *seqs) {
      ASSERT_TRUE(buf->ack(seq).isOk());
      max_seq_seen = std::max(max_seq_seen, seq);
    }
    for (const auto& [seq, range] : acking) max_seq_seen = std::max(max_seq_seen, seq);
    EXPECT_EQ(buf->stats().records, 0u);
    EXPECT_EQ(buf->stats().bytes, 0u);
  }
  std::printf("[ kill -9     ] %llu records reported appended over 6 kills\n",
              (unsigned long long)total_reported);
  EXPECT_GT(total_reported, 0u);
}

// ------------------------------------------------------------------ nonces

// The nonces (bytes 1..12 of each RecordCipher envelope) of the sealed values in
// `sql`'s rows, read from the file as a copy of the disk would show them.
void appendStoredNonces(const std::filesystem::path& db, const char* sql,
                        std::vector<std::array<unsigned char, 12>>* out) {
  SqliteHandle h(db);
  for (const std::string& v : h.values(sql)) {
    ASSERT_GE(v.size(), 13u) << "not a sealed envelope";
    std::array<unsigned char, 12> n{};
    std::memcpy(n.data(), v.data() + 1, n.size());
    out->push_back(n);
  }
}

// Runs in the forked child until killed: appends record groups (and a reject now
// and then), writing the number of values sealed and committed so far (8 bytes)
// to `fd` after each append.
[[noreturn]] void sealingChild(const BufferOptions& options, int fd, uint64_t first_id) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto opened = DurableBuffer::open(options);
  if (!opened.isOk()) _exit(2);
  std::unique_ptr<DurableBuffer> buf = std::move(opened).value();
  uint64_t sealed = 0, id = first_id;
  const int64_t give_up = steadyMicros() + 60'000'000;
  for (int step = 0; steadyMicros() < give_up; ++step) {
    std::vector<WireReject> rejects;
    if (step % 4 == 0) rejects.push_back(rejectFor(id));
    const size_t n = 250;
    if (!buf->append(recordsFor(id, n, 40), std::move(rejects)).isOk()) _exit(4);
    sealed += 2 * n + (step % 4 == 0 ? 2 : 0);  // key + payload; raw + reasons
    id += n;
    if (write(fd, &sealed, sizeof sealed) != ssize_t(sizeof sealed)) _exit(3);
  }
  _exit(7);
}

// Part of README "[buffer] key_file": no (key, nonce) pair repeats over 10^6 seals
// spread across 100 kill -9 restarts of a process that has the buffer open. Every
// nonce is read back from buffer.db. BRANCHLINE_NONCE_TEST_SEALS scales the total
// down (a slow sanitizer build); the default is the acceptance figure.
TEST(DurableBufferNonceTest, NoNonceRepeatsOverAMillionSealsAcross100KillNineRestarts) {
  uint64_t total = 1'000'000;
  if (const char* s = std::getenv("BRANCHLINE_NONCE_TEST_SEALS"); s != nullptr) {
    total = std::strtoull(s, nullptr, 10);
  }
  constexpr int kRounds = 100;
  const uint64_t per_round = std::max<uint64_t>(1, total / kRounds);
  TempDir dir;
  const BufferOptions o = optionsIn(dir);
  const unsigned seed = testSeed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (BRANCHLINE_TEST_SEED replays it)");
  std::mt19937 rng(seed);
  std::vector<std::array<unsigned char, 12>> nonces;
  nonces.reserve(total + total / 10);
  uint64_t first_id = 1;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      sealingChild(o, fds[1], first_id);
    }
    close(fds[1]);
    // Kill at a random moment once this round has sealed its share.
    uint64_t reported = 0;
    const auto give_up = std::chrono::steady_clock::now() + 60s;
    while (reported < per_round && std::chrono::steady_clock::now() < give_up) {
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      uint64_t v = 0;
      if (read(fds[0], &v, sizeof v) != ssize_t(sizeof v)) break;
      reported = v;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 5000));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    close(fds[0]);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited early with " << WEXITSTATUS(wstatus);
    ASSERT_GE(reported, per_round) << "the child sealed too slowly";

    const size_t before = nonces.size();
    appendStoredNonces(o.path, "SELECT record_key, payload FROM records", &nonces);
    appendStoredNonces(o.path, "SELECT raw, reasons FROM quarantine", &nonces);
    ASSERT_GE(nonces.size() - before, reported) << "a reported append is missing";

    // Every record opens; then the buffer is emptied for the next round.
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    uint64_t records = 0;
    while (true) {
      auto b = buf->formBatch({.max_records = 5000, .max_bytes = 1 << 30}, nowMicros());
      ASSERT_TRUE(b.isOk()) << b.status().toString();
      if (!b->has_value()) break;
      for (const WireRecord& r : (*b)->records) {
        ASSERT_EQ(r, recordFor(idOf(r), 40));
        first_id = std::max(first_id, idOf(r) + 1);
      }
      records += (*b)->records.size();
      ASSERT_TRUE(buf->ack((*b)->seq).isOk());
    }
    EXPECT_GT(records, 0u);
  }
  appendStoredNonces(o.path, "SELECT sealed FROM key_check", &nonces);
  ASSERT_GE(nonces.size(), total);
  std::sort(nonces.begin(), nonces.end());
  const auto repeat = std::adjacent_find(nonces.begin(), nonces.end());
  EXPECT_TRUE(repeat == nonces.end()) << "a nonce repeated among " << nonces.size() << " seals";
  std::printf("[ nonces      ] %zu sealed values over %d kill -9 restarts, all nonces distinct\n",
              nonces.size(), kRounds);
}

// ------------------------------------------------------------------ data-key rotation

void writeKeyBytes(const std::filesystem::path& file, const std::string& bytes) {
  std::filesystem::remove(file);
  std::ofstream(file, std::ios::binary) << bytes;
  std::filesystem::permissions(
      file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

// A buffer holding what a rotation must carry: two formed, unacked batches (records
// and rejects), then unbatched records and an unbatched quarantined reject.
struct MixedContent {
  std::vector<PendingBatch> batches;
  std::vector<WireRecord> unbatched;
  std::vector<WireReject> unbatched_rejects;
};

MixedContent fillMixed(const BufferOptions& o) {
  MixedContent m;
  auto buf = openOrDie(o);
  if (!buf) return m;
  EXPECT_TRUE(buf->append(recordsFor(1, 30), {rejectFor(1), rejectFor(2)}).isOk());
  for (int i = 0; i < 2; ++i) {
    auto b = buf->formBatch({.max_records = 12, .max_bytes = 1 << 20}, kBaseTime);
    EXPECT_TRUE(b.isOk() && b->has_value());
    if (b.isOk() && b->has_value()) m.batches.push_back(**b);
  }
  EXPECT_FALSE(m.batches.empty() || m.batches[0].rejects.empty()) << "a batch carries rejects";
  const uint64_t last = m.batches.empty() ? 0 : idOf(m.batches.back().records.back());
  m.unbatched = recordsFor(last + 1, 30 - last);
  for (const WireRecord& r : recordsFor(100, 25)) m.unbatched.push_back(r);
  m.unbatched_rejects = {rejectFor(3)};
  EXPECT_TRUE(buf->append(recordsFor(100, 25), {rejectFor(3)}).isOk());
  return m;
}

// Every batch loads as formed, and the rest is one batch of exactly what was
// unbatched (formed here, or by an earlier call).
void expectMixedContent(DurableBuffer& buf, const MixedContent& m) {
  auto seqs = buf.unackedBatches();
  ASSERT_TRUE(seqs.isOk());
  ASSERT_GE(seqs->size(), m.batches.size());
  for (size_t i = 0; i < m.batches.size(); ++i) {
    auto b = buf.loadBatch((*seqs)[i]);
    ASSERT_TRUE(b.isOk()) << b.status().toString();
    EXPECT_EQ(b->seq, m.batches[i].seq);
    EXPECT_EQ(b->records, m.batches[i].records);
    EXPECT_EQ(b->rejects, m.batches[i].rejects);
  }
  std::optional<PendingBatch> rest;
  if (seqs->size() == m.batches.size() + 1) {
    auto b = buf.loadBatch(seqs->back());
    ASSERT_TRUE(b.isOk()) << b.status().toString();
    rest = std::move(*b);
  } else {
    ASSERT_EQ(seqs->size(), m.batches.size());
    auto b = buf.formBatch({.max_records = 1000, .max_bytes = 1 << 30}, kBaseTime);
    ASSERT_TRUE(b.isOk() && b->has_value()) << b.status().toString();
    rest = std::move(**b);
  }
  EXPECT_EQ(rest->records, m.unbatched);
  EXPECT_EQ(rest->rejects, m.unbatched_rejects);
}

std::filesystem::path nextKeyOf(const std::filesystem::path& key) {
  std::filesystem::path p = key;
  p += ".next";
  return p;
}

TEST(DurableBufferRotationTest, RotationKeepsEveryRecordAndDestroysTheOldKey) {
  TempDir dir;
  const BufferOptions o = optionsIn(dir);
  const std::filesystem::path key = dir.path() / "buffer.key";
  const MixedContent m = fillMixed(o);
  const std::string old_key = fileBytes(key);
  const std::vector<std::string> old_sealed = SqliteHandle(o.path).values(
      "SELECT record_key, payload FROM records UNION ALL SELECT raw, reasons FROM quarantine"
      " UNION ALL SELECT sealed, sealed FROM key_check");
  ASSERT_EQ(old_sealed.size(), 2u * (55 + 3 + 1));

  auto rotated = rotateBufferDataKey(o);
  ASSERT_TRUE(rotated.isOk()) << rotated.status().toString();
  EXPECT_EQ(rotated->records, 55u);
  EXPECT_EQ(rotated->rejects, 3u);

  const std::string new_key = fileBytes(key);
  EXPECT_EQ(new_key.size(), 32u);
  EXPECT_NE(new_key, old_key) << "the key file holds a new key";
  struct stat st {};
  ASSERT_EQ(::stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(nextKeyOf(key)));
  // No ciphertext made under the old key is left in the files (nonce + first bytes).
  const std::string files = fileBytes(o.path) + fileBytes(walOf(o.path));
  size_t lingering = 0;
  for (const std::string& v : old_sealed) {
    if (files.find(v.substr(1, 24)) != std::string::npos) ++lingering;
  }
  EXPECT_EQ(lingering, 0u) << "old ciphertext still in buffer.db or its WAL";

  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf) << "the buffer opens with the new key";
    expectMixedContent(*buf, m);
  }

  // The old key no longer opens it.
  BufferOptions with_old = o;
  with_old.key_file = dir.path() / "old.key";
  writeKeyBytes(with_old.key_file, old_key);
  auto refused = DurableBuffer::open(with_old);
  ASSERT_FALSE(refused.isOk());
  EXPECT_EQ(refused.status().code(), Code::kPermissionDenied) << refused.status().toString();
}

TEST(DurableBufferRotationTest, RefusedWhileTheBufferIsOpenOrMissingOrInClear) {
  TempDir dir;
  const BufferOptions o = optionsIn(dir);
  const std::filesystem::path key = dir.path() / "buffer.key";
  {
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    ASSERT_TRUE(buf->append(recordsFor(1, 3), {}).isOk());
    const std::string before = fileBytes(key);
    auto busy = rotateBufferDataKey(o);  // as a second process would: SQLite locks per file
    ASSERT_FALSE(busy.isOk());
    EXPECT_EQ(busy.status().code(), Code::kUnavailable) << busy.status().toString();
    EXPECT_NE(busy.status().message().find("stop the agent first"), std::string::npos)
        << busy.status().toString();
    EXPECT_EQ(fileBytes(key), before);
    EXPECT_FALSE(std::filesystem::exists(nextKeyOf(key)));
  }

  TempDir empty;
  auto none = rotateBufferDataKey(optionsIn(empty));
  ASSERT_FALSE(none.isOk());
  EXPECT_EQ(none.status().code(), Code::kNotFound) << none.status().toString();
  EXPECT_FALSE(std::filesystem::exists(empty.path() / "buffer.db")) << "nothing is created";

  TempDir clear_dir;
  BufferOptions clear = optionsIn(clear_dir);
  auto buf = openInClearOrDie(clear);
  ASSERT_TRUE(buf);
  EXPECT_EQ(buf->rotateDataKey().status().code(), Code::kInvalidArgument);
}

// A kill -9 at every step of a rotation leaves a buffer that opens, with the old key
// (before the commit) or the new one (after it), and holds everything.
TEST(DurableBufferRotationTest, KillNineAtEveryStepLeavesABufferThatOpensWithOneKey) {
  for (const char* step :
       {"new_key_written", "resealing", "resealed", "old_key_zeroed", "key_installed"}) {
    SCOPED_TRACE(step);
    TempDir dir;
    const BufferOptions o = optionsIn(dir);
    const std::filesystem::path key = dir.path() / "buffer.key";
    const MixedContent m = fillMixed(o);
    const std::string old_key = fileBytes(key);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      auto opened = DurableBuffer::open(o);
      if (!opened.isOk()) _exit(2);
      (void)(*opened)->rotateDataKey([step](std::string_view at) {
        if (at == step) raise(SIGKILL);
        return true;
      });
      _exit(3);
    }
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited with " << WEXITSTATUS(wstatus);
    const bool committed =
        std::string_view(step) != "new_key_written" && std::string_view(step) != "resealing";
    EXPECT_EQ(std::filesystem::exists(nextKeyOf(key)), std::string_view(step) != "key_installed");
    {
      auto buf = openOrDie(o);
      ASSERT_TRUE(buf);
      expectMixedContent(*buf, m);
    }
    EXPECT_FALSE(std::filesystem::exists(nextKeyOf(key))) << "open settles the side file";
    EXPECT_EQ(fileBytes(key).size(), 32u);
    EXPECT_EQ(fileBytes(key) != old_key, committed);
    // A later rotation starts from either state.
    auto again = rotateBufferDataKey(o);
    ASSERT_TRUE(again.isOk()) << again.status().toString();
    auto buf = openOrDie(o);
    ASSERT_TRUE(buf);
    expectMixedContent(*buf, m);
  }
}

}  // namespace
}  // namespace branchline::agent
