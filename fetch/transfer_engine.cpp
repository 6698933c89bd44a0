#include "fetch/transfer_engine.h"

#include <algorithm>
#include <utility>

#include "fetch/internal/engine_thread.h"
#include "fetch/internal/file_download.h"
#include "fetch/internal/transfer_job.h"

namespace modelcache::fetch {
namespace {

internal::SourceSettings SourceOf(const HubOptions& hub) {
  internal::SourceSettings source{hub, false};
  while (!source.hub.endpoint.empty() && source.hub.endpoint.back() == '/') {
    source.hub.endpoint.pop_back();
  }
  return source;
}

internal::SourceSettings SourceOf(const S3PullOptions& s3) {
  // No endpoint matches a URL's origin: no Authorization header is sent, and the bucket's host is
  // a data host. The presigned query is the only credential.
  internal::SourceSettings source{HubOptions{}, true};
  source.hub.endpoint.clear();
  source.hub.token.clear();
  source.hub.max_attempts = s3.max_attempts;
  source.hub.backoff_base = s3.backoff_base;
  source.hub.backoff_cap = s3.backoff_cap;
  return source;
}

class EngineTransfer final : public Transfer {
 public:
  EngineTransfer(std::shared_ptr<TransferEngine::Impl> engine, const TransferSource& source)
      : engine_(std::move(engine)),
        source_(std::visit([](const auto& s) { return SourceOf(s); }, source)) {
    source_.hub.max_attempts = std::max(1, source_.hub.max_attempts);
  }

  Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks,
                                      TransferProgress& progress, std::stop_token stop) override {
    internal::TransferJob job(*engine_, source_, progress, std::move(stop));
    return job.Run(tasks);
  }

 private:
  std::shared_ptr<TransferEngine::Impl> engine_;
  internal::SourceSettings source_;
};

}  // namespace

TransferEngine::TransferEngine(TransferEngineOptions options)
    : impl_(std::make_shared<Impl>(std::move(options))) {}

TransferEngine::~TransferEngine() = default;

std::unique_ptr<Transfer> TransferEngine::NewTransfer(const TransferSource& source) {
  return std::make_unique<EngineTransfer>(impl_, source);
}

}  // namespace modelcache::fetch
