#include "common/log.h"

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace modelcache {
namespace {

// "%*" in a pattern: the message, escaped for a JSON string, so that a message containing quotes
// or newlines still yields one valid JSON object per line.
class JsonMessageFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    std::string escaped = JsonEscape(std::string(msg.payload.data(), msg.payload.size()));
    dest.append(escaped.data(), escaped.data() + escaped.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessageFlag>();
  }
};

}  // namespace

VoidResult SetupLogging(LogFormat format, const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") {
    return Error(Reason::InvalidSpec, "unknown log level '" + level + "'");
  }
  // A second call (a reload) reconfigures the logger in place: other threads may be logging
  // through spdlog's default-logger pointer, which dropping and replacing the logger would free.
  auto logger = spdlog::get("modelcache");
  bool fresh = logger == nullptr;
  if (fresh) {
    logger = spdlog::stderr_logger_mt("modelcache");
  }
  if (format == LogFormat::Json) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>(spdlog::pattern_time_type::utc);
    formatter->add_flag<JsonMessageFlag>('*').set_pattern(
        R"({"ts":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l","msg":"%*"})");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %-5l %v");
  }
  logger->set_level(lvl);
  logger->flush_on(spdlog::level::info);
  if (fresh) {
    spdlog::set_default_logger(logger);
  }
  return {};
}

std::string JsonEscape(const std::string& s) {
  std::string quoted = nlohmann::json(s).dump(-1, ' ', false,
                                              nlohmann::json::error_handler_t::replace);
  return quoted.substr(1, quoted.size() - 2);
}

}  // namespace modelcache
