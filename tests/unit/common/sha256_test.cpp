#include "common/sha256.h"

#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "common/files.h"

namespace modelcache {
namespace {

TEST(HasherTest, KnownDigests) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// RFC 1321's test suite (appendix A.5).
TEST(HasherTest, Md5KnownVectors) {
  const std::pair<std::string, std::string> vectors[] = {
      {"", "d41d8cd98f00b204e9800998ecf8427e"},
      {"a", "0cc175b9c0f1b6a831c399e269772661"},
      {"abc", "900150983cd24fb0d6963f7d28e17f72"},
      {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
      {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
      {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
       "d174ab98d277d9f5a5611c2c9f419d9f"},
      {"1234567890123456789012345678901234567890123456789012345678901234567890123456789"
       "0",
       "57edf4a22be3c955ac49da2e2107b67a"},
  };
  for (const auto& [input, hex] : vectors) {
    Hasher h(Hasher::Kind::Md5);
    h.Update(input);
    EXPECT_EQ(h.FinalHex(), hex) << '"' << input << '"';
  }
}

// Streamed in pieces or hashed at once, the bytes are the same; the raw digest is the hex one's
// bytes (what Content-MD5 carries in base64).
TEST(HasherTest, RawDigestsAreTheHexDigestsBytes) {
  std::string data = "The quick brown fox jumps over the lazy dog";
  Hasher pieces(Hasher::Kind::Md5);
  pieces.Update(data.substr(0, 7));
  pieces.Update(data.data() + 7, data.size() - 7);
  std::string raw = Md5Raw(data);
  ASSERT_EQ(raw.size(), 16u);
  EXPECT_EQ(pieces.FinalRaw(), raw);
  EXPECT_EQ(raw, std::string("\x9e\x10\x7d\x9d\x37\x2b\xb6\x82\x6b\xd8\x1d\x35\x42\xa4\x19\xd6",
                             16));
  std::string sha = Sha256Raw("abc");
  ASSERT_EQ(sha.size(), 32u);
  EXPECT_EQ(static_cast<unsigned char>(sha[0]), 0xba);
  EXPECT_EQ(static_cast<unsigned char>(sha[31]), 0xad);
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
