#include "shared/crypto/mbedtls_error.h"

#include <mbedtls/error.h>

#include <cstdio>

namespace branchline::crypto {

std::string mbedtlsErrorText(int rc) {
  char buf[160];
  mbedtls_strerror(rc, buf, sizeof buf);
  char code[24];
  std::snprintf(code, sizeof code, " (-0x%04x)", static_cast<unsigned>(-rc));
  return std::string(buf) + code;
}

}  // namespace branchline::crypto
