#include "store/aws_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <tuple>

#include <spdlog/fmt/fmt.h>

#include "common/strings.h"

namespace modelcache::store {
namespace {


std::string Get(const Environment& env, const char* name) {
  auto it = env.find(name);
  return it == env.end() ? std::string() : it->second;
}

// Reads an AWS file. A missing file that the user did not name is simply absent.
Result<IniSections> ReadIni(const std::string& path, bool named, const char* variable) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (named) {
      return Error(Reason::InvalidSpec,
                   fmt::format("{} names {}, which does not exist", variable, path));
    }
    return IniSections{};
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Error(Reason::InvalidSpec, fmt::format("cannot read AWS file {}", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseAwsIni(buffer.str());
}

const std::string* Find(const IniSections& ini, const std::string& section, const char* key) {
  auto s = ini.find(section);
  if (s == ini.end()) {
    return nullptr;
  }
  auto k = s->second.find(key);
  if (k == s->second.end() || k->second.empty()) {
    return nullptr;
  }
  return &k->second;
}

bool IsDnsCompatible(const std::string& bucket) {
  if (bucket.size() < 3 || bucket.size() > 63) {
    return false;
  }
  for (char c : bucket) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok) {
      return false;  // dots break TLS wildcard certificates, so they count as unsafe
    }
  }
  return bucket.front() != '-' && bucket.back() != '-';
}

}  // namespace

IniSections ParseAwsIni(const std::string& text) {
  IniSections out;
  std::string section;
  bool in_section = false;
  std::string parent;  // "s3" while reading the indented lines of "s3 ="
  std::istringstream lines(text);
  std::string raw;
  while (std::getline(lines, raw)) {
    std::string line(Trim(raw));
    if (line.empty() || line[0] == '#' || line[0] == ';') {
      continue;
    }
    if (line.front() == '[' && line.back() == ']') {
      section = Trim(std::string_view(line).substr(1, line.size() - 2));
      in_section = true;
      parent.clear();
      out[section];
      continue;
    }
    if (!in_section) {
      continue;
    }
    size_t eq = line.find('=');
    if (eq == std::string::npos) {
      continue;
    }
    std::string key = AsciiLower(Trim(std::string_view(line).substr(0, eq)));
    std::string value(Trim(std::string_view(line).substr(eq + 1)));
    bool indented = !raw.empty() && (raw[0] == ' ' || raw[0] == '\t');
    if (indented && !parent.empty()) {
      out[section][fmt::format("{}.{}", parent, key)] = value;
      continue;
    }
    parent = value.empty() ? key : std::string();
    out[section][key] = value;
  }
  return out;
}

bool AwsConfig::UsePathStyle(const std::string& bucket) const {
  switch (addressing) {
    case AddressingStyle::Path:
      return true;
    case AddressingStyle::Virtual:
      return false;
    case AddressingStyle::Auto:
      break;
  }
  return custom_endpoint || !IsDnsCompatible(bucket);
}

Result<AwsConfig> LoadAwsConfig(const Environment& env, const AwsOverrides& overrides) {
  AwsConfig config;
  std::string env_profile = Get(env, "AWS_PROFILE");
  config.profile = !overrides.profile.empty() ? overrides.profile
                   : !env_profile.empty()     ? env_profile
                                              : "default";
  bool profile_named = !overrides.profile.empty() || !env_profile.empty();

  std::string home = Get(env, "HOME");
  std::string credentials_path = Get(env, "AWS_SHARED_CREDENTIALS_FILE");
  bool credentials_named = !credentials_path.empty();
  if (!credentials_named && !home.empty()) {
    credentials_path = home + "/.aws/credentials";
  }
  std::string config_path = Get(env, "AWS_CONFIG_FILE");
  bool config_named = !config_path.empty();
  if (!config_named && !home.empty()) {
    config_path = home + "/.aws/config";
  }

  IniSections credentials_ini;
  if (!credentials_path.empty()) {
    auto r = ReadIni(credentials_path, credentials_named, "AWS_SHARED_CREDENTIALS_FILE");
    if (!r) {
      return r.error();
    }
    credentials_ini = std::move(*r);
  }
  IniSections config_ini;
  if (!config_path.empty()) {
    auto r = ReadIni(config_path, config_named, "AWS_CONFIG_FILE");
    if (!r) {
      return r.error();
    }
    config_ini = std::move(*r);
  }
  const std::string config_section =
      config.profile == "default" ? "default" : "profile " + config.profile;
  bool in_credentials = credentials_ini.count(config.profile) > 0;
  bool in_config = config_ini.count(config_section) > 0;
  if (profile_named && !in_credentials && !in_config) {
    return Error(Reason::InvalidSpec,
                 fmt::format("AWS profile '{}' is in neither {} nor {}", config.profile,
                             credentials_path.empty() ? "the credentials file" : credentials_path,
                             config_path.empty() ? "the config file" : config_path));
  }

  // Credentials: environment first, then the credentials file, then the config file.
  std::string key_id = Get(env, "AWS_ACCESS_KEY_ID");
  std::string secret = Get(env, "AWS_SECRET_ACCESS_KEY");
  if (!key_id.empty() || !secret.empty()) {
    if (key_id.empty() || secret.empty()) {
      return Error(Reason::InvalidSpec,
                   "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together");
    }
    config.credentials = {key_id, secret, Get(env, "AWS_SESSION_TOKEN")};
  } else {
    for (const auto& [ini, section, where] :
         {std::tuple{&credentials_ini, config.profile, credentials_path},
          std::tuple{&config_ini, config_section, config_path}}) {
      const std::string* id = Find(*ini, section, "aws_access_key_id");
      const std::string* sec = Find(*ini, section, "aws_secret_access_key");
      if (id == nullptr && sec == nullptr) {
        continue;
      }
      if (id == nullptr || sec == nullptr) {
        return Error(Reason::InvalidSpec,
                     fmt::format("profile '{}' in {} has only one of aws_access_key_id and "
                                 "aws_secret_access_key",
                                 config.profile, where));
      }
      const std::string* token = Find(*ini, section, "aws_session_token");
      config.credentials = {*id, *sec, token != nullptr ? *token : std::string()};
      break;
    }
  }
  if (config.credentials.access_key_id.empty()) {
    return Error(Reason::InvalidSpec,
                 fmt::format("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                             "or give profile '{}' keys in the shared credentials file",
                             config.profile));
  }

  const std::string* profile_region = Find(config_ini, config_section, "region");
  if (!overrides.region.empty()) {
    config.region = overrides.region;
  } else if (std::string r = Get(env, "AWS_REGION"); !r.empty()) {
    config.region = r;
  } else if (std::string d = Get(env, "AWS_DEFAULT_REGION"); !d.empty()) {
    config.region = d;
  } else if (profile_region != nullptr) {
    config.region = *profile_region;
  } else {
    config.region = "us-east-1";
  }

  std::string endpoint = overrides.endpoint_url;
  if (endpoint.empty()) {
    endpoint = Get(env, "AWS_ENDPOINT_URL_S3");
  }
  if (endpoint.empty()) {
    endpoint = Get(env, "AWS_ENDPOINT_URL");
  }
  if (endpoint.empty()) {
    const std::string* e = Find(config_ini, config_section, "s3.endpoint_url");
    if (e == nullptr) {
      e = Find(config_ini, config_section, "endpoint_url");
    }
    if (e != nullptr) {
      endpoint = *e;
    }
  }
  if (!endpoint.empty()) {
    if (endpoint.rfind("http://", 0) != 0 && endpoint.rfind("https://", 0) != 0) {
      return Error(Reason::InvalidSpec,
                   fmt::format("S3 endpoint {} must start with http:// or https://", endpoint));
    }
    while (!endpoint.empty() && endpoint.back() == '/') {
      endpoint.pop_back();
    }
    config.endpoint_url = endpoint;
    config.custom_endpoint = true;
  } else {
    config.endpoint_url = fmt::format("https://s3.{}.amazonaws.com", config.region);
  }

  if (const std::string* style = Find(config_ini, config_section, "s3.addressing_style")) {
    if (*style == "path") {
      config.addressing = AddressingStyle::Path;
    } else if (*style == "virtual") {
      config.addressing = AddressingStyle::Virtual;
    } else if (*style != "auto") {
      return Error(Reason::InvalidSpec,
                   fmt::format("profile '{}' in {}: s3 addressing_style '{}' is not auto, path or "
                               "virtual",
                               config.profile, config_path, *style));
    }
  }
  return config;
}

}  // namespace modelcache::store
