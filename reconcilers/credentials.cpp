#include "reconcilers/internal/credentials.h"

#include <filesystem>

#include "common/files.h"
#include "common/strings.h"

namespace modelcache::reconcilers {
namespace {

// What an --s3-secret entry may set (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are required).
constexpr const char* kS3SecretKeys[] = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                         "AWS_SESSION_TOKEN", "AWS_REGION",
                                         "AWS_ENDPOINT_URL",  "AWS_PROFILE"};
// A missing secret or key may appear without any change to the resource: look again this late.
constexpr std::chrono::seconds kSecretRecheck{30};

// The --s3-secret entry: options.read_secret's answer, else the files of the secrets directory
// (only the keys it may hold are read).
Result<SecretData> ReadS3Secret(const ReconcilerOptions& options) {
  if (options.read_secret) {
    return options.read_secret(options.s3_secret);
  }
  if (options.secrets_dir.empty()) {
    return Error(Reason::InvalidSpec, "--s3-secret " + options.s3_secret +
                                          ": the daemon has no --secrets-dir to read it from");
  }
  SecretData secret;
  std::string dir = options.secrets_dir + "/" + options.s3_secret;
  secret.what = "secret directory " + dir;
  std::error_code dir_ec;
  if (!std::filesystem::is_directory(dir, dir_ec)) {
    return Error(Reason::InvalidSpec, secret.what + " not found", kSecretRecheck);
  }
  for (const char* key : kS3SecretKeys) {
    if (auto value = ReadFile(dir + "/" + key)) {
      secret.data[key] = std::move(*value);
    }
  }
  return secret;
}

}  // namespace

Result<store::AwsConfig> AwsConfigFor(const ReconcilerOptions& options, const std::string& uri) {
  store::Environment env = options.aws_env;
  if (!options.s3_secret.empty()) {
    std::string what = "S3 credentials for " + uri + ": ";
    auto secret = ReadS3Secret(options);
    if (!secret) {
      return Error(secret.error().reason, what + secret.error().message,
                   secret.error().retry_after);
    }
    // The secret exists to hold a key pair; one without is a mistake, not a reason to fall back
    // to whatever the daemon's environment holds.
    for (const char* key : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}) {
      auto it = secret->data.find(key);
      if (it == secret->data.end() || TrimRight(it->second).empty()) {
        return Error(Reason::InvalidSpec, what + secret->what + " has no key " + key,
                     kSecretRecheck);
      }
    }
    // A key pair from the secret replaces the environment's, session token included.
    env.erase("AWS_SESSION_TOKEN");
    for (const char* key : kS3SecretKeys) {
      auto it = secret->data.find(key);
      if (it != secret->data.end()) {
        env[key] = std::string(TrimRight(it->second));
      }
    }
  }
  auto config = store::LoadAwsConfig(env, options.aws_overrides);
  if (!config) {
    return Error(config.error().reason,
                 "S3 credentials for " + uri + ": " + config.error().message);
  }
  return config;
}

Result<std::string> HubTokenFor(const ReconcilerOptions& options, const AllowList& own_endpoint,
                                const crds::ModelCache& obj) {
  const auto& ref = obj.spec.source.token_secret_ref;
  if (!ref) {
    // The daemon's token is for the daemon's endpoint only, never for one a spec names.
    if (!obj.spec.source.endpoint.empty() && !own_endpoint.Allows(obj.spec.source.endpoint)) {
      return std::string();
    }
    return options.hf_token;
  }
  if (options.secret_lookup) {
    auto token = options.secret_lookup(obj.key(), *ref);
    if (!token) {
      return token.error();
    }
    return std::string(TrimRight(*token));
  }
  if (options.secrets_dir.empty()) {
    return Error(Reason::InvalidSpec,
                 "spec.source.tokenSecretRef: the daemon has no --secrets-dir to read secret \"" +
                     ref->name + "\" from");
  }
  std::string path = options.secrets_dir + "/" + ref->name + "/" + ref->key;
  auto token = ReadFile(path);
  if (!token) {
    return Error(Reason::InvalidSpec, "spec.source.tokenSecretRef: secret \"" + ref->name +
                                          "\" key \"" + ref->key + "\" not found at " + path);
  }
  return std::string(TrimRight(*token));
}

}  // namespace modelcache::reconcilers
