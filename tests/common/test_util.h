#pragma once

// Helpers every test binary may use (unit, fixture and integration tests alike): a temporary
// directory removed at scope exit, whole-file writes and reads, deterministic pseudo-random
// bytes, and a bounded poll for work done by other threads or processes. Each helper exists here
// once; a test folder's own test_util.h adds only what is particular to its module.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>

namespace modelcache::test_util {

// A fresh directory under the system temp dir (`<prefix>-XXXXXX`), removed with its contents
// when it goes out of scope. path() is "" if it could not be made.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "mc-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Writes a file the way `cp` or an editor's plain save does (create/truncate, write, close),
// creating its parent directories.
inline void WriteFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `n` pseudo-random bytes, the same for the same seed on every run and machine (mt19937_64).
inline std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

// Polls `condition` every `poll` until it holds or `limit` passes; returns whether it held. For
// waiting on work other threads or processes do; never for measuring time.
template <typename F>
bool WaitFor(F condition, std::chrono::milliseconds limit = std::chrono::seconds(5),
             std::chrono::milliseconds poll = std::chrono::milliseconds(2)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) {
      return true;
    }
    std::this_thread::sleep_for(poll);
  }
  return condition();
}

}  // namespace modelcache::test_util
