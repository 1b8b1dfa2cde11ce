// Randomness: the kernel's (getrandom), and one generator for the mbedTLS calls
// that want an f_rng callback (ECDSA signing, key generation, certificate writing,
// scalar blinding).
//
// Neither replays after a fork or a VM snapshot resumed twice: fillRandom asks
// the kernel every time, and the Drbg is reseeded from the kernel on every
// request (prediction resistance), so a copied process state yields no copied
// output. Linux reseeds on a VM restore when the hypervisor exposes a VM
// generation ID.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "shared/core/status.h"

namespace branchline::crypto {

// Fills `out` from getrandom(2) (blocking only until the kernel pool is first
// initialized). kInternal naming the errno if the kernel refuses.
Status fillRandom(std::span<uint8_t> out);

// mbedTLS's CTR-DRBG, seeded from the system entropy source and fed fresh kernel
// entropy on every request. Not thread-safe: one per thread (threadDrbg) or per owner.
class Drbg {
 public:
  // `personalization` tells generators apart (mixed into the seed, not secret).
  static Result<std::unique_ptr<Drbg>> create(std::string_view personalization);
  ~Drbg();
  Drbg(const Drbg&) = delete;
  Drbg& operator=(const Drbg&) = delete;

  Status fill(std::span<uint8_t> out);

  // The f_rng adapter: pass `&Drbg::callback` and the Drbg* as p_rng.
  static int callback(void* drbg, unsigned char* out, size_t n);

 private:
  Drbg();
  struct State;
  std::unique_ptr<State> state_;
};

// This thread's own generator, created and seeded on first use.
Result<Drbg*> threadDrbg();

}  // namespace branchline::crypto
