# Branchline wire schema, version 1. Every MQTT payload is one Envelope; its
# body holds a Batch (agent -> aggregators) or an Ack (aggregator -> agent),
# encoded with `codec` and protected with `cipher`. Fields are only ever added
# (with new ordinals), never renumbered, so old agents keep working.
@0x8b006e497840b9c3;

$import "/capnp/c++.capnp".namespace("branchline::wire");

enum Codec {
  none @0;   # body is the raw Cap'n Proto message
  zstd @1;   # body is a zstd frame of the Cap'n Proto message
}

enum Cipher {
  none @0;              # plaintext (transport security only)
  x25519Aes256Gcm @1;   # sealed batch (protocol/seal.h): body is AES-256-GCM ciphertext || tag
}

enum Kind {
  batch @0;
  ack @1;
}

struct Envelope {
  formatVersion @0 :UInt16;   # 1
  kind @1 :Kind;
  codec @2 :Codec;
  cipher @3 :Cipher;
  keyId @4 :Text;             # which aggregator key sealed it ("" when cipher = none)
  agentId @5 :Text;
  batchSeq @6 :UInt64;
  rawSize @7 :UInt64;         # size of the body once decoded; checked against limits first
  body @8 :Data;
  ephemeralKey @9 :Data;      # sealed: the sender's one-time X25519 public key (32 bytes)
}

struct Record {
  source @0 :Text;
  key @1 :Text;               # record key: dedup identity within its source
  ingestedAt @2 :Int64;       # Unix microseconds when the agent accepted it
  payload @3 :Text;           # the normalized record, canonical JSON text
}

struct Reject {
  source @0 :Text;
  raw @1 :Text;               # the record as received (as far as it could be read)
  reasons @2 :Text;           # JSON array of {"field":..,"reason":..}
  ingestedAt @3 :Int64;
}

# A buffer row the agent could not read back (its sealed value failed
# authentication): reported with the batch it would have travelled in, so the
# central audit trail names it (`buffer_damaged`). Never record contents.
struct Damaged {
  table @0 :Text;             # "records" or "quarantine"
  row @1 :UInt64;             # the row id in the agent's buffer
  source @2 :Text;
  ingestedAt @3 :Int64;
  reason @4 :Text;            # which value failed, and how
}

struct Batch {
  agentId @0 :Text;
  seq @1 :UInt64;             # per-agent batch sequence, never reused
  createdAt @2 :Int64;        # Unix microseconds when the batch was formed
  records @3 :List(Record);
  rejects @4 :List(Reject);
  damaged @5 :List(Damaged);  # rows of this batch lost to damage; empty normally
}

enum AckStatus {
  stored @0;      # committed centrally by this delivery
  duplicate @1;   # already in the ledger: committed by an earlier delivery
  refused @2;     # could not be accepted (malformed, over a limit); see message
}

struct Ack {
  agentId @0 :Text;
  batchSeq @1 :UInt64;
  status @2 :AckStatus;
  storedRecords @3 :UInt32;
  duplicateRecords @4 :UInt32;
  rejects @5 :UInt32;
  message @6 :Text;
  aggregator @7 :Text;
  # Authenticated acks (protocol/ack_auth.h). Empty on an unauthenticated ack
  # (no sealing keys), which a sealing agent refuses.
  digest @8 :Text;            # the batch's content digest (batch_digest.h), hex; "" when unknown
  keyId @9 :Text;             # the aggregator sealing key whose agreement with the agent keys the tag
  tag @10 :Data;              # HMAC-SHA256 over every field above (ack_auth.h)
}

# An aggregator's announcement on `<prefix>/aggregators/<name>/online`: it can
# take batches (online), or it went away (offline: its MQTT last will, or a
# clean stop), so agents resend what is unacked at once. Not in an Envelope:
# it is one Cap'n Proto message of its own, a broadcast to every agent.
struct Announcement {
  formatVersion @0 :UInt16;   # 1
  aggregator @1 :Text;        # its name; its certificate's CN is "aggregator.<name>"
  online @2 :Bool;
  epoch @3 :UInt64;           # random, new for every aggregator process: an offline
                              # notice counts only for the epoch of its latest online one
  issuedAt @4 :Int64;         # Unix microseconds when it was signed
  certificate @5 :Text;       # the aggregator's client certificate (PEM), chained to the fleet CA
  signature @6 :Data;         # ECDSA-SHA256 by that certificate's key over announcementSigningInput()
}

# What an agent tells the central side about itself, on
# `<prefix>/agents/<id>/status` (README "Agent status events"). Not in an
# Envelope: one Cap'n Proto message of its own. Tagged like an ack, with the
# agent's ack key (ack_auth.h), so the broker can neither forge nor alter one.
struct AgentEvent {
  kind @0 :Text;              # e.g. "duplicate_identity"
  at @1 :Int64;               # Unix microseconds when the agent saw it
  detail @2 :Text;            # a reason, never record contents
}

struct AgentStatus {
  formatVersion @0 :UInt16;   # 1
  agentId @1 :Text;
  sentAt @2 :Int64;           # Unix microseconds
  events @3 :List(AgentEvent);
  keyId @4 :Text;             # the aggregator sealing key whose agreement keys the tag
  tag @5 :Data;               # HMAC-SHA256 over every field above (ack_auth.h); "" when unsealed
}
