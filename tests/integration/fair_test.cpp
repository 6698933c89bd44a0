// The daemon against a tenant that would starve everyone else: many resources (one tenant, the
// top-level directory tenant/) whose endpoint drips one byte a second (the hostile Hub's
// slow-file-drip), more than there are job slots. A canary declared by another tenant (the
// top-level file canary.yaml) once the tenant holds every slot must get a slot at once: it
// becomes Ready while resources the tenant declared before it have not even started. The
// tenant's resources end in Failed with EndpointStalled (--stall-limit 1, to keep the test short;
// the unit test AnEndpointThatStallsJobAfterJobFailsWithEndpointStalled counts several).

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "tests/fixtures/hub/hostile_hub.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

constexpr int kTenantResources = 6;
constexpr int kSlots = 2;

std::string TenantName(int i) { return "drip-" + std::to_string(i); }

class FairTest : public DaemonTest {};

TEST_F(FairTest, ACanaryOfAnotherTenantGetsASlotWhileADrippingTenantHoldsThemAll) {
  testing::HostileHub hostile;
  ASSERT_TRUE(hostile.Start());
  std::string manifests;
  for (int i = 0; i < kTenantResources; ++i) {
    manifests += Manifest(TenantName(i), "hostile/slow-file-drip") + "---\n";
  }
  std::filesystem::create_directories(watch_dir() + "/tenant");
  WriteManifest("tenant/drip.yaml", manifests);

  Daemon::Options options = DaemonOptions({"--stall-timeout", "1s", "--max-concurrent-jobs",
                                           std::to_string(kSlots), "--stall-limit", "1",
                                           "--workers", "4"});
  options.hf_endpoint = hostile.url();
  Daemon daemon(options);
  daemon.Start();

  // The tenant holds every slot: its jobs were all queued at its first reconcile, more than
  // there are slots, and one of them is downloading (the others of the same repo wait for the
  // repo's lock, holding their slots).
  ASSERT_TRUE(WaitFor(
      [&] {
        for (int i = 0; i < kTenantResources; ++i) {
          auto mc = ReadStatus(state_dir(), "default", TenantName(i));
          if (mc && mc->status.phase == crds::kPhaseDownloading) {
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(60)))
      << daemon.Log();

  auto declared = std::chrono::steady_clock::now();
  WriteManifest("canary.yaml", Manifest("canary", "hostile/canary"));
  auto canary = WaitReady("canary", std::chrono::seconds(120));
  auto latency = std::chrono::steady_clock::now() - declared;
  ASSERT_TRUE(canary.has_value() && IsReady(*canary)) << daemon.Log();

  // Right now: the tenant's resources declared before the canary that never started (no
  // revision resolved).
  int never_started = 0;
  for (int i = 0; i < kTenantResources; ++i) {
    auto mc = ReadStatus(state_dir(), "default", TenantName(i));
    never_started += !mc || mc->status.resolved_revision.empty() ? 1 : 0;
  }
  std::cout << "fair run: canary Ready "
            << std::chrono::duration_cast<std::chrono::milliseconds>(latency).count()
            << " ms after it was declared, with " << kTenantResources
            << " dripping resources of another tenant on " << kSlots << " slots; "
            << never_started << " of them not started yet\n";
  // First come, first served would have started every one of them before the canary.
  EXPECT_GE(never_started, 2) << daemon.Log();
  // The tenant gave a running job's slot back rather than the canary waiting for one to end.
  EXPECT_NE(daemon.Log().find("gave its job slot to another tenant"), std::string::npos);

  // A stalled job fails the resource for good (--stall-limit 1), naming the pattern and the
  // stall.
  std::optional<crds::ModelCache> stalled;
  ASSERT_TRUE(WaitFor(
      [&] {
        for (int i = 0; i < kTenantResources && !stalled; ++i) {
          auto mc = ReadStatus(state_dir(), "default", TenantName(i));
          if (mc && mc->status.phase == crds::kPhaseFailed) {
            stalled = mc;
          }
        }
        return stalled.has_value();
      },
      std::chrono::seconds(120)))
      << daemon.Log();
  ASSERT_EQ(stalled->status.phase, crds::kPhaseFailed) << daemon.Log();
  EXPECT_EQ(ReadyReason(*stalled), "EndpointStalled");
  const crds::Condition* ready = crds::FindCondition(stalled->status.conditions, "Ready");
  ASSERT_NE(ready, nullptr);
  EXPECT_NE(ready->message.find("stalled in 1 job in a row"), std::string::npos)
      << ready->message;
  EXPECT_NE(ready->message.find("stalled: less than"), std::string::npos) << ready->message;
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

}  // namespace
}  // namespace modelcache::itest
