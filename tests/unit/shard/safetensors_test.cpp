#include "shard/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "common/files.h"

namespace modelcache::shard {
namespace {

std::string Le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) {
    s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  return s;
}

// A file image built by hand, independently of our writer.
std::string Image(const std::string& header, const std::string& data) {
  return Le64(header.size()) + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/safetensors-" + UniqueSuffix();
    ASSERT_TRUE(MakeDirs(dir_));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& bytes) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, ReadsAHandWrittenFile) {
  std::string data(12, '\0');
  float a[2] = {1.5f, -2.0f};
  std::memcpy(data.data(), a, 8);
  data[8] = static_cast<char>(0x80);  // bf16 1.0 = 0x3f80, little-endian
  data[9] = 0x3f;
  data[10] = 0x00;
  data[11] = 0x40;  // bf16 2.0
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}})";
  auto f = SafetensorsFile::Open(Write("a.safetensors", Image(header, data)));
  ASSERT_TRUE(f) << f.error().ToString();
  ASSERT_EQ((*f)->tensors().size(), 2u);
  const TensorInfo* a_info = (*f)->Find("a");
  ASSERT_NE(a_info, nullptr);
  EXPECT_EQ(a_info->dtype, DType::F32);
  EXPECT_EQ(a_info->shape, (std::vector<int64_t>{2}));
  float got[2];
  std::memcpy(got, (*f)->data(*a_info), 8);
  EXPECT_EQ(got[0], 1.5f);
  EXPECT_EQ(got[1], -2.0f);
  const TensorInfo* b_info = (*f)->Find("b");
  ASSERT_NE(b_info, nullptr);
  EXPECT_EQ(b_info->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ((*f)->data(*b_info)[1], 0x3f);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  EXPECT_EQ((*f)->Find("c"), nullptr);
}

TEST_F(SafetensorsTest, WriterLaysOutLikeTheReferenceAndRoundTrips) {
  std::vector<std::pair<TensorSpec, std::string>> tensors = {
      {{"z.bf16", DType::BF16, {3}}, std::string("\x01\x02\x03\x04\x05\x06", 6)},
      {{"a.bf16", DType::BF16, {1}}, std::string("\x07\x08", 2)},
      {{"scale", DType::F32, {}}, std::string("\x00\x00\x80\x3f", 4)},
      {{"empty", DType::F16, {0, 4}}, std::string()},
  };
  std::string path = dir_ + "/w.safetensors";
  ASSERT_TRUE(WriteSafetensorsFile(path, tensors, {{"format", "pt"}}));
  auto bytes = ReadFile(path);
  ASSERT_TRUE(bytes);
  uint64_t n = 0;
  std::memcpy(&n, bytes->data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);  // data section 8-byte aligned
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f) << f.error().ToString();
  // Larger element size first, then by name: scale (F32), a.bf16, empty (F16), z.bf16.
  const auto& t = (*f)->tensors();
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ((*f)->Find("scale")->begin, 0u);
  EXPECT_EQ((*f)->Find("a.bf16")->begin, 4u);
  EXPECT_EQ((*f)->Find("z.bf16")->begin, 6u);
  EXPECT_TRUE((*f)->Find("scale")->shape.empty());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*f)->data(*(*f)->Find("z.bf16"))), 6),
            tensors[0].second);
  // Same inputs, same bytes.
  std::string again = dir_ + "/w2.safetensors";
  ASSERT_TRUE(WriteSafetensorsFile(again, tensors, {{"format", "pt"}}));
  EXPECT_EQ(*ReadFile(again), *bytes);
}

struct BadCase {
  const char* what;
  std::string image;
  const char* tensor;  // expected in the message, or nullptr
};

TEST_F(SafetensorsTest, RejectsMalformedFilesCleanly) {
  auto h = [](const std::string& entries) { return "{" + entries + "}"; };
  std::string four(4, '\0');
  std::vector<BadCase> cases = {
      {"shorter than length", std::string("\x05\x00\x00", 3), nullptr},
      {"huge header length", Le64(1ULL << 62) + "{}", nullptr},
      {"header one byte over the format's 100 MB", Le64(100'000'001) + "{}", nullptr},
      {"header of 100 MiB", Le64(100ULL << 20) + "{}", nullptr},
      {"no header at all", "", nullptr},
      {"empty header", Image("", ""), nullptr},
      {"header not UTF-8 JSON", Image("{\"t\":\xff}", ""), nullptr},
      {"offsets out of range",
       Image(h(R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]})"), four),
       "t"},
      {"offsets negative",
       Image(h(R"("t":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]})"), four), "t"},
      {"wrong dtype size",
       Image(h(R"("t":{"dtype":"BF16","shape":[1],"data_offsets":[0,4]})"), four), "t"},
      {"header past end", Le64(1000) + "{}", nullptr},
      {"not json", Image("{\"a\":", ""), nullptr},
      {"array", Image("[1,2]", ""), nullptr},
      {"unknown dtype", Image(h(R"("t":{"dtype":"F7","shape":[1],"data_offsets":[0,4]})"), four),
       "t"},
      {"negative dim", Image(h(R"("t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]})"), four),
       "t"},
      {"float dim", Image(h(R"("t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]})"), four),
       "t"},
      {"header lies about size",
       Image(h(R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]})"), four), "t"},
      {"end before begin",
       Image(h(R"("t":{"dtype":"F32","shape":[0],"data_offsets":[4,0]})"), four), "t"},
      {"truncated data", Image(h(R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), four),
       "t"},
      {"overlap",
       Image(h(R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"),
             std::string(8, '\0')),
       nullptr},
      {"gap",
       Image(h(R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
               R"("u":{"dtype":"F32","shape":[1],"data_offsets":[8,12]})"),
             std::string(12, '\0')),
       "u"},
      {"trailing bytes",
       Image(h(R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})"), four + "xx"), nullptr},
      {"duplicate name",
       Image(h(R"("t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
               R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]})"),
             std::string(8, '\0')),
       "t"},
      {"metadata not strings", Image(h(R"("__metadata__":{"k":1})"), ""), nullptr},
      {"missing offsets", Image(h(R"("t":{"dtype":"F32","shape":[1]})"), four), "t"},
      {"shape overflow",
       Image(h(R"("t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]})"),
             four),
       "t"},
      {"entry not an object", Image(h(R"("t":3)"), ""), "t"},
  };
  for (const auto& c : cases) {
    std::string path = Write("bad.safetensors", c.image);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f) << c.what;
    EXPECT_EQ(f.error().reason, Reason::ShardConfigInvalid) << c.what;
    EXPECT_NE(f.error().message.find(path), std::string::npos)
        << c.what << ": " << f.error().message;
    if (c.tensor != nullptr) {
      EXPECT_NE(f.error().message.find("'" + std::string(c.tensor) + "'"), std::string::npos)
          << c.what << ": " << f.error().message;
    }
  }
}

// The limit is the format's (100 000 000 bytes): a header of exactly that length is not refused
// for its length (here it is refused because the file ends first), one byte more is.
TEST_F(SafetensorsTest, HeaderLengthLimitIsTheFormats) {
  auto at_limit = ParseSafetensors(Le64(100'000'000) + "{}", "limit.safetensors");
  ASSERT_FALSE(at_limit);
  EXPECT_NE(at_limit.error().message.find("runs past the end of the file"), std::string::npos)
      << at_limit.error().message;
  auto over = ParseSafetensors(Le64(100'000'001) + "{}", "over.safetensors");
  ASSERT_FALSE(over);
  EXPECT_EQ(over.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(over.error().message.find("over.safetensors"), std::string::npos);
  EXPECT_NE(over.error().message.find("header length 100000001 exceeds the limit of 100000000"),
            std::string::npos)
      << over.error().message;
}

TEST_F(SafetensorsTest, EveryTruncationIsRejected) {
  std::vector<std::pair<TensorSpec, std::string>> tensors = {
      {{"w", DType::BF16, {4, 4}}, std::string(32, '\x11')},
      {{"b", DType::F32, {4}}, std::string(16, '\x22')},
  };
  std::string path = dir_ + "/full.safetensors";
  ASSERT_TRUE(WriteSafetensorsFile(path, tensors, {}));
  std::string full = *ReadFile(path);
  for (size_t len = 0; len < full.size(); ++len) {
    auto r = ParseSafetensors(std::string_view(full).substr(0, len), "cut");
    ASSERT_FALSE(r) << len;
    ASSERT_EQ(r.error().reason, Reason::ShardConfigInvalid);
  }
  EXPECT_TRUE(ParseSafetensors(full, "full"));
}

// Randomised fuzzing of the header parser (run under ASan/UBSan in the sanitizer build): any
// mutation must give either a header whose ranges tile the data section, or ShardConfigInvalid.
TEST_F(SafetensorsTest, FuzzedHeadersNeverCrash) {
  const std::string seed_header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"I64","shape":[],"data_offsets":[32,40]}})";
  const std::string alphabet = "{}[]\":,0123456789-.eE abcdtypeshapeF32BF16_metadata";
  std::mt19937_64 rng(20261124);
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string header = seed_header;
    int mutations = 1 + static_cast<int>(rng() % 6);
    for (int m = 0; m < mutations && !header.empty(); ++m) {
      size_t at = rng() % header.size();
      switch (rng() % 5) {
        case 0:
          header[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          header.insert(at, 1, alphabet[rng() % alphabet.size()]);
          break;
        case 2:
          header.erase(at, 1 + rng() % 8);
          break;
        case 3:
          header[at] = static_cast<char>(rng() & 0xff);
          break;
        default:
          header.insert(at, std::to_string(rng()));
          break;
      }
    }
    uint64_t data_size = rng() % 3 == 0 ? rng() % 64 : 40;
    std::string image = Image(header, std::string(data_size, '\x5a'));
    if (rng() % 8 == 0) {
      // Lie in the length prefix too.
      uint64_t lie = rng() % (image.size() + 16);
      image.replace(0, 8, Le64(lie));
    }
    auto r = ParseSafetensors(image, "fuzz");
    if (!r) {
      ASSERT_EQ(r.error().reason, Reason::ShardConfigInvalid) << r.error().message;
      continue;
    }
    ++accepted;
    uint64_t expected = 0;
    for (const auto& t : r->tensors) {
      ASSERT_EQ(t.begin, expected);
      ASSERT_EQ(t.size(), t.num_elements() * DTypeSize(t.dtype));
      expected = t.end;
    }
  }
  EXPECT_GT(accepted, 0);  // some mutations (e.g. inside metadata) stay valid
}

TEST_F(SafetensorsTest, CheckpointReadsIndexedFilesAsOne) {
  ASSERT_TRUE(WriteSafetensorsFile(dir_ + "/m-1.safetensors",
                                   {{{"x", DType::F32, {1}}, std::string(4, '\1')}}, {}));
  ASSERT_TRUE(WriteSafetensorsFile(dir_ + "/m-2.safetensors",
                                   {{{"y", DType::F32, {2}}, std::string(8, '\2')}}, {}));
  ASSERT_TRUE(WriteFileAtomic(
      dir_ + "/model.safetensors.index.json",
      R"({"metadata":{},"weight_map":{"x":"m-1.safetensors","y":"m-2.safetensors"}})"));
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt) << ckpt.error().ToString();
  EXPECT_EQ((*ckpt)->names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ((*ckpt)->Find("y")->file_index, 1u);
  EXPECT_EQ((*ckpt)->data_bytes(), 12u);

  // An index that places a tensor in the wrong file is rejected.
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/model.safetensors.index.json",
                              R"({"weight_map":{"x":"m-2.safetensors","y":"m-2.safetensors"}})"));
  auto wrong = Checkpoint::Open(dir_);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().reason, Reason::ShardConfigInvalid);
  EXPECT_NE(wrong.error().message.find("'x'"), std::string::npos);

  // Without an index every *.safetensors is read, and a name in two files is an error.
  std::filesystem::remove(dir_ + "/model.safetensors.index.json");
  ASSERT_TRUE(WriteSafetensorsFile(dir_ + "/m-3.safetensors",
                                   {{{"x", DType::F32, {1}}, std::string(4, '\3')}}, {}));
  auto twice = Checkpoint::Open(dir_);
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("'x'"), std::string::npos);

  auto none = Checkpoint::Open(dir_ + "/missing");
  ASSERT_FALSE(none);
}

// Order::AsGiven keeps the given order among tensors of one element size (the sharder's rank
// files), still larger elements first so that each tensor is aligned to its element size.
TEST_F(SafetensorsTest, LayoutInTheGivenOrderKeepsLargerElementsFirst) {
  std::vector<TensorSpec> specs = {{"z", DType::BF16, {3}},
                                   {"b", DType::F32, {}},
                                   {"a", DType::BF16, {1}},
                                   {"y", DType::F32, {2}}};
  auto given = SafetensorsLayout::Make(specs, {}, SafetensorsLayout::Order::AsGiven);
  ASSERT_TRUE(given) << given.error().ToString();
  EXPECT_EQ(given->Find("b")->begin, 0u);
  EXPECT_EQ(given->Find("y")->begin, 4u);
  EXPECT_EQ(given->Find("z")->begin, 12u);
  EXPECT_EQ(given->Find("a")->begin, 18u);
  auto by_name = SafetensorsLayout::Make(specs, {});
  ASSERT_TRUE(by_name);
  EXPECT_EQ(by_name->Find("b")->begin, 0u);
  EXPECT_EQ(by_name->Find("a")->begin, 12u);
  EXPECT_EQ(by_name->Find("z")->begin, 14u);
  EXPECT_NE(given->header(), by_name->header());
}

TEST_F(SafetensorsTest, WriterRefusesWritesOutsideATensor) {
  auto layout = SafetensorsLayout::Make({{"t", DType::F32, {2}}}, {});
  ASSERT_TRUE(layout);
  auto w = SafetensorsWriter::Create(dir_ + "/o.safetensors", std::move(*layout));
  ASSERT_TRUE(w);
  char buf[12] = {};
  EXPECT_FALSE((*w)->WriteAt("t", 4, buf, 8));
  EXPECT_FALSE((*w)->WriteAt("nope", 0, buf, 4));
  EXPECT_TRUE((*w)->WriteAt("t", 4, buf, 4));
  EXPECT_TRUE((*w)->Finish(true));
  EXPECT_FALSE(SafetensorsLayout::Make({{"t", DType::F32, {1}}, {"t", DType::F32, {1}}}, {}));
}

}  // namespace
}  // namespace modelcache::shard
