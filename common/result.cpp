#include "common/result.h"

#include <array>

namespace modelcache {
namespace {

struct ReasonWord {
  Reason reason;
  std::string_view word;
};

constexpr std::array kReasonWords{
    ReasonWord{Reason::InvalidSpec, "InvalidSpec"},
    ReasonWord{Reason::RepoNotFound, "RepoNotFound"},
    ReasonWord{Reason::RevisionNotFound, "RevisionNotFound"},
    ReasonWord{Reason::Unauthorized, "Unauthorized"},
    ReasonWord{Reason::RateLimited, "RateLimited"},
    ReasonWord{Reason::NetworkError, "NetworkError"},
    ReasonWord{Reason::ChecksumMismatch, "ChecksumMismatch"},
    ReasonWord{Reason::InsufficientStorage, "InsufficientStorage"},
    ReasonWord{Reason::UnsupportedArchitecture, "UnsupportedArchitecture"},
    ReasonWord{Reason::ShardConfigInvalid, "ShardConfigInvalid"},
    ReasonWord{Reason::StorageError, "StorageError"},
    ReasonWord{Reason::ArtifactNameConflict, "ArtifactNameConflict"},
    ReasonWord{Reason::EndpointStalled, "EndpointStalled"},
    ReasonWord{Reason::Cancelled, "Cancelled"},
    ReasonWord{Reason::Internal, "InternalError"},
};

}  // namespace

std::string_view ReasonName(Reason reason) {
  for (const auto& rw : kReasonWords) {
    if (rw.reason == reason) {
      return rw.word;
    }
  }
  return "InternalError";
}

std::optional<Reason> ParseReason(std::string_view word) {
  for (const auto& rw : kReasonWords) {
    if (rw.word == word) {
      return rw.reason;
    }
  }
  return std::nullopt;
}

bool IsTransient(Reason reason) {
  switch (reason) {
    case Reason::RateLimited:
    case Reason::NetworkError:
    case Reason::ChecksumMismatch:
    case Reason::InsufficientStorage:
    case Reason::StorageError:
    case Reason::Cancelled:
    case Reason::Internal:
      return true;
    case Reason::InvalidSpec:
    case Reason::RepoNotFound:
    case Reason::RevisionNotFound:
    case Reason::Unauthorized:
    case Reason::UnsupportedArchitecture:
    case Reason::ShardConfigInvalid:
    case Reason::ArtifactNameConflict:
    case Reason::EndpointStalled:
      return false;
  }
  return true;
}

std::string Error::ToString() const {
  std::string out(ReasonName(reason));
  out += ": ";
  out += message;
  return out;
}

}  // namespace modelcache
