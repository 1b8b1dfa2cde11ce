#include "shared/crypto/random.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <sys/random.h>

#include <cerrno>
#include <cstring>

#include "shared/crypto/mbedtls_error.h"

namespace branchline::crypto {

Status fillRandom(std::span<uint8_t> out) {
  size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::getrandom(out.data() + got, out.size() - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::internal(std::string("getrandom: ") + std::strerror(errno));
    got += size_t(r);
  }
  return Status::ok();
}

struct Drbg::State {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  State() {
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
  }
  ~State() {  // each free zeroes its state
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;
};

Drbg::Drbg() : state_(std::make_unique<State>()) {}
Drbg::~Drbg() = default;

Result<std::unique_ptr<Drbg>> Drbg::create(std::string_view personalization) {
  std::unique_ptr<Drbg> d(new Drbg());
  State& st = *d->state_;
  int rc = mbedtls_ctr_drbg_seed(&st.drbg, mbedtls_entropy_func, &st.entropy,
                                 reinterpret_cast<const unsigned char*>(personalization.data()),
                                 personalization.size());
  if (rc != 0) {
    return Status::internal("seeding the random generator failed (" + mbedtlsErrorText(rc) + ")");
  }
  // Fresh system entropy for every request: a forked process, or a VM snapshot
  // resumed twice, must not replay the generator's stream (and so an ephemeral
  // key). It costs one getrandom per request.
  mbedtls_ctr_drbg_set_prediction_resistance(&st.drbg, MBEDTLS_CTR_DRBG_PR_ON);
  return d;
}

Status Drbg::fill(std::span<uint8_t> out) {
  int rc = mbedtls_ctr_drbg_random(&state_->drbg, out.data(), out.size());
  if (rc != 0) return Status::internal("random generator failed (" + mbedtlsErrorText(rc) + ")");
  return Status::ok();
}

int Drbg::callback(void* drbg, unsigned char* out, size_t n) {
  return mbedtls_ctr_drbg_random(&static_cast<Drbg*>(drbg)->state_->drbg, out, n);
}

Result<Drbg*> threadDrbg() {
  thread_local std::unique_ptr<Drbg> drbg;
  if (drbg == nullptr) {
    auto created = Drbg::create("branchline thread rng");
    if (!created) return created.status();
    drbg = std::move(created).value();
  }
  return drbg.get();
}

}  // namespace branchline::crypto
