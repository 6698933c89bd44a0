#pragma once

// The S3 the store tests talk to: Ceph's radosgw (tests/fixtures/radosgw/start-radosgw.sh),
// reached through the fault-injecting proxy tests/fixtures/s3proxy/s3proxy.py.
//
// radosgw: the ctest fixture starts one and writes the script's output (S3_ENDPOINT=…,
// AWS_ACCESS_KEY_ID=…) to the file MC_RADOSGW_ENV names; without it, S3_ENDPOINT and the AWS_*
// variables of the environment are used; failing both, the first call starts a radosgw for this
// process and stops it at exit. The proxy is started once per process.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/http_client.h"
#include "store/s3_client.h"

namespace modelcache::store::testing {

struct S3Env {
  std::string endpoint;  // radosgw itself
  std::string access_key;
  std::string secret_key;
  std::string region = "us-east-1";
  std::string proxy;  // http://127.0.0.1:PORT, forwarding to endpoint
};

namespace detail {

inline std::map<std::string, std::string> ParseAssignments(std::istream& in) {
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
    out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

// Owns what SharedS3 started and stops it at exit.
struct Processes {
  pid_t proxy = -1;
  std::string radosgw_dir;
  ~Processes() {
    if (proxy > 0) {
      ::kill(proxy, SIGTERM);
      ::waitpid(proxy, nullptr, 0);
    }
    if (!radosgw_dir.empty()) {
      std::string cmd = std::string(MC_SOURCE_DIR) +
                        "/tests/fixtures/radosgw/start-radosgw.sh stop " + radosgw_dir +
                        " >/dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "radosgw stop failed\n");
    }
  }
};

inline S3Env Start(Processes& processes) {
  S3Env env;
  std::map<std::string, std::string> vars;
  if (const char* file = std::getenv("MC_RADOSGW_ENV"); file != nullptr && *file != 0) {
    std::ifstream in(file);
    if (!in) throw std::runtime_error(std::string("MC_RADOSGW_ENV names no readable file: ") + file);
    vars = ParseAssignments(in);
  } else if (const char* endpoint = std::getenv("S3_ENDPOINT"); endpoint != nullptr) {
    vars["S3_ENDPOINT"] = endpoint;
    for (const char* name : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}) {
      if (const char* v = std::getenv(name)) vars[name] = v;
    }
  } else {
    std::string cmd =
        std::string(MC_SOURCE_DIR) + "/tests/fixtures/radosgw/start-radosgw.sh";
    FILE* out = ::popen(cmd.c_str(), "r");
    if (out == nullptr) throw std::runtime_error("cannot run " + cmd);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, out)) > 0) text.append(buf, n);
    if (::pclose(out) != 0) throw std::runtime_error(cmd + " failed:\n" + text);
    std::istringstream in(text);
    vars = ParseAssignments(in);
    processes.radosgw_dir = vars["RADOSGW_DIR"];
  }
  env.endpoint = vars["S3_ENDPOINT"];
  env.access_key = vars["AWS_ACCESS_KEY_ID"];
  env.secret_key = vars["AWS_SECRET_ACCESS_KEY"];
  if (!vars["AWS_REGION"].empty()) env.region = vars["AWS_REGION"];
  if (env.endpoint.empty() || env.access_key.empty() || env.secret_key.empty()) {
    throw std::runtime_error("radosgw environment lacks S3_ENDPOINT or the keys");
  }

  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    std::string script = std::string(MC_SOURCE_DIR) + "/tests/fixtures/s3proxy/s3proxy.py";
    ::execlp("python3", "python3", script.c_str(), env.endpoint.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  processes.proxy = pid;
  std::string line;
  char c;
  while (::read(fds[0], &c, 1) == 1 && c != '\n') line.push_back(c);
  ::close(fds[0]);
  if (line.rfind("PORT ", 0) != 0) throw std::runtime_error("s3proxy did not start: " + line);
  env.proxy = "http://127.0.0.1:" + line.substr(5);
  return env;
}

}  // namespace detail

inline const S3Env& SharedS3() {
  static detail::Processes processes;
  static S3Env env = detail::Start(processes);
  return env;
}

// An AwsConfig for the proxy (path-style, the test user's keys).
inline AwsConfig ProxyConfig(const S3Env& env) {
  AwsConfig config;
  config.credentials.access_key_id = env.access_key;
  config.credentials.secret_access_key = env.secret_key;
  config.region = env.region;
  config.endpoint_url = env.proxy;
  config.custom_endpoint = true;
  config.addressing = AddressingStyle::Path;
  return config;
}

inline std::string UniqueBucket(const std::string& prefix) {
  static std::mt19937_64 rng{std::random_device{}()};
  char suffix[17];
  std::snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(rng()));
  return prefix + "-" + suffix;
}

inline VoidResult CreateBucket(const S3Client& client, const std::string& bucket) {
  auto r = client.Send({"CreateBucket", "PUT", bucket, "", {}, {}, "", nullptr});
  if (!r) return r.error();
  return {};
}

inline bool ProxyControl(const std::string& proxy, const std::string& what) {
  HttpRequest req;
  req.method = "POST";
  req.url = proxy + "/__proxy/" + what;
  auto r = HttpClient::Send(req);
  return r && r->status == 200;
}

inline bool ProxyReset(const std::string& proxy) { return ProxyControl(proxy, "reset"); }

// The next `count` requests of `op` get `status` with S3 error `code`.
inline bool ProxyFail(const std::string& proxy, const std::string& op, int count, int status,
                      const std::string& code) {
  return ProxyControl(proxy, "fail?op=" + op + "&count=" + std::to_string(count) +
                                 "&status=" + std::to_string(status) + "&code=" + code);
}

// Requests per S3 operation since the last reset.
inline std::map<std::string, int> ProxyStats(const std::string& proxy) {
  HttpRequest req;
  req.url = proxy + "/__proxy/stats";
  auto r = HttpClient::Send(req);
  std::map<std::string, int> out;
  if (!r || r->status != 200) {
    ADD_FAILURE() << "s3proxy stats failed";
    return out;
  }
  nlohmann::json stats = nlohmann::json::parse(r->body);
  for (auto it = stats.begin(); it != stats.end(); ++it) out[it.key()] = it.value().get<int>();
  return out;
}

}  // namespace modelcache::store::testing
