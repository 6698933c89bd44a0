#include "tests/integration/nginx_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

namespace modelcache::itest {
namespace fs = std::filesystem;

namespace {

constexpr const char* kNginx = "/usr/sbin/nginx";

// A port that was free a moment ago (nginx cannot listen on port 0 and report it).
int FreePort() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(s);
  return ntohs(addr.sin_port);
}

bool Accepts(int port) {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(s);
  return ok;
}

}  // namespace

NginxServer::NginxServer(std::string root, std::string work_dir, std::string location_extra)
    : root_(std::move(root)),
      dir_(std::move(work_dir)),
      location_extra_(std::move(location_extra)) {}

NginxServer::~NginxServer() { Stop(); }

bool NginxServer::Available() { return ::access(kNginx, X_OK) == 0; }

bool NginxServer::Start() {
  fs::create_directories(dir_ + "/logs");
  fs::create_directories(dir_ + "/tmp");
  // Two tries: the free port may have been taken between FreePort() and nginx's bind.
  for (int attempt = 0; attempt < 2; ++attempt) {
    port_ = FreePort();
    std::ofstream conf(dir_ + "/nginx.conf", std::ios::trunc);
    // As root, the workers keep root's identity so that they can read the test's files.
    conf << (::geteuid() == 0 ? "user root;\n" : "") << "daemon off;\nmaster_process on;\n"
         << "worker_processes 1;\npid " << dir_ << "/nginx.pid;\n"
         << "error_log " << dir_ << "/logs/error.log warn;\n"
         << "events { worker_connections 256; }\n"
         << "http {\n"
         << "  log_format counts '$request_uri $status $body_bytes_sent $msec \"$http_range\"';\n"
         << "  access_log " << dir_ << "/logs/access.log counts;\n"
         << "  sendfile on; tcp_nopush on; keepalive_requests 100000;\n"
         << "  default_type application/octet-stream;\n"
         << "  client_body_temp_path " << dir_ << "/tmp; proxy_temp_path " << dir_ << "/tmp;\n"
         << "  fastcgi_temp_path " << dir_ << "/tmp; uwsgi_temp_path " << dir_ << "/tmp;\n"
         << "  scgi_temp_path " << dir_ << "/tmp;\n"
         << "  server {\n    listen 127.0.0.1:" << port_ << ";\n    root " << root_ << ";\n"
         << "    location / { " << location_extra_ << " }\n  }\n}\n";
    conf.close();
    pid_ = fork();
    if (pid_ == 0) {
      std::string conf_path = dir_ + "/nginx.conf";
      std::string err = dir_ + "/logs/stderr.log";
      std::FILE* f = std::freopen(err.c_str(), "w", stderr);
      (void)f;
      ::execl(kNginx, kNginx, "-p", dir_.c_str(), "-c", conf_path.c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 500; ++i) {
      if (Accepts(port_)) {
        return true;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;  // exited: port taken, or a config error
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Stop();
  }
  std::ifstream err(dir_ + "/logs/stderr.log");
  std::cerr << "nginx did not start: " << err.rdbuf() << "\n";
  return false;
}

void NginxServer::Stop() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);  // fast shutdown of master and workers
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
}

std::string NginxServer::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::vector<NginxServer::Entry> NginxServer::Log() const {
  std::vector<Entry> out;
  std::ifstream in(dir_ + "/logs/access.log");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    Entry e;
    ls >> e.uri >> e.status >> e.body_bytes >> e.end_time;
    std::getline(ls, e.range);
    auto q = e.range.find('"');
    e.range = q == std::string::npos ? "" : e.range.substr(q + 1, e.range.rfind('"') - q - 1);
    if (ls || !e.uri.empty()) {
      out.push_back(e);
    }
  }
  return out;
}

uint64_t NginxServer::BodyBytes(const std::string& path_prefix) const {
  uint64_t sum = 0;
  for (const Entry& e : Log()) {
    if (e.uri.substr(0, e.uri.find('?')).rfind(path_prefix, 0) == 0) {
      sum += e.body_bytes;
    }
  }
  return sum;
}

}  // namespace modelcache::itest
