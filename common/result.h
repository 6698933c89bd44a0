#pragma once

// Errors as values. A Reason is a stable CamelCase word that maps one-to-one onto a status
// condition reason (DESIGN.md); the message names the field, file or URL that caused it.
//
// Result<T> holds a T or an Error. Its method names follow std::expected so that C++23 can replace
// it with a `using`. Propagate errors the leveldb way: `if (!r) return r.error();`.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace modelcache {

enum class Reason {
  InvalidSpec,
  RepoNotFound,
  RevisionNotFound,
  Unauthorized,
  RateLimited,
  NetworkError,
  ChecksumMismatch,
  InsufficientStorage,
  UnsupportedArchitecture,
  ShardConfigInvalid,
  StorageError,
  // The spec's artifactName belongs to another resource of the store with a different spec.
  ArtifactNameConflict,
  // The resource's endpoint stalled (sent less than the stall floor for --stall-timeout) in
  // --stall-limit consecutive jobs: permanent until the spec changes (spec.force counts).
  EndpointStalled,
  // Not failures of the resource: work stopped because the spec changed, the resource was
  // deleted or the daemon is shutting down. Never written as a condition reason.
  Cancelled,
  // A bug or an impossible state; reported as "InternalError".
  Internal,
};

// The condition reason, verbatim: "RepoNotFound".
std::string_view ReasonName(Reason reason);

// Parses a reason word; nullopt if it is not one of ours.
std::optional<Reason> ParseReason(std::string_view word);

// Transient reasons are retried with backoff (NetworkError, RateLimited, StorageError,
// InsufficientStorage, ChecksumMismatch, Internal); permanent ones wait for the spec to change.
bool IsTransient(Reason reason);

struct Error {
  Reason reason = Reason::Internal;
  std::string message;
  // Set when the server said how long to wait (Retry-After).
  std::optional<std::chrono::milliseconds> retry_after;
  // Set on a NetworkError when the peer stalled: it sent less than the stall floor for the
  // stall timeout (a server dripping bytes), as opposed to refusing or breaking the connection.
  bool stalled = false;

  Error() = default;
  Error(Reason r, std::string m) : reason(r), message(std::move(m)) {}
  Error(Reason r, std::string m, std::optional<std::chrono::milliseconds> after)
      : reason(r), message(std::move(m)), retry_after(after) {}

  // "RepoNotFound: repository x not found".
  std::string ToString() const;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(const T& value) : data_(value) {}                  // NOLINT(google-explicit-constructor)
  Result(T&& value) : data_(std::move(value)) {}            // NOLINT(google-explicit-constructor)
  Result(Error error) : data_(std::move(error)) {}          // NOLINT(google-explicit-constructor)
  template <typename U>
    requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::decay_t<U>, T> &&
             !std::is_same_v<std::decay_t<U>, Error> && !std::is_same_v<std::decay_t<U>, Result>)
  // The requires-clause keeps Result, T and Error out (clang-tidy 14 knows only enable_if).
  // NOLINTNEXTLINE(google-explicit-constructor,bugprone-forwarding-reference-overload)
  Result(U&& value) : data_(T(std::forward<U>(value))) {}

  bool has_value() const { return data_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(data_); }
  const T& value() const& { return std::get<0>(data_); }
  T&& value() && { return std::get<0>(std::move(data_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(data_); }
  Error& error() { return std::get<1>(data_); }

 private:
  std::variant<T, Error> data_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool has_value() const { return !error_.has_value(); }
  explicit operator bool() const { return has_value(); }
  const Error& error() const { return *error_; }
  Error& error() { return *error_; }

 private:
  std::optional<Error> error_;
};

using VoidResult = Result<void>;

}  // namespace modelcache
