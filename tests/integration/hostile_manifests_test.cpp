// A directory of hostile manifests, generated here, watched by the real daemon through a symlink
// (as git-sync lays it out) next to a valid canary: each file is judged on its own, with an error
// that names it, and the canary still becomes Ready. Then git-sync's atomic swap of the root
// symlink is followed. `modelcache validate` judges the same files the same way.

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;

class HostileManifestsTest : public DaemonTest {
 protected:
  void Write(const std::string& path, const std::string& content) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream(path, std::ios::binary) << content;
  }
};

// "Billion laughs": a ModelCache whose spec.source.include holds, through nine levels of
// aliases, 10^9 strings in a 500-byte file.
std::string AliasBomb() {
  std::string include = "[&a0 [x,x,x,x,x,x,x,x,x,x]";
  for (int i = 1; i < 9; ++i) {
    std::string prev = "*a" + std::to_string(i - 1);
    include += ", &a" + std::to_string(i) + " [" + prev;
    for (int k = 1; k < 10; ++k) {
      include += "," + prev;
    }
    include += "]";
  }
  return Manifest("bomb", "org/m") + "    include: " + include + "]\n";
}

TEST_F(HostileManifestsTest, EachFileGetsItsOwnErrorAndTheCanaryBecomesReady) {
  AddRepo("org/m", SmallModelFiles(4096, 13));
  const std::string rev1 = tmp_ / "rev1";
  const std::string rev2 = tmp_ / "rev2";
  const std::string elsewhere = tmp_ / "elsewhere";
  const std::string root = tmp_ / "current";

  Write(rev1 + "/canary.yaml", Manifest("canary", "org/m"));
  // A BOM is allowed, as for kubectl.
  Write(rev1 + "/bom.yaml", "\xEF\xBB\xBF" + Manifest("bom", "org/m"));
  Write(rev1 + "/alias.yaml", AliasBomb());
  {
    // 50 MB, sparse: the daemon must not read it past the limit.
    std::ofstream(rev1 + "/big.yaml") << Manifest("big", "org/m");
    fs::resize_file(rev1 + "/big.yaml", 50'000'000);
  }
  Write(rev1 + "/deep.yaml", std::string(100'000, '[') + std::string(100'000, ']'));
  {
    std::string docs;
    for (int i = 0; i < 2000; ++i) {
      docs += "---\napiVersion: v1\nkind: ConfigMap\n";
    }
    Write(rev1 + "/docs.yaml", docs + "---\n" + Manifest("many", "org/m"));
  }
  Write(rev1 + "/names.yaml", Manifest("..", "org/m") + "---\n" + Manifest("a/b", "org/m") +
                                  "---\n" + Manifest("\"a\\0b\"", "org/m") + "---\n" +
                                  Manifest("ns\n  namespace: ..", "org/m"));
  Write(rev1 + "/utf8.yaml", Manifest("utf8", "org/m\xff\xfe"));
  Write(rev1 + "/python.yaml",
        Manifest("python", "!!python/object/apply:os.system [\"touch /tmp/pwned\"]"));
  Write(rev1 + "/dupkeys.yaml", Manifest("dupkeys", "org/m") + "    repo: org/other\n");
  Write(rev1 + "/tabs.yaml",
        "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n"
        "\tname: tabs\n");
  Write(rev1 + "/secret.yaml",
        Manifest("secret", "org/m", "    tokenSecretRef: {name: hf, key: ..}\n"));
  Write(rev1 + "/tpzero.yaml",
        Manifest("tpzero", "org/m", "  shard:\n    tensorParallelSize: 0\n"));
  Write(rev1 + "/revision.yaml", Manifest("revision", "org/m", "    revision: refs/./pr/1\n"));
  // Symlinks: one inside the tree (to a hidden file, as Kubernetes volumes do) is followed; ones
  // leading out of it, and loops, are not.
  Write(rev1 + "/.data/linked.yaml", Manifest("linked", "org/m"));
  fs::create_symlink(".data/linked.yaml", rev1 + "/linked.yaml");
  fs::create_symlink("/etc/passwd", rev1 + "/passwd.yaml");
  fs::create_symlink("/", rev1 + "/slash");
  Write(elsewhere + "/outside.yaml", Manifest("outside", "org/m"));
  fs::create_symlink(elsewhere, rev1 + "/elsewhere");
  fs::create_symlink("loop.yaml", rev1 + "/loop.yaml");
  fs::create_symlink(".", rev1 + "/self");
  fs::create_symlink(rev1, root);

  Daemon::Options options = DaemonOptions();
  options.watch_dir = root;
  Daemon daemon(options);
  daemon.Start();
  ASSERT_TRUE(WaitReady("canary")) << daemon.Log();
  ASSERT_TRUE(WaitReady("bom")) << daemon.Log();
  ASSERT_TRUE(WaitForStatus(state_dir(), "linked", [](const auto&) { return true; }))
      << daemon.Log();

  // Resources that can be keyed report their problem in their status.
  auto expect_invalid = [&](const std::string& name, const std::string& message) {
    auto mc = WaitForStatus(state_dir(), name,
                            [](const auto& m) { return m.status.phase == crds::kPhaseFailed; });
    ASSERT_TRUE(mc) << name << "\n" << daemon.Log();
    EXPECT_EQ(ReadyReason(*mc), "InvalidSpec") << name;
    const crds::Condition* c = crds::FindCondition(mc->status.conditions, "Ready");
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->message, message) << name;
  };
  expect_invalid("secret",
                 "spec.source.tokenSecretRef.key: Invalid value: \"..\": must not be '..'");
  expect_invalid("tpzero",
                 "spec.shard.tensorParallelSize: Invalid value: 0: must be greater than or equal "
                 "to 1");
  expect_invalid("revision",
                 "spec.source.revision: Invalid value: \"refs/./pr/1\": no '/'-separated part "
                 "may start with '.'");

  // The others cannot be keyed (or the file cannot be read as a whole): the log names the file
  // and the line of the document.
  const std::string log = daemon.Log();
  const std::vector<std::string> logged = {
      "alias.yaml:1: Forbidden: the document nests deeper than 64 levels or has more than 10000 "
      "nodes (aliases expanded)\n",
      "big.yaml: larger than 512 KiB, the limit for a manifest file; split it",
      "deep.yaml:1:1: nesting is too deep",
      "docs.yaml: holds more than 1000 YAML documents, the limit for a manifest file; split it",
      "names.yaml:1: metadata.name: Invalid value: \"..\": a lowercase RFC 1123 label must "
      "consist of",
      "names.yaml:9: metadata.name: Invalid value: \"a/b\": a lowercase RFC 1123 label",
      "names.yaml:17: metadata.name: Invalid value: \"a\\u0000b\": a lowercase RFC 1123 label",
      "names.yaml:25: metadata.namespace: Invalid value: \"..\": a lowercase RFC 1123 label",
      "utf8.yaml:7: spec.source.repo: Invalid value: \"org/m\xEF\xBF\xBD\xEF\xBF\xBD\": must be "
      "valid UTF-8",
      "python.yaml:7: spec.source.repo: Invalid value: "
      "\"tag:yaml.org,2002:python/object/apply:os.system\": YAML tags other than the core "
      "schema's",
      "dupkeys.yaml:8: spec.source.repo: Duplicate value: \"repo\": the key is already defined "
      "at line 7",
      "tabs.yaml:4:",
      "passwd.yaml: a symlink to /etc/passwd, outside " + fs::canonical(rev1).string() +
          "; not followed",
      "slash: a symlink to /, outside " + fs::canonical(rev1).string() + "; not followed",
      "elsewhere: a symlink to " + fs::canonical(elsewhere).string() + ", outside " +
          fs::canonical(rev1).string() + "; not followed",
      "loop.yaml: a symlink loop; not followed",
  };
  for (const std::string& line : logged) {
    EXPECT_NE(log.find(line), std::string::npos) << "not logged: " << line << "\n" << log;
  }
  for (const char* name :
       {"bomb", "big", "many", "utf8", "python", "dupkeys", "tabs", "outside", ".."}) {
    EXPECT_FALSE(ReadStatus(state_dir(), "default", name)) << name;
  }
  EXPECT_FALSE(fs::exists("/tmp/pwned"));
  EXPECT_TRUE(daemon.Running());

  // git-sync's swap: a new tree, the root symlink replaced atomically. The daemon follows it:
  // what rev2 declares appears, and what only rev1 declared goes.
  Write(rev2 + "/canary.yaml", Manifest("canary", "org/m"));
  Write(rev2 + "/swapped.yaml", Manifest("swapped", "org/m"));
  fs::create_symlink(rev2, tmp_ / "current.tmp");
  fs::rename(tmp_ / "current.tmp", root);
  ASSERT_TRUE(WaitReady("swapped")) << daemon.Log();
  EXPECT_TRUE(WaitFor([&] { return !ReadStatus(state_dir(), "default", "tpzero"); }))
      << daemon.Log();
  EXPECT_TRUE(IsReady(*ReadStatus(state_dir(), "default", "canary")));

  // `modelcache validate` refuses each hostile file, naming it.
  for (const char* file : {"alias.yaml", "big.yaml", "deep.yaml", "docs.yaml", "names.yaml",
                           "utf8.yaml", "python.yaml", "dupkeys.yaml", "tabs.yaml", "secret.yaml",
                           "tpzero.yaml", "revision.yaml"}) {
    CommandResult r = RunModelcache({"validate", rev1 + "/" + file});
    EXPECT_NE(r.exit_code, 0) << file;
    EXPECT_NE((r.out + r.err).find(rev1 + "/" + file + ":"), std::string::npos)
        << file << ": " << r.out << r.err;
  }
  EXPECT_EQ(RunModelcache({"validate", rev1 + "/canary.yaml", rev1 + "/bom.yaml"}).exit_code, 0);
}

}  // namespace
}  // namespace modelcache::itest
