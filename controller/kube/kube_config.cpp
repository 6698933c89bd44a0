#include "controller/kube/kube_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/strings.h"
#include "controller/kube/kube_client.h"

namespace modelcache::controller {
namespace {

std::optional<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::nullopt;
  }
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) {
    return std::nullopt;
  }
  return s.str();
}

// A token read from a file and re-read when the file changes (kubelet rotates projected
// service-account tokens; client-go re-reads them, cached for a minute, which a stat per
// request makes unnecessary).
class TokenFile {
 public:
  explicit TokenFile(std::string path) : path_(std::move(path)) {}

  std::string Get() {
    std::lock_guard lock(mu_);
    struct stat st {};
    if (::stat(path_.c_str(), &st) != 0) {
      return token_;  // keep the last token while the file is being replaced
    }
    if (loaded_ && st.st_mtim.tv_sec == mtime_.tv_sec && st.st_mtim.tv_nsec == mtime_.tv_nsec &&
        st.st_size == size_ && st.st_ino == ino_) {
      return token_;
    }
    if (auto content = ReadWholeFile(path_)) {
      token_ = Trim(*content);
      mtime_ = st.st_mtim;
      size_ = st.st_size;
      ino_ = st.st_ino;
      loaded_ = true;
    }
    return token_;
  }

 private:
  const std::string path_;
  std::mutex mu_;
  std::string token_;    // GUARDED_BY(mu_)
  timespec mtime_{};     // GUARDED_BY(mu_)
  off_t size_ = 0;       // GUARDED_BY(mu_)
  ino_t ino_ = 0;        // GUARDED_BY(mu_)
  bool loaded_ = false;  // GUARDED_BY(mu_)
};

// Files created for in-memory certificate data, removed with the last KubeConfig copy.
struct TempFiles {
  std::vector<std::string> paths;
  TempFiles() = default;
  TempFiles(const TempFiles&) = delete;
  TempFiles& operator=(const TempFiles&) = delete;
  ~TempFiles() {
    for (const std::string& p : paths) {
      ::unlink(p.c_str());
    }
  }
};

Result<std::string> WriteTempFile(TempFiles& files, const std::string& content) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "modelcache-kube-XXXXXX").string();
  int fd = ::mkstemp(tmpl.data());  // mode 0600
  if (fd < 0) {
    return Error(Reason::StorageError, "cannot create a temporary file for a client certificate");
  }
  files.paths.push_back(tmpl);
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n <= 0) {
      ::close(fd);
      return Error(Reason::StorageError, "cannot write " + tmpl);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return tmpl;
}

std::string Lookup(const KubeEnvironment& env, const std::string& name) {
  auto it = env.find(name);
  return it == env.end() ? "" : it->second;
}

// The entry named `name` of a kubeconfig list ("clusters", "users", "contexts"), its inner map
// (`field`), or an undefined node.
YAML::Node Named(const YAML::Node& root, const char* list, const std::string& name,
                 const char* field) {
  YAML::Node entries = root[list];
  if (entries && entries.IsSequence()) {
    for (const YAML::Node& e : entries) {
      if (e.IsMap() && e["name"] && e["name"].as<std::string>("") == name) {
        return e[field];
      }
    }
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

std::string Str(const YAML::Node& node, const char* field) {
  if (!node || !node.IsMap() || !node[field] || !node[field].IsScalar()) {
    return "";
  }
  return node[field].as<std::string>("");
}

}  // namespace

Result<KubeConfig> InClusterConfig(const KubeEnvironment& env, const std::string& dir) {
  std::string host = Lookup(env, "KUBERNETES_SERVICE_HOST");
  std::string port = Lookup(env, "KUBERNETES_SERVICE_PORT");
  if (host.empty() || port.empty()) {
    return Error(Reason::InvalidSpec,
                 "not running in a cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT "
                 "must be set");
  }
  if (host.find(':') != std::string::npos) {
    host = "[" + host + "]";  // IPv6
  }
  KubeConfig config;
  config.server = "https://" + host + ":" + port;
  std::string token_path = dir + "/token";
  if (!ReadWholeFile(token_path)) {
    return Error(Reason::InvalidSpec, "cannot read the service account token " + token_path);
  }
  auto token = std::make_shared<TokenFile>(token_path);
  config.token = [token] { return token->Get(); };
  config.tls.ca_file = dir + "/ca.crt";
  if (auto ns = ReadWholeFile(dir + "/namespace"); ns && !Trim(*ns).empty()) {
    config.default_namespace = Trim(*ns);
  }
  return config;
}

Result<KubeConfig> KubeconfigConfig(const KubeEnvironment& env, const std::string& kubeconfig_path,
                                    const std::string& context) {
  std::string path = kubeconfig_path;
  if (path.empty()) {
    std::string list = Lookup(env, "KUBECONFIG");
    path = list.substr(0, list.find(':'));
  }
  if (path.empty() && !Lookup(env, "HOME").empty()) {
    path = Lookup(env, "HOME") + "/.kube/config";
  }
  if (path.empty()) {
    return Error(Reason::InvalidSpec, "no kubeconfig: set --kubeconfig, KUBECONFIG or HOME");
  }
  auto text = ReadWholeFile(path);
  if (!text) {
    return Error(Reason::InvalidSpec, "cannot read kubeconfig " + path);
  }
  YAML::Node root;
  try {
    root = YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    return Error(Reason::InvalidSpec, path + ": " + e.what());
  }
  if (!root.IsMap()) {
    return Error(Reason::InvalidSpec, path + ": not a kubeconfig");
  }
  std::filesystem::path base = std::filesystem::path(path).parent_path();
  auto resolve = [&](const std::string& p) {
    return p.empty() || p[0] == '/' ? p : (base / p).string();
  };
  try {
    std::string context_name = context.empty() ? Str(root, "current-context") : context;
    if (context_name.empty()) {
      return Error(Reason::InvalidSpec, path + ": current-context is not set");
    }
    YAML::Node ctx = Named(root, "contexts", context_name, "context");
    if (!ctx || !ctx.IsMap()) {
      return Error(Reason::InvalidSpec, path + ": context \"" + context_name + "\" not found");
    }
    std::string cluster_name = Str(ctx, "cluster");
    YAML::Node cluster = Named(root, "clusters", cluster_name, "cluster");
    if (!cluster || !cluster.IsMap()) {
      return Error(Reason::InvalidSpec, path + ": cluster \"" + cluster_name + "\" not found");
    }
    KubeConfig config;
    config.server = Str(cluster, "server");
    while (!config.server.empty() && config.server.back() == '/') {
      config.server.pop_back();
    }
    if (config.server.empty()) {
      return Error(Reason::InvalidSpec,
                   path + ": clusters[" + cluster_name + "].cluster.server is not set");
    }
    if (std::string ns = Str(ctx, "namespace"); !ns.empty()) {
      config.default_namespace = ns;
    }
    config.tls.insecure_skip_verify = Str(cluster, "insecure-skip-tls-verify") == "true";
    if (std::string data = Str(cluster, "certificate-authority-data"); !data.empty()) {
      auto pem = DecodeBase64(data);
      if (!pem) {
        return Error(Reason::InvalidSpec, path + ": clusters[" + cluster_name +
                                              "].cluster.certificate-authority-data is not base64");
      }
      config.tls.ca_pem = *pem;
    } else {
      config.tls.ca_file = resolve(Str(cluster, "certificate-authority"));
    }

    std::string user_name = Str(ctx, "user");
    YAML::Node user = Named(root, "users", user_name, "user");
    if (!user_name.empty() && (!user || !user.IsMap())) {
      return Error(Reason::InvalidSpec, path + ": user \"" + user_name + "\" not found");
    }
    auto files = std::make_shared<TempFiles>();
    for (auto [data_field, file_field, target] :
         {std::tuple{"client-certificate-data", "client-certificate", &config.tls.client_cert_file},
          std::tuple{"client-key-data", "client-key", &config.tls.client_key_file}}) {
      if (std::string data = Str(user, data_field); !data.empty()) {
        auto pem = DecodeBase64(data);
        if (!pem) {
          std::string field = path;
          field.append(": users[").append(user_name).append("].user.").append(data_field);
          return Error(Reason::InvalidSpec, field + " is not base64");
        }
        auto file = WriteTempFile(*files, *pem);
        if (!file) {
          return file.error();
        }
        *target = *file;
      } else {
        *target = resolve(Str(user, file_field));
      }
    }
    if (!files->paths.empty()) {
      config.temp_files = files;
    }
    if (std::string token = Str(user, "token"); !token.empty()) {
      config.token = [token] { return token; };
    } else if (std::string token_file = Str(user, "tokenFile"); !token_file.empty()) {
      token_file = resolve(token_file);
      if (!ReadWholeFile(token_file)) {
        return Error(Reason::InvalidSpec, path + ": cannot read tokenFile " + token_file);
      }
      auto source = std::make_shared<TokenFile>(token_file);
      config.token = [source] { return source->Get(); };
    }
    return config;
  } catch (const YAML::Exception& e) {
    return Error(Reason::InvalidSpec, path + ": " + e.what());
  }
}

Result<KubeConfig> LoadKubeConfig(const KubeEnvironment& env, const std::string& kubeconfig_path) {
  if (kubeconfig_path.empty() && Lookup(env, "KUBECONFIG").empty() &&
      !Lookup(env, "KUBERNETES_SERVICE_HOST").empty()) {
    return InClusterConfig(env);
  }
  return KubeconfigConfig(env, kubeconfig_path);
}

}  // namespace modelcache::controller
