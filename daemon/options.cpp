#include "daemon/options.h"

#include <unistd.h>

#include <cstdlib>
#include <string_view>

#include "common/files.h"
#include "common/strings.h"

namespace modelcache::controller {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once, before threads
  return v == nullptr ? std::string() : std::string(v);
}

std::string TrimmedFile(const std::string& path) {
  auto content = ReadFile(path);
  if (!content) {
    return "";
  }
  return std::string(TrimRight(*content, "\n\r "));
}

}  // namespace

Environment Environment::FromProcess() {
  Environment env;
  env.hf_endpoint = Env("HF_ENDPOINT");
  env.hf_home = Env("HF_HOME");
  if (env.hf_home.empty()) {
    std::string xdg = Env("XDG_CACHE_HOME");
    std::string home = Env("HOME");
    env.hf_home = (xdg.empty() ? home + "/.cache" : xdg) + "/huggingface";
  }
  env.hf_hub_cache = Env("HF_HUB_CACHE");
  for (const char* name : {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                           "HOME", "NODE_NAME"}) {
    if (std::string value = Env(name); !value.empty()) {
      env.kube[name] = value;
    }
  }
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    size_t eq = kv.find('=');
    if (eq != std::string_view::npos && (kv.substr(0, 4) == "AWS_" || kv.substr(0, eq) == "HOME")) {
      env.aws[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
  }
  // huggingface_hub: HF_TOKEN, else the file HF_TOKEN_PATH (default $HF_HOME/token).
  env.hf_token = Env("HF_TOKEN");
  if (env.hf_token.empty()) {
    std::string token_path = Env("HF_TOKEN_PATH");
    env.hf_token = TrimmedFile(token_path.empty() ? env.hf_home + "/token" : token_path);
  }
  return env;
}

}  // namespace modelcache::controller
