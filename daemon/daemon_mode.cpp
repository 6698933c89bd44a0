#include "daemon/daemon_mode.h"

#include <filesystem>
#include <utility>

#include "controller/directory/directory_source.h"
#include "controller/directory/file_status_store.h"
#include "daemon/options.h"

namespace modelcache::controller {
namespace {

class DirectoryMode final : public DaemonMode {
 public:
  DirectoryMode(std::string watch_dir, const std::string& state_dir,
                std::chrono::milliseconds resync_period)
      : watch_dir_(std::move(watch_dir)),
        statuses_(state_dir),
        source_(watch_dir_, resync_period, &statuses_) {}

  Source& source() override { return source_; }
  StatusStore& statuses() override { return statuses_; }
  void Configure(ManagerOptions& /*manager*/,
                 reconcilers::ReconcilerOptions& reconciler) override {
    // Keys are unique within one watch directory (a duplicate is refused), not across two that
    // share a store: the directory is part of who holds an artifact name.
    std::error_code ec;
    std::filesystem::path dir = std::filesystem::weakly_canonical(watch_dir_, ec);
    reconciler.claim_scope = "dir " + (ec ? watch_dir_ : dir.string());
  }
  std::string Describe() const override { return "watching " + watch_dir_; }
  void Shutdown() override {}

 private:
  std::string watch_dir_;
  FileStatusStore statuses_;
  DirectorySource source_;  // after statuses_: it reads them
};

}  // namespace

std::unique_ptr<DaemonMode> NewDirectoryMode(const std::string& watch_dir,
                                             const std::string& state_dir,
                                             std::chrono::milliseconds resync_period) {
  return std::make_unique<DirectoryMode>(watch_dir, state_dir, resync_period);
}

Result<std::unique_ptr<DaemonMode>> NewDaemonMode(const RunOptions& options,
                                                  const Environment& env,
                                                  const std::string& state_dir,
                                                  const std::string& store_root) {
  if (!options.kubernetes) {
    return NewDirectoryMode(options.watch_dir, state_dir, options.resync_period);
  }
  KubernetesModeOptions ko;
  ko.kubeconfig = options.kubeconfig;
  ko.ns = options.namespace_;
  ko.node_name = options.node_name;
  ko.resync_period = options.resync_period;
  ko.s3_secret = options.s3_secret;
  ko.api_limit = {options.kube_api_qps, options.kube_api_burst};
  ko.store_root = store_root;
  ko.node_heartbeat_interval = options.node_heartbeat_interval;
  ko.node_liveness_window = options.node_liveness_window;
  ko.fleet_writer_elect = options.fleet_writer_elect;
  ko.fill_from_controller = options.fill_from_controller;
  auto mode = NewKubernetesMode(ko, env.kube);
  if (!mode) {
    return Error(mode.error().reason, "--kubernetes: " + mode.error().message);
  }
  return std::move(*mode);
}

}  // namespace modelcache::controller
