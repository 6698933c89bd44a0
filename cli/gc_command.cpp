// `modelcache gc`: store garbage collection from the command line, with the references recorded
// in the daemon's status records (docs/store-layout.md, "Retention").

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include <CLI/CLI.hpp>
#include <spdlog/fmt/fmt.h>

#include "cli/commands.h"
#include "common/log.h"
#include "common/units.h"
#include "controller/directory/file_status_store.h"
#include "daemon/store_gc.h"
#include "store/artifact_store.h"
#include "store/gc.h"
#include "store/local_store.h"
#include "store/store_users.h"

namespace modelcache::controller {

int CollectGarbage(const GcCommandOptions& options) {
  if (auto r = SetupLogging(LogFormat::Text, "warn"); !r) {
    std::cerr << "modelcache: " << r.error().message << "\n";
    return 2;
  }
  store::GcOptions gc;
  gc.dry_run = options.dry_run;
  gc.keep_versions = options.keep_versions;
  auto max_bytes = ParseByteSize(options.store_max_bytes);
  if (!max_bytes) {
    std::cerr << "modelcache: --store-max-bytes: " << max_bytes.error().message << "\n";
    return 2;
  }
  auto min_free = ParseByteSize(options.min_free);
  if (!min_free) {
    std::cerr << "modelcache: --min-free: " << min_free.error().message << "\n";
    return 2;
  }
  gc.max_bytes = *max_bytes;
  gc.min_free = *min_free;
  if (store::IsSharedStoreUri(options.store)) {
    std::cerr << "modelcache: --store: gc works on local stores only\n";
    return 2;
  }
  if (!store::LocalStore::Exists(options.store)) {
    std::cerr << "modelcache: --store: " << options.store
              << " is not a modelcache store (no artifacts/ and hub/)\n";
    return 1;
  }
  auto store = store::LocalStore::Open(options.store);
  if (!store) {
    std::cerr << "modelcache: --store: " << store.error().message << "\n";
    return 1;
  }
  // The references: every resource with a status record, and every live daemon of the store (its
  // user record). Without either everything would look unreferenced, so that is an error rather
  // than "remove it all".
  auto users = store::ReadStoreUsers((*store)->root(),
                                     std::chrono::duration_cast<std::chrono::seconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
  if (!users) {
    std::cerr << "modelcache: gc: " << users.error().message << "\n";
    return 1;
  }
  std::string state_dir =
      options.state_dir.empty() ? (*store)->DefaultStateDir() : options.state_dir;
  store::GcReferences refs = users->refs;
  std::error_code ec;
  if (std::filesystem::is_directory(state_dir + "/status", ec)) {
    FileStatusStore statuses(state_dir);
    auto objects = statuses.List();
    if (!objects) {
      std::cerr << "modelcache: --state-dir: " << objects.error().message << "\n";
      return 1;
    }
    store::MergeReferences(refs, ReferencesOf(*objects, (*store)->root()));
  } else if (users->live.empty()) {
    std::cerr << "modelcache: --state-dir: no status records at " << state_dir
              << "/status and no live daemon of the store (users/); refusing to treat everything "
                 "in the store as unreferenced\n";
    return 1;
  }
  auto report = store::RunGc(**store, refs, gc);
  if (!report) {
    std::cerr << "modelcache: gc: " << report.error().message << "\n";
    return 1;
  }
  const char* verb = options.dry_run ? "would remove" : "removed";
  for (const auto& item : report->items) {
    std::cout << fmt::format("{}\t{}\t{}\t{}\t{}\n", verb, store::GcKindName(item.kind), item.path,
                             FormatBytes(item.freed_bytes), item.why);
  }
  for (const auto& busy : report->busy) {
    std::cout << "kept\tbusy\t" << busy << "\tin use by a running job\n";
  }
  std::cout << fmt::format("total: {} {} item{}, {} ({} bytes) of {} used; {} free{}\n", verb,
                           report->items.size(), report->items.size() == 1 ? "" : "s",
                           FormatBytes(report->freed_bytes), report->freed_bytes,
                           FormatBytes(report->used_bytes), FormatBytes(report->free_bytes),
                           options.dry_run ? "; dry run: nothing was removed" : "");
  if (report->over_limits) {
    std::cout << fmt::format(
        "still over the limits by {}: everything left is referenced or kept by --keep-versions\n",
        FormatBytes(report->needed_bytes - report->freed_bytes));
  }
  return 0;
}

Command AddGcCommand(CLI::App& app) {
  auto gc = std::make_shared<GcCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "gc", "Remove store data no ModelCache references (docs/store-layout.md, Retention)");
  cmd->add_flag("--dry-run", gc->dry_run, "Print what would be removed; remove nothing");
  cmd->add_option("--store", gc->store, "Store path or file:// URI")->capture_default_str();
  cmd->add_option("--state-dir", gc->state_dir,
                  "The daemon's status records: the references (default: <store>/state)");
  cmd->add_option("--keep-versions", gc->keep_versions,
                  "Newest versions kept per referenced artifact")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  cmd->add_option("--store-max-bytes", gc->store_max_bytes,
                  "Remove only until the store is this small (0 = remove all unreferenced)")
      ->capture_default_str();
  cmd->add_option("--min-free", gc->min_free,
                  "Remove only until the disk has this much free (0 = no floor)")
      ->capture_default_str();
  return {cmd, [gc] { return CollectGarbage(*gc); }};
}

}  // namespace modelcache::controller
