#include "reconcilers/internal/hub_flights.h"

#include "common/sha256.h"
#include "common/single_flight.h"

namespace modelcache::reconcilers {
namespace {

// Never destroyed: jobs may still run while statics are torn down at exit.
SingleFlight<std::string>& Resolves() {
  static auto* flights = new SingleFlight<std::string>();
  return *flights;
}

SingleFlight<std::vector<fetch::RepoFile>>& Listings() {
  static auto* flights = new SingleFlight<std::vector<fetch::RepoFile>>();
  return *flights;
}

// The token only as its hash: the key must tell tokens apart, not hold them.
std::string Key(const fetch::HubOptions& options, const std::string& type,
                const std::string& repo, const std::string& at) {
  return options.endpoint + '\n' + (options.token.empty() ? "" : Sha256Hex(options.token)) +
         '\n' + type + '\n' + repo + '\n' + at;
}

}  // namespace

Result<std::string> SharedResolveRevision(fetch::HubClient& hub, const fetch::HubOptions& options,
                                          const std::string& type, const std::string& repo,
                                          const std::string& revision, std::stop_token stop) {
  return Resolves().Do(
      Key(options, type, repo, revision),
      [&] { return hub.ResolveRevision(type, repo, revision, stop); }, stop);
}

Result<std::vector<fetch::RepoFile>> SharedListFiles(fetch::HubClient& hub,
                                                     const fetch::HubOptions& options,
                                                     const std::string& type,
                                                     const std::string& repo,
                                                     const std::string& commit,
                                                     std::stop_token stop) {
  return Listings().Do(
      Key(options, type, repo, commit), [&] { return hub.ListFiles(type, repo, commit, stop); },
      stop);
}

}  // namespace modelcache::reconcilers
