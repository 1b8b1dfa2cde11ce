// fuzz_seed_gen: writes the binary seed inputs of the batch fuzz targets
// (tests/fuzz/corpus/fuzz_batch_open/ from encodeBatch/encodeAck,
// tests/fuzz/corpus/fuzz_sealed_open/ from sealBatch with the fixed test keys of
// seal_test_keys.h) so they are real payloads of the current wire format. Sealing
// draws a fresh ephemeral key, so sealed seeds differ on every run; all of them
// open. Run it again after a format change:
//   build/tests/fuzz_seed_gen tests/fuzz/corpus
// Text seeds (JSON bodies, TOML configs) are written by hand.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "protocol/batch_codec.h"
#include "protocol/envelope.h"
#include "protocol/seal.h"
#include "tests/fuzz/seal_test_keys.h"

namespace {

namespace fs = std::filesystem;
namespace protocol = branchline::protocol;

bool writeFile(const fs::path& file, std::string_view bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz_seed_gen: cannot write %s\n", file.c_str());
    return false;
  }
  std::printf("%s (%zu bytes)\n", file.c_str(), bytes.size());
  return true;
}

protocol::WireBatch sampleBatch() {
  protocol::WireBatch b;
  b.agent_id = "office-1";
  b.seq = 42;
  b.created_at_us = 1764071627000000;
  b.records.push_back({"customer", "C-1001", 1764071627000000,
                       R"({"external_id":"C-1001","name":"Ada Example","email":"ada@example.com",)"
                       R"("channel":"web","created_at":"2026-11-25T11:53:47Z"})"});
  b.records.push_back({"customer", "C-1002", 1764071627000001,
                       R"({"external_id":"C-1002","name":"Bo Sample","email":"bo@example.org",)"
                       R"("channel":"office","created_at":"2026-11-25T12:00:00Z",)"
                       R"("phone":"+14155550132","consent_marketing":true})"});
  b.rejects.push_back({"customer", R"({"external_id":"C-1003","email":"nope"})",
                       R"([{"field":"email","reason":"not an email address"}])", 1764071627000002});
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seed_gen <tests/fuzz/corpus>\n");
    return 2;
  }
  const fs::path batch_dir = fs::path(argv[1]) / "fuzz_batch_open";
  fs::create_directories(batch_dir);
  bool ok = true;

  const protocol::WireBatch batch = sampleBatch();
  const std::string zstd = protocol::encodeBatch(batch, 1);
  ok &= writeFile(batch_dir / "valid-batch-zstd", zstd);
  ok &= writeFile(batch_dir / "valid-batch-raw", protocol::encodeBatch(batch, 0));
  protocol::WireBatch empty;
  empty.agent_id = "a";
  empty.seq = 1;
  ok &= writeFile(batch_dir / "valid-batch-empty", protocol::encodeBatch(empty, 1));

  protocol::WireAck ack;
  ack.agent_id = "office-1";
  ack.batch_seq = 42;
  ack.stored_records = 2;
  ack.rejects = 1;
  ack.aggregator = "agg-a";
  ok &= writeFile(batch_dir / "valid-ack-stored", protocol::encodeAck(ack));
  ack.status = protocol::AckStatus::kRefused;
  ack.stored_records = 0;
  ack.message = "batch refused: malformed batch body";
  ok &= writeFile(batch_dir / "valid-ack-refused", protocol::encodeAck(ack));

  // Refused inputs: a cut frame, a flipped body byte, and a small payload that
  // declares (and would inflate to) more than the fuzz limits allow.
  ok &=
      writeFile(batch_dir / "invalid-truncated", std::string_view(zstd).substr(0, zstd.size() / 2));
  std::string flipped = zstd;
  flipped[flipped.size() - 8] = static_cast<char>(flipped[flipped.size() - 8] ^ 0x20);
  ok &= writeFile(batch_dir / "mutated-flipped", flipped);
  protocol::WireBatch bomb;
  bomb.agent_id = "office-1";
  bomb.seq = 7;
  bomb.records.push_back({"customer", "k", 0, std::string(5 << 20, 'A')});
  ok &= writeFile(batch_dir / "invalid-bomb", protocol::encodeBatch(bomb, 19));

  const fs::path sealed_dir = fs::path(argv[1]) / "fuzz_sealed_open";
  fs::create_directories(sealed_dir);
  const auto& keys = branchline::fuzz::sealTestKeys();
  auto seal = [&](const fs::path& name, const protocol::WireBatch& b,
                  const protocol::SealKeyPair& agent, const protocol::SealKeyPair& aggregator,
                  int level) {
    auto sealed = protocol::sealBatch(b, {agent, aggregator.public_key}, level);
    if (!sealed.isOk()) {
      std::fprintf(stderr, "fuzz_seed_gen: %s: %s\n", name.c_str(),
                   sealed.status().toString().c_str());
      ok = false;
      return std::string();
    }
    ok &= writeFile(sealed_dir / name, *sealed);
    return *sealed;
  };
  const std::string sealed = seal("valid-sealed-office-1", batch, keys.office1, keys.aggregator, 1);
  protocol::WireBatch batch2 = batch;
  batch2.agent_id = "office-2";
  batch2.seq = 3;
  seal("valid-sealed-office-2-raw", batch2, keys.office2, keys.aggregator, 0);
  ok &= writeFile(sealed_dir / "valid-plain-batch", protocol::encodeBatch(batch, 1));
  // Refused: a retired key, a key in no ring, another agent's key (forged), an
  // agent that is not enrolled, a cut frame.
  seal("sealed-retired-key", batch, keys.office1, keys.retired, 1);
  seal("sealed-unknown-key", batch, keys.office1, keys.stranger, 1);
  seal("sealed-forged-by-office-2", batch, keys.office2, keys.aggregator, 1);
  protocol::WireBatch stranger = batch;
  stranger.agent_id = "office-3";
  seal("sealed-not-enrolled", stranger, keys.stranger, keys.aggregator, 1);
  ok &= writeFile(sealed_dir / "sealed-truncated",
                  std::string_view(sealed).substr(0, sealed.size() - 5));
  // Header fields the opener reads before authenticating anything: an all-zero
  // (low-order) ephemeral key, a short one, and a seq that no longer matches
  // the associated data. Written through the envelope layer, so the rest of
  // the frame stays well formed.
  auto tampered = [&](const fs::path& name, auto change) {
    auto parts = protocol::envelope::read(sealed, protocol::DecodeLimits{});
    if (!parts.isOk()) {
      std::fprintf(stderr, "fuzz_seed_gen: %s: %s\n", name.c_str(),
                   parts.status().toString().c_str());
      ok = false;
      return;
    }
    change(*parts);
    ok &= writeFile(sealed_dir / name, protocol::envelope::write(*parts));
  };
  tampered("sealed-zero-ephemeral",
           [](protocol::envelope::Parts& p) { p.ephemeral_key.assign(32, '\0'); });
  tampered("sealed-short-ephemeral",
           [](protocol::envelope::Parts& p) { p.ephemeral_key.resize(31); });
  tampered("sealed-seq-changed", [](protocol::envelope::Parts& p) { ++p.batch_seq; });
  return ok ? 0 : 1;
}
