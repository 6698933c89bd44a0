#pragma once

// AWS configuration resolved the way the AWS CLI and SDKs resolve it, from an injected
// environment (main reads the process environment once; the library never calls getenv):
//
//   credentials: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), else the
//                profile's aws_access_key_id / aws_secret_access_key / aws_session_token in the
//                shared credentials file, else in the config file;
//   profile:     overrides.profile, else AWS_PROFILE, else "default";
//   files:       AWS_SHARED_CREDENTIALS_FILE (default $HOME/.aws/credentials) with "[name]"
//                sections; AWS_CONFIG_FILE (default $HOME/.aws/config) with "[default]" and
//                "[profile name]" sections;
//   region:      AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region, else us-east-1;
//   endpoint:    overrides.endpoint_url (--s3-endpoint), else AWS_ENDPOINT_URL_S3, else
//                AWS_ENDPOINT_URL, else the profile's "s3 = endpoint_url" or endpoint_url,
//                else https://s3.<region>.amazonaws.com;
//   addressing:  the profile's "s3 = addressing_style" (auto, path, virtual); auto means
//                virtual-hosted on AWS and path-style on a custom endpoint (radosgw, MinIO).
//
// The secret never appears in an Error message: errors name files, profiles and variables only.

#include <map>
#include <string>

#include "common/result.h"
#include "store/sigv4.h"

namespace modelcache::store {

using Environment = std::map<std::string, std::string>;

enum class AddressingStyle { Auto, Path, Virtual };

// Command-line settings that win over the environment and files; empty means unset.
struct AwsOverrides {
  std::string profile;
  std::string endpoint_url;
  std::string region;
};

struct AwsConfig {
  AwsCredentials credentials;
  std::string profile;
  std::string region;
  // Scheme, host and optional port, without a trailing slash: "http://127.0.0.1:7480".
  std::string endpoint_url;
  bool custom_endpoint = false;
  AddressingStyle addressing = AddressingStyle::Auto;

  // Path-style unless virtual-hosted was asked for, or Auto on AWS's own endpoint with a bucket
  // name that is a valid DNS label without dots.
  bool UsePathStyle(const std::string& bucket) const;
};

// Sections of an INI file as the AWS files write them: "[name]" headers, "key = value" lines,
// '#' and ';' comment lines, and indented "key = value" lines below "s3 =" stored as "s3.key".
// Keys are lower-cased; later values win.
using IniSections = std::map<std::string, std::map<std::string, std::string>>;
IniSections ParseAwsIni(const std::string& text);

// Resolves the configuration. InvalidSpec when a named profile exists in neither file, when a
// file cannot be parsed or read (a missing default file is not an error), when only one of the
// key id and secret is set, or when no credentials are found at all.
Result<AwsConfig> LoadAwsConfig(const Environment& env, const AwsOverrides& overrides = {});

}  // namespace modelcache::store
