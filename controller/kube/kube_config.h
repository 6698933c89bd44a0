#pragma once

// How to reach a Kubernetes API server, as client-go's rest.Config: the server URL, TLS options,
// a bearer token provider and the default namespace, loaded from the in-cluster service account
// or from a kubeconfig file.
//
// Thread-safe once built: the token provider may be called from any thread.

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/http_client.h"
#include "common/result.h"

namespace modelcache::controller {

// The process environment, passed in so that the library never calls getenv.
using KubeEnvironment = std::map<std::string, std::string>;

struct KubeConfig {
  std::string server;  // "https://10.96.0.1:443", without a trailing '/'
  TlsOptions tls;
  // The bearer token for the next request ("" for none). May re-read a file (in-cluster tokens
  // are rotated). Empty function: no token.
  std::function<std::string()> token;
  std::string default_namespace = "default";
  // Temporary files holding kubeconfig client-certificate-data / client-key-data (curl reads
  // certificates from files); removed when the last copy of the config goes away.
  std::shared_ptr<void> temp_files;
};

// In-cluster configuration (client-go rest.InClusterConfig): server from KUBERNETES_SERVICE_HOST
// and KUBERNETES_SERVICE_PORT (IPv6 hosts bracketed), CA <dir>/ca.crt, token <dir>/token re-read
// whenever its modification time or size changes, namespace from <dir>/namespace ("default" if
// unreadable). `dir` is normally /var/run/secrets/kubernetes.io/serviceaccount. InvalidSpec when
// the variables are unset or the token file cannot be read.
Result<KubeConfig> InClusterConfig(
    const KubeEnvironment& env,
    const std::string& dir = "/var/run/secrets/kubernetes.io/serviceaccount");

// kubeconfig configuration (clientcmd): the file is `kubeconfig_path` if not empty, else the
// first entry of KUBECONFIG (':'-separated), else $HOME/.kube/config. Uses `context` or, if empty,
// current-context; its cluster's server, certificate-authority(-data) and
// insecure-skip-tls-verify; its user's token, tokenFile (re-read like the in-cluster token),
// client-certificate(-data) and client-key(-data); its namespace. Relative file paths are
// relative to the kubeconfig's directory. InvalidSpec naming the file and the field when
// something is missing or malformed.
Result<KubeConfig> KubeconfigConfig(const KubeEnvironment& env, const std::string& kubeconfig_path,
                                    const std::string& context = "");

// The configuration client-go's default loading rules pick: `kubeconfig_path` or KUBECONFIG if
// set; else in-cluster if KUBERNETES_SERVICE_HOST is set; else $HOME/.kube/config.
Result<KubeConfig> LoadKubeConfig(const KubeEnvironment& env, const std::string& kubeconfig_path);

}  // namespace modelcache::controller
