#include "agent/forward/forwarder.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "protocol/ack_auth.h"
#include "protocol/batch_codec.h"
#include "protocol/batch_digest.h"
#include "shared/core/clock.h"
#include "shared/core/failpoint.h"
#include "shared/core/log.h"
#include "shared/pki/broker_config.h"
#include "shared/pki/pki.h"

namespace branchline::agent {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Acks waiting for the forwarder thread. Only as many can be legitimately
// outstanding as the window; past this bound (a flood) they are dropped, which
// costs at most a resend.
constexpr size_t kMaxQueuedAcks = 4096;
// An ack is a few hundred bytes; anything bigger is not one.
constexpr size_t kMaxAckBytes = 64 << 10;
// After a local failure (SQLite, a refused publish) wait this long before trying again.
constexpr milliseconds kErrorBackoff{1000};
// Announcements waiting for the forwarder thread; past this (a flood) they are
// dropped: a real one is repeated on every aggregator (re)connect.
constexpr size_t kMaxQueuedAnnouncements = 64;
// Each one costs a signature check (and a chain check for a new certificate):
// at most this many a second, so a flood of forgeries cannot eat the CPU.
constexpr int kMaxAnnouncementChecksPerSecond = 20;
// What a genuine, forged or replayed announcement can cause is bounded: at most
// one resend of everything in flight per this interval (later ones coalesce).
constexpr milliseconds kAnnouncementResendInterval{1000};
// Agent events for the central audit trail (README "Agent status events"): at
// most one of a kind per this interval, and a bounded queue while disconnected.
constexpr std::chrono::seconds kEventInterval{60};
constexpr size_t kMaxQueuedEvents = 16;

protocol::WireBatch toWire(const std::string& agent_id, PendingBatch&& batch) {
  protocol::WireBatch wire;
  wire.agent_id = agent_id;
  wire.seq = batch.seq;
  wire.created_at_us = batch.created_at_us;
  wire.records = std::move(batch.records);
  wire.rejects = std::move(batch.rejects);
  wire.damaged = std::move(batch.damaged);
  return wire;
}

}  // namespace

std::string batchTopic(const std::string& prefix, const std::string& agent_id) {
  return prefix + "/agents/" + agent_id + "/batch";
}
std::string ackTopic(const std::string& prefix, const std::string& agent_id) {
  return prefix + "/agents/" + agent_id + "/ack";
}

struct Forwarder::Impl {
  Impl(DurableBuffer& b, ForwarderOptions o, MetricsRegistry& m)
      : buffer(b),
        options(std::move(o)),
        batch_topic(batchTopic(options.topic_prefix, options.agent_id)),
        ack_topic(ackTopic(options.topic_prefix, options.agent_id)),
        status_topic(statusTopic(options.topic_prefix, options.agent_id)),
        online_prefix(options.topic_prefix + "/aggregators/"),
        sent(m.counter("bl_agent_batches_sent_total", "Batches published for the first time")),
        acked(m.counter("bl_agent_batches_acked_total",
                        "Batches acknowledged by an aggregator and deleted")),
        retried(m.counter("bl_agent_batches_retried_total",
                          "Batches re-published (ack timeout, reconnect, restart, refusal)")),
        refused(m.counter("bl_agent_batches_refused_total",
                          "Acks refusing a batch (kept and retried)")),
        acks_refused(m.labeledCounter(
            "bl_agent_acks_refused_total",
            "Acks ignored: forged (no tag, or another key), tampered (the tag does not match), "
            "replayed (for other content under that seq), unknown_batch (not held: already acked)",
            "reason")),
        announcements_refused(m.labeledCounter(
            "bl_agent_announcements_refused_total",
            "Aggregator announcements ignored: malformed, unsigned, untrusted_certificate, "
            "bad_signature, stale (an offline notice for another epoch), rate_limited",
            "reason")),
        buffer_records(m.gauge("bl_agent_buffer_records",
                               "Records and quarantined rejects held in the buffer")),
        buffer_bytes(m.gauge("bl_agent_buffer_bytes", "Bytes held in the buffer")),
        buffer_damaged(m.counter("bl_agent_buffer_damaged_total",
                                 "Buffer rows found damaged (a sealed value failed to open): kept "
                                 "aside and reported centrally, the rest of the batch delivered")),
        buffer_damaged_rows(m.gauge("bl_agent_buffer_damaged_rows",
                                    "Damaged rows kept in the buffer for forensics")),
        buffer_io_failed(m.gauge("bl_agent_buffer_io_failed",
                                 "1 once an I/O error (EIO on write, fsync or read) stopped the "
                                 "buffer taking records; cleared by a restart")),
        oldest_unacked_age(m.gauge("bl_agent_oldest_unacked_age_seconds",
                                   "Age of the oldest formed, unacked batch")),
        mqtt_connected(m.gauge("bl_agent_mqtt_connected", "1 while connected to a broker")),
        sealed(m.counter("bl_agent_batches_sealed_total",
                         "Batch publishes sealed to the aggregators' key (resends included)")),
        events_reported(m.labeledCounter(
            "bl_agent_events_reported_total",
            "Events sent to the central audit trail on the status topic (duplicate_identity)",
            "kind")),
        seal_micros(m.counter("bl_agent_seal_microseconds_total",
                              "Time spent encoding and sealing batches (divide by "
                              "bl_agent_batches_sealed_total for the cost per batch)")) {}

  // One published, unacked batch.
  struct InFlight {
    size_t bytes = 0;                     // encoded size, counted against window_bytes
    Clock::time_point due;                // re-publish at this time (when connected)
    bool published = false;               // at least once by this process
    const char* due_why = "ack_timeout";  // for the resend log line
    std::string digest;                   // batchDigest() of its content, when acks are verified
  };

  DurableBuffer& buffer;
  const ForwarderOptions options;
  const std::string batch_topic;
  const std::string ack_topic;
  const std::string status_topic;
  const std::string online_prefix;  // `<prefix>/aggregators/<name>/online`
  Counter& sent;
  Counter& acked;
  Counter& retried;
  Counter& refused;
  LabeledCounter& acks_refused;
  LabeledCounter& announcements_refused;
  Gauge& buffer_records;
  Gauge& buffer_bytes;
  Counter& buffer_damaged;
  Gauge& buffer_damaged_rows;
  Gauge& buffer_io_failed;
  uint64_t damaged_counted = 0;  // of BufferStats::damaged_found, already in buffer_damaged
  Gauge& oldest_unacked_age;
  Gauge& mqtt_connected;
  Counter& sealed;
  LabeledCounter& events_reported;
  Counter& seal_micros;

  // Shared with Paho's thread: only the queue and the connection state.
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::string> ack_queue;
  uint64_t dropped_acks = 0;
  bool up = false;
  uint64_t up_generation = 0;  // incremented on every (re)connect
  std::deque<std::pair<std::string, std::string>> announcement_queue;  // (topic, payload)
  uint64_t dropped_announcements = 0;
  bool stopping = false;
  bool wake = false;
  std::deque<protocol::WireAgentEvent> event_queue;     // for the central audit trail
  std::map<std::string, Clock::time_point> last_event;  // by kind: the rate limit

  // Forwarder thread only.
  std::map<uint64_t, InFlight> in_flight;  // by seq: oldest first
  std::deque<uint64_t> startup_resend;     // unacked at start, not yet re-published
  size_t in_flight_bytes = 0;
  size_t last_batch_bytes = 0;
  uint64_t seen_generation = 0;
  bool connected = false;
  // Announcements (forwarder thread). With `ca_pem` set they must be signed by
  // an aggregator certificate (CN "aggregator.<name>") that chains to it.
  std::string ca_pem;
  struct AggregatorSeen {
    uint64_t epoch = 0;          // of its latest online notice
    bool offline_armed = false;  // an offline notice of that epoch would count (once)
    std::string certificate;     // the one last verified for it
  };
  std::map<std::string, AggregatorSeen> aggregators;  // only verified names
  Clock::time_point last_wave{};
  const char* pending_wave = nullptr;  // a resend waiting out kAnnouncementResendInterval
  Clock::time_point checks_window{};
  int checks_in_window = 0;
  Clock::time_point error_backoff_until{};
  std::atomic<size_t> in_flight_count{0};
  std::atomic<bool> connected_flag{false};
  // For progress(), steadyMicros() values: when the link went down (0: up;
  // set by Paho's thread), and since when batches wait without an ack (0:
  // none waits; forwarder thread).
  std::atomic<int64_t> down_since_us{steadyMicros()};
  std::atomic<int64_t> unacked_since_us{0};

  std::unique_ptr<protocol::BatchSealer> sealer;  // set when options.seal is
  std::unique_ptr<mqtt::Client> client;
  std::thread thread;

  // --- Paho's thread: post and return. ---
  void onMessage(mqtt::Message&& m) {
    if (m.topic.rfind(online_prefix, 0) == 0) {
      {
        std::lock_guard lock(mutex);
        if (announcement_queue.size() >= kMaxQueuedAnnouncements) {
          ++dropped_announcements;
          return;
        }
        announcement_queue.emplace_back(std::move(m.topic), std::move(m.payload));
        wake = true;
      }
      cv.notify_one();
      return;
    }
    if (m.topic != ack_topic) return;
    {
      std::lock_guard lock(mutex);
      if (ack_queue.size() >= kMaxQueuedAcks) {
        ++dropped_acks;
        return;
      }
      ack_queue.push_back(std::move(m.payload));
      wake = true;
    }
    cv.notify_one();
  }
  void onConnection(bool is_up) {
    mqtt_connected.set(is_up ? 1 : 0);
    connected_flag.store(is_up);
    if (is_up) {
      down_since_us.store(0);
    } else {
      // Each failed reconnect reports down again: the outage began at the first.
      int64_t up_marker = 0;
      down_since_us.compare_exchange_strong(up_marker, steadyMicros());
    }
    {
      std::lock_guard lock(mutex);
      up = is_up;
      if (is_up) ++up_generation;
      wake = true;
    }
    cv.notify_one();
  }

  // Any thread: queued for the status topic, at most one of a kind per kEventInterval.
  void reportEvent(std::string kind, std::string detail) {
    const auto now = Clock::now();
    {
      std::lock_guard lock(mutex);
      auto last = last_event.find(kind);
      if (last != last_event.end() && now - last->second < kEventInterval) return;
      if (event_queue.size() >= kMaxQueuedEvents) return;
      last_event[kind] = now;
      event_queue.push_back({std::move(kind), nowMicros(), std::move(detail)});
      wake = true;
    }
    cv.notify_one();
  }

  // --- Forwarder thread. ---
  // Sends the queued events in one status message, tagged with the ack key
  // when sealing is on; kept for the next try when the publish fails.
  void sendEvents(std::deque<protocol::WireAgentEvent>& events) {
    if (events.empty()) return;
    protocol::WireAgentStatus status;
    status.agent_id = options.agent_id;
    status.sent_at_us = nowMicros();
    status.events.assign(events.begin(), events.end());
    if (sealer) protocol::signAgentStatus(sealer->ackKey(), status);
    Status s = client->publish(status_topic, protocol::encodeAgentStatus(status), 1);
    if (!s) {
      log::warn("agent_events_unsent",
                {{"count", static_cast<uint64_t>(events.size())}, {"error", s.toString()}});
      std::lock_guard lock(mutex);
      while (!events.empty() && event_queue.size() < kMaxQueuedEvents) {
        event_queue.push_front(std::move(events.back()));
        events.pop_back();
      }
      return;
    }
    for (const auto& e : events) {
      events_reported.with(e.kind).inc();
      log::info("agent_event_reported", {{"kind", e.kind}});
    }
  }

  bool windowAllows() const {
    if (in_flight.empty()) return true;
    return in_flight.size() < options.window_batches &&
           in_flight_bytes + last_batch_bytes <= options.window_bytes;
  }

  void track(uint64_t seq, size_t bytes) {
    InFlight& f = in_flight[seq];
    in_flight_bytes -= f.bytes;
    f.bytes = bytes;
    in_flight_bytes += bytes;
    last_batch_bytes = bytes;
    in_flight_count.store(in_flight.size());
  }

  void untrack(std::map<uint64_t, InFlight>::iterator it) {
    in_flight_bytes -= it->second.bytes;
    in_flight.erase(it);
    in_flight_count.store(in_flight.size());
  }

  // Encodes and publishes; the batch is in `in_flight` afterwards whatever happens,
  // so a failed publish is simply retried.
  void publish(PendingBatch&& batch, const char* why) {
    const uint64_t seq = batch.seq;
    const protocol::WireBatch wire = toWire(options.agent_id, std::move(batch));
    // Acks are checked against the content they name. A resend carries the
    // same records, so the digest of its first publish stands.
    auto known = in_flight.find(seq);
    std::string digest = sealer && (known == in_flight.end() || known->second.digest.empty())
                             ? protocol::batchDigest(wire)
                             : std::string();
    std::string payload;
    Status s;
    if (sealer) {
      const int64_t started = steadyMicros();
      auto sealed_payload = sealer->seal(wire, options.zstd_level);
      seal_micros.inc(static_cast<uint64_t>(steadyMicros() - started));
      if (sealed_payload.isOk()) {
        sealed.inc();
        payload = std::move(sealed_payload).value();
      } else {
        s = sealed_payload.status().withContext("sealing batch " + std::to_string(seq));
      }
    } else {
      payload = protocol::encodeBatch(wire, options.zstd_level);
    }
    // A batch that failed to seal is tracked too, so it is retried like a failed publish.
    track(seq, payload.size());
    InFlight& f = in_flight[seq];
    if (!digest.empty()) f.digest = std::move(digest);
    if (s.isOk()) s = client->publish(batch_topic, std::move(payload), 1);
    const auto now = Clock::now();
    if (!s.isOk()) {
      f.due = now + std::min(options.ack_timeout, kErrorBackoff);
      log::warn("batch_publish_failed", {{"seq", seq}, {"error", s.toString()}});
      return;
    }
    BL_FAILPOINT("agent.after_publish_before_ack");
    f.due = now + options.ack_timeout;
    f.due_why = "ack_timeout";
    if (!f.published && std::string_view(why) == "new") {
      sent.inc();
    } else {
      retried.inc();
      log::info("batch_resent", {{"seq", seq}, {"why", why}});
    }
    f.published = true;
  }

  // Re-publishes a batch from the buffer: same seq, same records. False when
  // the buffer failed (the caller backs off); a batch no longer there was acked.
  bool republish(uint64_t seq, const char* why) {
    auto loaded = buffer.loadBatch(seq);
    if (!loaded.isOk()) {
      if (loaded.status().code() == Code::kNotFound) {
        auto it = in_flight.find(seq);
        if (it != in_flight.end()) untrack(it);
        return true;
      }
      log::error("batch_load_failed", {{"seq", seq}, {"error", loaded.status().toString()}});
      error_backoff_until = Clock::now() + kErrorBackoff;
      return false;
    }
    publish(std::move(loaded).value(), why);
    return true;
  }

  // Unknown seqs are routine (the second ack of a resend): counted, logged quietly.
  void refuseAck(const char* reason, const protocol::WireAck& ack, bool loud = true) {
    acks_refused.with(reason).inc();
    const std::string aggregator = log::printableExcerpt(ack.aggregator, 64);
    log::write(loud ? log::Level::kWarn : log::Level::kDebug, "ack_refused",
               {{"seq", ack.batch_seq},
                {"reason", reason},
                {"status", static_cast<uint64_t>(ack.status)},
                {"aggregator", aggregator}});
  }

  // The digest of a batch this process has not published yet (unacked at
  // start): its ack may still come from a publish before the restart.
  std::string pendingDigest(uint64_t seq) {
    auto loaded = buffer.loadBatch(seq);
    if (!loaded.isOk()) return {};
    return protocol::batchDigest(toWire(options.agent_id, std::move(loaded).value()));
  }

  void handleAck(const std::string& payload) {
    protocol::DecodeLimits limits;
    limits.max_message_bytes = kMaxAckBytes;
    limits.max_inflated_bytes = kMaxAckBytes;
    auto ack = protocol::decodeAck(payload, limits);
    if (!ack.isOk()) {
      acks_refused.with("forged").inc();
      log::warn("ack_undecodable", {{"topic", ack_topic}, {"error", ack.status().toString()}});
      return;
    }
    if (ack->agent_id != options.agent_id) {
      acks_refused.with("forged").inc();
      log::warn("ack_for_other_agent",
                {{"agent", log::printableExcerpt(ack->agent_id, 64)}, {"seq", ack->batch_seq}});
      return;
    }
    // Sealing on: only an ack tagged with the key this agent shares with the
    // aggregators counts. The broker, a bridge or any fleet certificate can
    // publish here; none of them holds that key.
    if (sealer) {
      switch (protocol::checkAck(sealer->ackKey(), *ack)) {
        case protocol::AckCheck::kAuthentic:
          break;
        case protocol::AckCheck::kUnauthenticated:
          return refuseAck("forged", *ack);
        case protocol::AckCheck::kBadTag:
          return refuseAck("tampered", *ack);
      }
    }
    const uint64_t seq = ack->batch_seq;
    auto it = in_flight.find(seq);
    auto pending = std::find(startup_resend.begin(), startup_resend.end(), seq);
    // Acks for seqs not held were already handled (a resend's second ack), or
    // name a batch this agent never had.
    if (it == in_flight.end() && pending == startup_resend.end()) {
      return refuseAck("unknown_batch", *ack, /*loud=*/false);
    }

    if (ack->status == protocol::AckStatus::kRefused) {
      refused.inc();
      log::warn("batch_refused", {{"seq", seq},
                                  {"aggregator", log::printableExcerpt(ack->aggregator, 64)},
                                  {"reason", log::printableExcerpt(ack->message, 64)}});
      if (it != in_flight.end()) {
        it->second.due = Clock::now() + options.ack_timeout;
        it->second.due_why = "refused";
      }
      return;
    }
    if (sealer) {
      // An authentic ack for other content under this seq (an earlier life of
      // the seq, before a disk image was restored) must not delete this one.
      const std::string held = it != in_flight.end() && !it->second.digest.empty()
                                   ? it->second.digest
                                   : pendingDigest(seq);
      if (held.empty() || ack->digest != held) return refuseAck("replayed", *ack);
    }
    BL_FAILPOINT("agent.after_ack_before_delete");
    Status s = buffer.ack(seq);
    if (!s.isOk()) {
      // Kept: the resend gets a `duplicate` ack, and the delete is tried again.
      log::error("batch_ack_failed", {{"seq", seq}, {"error", s.toString()}});
      return;
    }
    acked.inc();
    unacked_since_us.store(steadyMicros());  // progress: the stall clock starts over
    if (it != in_flight.end()) untrack(it);
    if (pending != startup_resend.end()) startup_resend.erase(pending);
  }

  void refuseAnnouncement(const char* reason, std::string_view aggregator, std::string_view why) {
    announcements_refused.with(reason).inc();
    const std::string name = log::printableExcerpt(aggregator, 64);
    log::warn("announcement_refused", {{"reason", reason}, {"aggregator", name}, {"why", why}});
  }

  // An aggregator's online/offline notice (README "Authenticated acks"):
  // checked, then it may ask for a resend of everything in flight.
  void handleAnnouncement(const std::string& topic, const std::string& payload) {
    static constexpr std::string_view kTail = "/online";
    std::string_view name(topic);
    name.remove_prefix(online_prefix.size());
    if (name.size() <= kTail.size() || name.substr(name.size() - kTail.size()) != kTail) {
      return refuseAnnouncement("malformed", name, "not an online topic");
    }
    name.remove_suffix(kTail.size());
    auto a = protocol::decodeAnnouncement(payload);
    if (!a) return refuseAnnouncement("malformed", name, a.status().message());
    if (a->aggregator != name || !pki::validIdentityName(a->aggregator)) {
      return refuseAnnouncement("malformed", name, "names another aggregator than its topic");
    }
    auto seen = aggregators.find(a->aggregator);
    if (!ca_pem.empty()) {
      if (a->certificate_pem.empty() || a->signature.empty()) {
        return refuseAnnouncement("unsigned", name, "no certificate or signature");
      }
      const auto now = Clock::now();
      if (now - checks_window >= std::chrono::seconds(1)) {
        checks_window = now;
        checks_in_window = 0;
      }
      if (++checks_in_window > kMaxAnnouncementChecksPerSecond) {
        return refuseAnnouncement("rate_limited", name, "too many announcements to check");
      }
      if (seen == aggregators.end() || seen->second.certificate != a->certificate_pem) {
        Status trusted = pki::verifyCertificate(a->certificate_pem, ca_pem);
        auto info = pki::inspectCertificate(a->certificate_pem);
        if (trusted && info && info->common_name != pki::aggregatorIdentity(a->aggregator)) {
          trusted =
              Status(Code::kPermissionDenied, "certificate CN `" + info->common_name + "` is not " +
                                                  pki::aggregatorIdentity(a->aggregator));
        }
        if (!trusted) return refuseAnnouncement("untrusted_certificate", name, trusted.message());
      }
      Status signed_ok = pki::verifyMessageSignature(
          a->certificate_pem, protocol::announcementSigningInput(*a), a->signature);
      if (!signed_ok) return refuseAnnouncement("bad_signature", name, signed_ok.message());
    }
    AggregatorSeen& state = aggregators[a->aggregator];
    state.certificate = a->certificate_pem;
    if (a->online) {
      // (Re)connected, or its store is back: what it could not take goes now.
      state.epoch = a->epoch;
      state.offline_armed = true;
      requestWave("aggregator_online");
      return;
    }
    // Its will (or a clean stop): the batches in flight to it are lost with
    // its session. Only for the epoch it last announced, and once: an old will
    // replayed does nothing.
    if (!state.offline_armed || state.epoch != a->epoch) {
      return refuseAnnouncement("stale", name, "offline notice for an epoch not announced online");
    }
    state.offline_armed = false;
    requestWave("aggregator_offline");
  }

  void requestWave(const char* why) {
    // The last reason wins; either way everything in flight goes out again.
    pending_wave = why;
  }

  // A requested resend of everything in flight, at most once per interval.
  void resendWave(Clock::time_point now) {
    if (pending_wave == nullptr || now - last_wave < kAnnouncementResendInterval) return;
    for (auto& [seq, f] : in_flight) {
      f.due = now;
      f.due_why = pending_wave;
    }
    pending_wave = nullptr;
    last_wave = now;
  }

  void resendDue(Clock::time_point now) {
    std::vector<std::pair<uint64_t, const char*>> due;  // republish() may erase entries
    for (const auto& [seq, f] : in_flight) {
      if (f.due <= now) due.emplace_back(seq, f.published ? f.due_why : "unsent");
    }
    for (const auto& [seq, why] : due) {
      if (!republish(seq, why)) return;
    }
  }

  void sendStartupBacklog() {
    while (!startup_resend.empty() && windowAllows()) {
      const uint64_t seq = startup_resend.front();
      auto loaded = buffer.loadBatch(seq);
      if (!loaded.isOk() && loaded.status().code() != Code::kNotFound) {
        log::error("batch_load_failed", {{"seq", seq}, {"error", loaded.status().toString()}});
        error_backoff_until = Clock::now() + kErrorBackoff;
        return;
      }
      startup_resend.pop_front();
      if (loaded.isOk()) publish(std::move(loaded).value(), "restart");
    }
  }

  bool lingerExpired(const BufferStats& st) const {
    if (st.oldest_unbatched_us == 0) return false;
    const int64_t linger_us =
        std::chrono::duration_cast<std::chrono::microseconds>(options.linger).count();
    return nowMicros() - st.oldest_unbatched_us >= linger_us;
  }

  bool batchIsFull(const BufferStats& st) const {
    if (st.unbatched_records >= options.limits.max_records) return true;
    // stats() has no unbatched byte count; estimate it from the average entry.
    const uint64_t entries = st.records + st.rejects;
    if (entries == 0) return false;
    const double avg = static_cast<double>(st.bytes) / static_cast<double>(entries);
    return avg * static_cast<double>(st.unbatched_records) >=
           static_cast<double>(options.limits.max_bytes);
  }

  void formNewBatches() {
    while (startup_resend.empty() && windowAllows()) {
      const BufferStats st = buffer.stats();
      if (st.unbatched_records == 0) return;
      if (!batchIsFull(st) && !lingerExpired(st)) return;
      auto formed = buffer.formBatch(options.limits, nowMicros());
      if (!formed.isOk()) {
        log::error("batch_form_failed", {{"error", formed.status().toString()}});
        error_backoff_until = Clock::now() + kErrorBackoff;
        return;
      }
      if (!formed->has_value()) return;
      publish(std::move(**formed), "new");
    }
  }

  void updateGauges() {
    const BufferStats st = buffer.stats();
    if (st.batches == 0 && in_flight.empty()) {
      unacked_since_us.store(0);
    } else if (unacked_since_us.load() == 0) {
      unacked_since_us.store(steadyMicros());
    }
    buffer_records.set(static_cast<int64_t>(st.records + st.rejects));
    buffer_bytes.set(static_cast<int64_t>(st.bytes));
    if (st.damaged_found > damaged_counted) {
      buffer_damaged.inc(st.damaged_found - damaged_counted);
      damaged_counted = st.damaged_found;
    }
    buffer_damaged_rows.set(static_cast<int64_t>(st.damaged));
    buffer_io_failed.set(st.io_failed ? 1 : 0);
    oldest_unacked_age.set(
        st.oldest_unacked_us == 0
            ? 0
            : std::max<int64_t>(0, (nowMicros() - st.oldest_unacked_us) / 1000000));
  }

  // When the loop must look again: the next resend, the linger deadline, or a poll
  // (appends do not always notify()).
  Clock::time_point nextWake(Clock::time_point now) const {
    const milliseconds poll = std::clamp(options.linger / 2, milliseconds(5), milliseconds(50));
    auto next = now + poll;
    if (connected) {
      for (const auto& [seq, f] : in_flight) next = std::min(next, f.due);
    }
    if (pending_wave != nullptr) next = std::min(next, last_wave + kAnnouncementResendInterval);
    return std::max(next, error_backoff_until);
  }

  void run() {
    for (;;) {
      std::deque<std::string> acks;
      std::deque<std::pair<std::string, std::string>> announcements;
      std::deque<protocol::WireAgentEvent> events;
      bool is_up;
      uint64_t generation;
      uint64_t announcements_dropped;
      {
        std::unique_lock lock(mutex);
        if (stopping) return;
        acks.swap(ack_queue);
        announcements.swap(announcement_queue);
        is_up = up;
        if (is_up) events.swap(event_queue);
        generation = up_generation;
        wake = false;
        if (dropped_acks > 0) {
          log::warn("acks_dropped", {{"count", dropped_acks}});
          dropped_acks = 0;
        }
        announcements_dropped = dropped_announcements;
        dropped_announcements = 0;
      }
      for (const auto& payload : acks) handleAck(payload);
      if (announcements_dropped > 0) {
        announcements_refused.with("rate_limited").inc(announcements_dropped);
        log::warn("announcements_dropped", {{"count", announcements_dropped}});
      }
      for (const auto& [topic, payload] : announcements) handleAnnouncement(topic, payload);

      const auto now = Clock::now();
      connected = is_up;
      if (is_up && generation != seen_generation) {
        // After a reconnect whatever was in flight may be lost with the old session.
        seen_generation = generation;
        for (auto& [seq, f] : in_flight) {
          f.due = now;
          f.due_why = "reconnect";
        }
      }
      // An aggregator (re)connected or its store came back: batches published
      // while none could take them are resent now, not after ack_timeout. Or
      // one went away with some of them: the others get them now.
      resendWave(now);
      sendEvents(events);
      if (connected && now >= error_backoff_until) {
        resendDue(now);
        if (now >= error_backoff_until) sendStartupBacklog();
        if (now >= error_backoff_until) formNewBatches();
      }
      updateGauges();

      std::unique_lock lock(mutex);
      cv.wait_until(lock, nextWake(Clock::now()), [&] { return stopping || wake; });
    }
  }
};

Forwarder::Forwarder() = default;

Result<std::unique_ptr<Forwarder>> Forwarder::start(DurableBuffer& buffer, ForwarderOptions options,
                                                    MetricsRegistry& metrics) {
  if (options.agent_id.empty()) return Status::invalid("forwarder: agent id is empty");
  if (options.mqtt.broker_uris.empty()) return Status::invalid("forwarder: no broker URIs");
  if (options.window_batches == 0) return Status::invalid("forwarder: window_batches is 0");
  std::unique_ptr<Forwarder> f(new Forwarder());
  f->impl_ = std::make_unique<Impl>(buffer, std::move(options), metrics);
  Impl* impl = f->impl_.get();
  if (impl->options.seal) {
    auto sealer = protocol::BatchSealer::create(*impl->options.seal);
    if (!sealer.isOk()) {
      return sealer.status().withContext("forwarder: agent `" + impl->options.agent_id +
                                         "` sealing keys");
    }
    impl->sealer = std::move(sealer).value();
    log::info("forwarder_sealing",
              {{"aggregator_key_id", impl->sealer->keyId()}, {"acks", "authenticated"}});
  } else {
    // Without sealing keys there is no secret to tag acks with: whoever can
    // publish on this agent's ack topic can make it delete batches.
    log::warn("acks_unauthenticated",
              {{"agent", impl->options.agent_id},
               {"why",
                "no [security] sealing keys: batches travel plain and acks are not "
                "authenticated; set seal_key_file and aggregator_key_file"}});
  }

  if (!impl->options.mqtt.ca_file.empty()) {
    auto ca = pki::readFile(impl->options.mqtt.ca_file);
    if (!ca)
      return ca.status().withContext("forwarder: reading the fleet CA to check announcements");
    impl->ca_pem = std::move(ca).value();
  } else {
    log::warn("announcements_unauthenticated",
              {{"agent", impl->options.agent_id},
               {"why", "no mqtt.ca_file: aggregator online/offline notices are not checked"}});
  }

  auto unacked = buffer.unackedBatches();
  if (!unacked.isOk()) return unacked.status().withContext("forwarder: listing unacked batches");
  impl->startup_resend.assign(unacked->begin(), unacked->end());
  if (!impl->startup_resend.empty()) {
    log::info("forwarder_resuming", {{"unacked_batches", static_cast<uint64_t>(unacked->size())},
                                     {"oldest_seq", impl->startup_resend.front()}});
  }

  // Another live client under this identity (a cloned config, a stolen
  // certificate): reported to the central audit trail, not only logged here.
  mqtt::ClientOptions mqtt_options = impl->options.mqtt;
  mqtt_options.on_session_taken_over =
      [impl,
       before = std::move(mqtt_options.on_session_taken_over)](mqtt::ClientOptions::Takeover how) {
        if (before) before(how);
        impl->reportEvent("duplicate_identity", duplicateIdentityDetail(how));
      };
  impl->client = std::make_unique<mqtt::Client>(
      std::move(mqtt_options), [impl](mqtt::Message&& m) { impl->onMessage(std::move(m)); },
      [impl](bool up) { impl->onConnection(up); });
  BL_RETURN_IF_ERROR(impl->client->subscribe(impl->ack_topic, 1));
  BL_RETURN_IF_ERROR(impl->client->subscribe(onlineTopicFilter(impl->options.topic_prefix), 1));
  BL_RETURN_IF_ERROR(impl->client->start());
  impl->thread = std::thread([impl] { impl->run(); });
  return f;
}

Forwarder::~Forwarder() { stop(); }

void Forwarder::notify() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->wake = true;
  }
  impl_->cv.notify_one();
}

void Forwarder::stop() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->cv.notify_one();
  if (impl_->thread.joinable()) impl_->thread.join();
  if (impl_->client) impl_->client->stop();  // no Paho callback runs after this
  impl_->mqtt_connected.set(0);
}

size_t Forwarder::inFlight() const { return impl_->in_flight_count.load(); }
bool Forwarder::connected() const { return impl_->connected_flag.load(); }

ForwardProgress Forwarder::progress() const {
  const int64_t now = steadyMicros();
  const auto since = [now](int64_t at_us) {
    return std::chrono::milliseconds(at_us == 0 ? 0 : std::max<int64_t>(0, now - at_us) / 1000);
  };
  ForwardProgress p;
  p.connected = impl_->connected_flag.load();
  p.disconnected_for = p.connected ? milliseconds(0) : since(impl_->down_since_us.load());
  p.in_flight = impl_->in_flight_count.load();
  p.unacked_for = since(impl_->unacked_since_us.load());
  return p;
}

std::string statusTopic(const std::string& prefix, const std::string& agent_id) {
  return prefix + "/agents/" + agent_id + "/status";
}

std::string duplicateIdentityDetail(mqtt::ClientOptions::Takeover how) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "?");
  const std::string why =
      how == mqtt::ClientOptions::Takeover::kBrokerSaidSo
          ? "the broker gave this agent's session to another connection with the same identity"
          : "the broker cut this agent's connection " + std::to_string(mqtt::kTakeoverDrops) +
                " times within " + std::to_string(mqtt::kTakeoverWindow.count()) +
                " s without a reason: another live client with the same identity";
  return why + " (reported by the copy on host `" + log::printableExcerpt(host, 64) + "`)";
}

std::string onlineTopicFilter(const std::string& prefix) {
  return prefix + "/aggregators/+/online";
}

}  // namespace branchline::agent
