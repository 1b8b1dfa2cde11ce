// mbedTLS error codes as text, for the code that still calls mbedTLS itself
// (X.509 in shared/pki): "<mbedTLS's description> (-0x4f80)".
#pragma once

#include <string>

namespace branchline::crypto {

std::string mbedtlsErrorText(int rc);

}  // namespace branchline::crypto
