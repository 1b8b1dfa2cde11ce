// Secrets in memory: bytes and text that are wiped (mbedtls_platform_zeroize,
// which the compiler may not elide) when they go away, so a key outlives its
// use only as long as its holder. Every key, shared secret and key file's text
// in Branchline lives in one of these. Never logged, never in an error message.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace branchline::crypto {

// Overwrites n bytes with zeros in a way the optimizer keeps.
void zeroize(void* p, size_t n);
// Zeroes the string's bytes, then clears it.
void zeroize(std::string& s);

// N secret bytes, zeroed on destruction. Move-only: a move zeroes the source, so
// exactly one copy exists.
template <size_t N>
class SecretBytes {
 public:
  static constexpr size_t kSize = N;
  SecretBytes() = default;
  ~SecretBytes() { zeroize(bytes_.data(), N); }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  SecretBytes(SecretBytes&& other) noexcept : bytes_(other.bytes_) {
    zeroize(other.bytes_.data(), N);
  }
  SecretBytes& operator=(SecretBytes&& other) noexcept {
    if (this != &other) {
      bytes_ = other.bytes_;
      zeroize(other.bytes_.data(), N);
    }
    return *this;
  }

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  static constexpr size_t size() { return N; }
  std::span<uint8_t, N> span() { return bytes_; }
  std::span<const uint8_t, N> span() const { return bytes_; }
  // The bytes as the fixed-size array other APIs take (X25519Key and the like).
  std::array<uint8_t, N>& array() { return bytes_; }
  const std::array<uint8_t, N>& array() const { return bytes_; }

 private:
  std::array<uint8_t, N> bytes_{};
};

// Secret text (a key file's contents, a PEM private key), zeroed on destruction.
class SecretString {
 public:
  SecretString() = default;
  explicit SecretString(std::string text) : text_(std::move(text)) {}
  ~SecretString() { zeroize(text_); }
  SecretString(const SecretString&) = delete;
  SecretString& operator=(const SecretString&) = delete;
  SecretString(SecretString&& other) noexcept;
  SecretString& operator=(SecretString&& other) noexcept;

  const std::string& str() const { return text_; }
  std::string& str() { return text_; }
  std::string_view view() const { return text_; }
  // Moves the text out; the caller now owns wiping it.
  std::string release() { return std::move(text_); }

 private:
  std::string text_;
};

// The bytes of a string, for the byte-span APIs of this module.
inline std::span<const uint8_t> bytesOf(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace branchline::crypto
