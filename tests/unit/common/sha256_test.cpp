#include "common/sha256.h"

#include <gtest/gtest.h>

#include "common/files.h"

namespace modelcache {
namespace {

TEST(HasherTest, KnownDigests) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(HasherTest, GitBlobSha1MatchesGit) {
  // `printf 'hello\n' | git hash-object --stdin`
  Hasher h = GitBlobHasher(6);
  h.Update("hello\n");
  EXPECT_EQ(h.FinalHex(), "ce013625030ba8dba906f756967f9e9ca394464a");
}

TEST(HasherTest, FilesHashLikeStrings) {
  std::string path = ::testing::TempDir() + "/hash-" + UniqueSuffix();
  ASSERT_TRUE(WriteFileAtomic(path, "hello\n"));
  EXPECT_EQ(*GitBlobSha1File(path), "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_EQ(*Sha256File(path), Sha256Hex("hello\n"));
  auto missing = Sha256File(path + ".missing");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::StorageError);
}

}  // namespace
}  // namespace modelcache
