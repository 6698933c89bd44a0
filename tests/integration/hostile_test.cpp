// The daemon against the hostile Hub imitation (tests/fixtures/hub/hostile_hub.h): one resource
// per hostile case, all at once, in one daemon. Each must end in its own reason and message
// (permanent ones in phase Failed), the canary must become Ready next to them, the daemon must
// still run and stop cleanly, and its peak RSS must stay under 512 MiB.

#include <sys/types.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/fixtures/hub/hostile_hub.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

// VmHWM of a running process (its peak resident set), in bytes; 0 if it cannot be read.
uint64_t PeakRssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream fields(line.substr(6));
      uint64_t kib = 0;
      fields >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

std::string Describe(const std::optional<crds::ModelCache>& mc) {
  if (!mc) {
    return "no status";
  }
  const crds::Condition* c = crds::FindCondition(mc->status.conditions, "Ready");
  return "phase " + mc->status.phase + (c == nullptr ? "" : ", " + c->reason + ": " + c->message);
}

class HostileTest : public DaemonTest {};

TEST_F(HostileTest, EveryHostileAnswerEndsInItsReasonAndTheCanaryBecomesReady) {
  testing::HostileHub hostile;
  ASSERT_TRUE(hostile.Start());
  const auto& cases = testing::HostileHub::Cases();
  std::string manifests;
  for (const auto& c : cases) {
    manifests += Manifest(c.name, "hostile/" + c.name) + "---\n";
  }
  WriteManifest("hostile.yaml", manifests);

  // Short stall timeouts so that the dripping servers are given up on quickly; enough jobs for
  // every case at once. No --stall-limit: the slow cases stay NetworkError however long the
  // others take to check (FairTest covers EndpointStalled).
  Daemon::Options options = DaemonOptions({"--stall-timeout", "2s", "--max-concurrent-jobs", "64",
                                           "--workers", "8", "--stall-limit", "0"});
  options.hf_endpoint = hostile.url();
  Daemon daemon(options);
  daemon.Start();

  for (const auto& c : cases) {
    SCOPED_TRACE("hostile/" + c.name + " (" + c.klass + ")");
    auto status = WaitForStatus(
        state_dir(), c.name,
        [&](const crds::ModelCache& mc) {
          // Ready and Failed are final for a spec: a case that ends there wrongly fails at once.
          if (IsReady(mc) || mc.status.phase == crds::kPhaseFailed || c.reason.empty()) {
            return IsReady(mc) || mc.status.phase == crds::kPhaseFailed;
          }
          const crds::Condition* ready = crds::FindCondition(mc.status.conditions, "Ready");
          return ready != nullptr && ready->reason == c.reason &&
                 ready->message.find(c.message) != std::string::npos;
        },
        std::chrono::seconds(90));
    ASSERT_TRUE(status.has_value());
    if (c.reason.empty()) {
      EXPECT_TRUE(IsReady(*status)) << Describe(status);
      continue;
    }
    const crds::Condition* ready = crds::FindCondition(status->status.conditions, "Ready");
    ASSERT_NE(ready, nullptr) << Describe(status);
    EXPECT_EQ(ready->reason, c.reason) << Describe(status);
    EXPECT_NE(ready->message.find(c.message), std::string::npos) << Describe(status);
    if (c.reason == "InvalidSpec") {
      EXPECT_EQ(status->status.phase, "Failed") << Describe(status);
    }
  }

  ASSERT_TRUE(daemon.Running()) << daemon.Log();
  uint64_t peak = PeakRssBytes(daemon.pid());
  std::cout << "hostile run: daemon peak RSS (VmHWM) " << peak / (1024 * 1024) << " MiB\n";
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // A sanitizer's shadow memory and quarantine would dwarf the daemon's own.
  EXPECT_GT(peak, 0U);
  EXPECT_LT(peak, uint64_t{512} << 20);
#endif
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
  // Nothing a hostile repo listed was created outside the store.
  EXPECT_FALSE(std::filesystem::exists(store_dir() + "/escape.json"));
  EXPECT_FALSE(std::filesystem::exists(tmp_ / "escape.json"));
}

}  // namespace
}  // namespace modelcache::itest
