// SigV4 against published vectors: the AWS Signature Version 4 test suite (as awslabs/aws-c-auth
// carries it, taking the "-unnormalized" cases because S3 never normalises paths) and the
// examples of the S3 API reference (sig-v4-header-based-auth, sigv4-streaming,
// sigv4-query-string-auth).

#include "store/sigv4.h"

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace modelcache::store {
namespace {

using std::chrono::system_clock;

system_clock::time_point At(int64_t unix_seconds) {
  return system_clock::time_point(std::chrono::seconds(unix_seconds));
}

// 2015-08-30T12:36:00Z and 2013-05-24T00:00:00Z.
constexpr int64_t kSuiteTime = 1440938160;
constexpr int64_t kS3DocTime = 1369353600;

const AwsCredentials kSuiteCredentials{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                       ""};
const AwsCredentials kS3DocCredentials{"AKIAIOSFODNN7EXAMPLE",
                                       "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};

struct SuiteCase {
  std::string name;
  std::string method;
  std::string path;
  std::vector<std::pair<std::string, std::string>> query;
  HttpHeaders headers;  // besides host
  std::string session_token;
  std::string payload_hash;
  std::string canonical_request;
  std::string string_to_sign_hash;  // last line of the string to sign
  std::string signature;
};

const std::string kEmpty(kEmptySha256);

std::vector<SuiteCase> SuiteCases() {
  return {
      {"get-vanilla",
       "GET",
       "/",
       {},
       {},
       "",
       kEmpty,
       "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" +
           kEmpty,
       "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
       "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
      {"get-unreserved",
       "GET",
       "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
       {},
       {},
       "",
       kEmpty,
       "GET\n/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\nhost:example."
       "amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" +
           kEmpty,
       "6a968768eefaa713e2a6b16b589a8ea192661f098f37349f4e2c0082757446f9",
       "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
      {"get-utf8",
       "GET",
       "/\xE1\x88\xB4",
       {},
       {},
       "",
       kEmpty,
       "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-"
       "date\n" +
           kEmpty,
       "2a0a97d02205e45ce2e994789806b19270cfbbb0921b278ccf58f5249ac42102",
       "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"},
      {"get-space-unnormalized",
       "GET",
       "/example space/",
       {},
       {},
       "",
       kEmpty,
       "GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;"
       "x-amz-date\n" +
           kEmpty,
       "63ee75631ed7234ae61b5f736dfc7754cdccfedbff4b5128a915706ee9390d86",
       "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
      {"get-slashes-unnormalized",
       "GET",
       "//example//",
       {},
       {},
       "",
       kEmpty,
       "GET\n//example//\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-"
       "date\n" +
           kEmpty,
       "528ec3105ee1f34ab014bb0a1a45da0ed2742a4fea3555149e5b4d5d201eb240",
       "87cca117541a147f6df867677d98a7d80dff226d2bfca9e4ffa899665623c7e5"},
      {"get-relative-unnormalized",
       "GET",
       "/example/..",
       {},
       {},
       "",
       kEmpty,
       "GET\n/example/..\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-"
       "date\n" +
           kEmpty,
       "0511f456aa502b456d135fcb9d749374a55228f9dbeedda1eacf659e05b0615b",
       "eca7ead57bb5aa5c8e28007acd4ff04e1ff9a0ff3b237ec1554a184887ff9282"},
      {"get-vanilla-query-order-key-case",
       "GET",
       "/",
       {{"Param2", "value2"}, {"Param1", "value1"}},
       {},
       "",
       kEmpty,
       "GET\n/"
       "\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z"
       "\n\nhost;x-amz-date\n" +
           kEmpty,
       "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
       "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
      {"get-vanilla-query-order-encoded",
       "GET",
       "/",
       {{"Param-3", "Value3"}, {"Param", "Value2"}, {"\xE1\x88\xB4", "Value1"}},
       {},
       "",
       kEmpty,
       "GET\n/\n%E1%88%B4=Value1&Param=Value2&Param-3=Value3\nhost:example.amazonaws.com\nx-amz-"
       "date:20150830T123600Z\n\nhost;x-amz-date\n" +
           kEmpty,
       "868294f5c38bd141c4972a373a76654f1418a8e4fc18b2e7903ae45e8ae0ec71",
       "371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac"},
      {"get-vanilla-query-unreserved",
       "GET",
       "/",
       {{"-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
         "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}},
       {},
       "",
       kEmpty,
       "GET\n/\n-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~"
       "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\nhost:example.amazonaws."
       "com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" +
           kEmpty,
       "c30d4703d9f799439be92736156d47ccfb2d879ddf56f5befa6d1d6aab979177",
       "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"},
      {"get-vanilla-utf8-query",
       "GET",
       "/",
       {{"\xE1\x88\xB4", "bar"}},
       {},
       "",
       kEmpty,
       "GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-"
       "amz-date\n" +
           kEmpty,
       "eb30c5bed55734080471a834cc727ae56beb50e5f39d1bff6d0d38cb192a7073",
       "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
      {"get-vanilla-with-session-token",
       "GET",
       "/",
       {},
       {},
       "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267",
       kEmpty,
       "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\nx-amz-security-token:"
       "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267\n\nhost;x-amz-date;x-amz-"
       "security-token\n" +
           kEmpty,
       "067b36aa60031588cea4a4cde1f21215227a047690c72247f1d70b32fbbfad2b",
       "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"},
      {"get-header-key-duplicate",
       "GET",
       "/",
       {},
       {{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}},
       "",
       kEmpty,
       "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:"
       "20150830T123600Z\n\nhost;my-header1;x-amz-date\n" +
           kEmpty,
       "dc7f04a3abfde8d472b0ab1a418b741b7c67174dad1551b4117b15527fbe966c",
       "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"},
      {"get-header-value-order",
       "GET",
       "/",
       {},
       {{"My-Header1", "value4"},
        {"My-Header1", "value1"},
        {"My-Header1", "value3"},
        {"My-Header1", "value2"}},
       "",
       kEmpty,
       "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value4,value1,value3,value2\nx-amz-date:"
       "20150830T123600Z\n\nhost;my-header1;x-amz-date\n" +
           kEmpty,
       "31ce73cd3f3d9f66977ad3dd957dc47af14df92fcd8509f59b349e9137c58b86",
       "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"},
      {"get-header-value-trim",
       "GET",
       "/",
       {},
       {{"My-Header1", " value1"}, {"My-Header2", " \"a   b   c\""}},
       "",
       kEmpty,
       "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:"
       "20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n" +
           kEmpty,
       "a726db9b0df21c14f559d0a978e563112acb1b9e05476f0a6a1c7d68f28605c7",
       "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
      {"post-vanilla-query",
       "POST",
       "/",
       {{"Param1", "value1"}},
       {},
       "",
       kEmpty,
       "POST\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-"
       "amz-date\n" +
           kEmpty,
       "9d659678c1756bb3113e2ce898845a0a79dbbc57b740555917687f1b3340fbbd",
       "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"},
      {"post-header-value-case",
       "POST",
       "/",
       {},
       {{"My-Header1", "VALUE1"}},
       "",
       kEmpty,
       "POST\n/\n\nhost:example.amazonaws.com\nmy-header1:VALUE1\nx-amz-date:20150830T123600Z\n\n"
       "host;my-header1;x-amz-date\n" +
           kEmpty,
       "d51ced243e649e3de6ef63afbbdcbca03131a21a7103a1583706a64618606a93",
       "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"},
      {"post-x-www-form-urlencoded",
       "POST",
       "/",
       {},
       {{"Content-Type", "application/x-www-form-urlencoded"},
        {"Content-Length", "13"},
        {"x-amz-content-sha256",
         "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"}},
       "",
       "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
       "POST\n/\n\ncontent-length:13\ncontent-type:application/x-www-form-urlencoded\nhost:example."
       "amazonaws.com\nx-amz-content-sha256:"
       "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e\nx-amz-date:"
       "20150830T123600Z\n\ncontent-length;content-type;host;x-amz-content-sha256;x-amz-date\n"
       "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
       "b1edd1d03544c25390e32085d55b57acc9a3961bb59415ff86c45c3d89d16cfb",
       "d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"},
  };
}

class SigV4SuiteTest : public ::testing::TestWithParam<SuiteCase> {};

TEST_P(SigV4SuiteTest, MatchesPublishedCanonicalRequestAndSignature) {
  const SuiteCase& c = GetParam();
  SigningRequest request;
  request.method = c.method;
  request.path = c.path;
  request.query = c.query;
  request.headers = {{"Host", "example.amazonaws.com"}};
  request.headers.insert(request.headers.end(), c.headers.begin(), c.headers.end());
  request.payload_hash = c.payload_hash;
  AwsCredentials credentials = kSuiteCredentials;
  credentials.session_token = c.session_token;
  SignedRequest signed_request =
      SignRequest(request, credentials, {"us-east-1", "service", At(kSuiteTime)});

  EXPECT_EQ(signed_request.canonical_request, c.canonical_request);
  EXPECT_EQ(signed_request.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n" +
                c.string_to_sign_hash);
  EXPECT_EQ(signed_request.signature, c.signature);
  std::string signed_headers = c.canonical_request.substr(0, c.canonical_request.rfind('\n'));
  signed_headers = signed_headers.substr(signed_headers.rfind('\n') + 1);
  ASSERT_FALSE(signed_request.headers.empty());
  EXPECT_EQ(signed_request.headers.back().first, "authorization");
  EXPECT_EQ(signed_request.headers.back().second,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=" +
                signed_headers + ", Signature=" + c.signature);
}

INSTANTIATE_TEST_SUITE_P(AwsSuite, SigV4SuiteTest, ::testing::ValuesIn(SuiteCases()),
                         [](const ::testing::TestParamInfo<SuiteCase>& param_info) {
                           std::string name = param_info.param.name;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

TEST(SigV4Test, AddsDateAndSessionTokenHeaders) {
  SigningRequest request;
  request.method = "GET";
  request.headers = {{"host", "h"}};
  AwsCredentials credentials = kSuiteCredentials;
  credentials.session_token = "tok";
  SignedRequest s = SignRequest(request, credentials, {"us-east-1", "s3", At(kSuiteTime)});
  ASSERT_EQ(s.headers.size(), 3u);
  EXPECT_EQ(s.headers[0], (std::pair<std::string, std::string>{"x-amz-date", "20150830T123600Z"}));
  EXPECT_EQ(s.headers[1], (std::pair<std::string, std::string>{"x-amz-security-token", "tok"}));
  EXPECT_EQ(s.headers[2].first, "authorization");
  EXPECT_EQ(s.signed_headers, "host;x-amz-date;x-amz-security-token");
}

// S3 API reference, sig-v4-header-based-auth: GET Object with a Range header.
TEST(SigV4S3ExamplesTest, GetObjectWithRange) {
  SigningRequest request;
  request.method = "GET";
  request.path = "/test.txt";
  request.headers = {{"Host", "examplebucket.s3.amazonaws.com"},
                     {"Range", "bytes=0-9"},
                     {"x-amz-content-sha256", kEmpty}};
  SignedRequest s = SignRequest(request, kS3DocCredentials, {"us-east-1", "s3", At(kS3DocTime)});
  EXPECT_EQ(s.canonical_request,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
            "x-amz-content-sha256:" +
                kEmpty +
                "\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n" +
                kEmpty);
  EXPECT_EQ(s.string_to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(s.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  EXPECT_EQ(s.headers.back().second,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

// S3 API reference, sigv4-streaming: PUT of 66560 bytes of 'a' in 64 KiB chunks.
TEST(SigV4S3ExamplesTest, ChunkedUploadSeedAndChunkSignatures) {
  SigningRequest request;
  request.method = "PUT";
  request.path = "/examplebucket/chunkObject.txt";
  request.headers = {{"Host", "s3.amazonaws.com"},
                     {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
                     {"Content-Encoding", "aws-chunked"},
                     {"x-amz-decoded-content-length", "66560"},
                     {"Content-Length", "66824"},
                     {"x-amz-content-sha256", std::string(kStreamingPayload)}};
  request.payload_hash = std::string(kStreamingPayload);
  SigningScope scope{"us-east-1", "s3", At(kS3DocTime)};
  SignedRequest seed = SignRequest(request, kS3DocCredentials, scope);
  EXPECT_EQ(seed.signed_headers,
            "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-"
            "content-length;x-amz-storage-class");
  EXPECT_EQ(seed.signature, "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9");

  ChunkSigner chunks(kS3DocCredentials, scope, seed.signature);
  std::string first(65536, 'a');
  std::string encoded = chunks.EncodeChunk(first);
  EXPECT_EQ(
      encoded.substr(0, encoded.find("\r\n")),
      "10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648");
  EXPECT_EQ(encoded.size(), 65536u + 90u);
  EXPECT_EQ(chunks.SignChunk(std::string(1024, 'a')),
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497");
  EXPECT_EQ(
      chunks.EncodeChunk(""),
      "0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n");
  EXPECT_EQ(ChunkSigner::EncodedLength(66560, 65536), 66824u);
}

TEST(SigV4Test, EncodedLengthOfEmptyPayloadIsTheFinalChunkOnly) {
  EXPECT_EQ(ChunkSigner::EncodedLength(0, 65536), 86u);
  EXPECT_EQ(ChunkSigner::EncodedLength(65536, 65536), 65536u + 90u + 86u);
}

// S3 API reference, sigv4-query-string-auth: presigned GET valid for 86400 s.
TEST(SigV4S3ExamplesTest, PresignedGetObject) {
  SigningRequest request;
  request.method = "GET";
  request.path = "/test.txt";
  request.headers = {{"Host", "examplebucket.s3.amazonaws.com"}};
  std::string query = PresignQuery(request, kS3DocCredentials, {"us-east-1", "s3", At(kS3DocTime)},
                                   std::chrono::seconds(86400));
  EXPECT_EQ(
      query,
      "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-"
      "east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-"
      "SignedHeaders=host&X-Amz-Signature="
      "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

TEST(SigV4Test, EncodingKeepsSlashesOnlyInPaths) {
  EXPECT_EQ(EncodePath("/bucket/a b/c+d=e&f~g"), "/bucket/a%20b/c%2Bd%3De%26f~g");
  EXPECT_EQ(EncodePath(""), "/");
  EXPECT_EQ(EncodeQuery({{"prefix", "a/b c"}, {"list-type", "2"}, {"uploads", ""}}),
            "list-type=2&prefix=a%2Fb%20c&uploads=");
}

TEST(SigV4Test, HmacMatchesRfc4231Case2) {
  EXPECT_EQ(HexEncode(HmacSha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

}  // namespace
}  // namespace modelcache::store
