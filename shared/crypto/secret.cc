#include "shared/crypto/secret.h"

#include <mbedtls/platform_util.h>

namespace branchline::crypto {

void zeroize(void* p, size_t n) {
  if (n != 0) mbedtls_platform_zeroize(p, n);
}

void zeroize(std::string& s) {
  // The whole capacity: a string shrunk earlier still holds old bytes past size().
  if (s.capacity() != 0) {
    s.resize(s.capacity());
    zeroize(s.data(), s.size());
  }
  s.clear();
}

// A moved-from std::string may keep its buffer (small strings are copied, not
// stolen): wipe whatever the source still holds.
SecretString::SecretString(SecretString&& other) noexcept : text_(std::move(other.text_)) {
  zeroize(other.text_);
}

SecretString& SecretString::operator=(SecretString&& other) noexcept {
  if (this != &other) {
    zeroize(text_);
    text_ = std::move(other.text_);
    zeroize(other.text_);
  }
  return *this;
}

}  // namespace branchline::crypto
