#include "aggregator/consume/batch_consumer.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "protocol/ack_auth.h"
#include "shared/core/clock.h"
#include "shared/core/failpoint.h"
#include "shared/core/log.h"
#include "shared/mqtt/broker_events.h"
#include "shared/mqtt/mqtt_client.h"
#include "shared/pki/pki.h"

namespace branchline::aggregator {
namespace {

bool validAgentId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// The metric label of a refused batch: protocol's label, made finer for the
// input limits (README "Input limits") so each bound shows under its own name.
const char* refusalLabel(protocol::OpenFailure failure, std::string_view message) {
  auto says = [&](std::string_view what) { return message.find(what) != std::string_view::npos; };
  if (failure == protocol::OpenFailure::kTooLarge && says("max_inflate_ratio")) {
    return "inflate_ratio";
  }
  if (failure == protocol::OpenFailure::kMalformed) {
    // Cap'n Proto's own words for its ReaderOptions bounds.
    if (says("traversal limit")) return "traversal_limit";
    if (says("too deeply-nested")) return "nesting_limit";
  }
  return protocol::openFailureLabel(failure);
}

struct Queued {
  std::string topic;
  std::string payload;
  size_t oversize = 0;  // payload size when it was past max_message_bytes (payload dropped)
  size_t bytes = 0;     // counted against max_queue_bytes
};

struct Refusal {
  std::string agent_id;  // from the topic; empty when the topic is unusable
  std::optional<uint64_t> seq;
  const char* reason;  // bounded metric label
  std::string detail;
  std::optional<protocol::AckKey> ack_key;  // set when the batch authenticated
};

// Rate-limits refusal audit rows per agent (ConsumerOptions::refusal_audits_per_window).
// Writer thread only.
class RefusalAuditLimiter {
 public:
  RefusalAuditLimiter(size_t burst, int64_t window_us) : burst_(burst), window_us_(window_us) {}

  // Whether this refusal gets its own audit row; otherwise it is counted for
  // its window's summary. Call closeWindows() first.
  bool admit(const std::string& agent, std::string_view detail, int64_t now_us) {
    auto it = windows_.find(agent);
    if (it == windows_.end()) {
      // Agent ids come from topics; past this many at once they share one window.
      const std::string& key = windows_.size() < kMaxWindows ? agent : kOverflow;
      it = windows_.try_emplace(key, Window{now_us, 0, 0, {}}).first;
    }
    Window& w = it->second;
    if (w.audited < burst_) {
      ++w.audited;
      return true;
    }
    if (w.suppressed++ == 0) w.first_detail = std::string(detail.substr(0, 300));
    return false;
  }

  // Summary rows of the windows that have closed by `now_us` (all with `all`);
  // their windows are forgotten.
  std::vector<AuditEntry> closeWindows(const std::string& actor, int64_t now_us, bool all = false) {
    std::vector<AuditEntry> rows;
    for (auto it = windows_.begin(); it != windows_.end();) {
      const Window& w = it->second;
      if (!all && now_us - w.start_us < window_us_) {
        ++it;
        continue;
      }
      if (w.suppressed > 0) {
        rows.push_back({actor, "batch_refused_suppressed", it->first, std::nullopt,
                        std::to_string(w.suppressed) + " more refused batch messages between " +
                            formatRfc3339Micros(w.start_us) + " and " +
                            formatRfc3339Micros(now_us) + " were not audited one by one (at most " +
                            std::to_string(burst_) + " per " +
                            std::to_string(window_us_ / 1000000) +
                            " s per agent); the first of them: " + w.first_detail});
      }
      it = windows_.erase(it);
    }
    return rows;
  }

 private:
  struct Window {
    int64_t start_us;
    size_t audited;
    uint64_t suppressed;
    std::string first_detail;
  };
  static constexpr size_t kMaxWindows = 4096;
  inline static const std::string kOverflow = "*";
  const size_t burst_;
  const int64_t window_us_;
  std::map<std::string, Window> windows_;
};

// Agent status events (README "Agent status events") audited per agent per
// window; agents send at most one of a kind a minute, so more is a flood.
constexpr size_t kEventAuditsPerWindow = 10;
constexpr int64_t kEventAuditWindowUs = 600LL * 1000000;
constexpr size_t kMaxQueuedStatus = 256;
// The event kinds the central side audits; anything else is refused.
bool knownEventKind(std::string_view kind) { return kind == "duplicate_identity"; }

// The keys to tag each opened batch's ack with, by (agent, seq).
using AckKeys = std::map<std::pair<std::string, uint64_t>, protocol::AckKey>;

}  // namespace

struct BatchConsumer::Impl {
  ConsumerOptions options;
  CentralStore& store;

  Counter& received;
  Counter& stored;
  Counter& duplicate;
  Counter& seq_reused;
  LabeledCounter& refused;
  Counter& records_stored;
  Counter& records_duplicate;
  Counter& rejects_stored;
  Counter& dropped;
  Counter& commit_failures;
  Counter& acks_failed;
  Gauge& queue_bytes_gauge;
  Gauge& store_ready_gauge;
  Gauge& broker_connected_gauge;
  LabeledCounter& events_audited;
  LabeledCounter& status_refused;
  std::atomic<uint64_t> commit_micros{0};

  std::unique_ptr<mqtt::Client> client;
  // Both announcements, made (and with a TLS identity, signed) once at start():
  // the offline one is the will, fixed at connect time, and Paho callbacks
  // must not spend a signature's time.
  std::string online_payload;
  std::string offline_payload;
  std::atomic<bool> store_ready{true};
  std::atomic<bool> connected{false};

  std::mutex mutex;
  std::condition_variable cv;
  std::deque<Queued> queue;
  std::deque<Queued> status_queue;  // agent status messages, small and few
  size_t queue_bytes = 0;           // queued plus the group being written
  bool stopping = false;
  int64_t last_drop_log_us = 0;
  std::thread writer;

  // Writer thread only: refusal audit rate limiting, and summary rows not yet written.
  RefusalAuditLimiter audit_limiter{
      options.refusal_audits_per_window,
      std::chrono::duration_cast<std::chrono::microseconds>(options.refusal_audit_window).count()};
  std::vector<AuditEntry> pending_summaries;
  // Writer thread only: status event audits per agent (window start, rows).
  std::map<std::string, std::pair<int64_t, size_t>> event_windows;
  int64_t last_status_log_us = 0;

  Impl(ConsumerOptions o, CentralStore& s, MetricsRegistry& m)
      : options(std::move(o)),
        store(s),
        received(m.counter("bl_aggregator_batches_received_total",
                           "Batch messages delivered by the broker (dropped ones included)")),
        stored(m.counter("bl_aggregator_batches_stored_total",
                         "Batches committed to the central store by this aggregator")),
        duplicate(m.counter("bl_aggregator_batches_duplicate_total",
                            "Batches already in the batch ledger (redeliveries)")),
        seq_reused(m.counter("bl_aggregator_batch_seq_reused_total",
                             "Batches whose sequence was already stored with other content (an "
                             "agent restored from an old disk image?); stored anyway. Alert on "
                             "any increase")),
        refused(m.labeledCounter("bl_aggregator_batches_refused_total",
                                 "Batch messages refused (malformed, over a limit, forged)",
                                 "reason")),
        records_stored(m.counter("bl_aggregator_records_stored_total",
                                 "Records newly stored in the central store")),
        records_duplicate(m.counter("bl_aggregator_records_duplicate_total",
                                    "Records whose source and key were already stored")),
        rejects_stored(m.counter("bl_aggregator_rejects_stored_total",
                                 "Agent rejects stored in the central rejects table")),
        dropped(m.counter("bl_aggregator_batches_dropped_total",
                          "Batch messages dropped because the receive queue was full")),
        commit_failures(m.counter("bl_aggregator_commit_failures_total",
                                  "Failed store commits (retried with backoff)")),
        acks_failed(m.counter("bl_aggregator_acks_failed_total",
                              "Acks that could not be published (the agent resends)")),
        queue_bytes_gauge(m.gauge("bl_aggregator_queue_bytes",
                                  "Bytes of batch messages received and not yet acked")),
        store_ready_gauge(m.gauge("bl_aggregator_store_ready",
                                  "1 when the last central store operation succeeded")),
        broker_connected_gauge(m.gauge("bl_aggregator_broker_connected",
                                       "1 when connected and subscribed to the broker")),
        events_audited(m.labeledCounter(
            "bl_aggregator_agent_events_audited_total",
            "Agent status events written to the audit table (duplicate_identity)", "kind")),
        status_refused(m.labeledCounter(
            "bl_aggregator_agent_status_refused_total",
            "Agent status messages ignored: malformed, agent_mismatch, unauthenticated, "
            "unknown_key, not_enrolled, forged, unknown_kind, rate_limited, queue_full",
            "reason")) {
    // MetricsRegistry has no float counter: a callback renders the seconds.
    m.callbackGauge("bl_aggregator_commit_seconds_total",
                    "Seconds spent in central store commits (monotonic)", [this] {
                      return static_cast<double>(commit_micros.load(std::memory_order_relaxed)) /
                             1e6;
                    });
    store_ready_gauge.set(1);
    options.max_batches_per_commit = std::max<size_t>(options.max_batches_per_commit, 1);
  }

  std::string ackTopic(const std::string& agent) const {
    return options.topic_prefix + "/agents/" + agent + "/ack";
  }

  // Paho's network thread: never block beyond a short mutex hold.
  void onMessage(mqtt::Message&& m) {
    if (m.topic.size() > 7 && m.topic.compare(m.topic.size() - 7, 7, "/status") == 0) {
      {
        std::lock_guard lock(mutex);
        if (stopping) return;
        if (status_queue.size() >= kMaxQueuedStatus ||
            m.payload.size() > protocol::kMaxAgentStatusBytes) {
          status_refused.with(status_queue.size() >= kMaxQueuedStatus ? "queue_full" : "malformed")
              .inc();
          return;
        }
        Queued q;
        q.topic = std::move(m.topic);
        q.payload = std::move(m.payload);
        status_queue.push_back(std::move(q));
      }
      cv.notify_one();
      return;
    }
    Queued q;
    q.topic = std::move(m.topic);
    if (m.payload.size() > options.limits.max_message_bytes) {
      q.oversize = m.payload.size();  // refused by the writer; don't hold the bytes
    } else {
      q.payload = std::move(m.payload);
    }
    q.bytes = q.topic.size() + q.payload.size();
    {
      std::lock_guard lock(mutex);
      if (stopping) return;
      received.inc();
      // An empty queue takes any message, so one of max_message_bytes always fits.
      if (queue_bytes != 0 && queue_bytes + q.bytes > options.max_queue_bytes) {
        dropped.inc();
        int64_t now = steadyMicros();
        if (now - last_drop_log_us > 1000000) {
          last_drop_log_us = now;
          log::warn("batch_dropped_queue_full",
                    {{"queue_bytes", static_cast<uint64_t>(queue_bytes)},
                     {"max_queue_bytes", static_cast<uint64_t>(options.max_queue_bytes)},
                     {"dropped_total", dropped.value()}});
        }
        return;
      }
      queue_bytes += q.bytes;
      queue_bytes_gauge.set(static_cast<int64_t>(queue_bytes));
      queue.push_back(std::move(q));
    }
    cv.notify_one();
  }

  void onConnection(bool up) {
    connected.store(up);
    broker_connected_gauge.set(up ? 1 : 0);
    if (up) announceOnline();
  }

  // Tells the agents this aggregator can take batches (README "MQTT topics"),
  // so they resend what is unacked now rather than after their ack timeout.
  // Non-blocking: Paho queues it (safe from its callback thread).
  void announceOnline() {
    if (!client || !store_ready.load()) return;
    // Retained: an agent that subscribes later still learns this epoch, so
    // this process's will counts for it too.
    (void)client->publish(onlineTopic(), online_payload, 1, /*retain=*/true);
  }

  // README "MQTT topics": `online` carries both announcements.
  std::string onlineTopic() const {
    return options.topic_prefix + "/aggregators/" + options.aggregator_name + "/online";
  }

  // Makes both announcements for a new epoch, signed with the TLS identity when
  // there is one (agents check it against the fleet CA).
  Status prepareAnnouncements() {
    uint64_t epoch = 0;
    if (::getrandom(&epoch, sizeof epoch, 0) != static_cast<ssize_t>(sizeof epoch)) {
      return Status::internal("consumer: no randomness for the announcement epoch");
    }
    std::optional<pki::Credential> identity;
    if (!options.cert_file.empty() && !options.key_file.empty()) {
      auto loaded = pki::loadCredential(options.cert_file, options.key_file);
      if (!loaded) return loaded.status().withContext("consumer: signing announcements");
      identity = std::move(loaded).value();
    }
    for (bool online : {true, false}) {
      protocol::WireAnnouncement a;
      a.aggregator = options.aggregator_name;
      a.online = online;
      a.epoch = epoch;
      a.issued_at_us = nowMicros();
      if (identity) {
        a.certificate_pem = identity->certificate_pem;
        auto sig =
            pki::signMessage(identity->private_key_pem, protocol::announcementSigningInput(a));
        if (!sig) return sig.status().withContext("consumer: signing announcements");
        a.signature = std::move(sig).value();
      }
      (online ? online_payload : offline_payload) = protocol::encodeAnnouncement(a);
    }
    return Status::ok();
  }

  void setStoreReady(bool ready) {
    if (store_ready.exchange(ready) != ready) {
      if (ready) {
        log::info("central_store_ready");
        announceOnline();
      }
    }
    store_ready_gauge.set(ready ? 1 : 0);
  }

  void run() {
    for (;;) {
      std::vector<Queued> group;
      std::deque<Queued> statuses;
      size_t group_bytes = 0;
      bool idle = false;
      {
        std::unique_lock lock(mutex);
        idle = !cv.wait_for(lock, std::chrono::seconds(1),
                            [this] { return stopping || !queue.empty() || !status_queue.empty(); });
        // Queued, unstarted messages are left unacked on stop: their agents resend.
        if (stopping) break;
        statuses.swap(status_queue);
        if (!statuses.empty() && queue.empty()) idle = false;
        while (!queue.empty() && group.size() < options.max_batches_per_commit) {
          group_bytes += queue.front().bytes;
          group.push_back(std::move(queue.front()));
          queue.pop_front();
        }
      }
      for (const Queued& q : statuses) handleStatus(q);
      if (!statuses.empty() && group.empty()) continue;
      if (idle) {
        // No traffic: probe the store, so readiness (/healthz) follows an
        // outage, or a database that was away at startup, without a batch.
        bool ok = store.health().isOk();
        if (ok) ok = writeSummaries(nowMicros()).isOk();
        if (!ok && store_ready.load()) log::error("central_store_unavailable", {});
        setStoreReady(ok);
        continue;
      }
      processGroup(group);
      std::lock_guard lock(mutex);
      queue_bytes -= group_bytes;
      queue_bytes_gauge.set(static_cast<int64_t>(queue_bytes));
    }
    // Refusals counted in open windows are not forgotten on a clean stop.
    Status s = writeSummaries(nowMicros(), /*all=*/true);
    if (!s) log::warn("batch_refusals_summary_lost", {{"error", s.toString()}});
  }

  // Opens one message; on success appends to `batches` (and, for a sealed
  // batch, its ack key to `keys`), else to `refusals`.
  void open(Queued& q, std::vector<protocol::WireBatch>& batches, AckKeys& keys,
            std::vector<Refusal>& refusals) {
    std::string agent = agentFromTopic(q.topic, options.topic_prefix);
    if (agent.empty()) {
      refusals.push_back({"", std::nullopt, "bad_topic",
                          "topic `" + log::printableExcerpt(q.topic) + "` is not " +
                              options.topic_prefix + "/agents/<agent-id>/batch"});
      return;
    }
    if (q.oversize) {
      refusals.push_back({agent, std::nullopt, "too_large",
                          "payload of " + std::to_string(q.oversize) +
                              " bytes exceeds max_message_bytes " +
                              std::to_string(options.limits.max_message_bytes)});
      return;
    }
    protocol::OpenFailure failure = protocol::OpenFailure::kNone;
    std::optional<protocol::AckKey> key;
    key.emplace();
    auto decoded = protocol::openBatch(q.payload, options.limits, options.open, &failure, &*key);
    if (key->key_id.empty()) key.reset();  // plain, or not authentic
    if (!decoded) {
      std::optional<uint64_t> seq;
      auto header = protocol::peekHeader(q.payload, options.limits);
      if (header && header->agent_id == agent) seq = header->batch_seq;
      refusals.push_back({agent, seq, refusalLabel(failure, decoded.status().message()),
                          decoded.status().message(), key});
      return;
    }
    if (decoded->agent_id != agent) {
      // The broker's ACL vouches for the topic, not the envelope: a batch
      // claiming another agent is forged or misrouted and stored nowhere.
      refusals.push_back({agent, std::nullopt, "agent_mismatch",
                          "topic names agent `" + agent + "` but the batch claims `" +
                              log::printableExcerpt(decoded->agent_id, 64) + "` batch " +
                              std::to_string(decoded->seq)});
      return;
    }
    if (key) keys.insert_or_assign({agent, decoded->seq}, std::move(*key));
    batches.push_back(std::move(decoded.value()));
  }

  // Waits out a backoff step; false when stopping.
  bool backoff(std::chrono::milliseconds& delay) {
    std::unique_lock lock(mutex);
    bool stop = cv.wait_for(lock, delay, [this] { return stopping; });
    delay = std::min(delay * 2, options.max_retry);
    return !stop;
  }

  void processGroup(std::vector<Queued>& group) {
    std::vector<protocol::WireBatch> batches;
    std::vector<Refusal> refusals;
    AckKeys keys;
    batches.reserve(group.size());
    for (Queued& q : group) open(q, batches, keys, refusals);
    // The payloads are decoded; free them before a possibly long commit wait.
    for (Queued& q : group) std::string().swap(q.payload);

    const int64_t now = nowMicros();
    std::vector<const Refusal*> to_audit;  // the refusals that get a row of their own
    for (const Refusal& r : refusals) {
      refused.with(r.reason).inc();
      if (!audit_limiter.admit(r.agent_id, r.detail, now)) continue;  // counted for a summary
      to_audit.push_back(&r);
      log::warn("batch_refused", {{"agent", r.agent_id},
                                  {"batch_seq", r.seq ? static_cast<int64_t>(*r.seq) : -1},
                                  {"reason", r.reason},
                                  {"detail", r.detail}});
    }

    // Audits and the commit are retried together until the store takes them:
    // no ack (stored, duplicate or refused) leaves before its row is durable
    // (a refusal past the audit rate only has its summary row, later).
    size_t audited = 0;
    bool committed = batches.empty();
    std::vector<BatchOutcome> outcomes;
    auto delay = options.min_retry;
    for (;;) {
      Status s = writeSummaries(now);
      for (; s && audited < to_audit.size(); ++audited) {
        const Refusal& r = *to_audit[audited];
        s = store.audit({options.aggregator_name, "batch_refused", r.agent_id, r.seq, r.detail});
        if (!s) break;
      }
      if (s && !committed) {
        int64_t t0 = steadyMicros();
        auto result = store.commit(batches, options.aggregator_name);
        commit_micros.fetch_add(static_cast<uint64_t>(steadyMicros() - t0),
                                std::memory_order_relaxed);
        if (result) {
          outcomes = std::move(result.value());
          committed = true;
        } else {
          s = result.status();
        }
      }
      if (s) break;
      commit_failures.inc();
      if (store_ready.load()) {
        log::error("central_store_unavailable",
                   {{"error", s.toString()}, {"batches", static_cast<uint64_t>(batches.size())}});
      }
      setStoreReady(false);
      if (!backoff(delay)) {
        log::warn("batches_abandoned_on_stop",
                  {{"batches", static_cast<uint64_t>(batches.size())},
                   {"refusals", static_cast<uint64_t>(to_audit.size() - audited)}});
        return;
      }
    }
    setStoreReady(true);
    if (!outcomes.empty()) BL_FAILPOINT("aggregator.after_commit_before_ack");

    for (const BatchOutcome& o : outcomes) {
      protocol::WireAck ack;
      ack.agent_id = o.agent_id;
      ack.batch_seq = o.batch_seq;
      ack.status = o.duplicate ? protocol::AckStatus::kDuplicate : protocol::AckStatus::kStored;
      ack.stored_records = o.stored_records;
      ack.duplicate_records = o.duplicate_records;
      ack.rejects = o.rejects;
      ack.aggregator = options.aggregator_name;
      ack.digest = o.digest;
      auto key = keys.find({o.agent_id, o.batch_seq});
      if (key != keys.end()) protocol::signAck(key->second, ack);
      if (o.seq_reused) {
        // Stored (nothing lost) and audited by the store in the same transaction.
        seq_reused.inc();
        log::warn("batch_seq_reused", {{"agent", o.agent_id},
                                       {"batch_seq", static_cast<uint64_t>(o.batch_seq)},
                                       {"digest", o.digest.substr(0, 16)},
                                       {"stored_records", static_cast<uint64_t>(o.stored_records)},
                                       {"rejects", static_cast<uint64_t>(o.rejects)}});
      }
      if (o.duplicate) {
        duplicate.inc();
      } else {
        stored.inc();
        records_stored.inc(o.stored_records);
        records_duplicate.inc(o.duplicate_records);
        rejects_stored.inc(o.rejects);
      }
      publishAck(ack);
    }
    for (const Refusal& r : refusals) {
      if (r.agent_id.empty()) continue;  // nobody to answer
      protocol::WireAck ack;
      ack.agent_id = r.agent_id;
      ack.batch_seq = r.seq.value_or(0);
      ack.status = protocol::AckStatus::kRefused;
      ack.message = r.detail;
      ack.aggregator = options.aggregator_name;
      // An agent that seals trusts only tagged acks; a refusal of a batch that
      // did not authenticate cannot be tagged and only shows in its log as such.
      if (r.ack_key) protocol::signAck(*r.ack_key, ack);
      publishAck(ack);
    }
  }

  // Writes the summary rows of closed audit windows (all of them with `all`);
  // what the store does not take is kept for the next try.
  Status writeSummaries(int64_t now_us, bool all = false) {
    for (AuditEntry& row : audit_limiter.closeWindows(options.aggregator_name, now_us, all)) {
      log::warn("batch_refusals_suppressed", {{"agent", row.agent_id}, {"detail", row.detail}});
      pending_summaries.push_back(std::move(row));
    }
    while (!pending_summaries.empty()) {
      BL_RETURN_IF_ERROR(store.audit(pending_summaries.front()));
      pending_summaries.erase(pending_summaries.begin());
    }
    return Status::ok();
  }

  void refuseStatus(const char* reason, const std::string& agent, const std::string& why) {
    status_refused.with(reason).inc();
    const int64_t now = steadyMicros();
    if (now - last_status_log_us < 1000000) return;  // a flood logs once a second
    last_status_log_us = now;
    log::warn("agent_status_refused", {{"agent", agent}, {"reason", reason}, {"detail", why}});
  }

  // Writer thread: one agent status message, checked like a batch (the topic
  // names the agent, the tag proves it), then its events go to the audit table.
  void handleStatus(const Queued& q) {
    const std::string agent = agentFromTopic(q.topic, options.topic_prefix, "/status");
    if (agent.empty()) return refuseStatus("malformed", "", "not an agent status topic");
    auto status = protocol::decodeAgentStatus(q.payload);
    if (!status) return refuseStatus("malformed", agent, status.status().message());
    if (status->agent_id != agent) {
      return refuseStatus("agent_mismatch", agent,
                          "topic names agent `" + agent + "` but the status claims `" +
                              log::printableExcerpt(status->agent_id, 64) + "`");
    }
    if (status->tag.empty()) {
      if (options.open.require_sealed) {
        return refuseStatus("unauthenticated", agent, "status message carries no tag");
      }
    } else {
      const protocol::AggregatorKeyRing::Entry* entry = nullptr;
      if (const protocol::AggregatorKeyRing* ring = options.open.ring) {
        auto it = ring->by_key_id.find(status->key_id);
        if (it != ring->by_key_id.end() && it->second.honoured_until_us > nowMicros()) {
          entry = &it->second;
        }
      }
      if (entry == nullptr) {
        return refuseStatus(
            "unknown_key", agent,
            "names unknown aggregator key `" + log::printableExcerpt(status->key_id, 32) + "`");
      }
      if (!options.open.agent_public_key) return refuseStatus("not_enrolled", agent, "no agents");
      auto agent_public = options.open.agent_public_key(agent);
      if (!agent_public)
        return refuseStatus("not_enrolled", agent, agent_public.status().message());
      auto key = protocol::aggregatorAckKey(entry->pair, *agent_public);
      if (!key || protocol::checkAgentStatus(*key, *status) != protocol::AckCheck::kAuthentic) {
        return refuseStatus("forged", agent, "tag does not match: not made by this agent");
      }
    }
    const int64_t now = nowMicros();
    // Agent ids come from topics; past this many at once they share one window.
    auto& w = event_windows[event_windows.size() < 4096 ? agent : std::string("*")];
    if (now - w.first >= kEventAuditWindowUs) w = {now, 0};
    for (const protocol::WireAgentEvent& e : status->events) {
      if (!knownEventKind(e.kind)) {
        refuseStatus("unknown_kind", agent,
                     "event kind `" + log::printableExcerpt(e.kind, 64) + "`");
        continue;
      }
      if (w.second >= kEventAuditsPerWindow) {
        refuseStatus(
            "rate_limited", agent,
            "more than " + std::to_string(kEventAuditsPerWindow) + " events in 10 minutes");
        continue;
      }
      ++w.second;
      const std::string detail = log::printableExcerpt(e.detail, protocol::kMaxAgentEventDetail) +
                                 " (seen at " + formatRfc3339Micros(e.at_us) + ")";
      Status s = store.audit({options.aggregator_name, e.kind, agent, std::nullopt, detail});
      if (!s) {
        log::warn("agent_event_not_audited",
                  {{"agent", agent}, {"kind", e.kind}, {"error", s.toString()}});
        continue;
      }
      events_audited.with(e.kind).inc();
      log::warn("agent_event", {{"agent", agent}, {"kind", e.kind}, {"detail", detail}});
    }
  }

  void publishAck(const protocol::WireAck& ack) {
    Status s = client->publish(ackTopic(ack.agent_id), protocol::encodeAck(ack), 1);
    if (!s) {
      // Committed but unacked: the agent resends and gets a duplicate ack.
      acks_failed.inc();
      log::warn("ack_publish_failed", {{"agent", ack.agent_id},
                                       {"batch_seq", static_cast<uint64_t>(ack.batch_seq)},
                                       {"error", s.toString()}});
    }
  }
};

BatchConsumer::BatchConsumer(ConsumerOptions options, CentralStore& store, MetricsRegistry& metrics)
    : impl_(std::make_unique<Impl>(std::move(options), store, metrics)) {}

BatchConsumer::~BatchConsumer() { stop(); }

Status BatchConsumer::start() {
  ConsumerOptions& o = impl_->options;
  if (o.aggregator_name.empty()) return Status::invalid("consumer: aggregator name is empty");
  if (o.topic_prefix.empty()) return Status::invalid("consumer: topic prefix is empty");
  if (o.share_group.empty()) return Status::invalid("consumer: share group is empty");
  if (o.broker_uris.empty()) return Status::invalid("consumer: no broker URIs");
  if (impl_->client) return Status::ok();
  BL_RETURN_IF_ERROR(impl_->prepareAnnouncements());

  mqtt::ClientOptions co;
  co.broker_uris = o.broker_uris;
  co.ca_file = o.ca_file;
  co.cert_file = o.cert_file;
  co.key_file = o.key_file;
  co.client_id =
      o.client_id.empty() ? o.aggregator_name + "-" + std::to_string(::getpid()) : o.client_id;
  // DESIGN.md: a durable session would trap this member's share of batches
  // if it died; agents resend unacked batches and the survivor takes them.
  co.clean_session = true;
  // Killed or cut off, this member takes the batches in flight to it along;
  // the broker then says so on its `online` topic, and the agents resend them
  // at once for the survivor instead of after their ack timeout.
  co.will_topic = impl_->onlineTopic();
  co.will_payload = impl_->offline_payload;
  co.will_retain = true;
  if (o.broker_events != nullptr) o.broker_events->attach(co);
  Impl* impl = impl_.get();
  impl_->client = std::make_unique<mqtt::Client>(
      co, [impl](mqtt::Message&& m) { impl->onMessage(std::move(m)); },
      [impl](bool up) { impl->onConnection(up); });
  impl_->writer = std::thread([impl] { impl->run(); });
  const std::string filter = "$share/" + o.share_group + "/" + o.topic_prefix + "/agents/+/batch";
  BL_RETURN_IF_ERROR(impl_->client->subscribe(filter, 1));
  const std::string status_filter =
      "$share/" + o.share_group + "/" + o.topic_prefix + "/agents/+/status";
  BL_RETURN_IF_ERROR(impl_->client->subscribe(status_filter, 1));
  BL_RETURN_IF_ERROR(impl_->client->start());
  log::info("consumer_started",
            {{"aggregator", o.aggregator_name},
             {"client_id", co.client_id},
             {"subscription", filter},
             {"max_batches_per_commit", static_cast<uint64_t>(o.max_batches_per_commit)}});
  return Status::ok();
}

void BatchConsumer::stop() {
  {
    std::lock_guard lock(impl_->mutex);
    if (impl_->stopping) return;
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  // The writer finishes its group (commit and acks) before the client goes.
  if (impl_->writer.joinable()) impl_->writer.join();
  if (impl_->client) {
    // A clean DISCONNECT sends no will: say it here, for the batches that
    // reached this member after its last group (QoS 1: Paho sends it first).
    (void)impl_->client->publish(impl_->onlineTopic(), impl_->offline_payload, 1,
                                 /*retain=*/true);
    impl_->client->stop();
  }
  impl_->onConnection(false);
}

bool BatchConsumer::storeReady() const { return impl_->store_ready.load(); }
bool BatchConsumer::brokerConnected() const { return impl_->connected.load(); }

std::string BatchConsumer::agentFromTopic(const std::string& topic, const std::string& prefix,
                                          std::string_view kTail) {
  const std::string head = prefix + "/agents/";
  if (topic.size() <= head.size() + kTail.size() || topic.compare(0, head.size(), head) != 0 ||
      topic.compare(topic.size() - kTail.size(), kTail.size(), kTail) != 0) {
    return {};
  }
  std::string agent = topic.substr(head.size(), topic.size() - head.size() - kTail.size());
  return validAgentId(agent) ? agent : std::string();
}

}  // namespace branchline::aggregator
