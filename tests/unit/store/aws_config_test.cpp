#include "store/aws_config.h"

#include <string>

#include <gtest/gtest.h>

#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

using testing::TempDir;
using testing::WriteText;


TEST(AwsConfigTest, EnvironmentCredentialsRegionAndEndpoint) {
  Environment env{{"AWS_ACCESS_KEY_ID", "AKID"},
                  {"AWS_SECRET_ACCESS_KEY", testing::kExampleSecretKey},
                  {"AWS_SESSION_TOKEN", "tok"},
                  {"AWS_DEFAULT_REGION", "eu-west-1"},
                  {"AWS_ENDPOINT_URL", "http://127.0.0.1:7480/"}};
  auto c = LoadAwsConfig(env);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->credentials.access_key_id, "AKID");
  EXPECT_EQ(c->credentials.secret_access_key, testing::kExampleSecretKey);
  EXPECT_EQ(c->credentials.session_token, "tok");
  EXPECT_EQ(c->region, "eu-west-1");
  EXPECT_EQ(c->endpoint_url, "http://127.0.0.1:7480");
  EXPECT_TRUE(c->custom_endpoint);
  EXPECT_TRUE(c->UsePathStyle("bucket"));

  env["AWS_REGION"] = "ap-south-1";
  env["AWS_ENDPOINT_URL_S3"] = "https://s3.example.com";
  c = LoadAwsConfig(env);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->region, "ap-south-1");
  EXPECT_EQ(c->endpoint_url, "https://s3.example.com");

  c = LoadAwsConfig(env, {.profile = "", .endpoint_url = "http://override:1", .region = "x-1"});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->endpoint_url, "http://override:1");
  EXPECT_EQ(c->region, "x-1");
}

TEST(AwsConfigTest, DefaultsToAwsEndpointAndVirtualHostedForDnsSafeBuckets) {
  auto c = LoadAwsConfig({{"AWS_ACCESS_KEY_ID", "A"}, {"AWS_SECRET_ACCESS_KEY", "S"}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->region, "us-east-1");
  EXPECT_EQ(c->endpoint_url, "https://s3.us-east-1.amazonaws.com");
  EXPECT_FALSE(c->custom_endpoint);
  EXPECT_FALSE(c->UsePathStyle("my-bucket"));
  EXPECT_TRUE(c->UsePathStyle("my.bucket"));
  EXPECT_TRUE(c->UsePathStyle("My_Bucket"));
}

TEST(AwsConfigTest, ProfilesFromSharedFiles) {
  TempDir dir;
  WriteText(dir.path() + "/.aws/credentials",
            "# comment\n[default]\naws_access_key_id = DEFAULTID\naws_secret_access_key = DS\n\n"
            "[ceph]\naws_access_key_id=CEPHID\naws_secret_access_key = CS\n"
            "aws_session_token = CT\n");
  WriteText(dir.path() + "/.aws/config",
            "[default]\nregion = us-west-2\n\n[profile ceph]\nregion = default\n"
            "s3 =\n  addressing_style = virtual\n  endpoint_url = http://127.0.0.1:7480\n"
            "endpoint_url = http://ignored:1\n");
  Environment env{{"HOME", dir.path()}};
  auto c = LoadAwsConfig(env);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->profile, "default");
  EXPECT_EQ(c->credentials.access_key_id, "DEFAULTID");
  EXPECT_EQ(c->region, "us-west-2");
  EXPECT_FALSE(c->custom_endpoint);

  env["AWS_PROFILE"] = "ceph";
  c = LoadAwsConfig(env);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->credentials.access_key_id, "CEPHID");
  EXPECT_EQ(c->credentials.secret_access_key, "CS");
  EXPECT_EQ(c->credentials.session_token, "CT");
  EXPECT_EQ(c->region, "default");
  EXPECT_EQ(c->endpoint_url, "http://127.0.0.1:7480");
  EXPECT_EQ(c->addressing, AddressingStyle::Virtual);
  EXPECT_FALSE(c->UsePathStyle("bucket"));

  // Environment keys win over the profile's.
  env["AWS_ACCESS_KEY_ID"] = "ENVID";
  env["AWS_SECRET_ACCESS_KEY"] = "ES";
  c = LoadAwsConfig(env);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->credentials.access_key_id, "ENVID");
  EXPECT_EQ(c->credentials.session_token, "");
}

TEST(AwsConfigTest, ExplicitFileLocationsAndKeysInConfigFile) {
  TempDir dir;
  WriteText(dir.path() + "/cfg",
            "[profile only-config]\naws_access_key_id = CID\n"
            "aws_secret_access_key = CSEC\ns3 =\n  addressing_style = path\n");
  Environment env{{"AWS_CONFIG_FILE", dir.path() + "/cfg"},
                  {"AWS_SHARED_CREDENTIALS_FILE", dir.path() + "/none-but-config-given"},
                  {"AWS_PROFILE", "only-config"}};
  auto c = LoadAwsConfig(env);
  ASSERT_FALSE(c);  // a named credentials file that does not exist
  EXPECT_EQ(c.error().reason, Reason::InvalidSpec);
  EXPECT_NE(c.error().message.find("AWS_SHARED_CREDENTIALS_FILE"), std::string::npos);

  env.erase("AWS_SHARED_CREDENTIALS_FILE");
  c = LoadAwsConfig(env);
  ASSERT_TRUE(c) << c.error().ToString();
  EXPECT_EQ(c->credentials.access_key_id, "CID");
  EXPECT_EQ(c->addressing, AddressingStyle::Path);
  EXPECT_TRUE(c->UsePathStyle("bucket"));
}

TEST(AwsConfigTest, ErrorsNameTheProblemButNeverTheSecret) {
  TempDir dir;
  WriteText(dir.path() + "/.aws/credentials",
            std::string("[half]\naws_secret_access_key = ") + testing::kExampleSecretKey + "\n");
  Environment env{{"HOME", dir.path()}, {"AWS_PROFILE", "missing"}};
  auto c = LoadAwsConfig(env);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("'missing'"), std::string::npos);

  env["AWS_PROFILE"] = "half";
  c = LoadAwsConfig(env);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().reason, Reason::InvalidSpec);
  EXPECT_EQ(c.error().message.find(testing::kExampleSecretKey), std::string::npos);

  c = LoadAwsConfig({{"AWS_SECRET_ACCESS_KEY", testing::kExampleSecretKey}});
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().message.find(testing::kExampleSecretKey), std::string::npos);

  c = LoadAwsConfig({});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("no AWS credentials"), std::string::npos);

  c = LoadAwsConfig({{"AWS_ACCESS_KEY_ID", "A"},
                     {"AWS_SECRET_ACCESS_KEY", "S"},
                     {"AWS_ENDPOINT_URL", "127.0.0.1:7480"}});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("http://"), std::string::npos);
}

TEST(AwsConfigTest, IniParserKeepsNestedS3Keys) {
  IniSections ini = ParseAwsIni(
      "ignored = before-any-section\n[a]\nKey = v = w\ns3 =\n\taddressing_style = path\n"
      "other = x\n  not_nested = y\n; c\n");
  EXPECT_EQ(ini.count("a"), 1u);
  EXPECT_EQ(ini["a"]["key"], "v = w");
  EXPECT_EQ(ini["a"]["s3.addressing_style"], "path");
  EXPECT_EQ(ini["a"]["other"], "x");
  EXPECT_EQ(ini["a"]["not_nested"], "y");
  EXPECT_EQ(ini.size(), 1u);
}

}  // namespace
}  // namespace modelcache::store
