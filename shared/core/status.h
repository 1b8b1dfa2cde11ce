// Status and Result: the one error model for every fallible call in Branchline.
// Expected failures (bad input, a full buffer, a broker away) are values; the
// code tells the caller whether to retry now, back off, or give up.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace branchline {

enum class Code {
  kOk,
  kInvalidArgument,    // the input is wrong; retrying the same input fails again
  kNotFound,           // the named thing does not exist
  kAlreadyExists,      // the thing is already there (idempotent callers treat as success)
  kResourceExhausted,  // over a bound (buffer full, too large); back off, then retry
  kUnavailable,        // a dependency is away (broker, store); retry later
  kPermissionDenied,   // not allowed for this identity
  kDataLoss,           // stored data is corrupt or unreadable
  kInternal,           // a bug or an environment failure (I/O error)
};

const char* codeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  static Status invalid(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status notFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status exhausted(std::string m) { return {Code::kResourceExhausted, std::move(m)}; }
  static Status unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status dataLoss(std::string m) { return {Code::kDataLoss, std::move(m)}; }
  static Status internal(std::string m) { return {Code::kInternal, std::move(m)}; }

  bool isOk() const { return code_ == Code::kOk; }
  explicit operator bool() const { return isOk(); }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid_argument: record 17: field `email`: not an email address"
  std::string toString() const;
  // Prefixes context: status.withContext("batch 12") -> "batch 12: <message>".
  Status withContext(const std::string& context) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).isOk() && "Result built from an OK status has no value");
  }

  bool isOk() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return isOk(); }
  const Status& status() const {
    static const Status kOk;
    return isOk() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace branchline

// Returns early from a function returning Status (or Result) when expr fails.
#define BL_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::branchline::Status bl_status_ = (expr); \
    if (!bl_status_.isOk()) return bl_status_; \
  } while (0)
