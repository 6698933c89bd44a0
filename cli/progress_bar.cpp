#include "cli/progress_bar.h"

#include <cstdio>

#include <fmt/format.h>

#include "common/units.h"

namespace modelcache::controller {

void ProgressBar::Update(const crds::ModelCacheStatus& status) {
  uint64_t done = status.progress ? status.progress->bytes_done : 0;
  uint64_t total = status.progress ? status.progress->bytes_total : 0;
  uint64_t rate = status.progress ? status.progress->bytes_per_second : 0;
  Update(status.phase, done, total, rate);
}

void ProgressBar::Update(const std::string& phase, uint64_t done, uint64_t total,
                         uint64_t bytes_per_second) {
  if (!terminal_) {
    if (phase != last_phase_) {
      std::fprintf(stderr, "%s...\n", phase.c_str());
      last_phase_ = phase;
    }
    return;
  }
  constexpr int kWidth = 30;
  double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 0.0;
  int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), ' ');
  std::string line = phase + " [" + bar + "] " + std::to_string(static_cast<int>(fraction * 100)) +
                     "%";
  if (total > 0) {
    line += fmt::format(" {}/{}", FormatBytes(done), FormatBytes(total));
  }
  if (bytes_per_second > 0) {
    line += fmt::format(" {}/s", FormatBytes(bytes_per_second));
  }
  std::fprintf(stderr, "\r\033[K%s", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Clear() {
  if (terminal_ && drawn_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }
}

}  // namespace modelcache::controller
