#include "cli/status_table.h"

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>
#include <yaml-cpp/yaml.h>

#include "common/clock.h"
#include "common/units.h"

namespace modelcache::controller {

namespace {

// kubectl's tabwriter settings (k8s.io/kubectl printers.GetNewTabWriter).
constexpr size_t kMinWidth = 6;
constexpr size_t kPadding = 3;

std::string RenderColumns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      // Like tabwriter, the last cell of a line is not a column and gets no padding.
      if (i + 1 < row.size()) {
        size_t width = std::max(kMinWidth, widths[i] + kPadding);
        line.append(width - row[i].size(), ' ');
      }
    }
    out += line;
    out += '\n';
  }
  return out;
}

std::string Progress(const crds::ModelCacheStatus& status) {
  if (!status.progress || status.progress->bytes_total == 0) {
    return "";
  }
  const auto& p = *status.progress;
  uint64_t percent = p.bytes_done >= p.bytes_total
                         ? 100
                         : static_cast<uint64_t>(static_cast<double>(p.bytes_done) * 100.0 /
                                                 static_cast<double>(p.bytes_total));
  std::string out =
      fmt::format("{}% {}/{}", percent, FormatBytes(p.bytes_done), FormatBytes(p.bytes_total));
  if (p.bytes_per_second > 0) {
    out += fmt::format(" {}/s", FormatBytes(p.bytes_per_second));
  }
  return out;
}

// Strings that a YAML reader would take for a bool, null, number or timestamp are quoted, as
// kubectl's go-yaml does, so that `status: "True"` reads back as a string.
bool NeedsQuotes(const std::string& s) {
  if (s.empty()) {
    return true;
  }
  std::string lower;
  for (char c : s) {
    lower += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  }
  for (const char* word : {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", ".inf",
                           "-.inf", "+.inf", ".nan"}) {
    if (lower == word) {
      return true;
    }
  }
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (digit(s[0])) {
    return true;
  }
  return s.size() > 1 && (s[0] == '-' || s[0] == '+' || s[0] == '.') && digit(s[1]);
}

void EmitYaml(YAML::Emitter& out, const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::object:
      if (j.empty()) {
        out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
        return;
      }
      out << YAML::BeginMap;
      for (const auto& [key, value] : j.items()) {
        out << YAML::Key;
        if (NeedsQuotes(key)) {
          out << YAML::DoubleQuoted;
        }
        out << key << YAML::Value;
        EmitYaml(out, value);
      }
      out << YAML::EndMap;
      return;
    case nlohmann::json::value_t::array:
      if (j.empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        return;
      }
      out << YAML::BeginSeq;
      for (const auto& value : j) {
        EmitYaml(out, value);
      }
      out << YAML::EndSeq;
      return;
    case nlohmann::json::value_t::string: {
      const auto& s = j.get_ref<const std::string&>();
      if (NeedsQuotes(s)) {
        out << YAML::DoubleQuoted;
      }
      out << s;
      return;
    }
    case nlohmann::json::value_t::boolean:
      out << YAML::TrueFalseBool << j.get<bool>();
      return;
    case nlohmann::json::value_t::number_integer:
      out << j.get<int64_t>();
      return;
    case nlohmann::json::value_t::number_unsigned:
      out << j.get<uint64_t>();
      return;
    case nlohmann::json::value_t::number_float:
      out << j.get<double>();
      return;
    default:
      out << YAML::Null;
      return;
  }
}

}  // namespace

std::string FormatAge(std::chrono::system_clock::duration age) {
  using std::chrono::duration_cast;
  auto seconds = duration_cast<std::chrono::seconds>(age).count();
  if (seconds < -1) {
    return "<invalid>";
  }
  if (seconds < 0) {
    return "0s";
  }
  if (seconds < int64_t{60} * 2) {
    return fmt::format("{}s", seconds);
  }
  int64_t minutes = seconds / 60;
  if (minutes < 10) {
    int64_t s = seconds % 60;
    return s == 0 ? fmt::format("{}m", minutes) : fmt::format("{}m{}s", minutes, s);
  }
  if (minutes < int64_t{60} * 3) {
    return fmt::format("{}m", minutes);
  }
  int64_t hours = seconds / 3600;
  if (hours < 8) {
    int64_t m = minutes % 60;
    return m == 0 ? fmt::format("{}h", hours) : fmt::format("{}h{}m", hours, m);
  }
  if (hours < 48) {
    return fmt::format("{}h", hours);
  }
  if (hours < int64_t{24} * 8) {
    int64_t h = hours % 24;
    return h == 0 ? fmt::format("{}d", hours / 24) : fmt::format("{}d{}h", hours / 24, h);
  }
  if (hours < int64_t{24} * 365 * 2) {
    return fmt::format("{}d", hours / 24);
  }
  if (hours < int64_t{24} * 365 * 8) {
    int64_t days = (hours / 24) % 365;
    return days == 0 ? fmt::format("{}y", hours / 24 / 365)
                     : fmt::format("{}y{}d", hours / 24 / 365, days);
  }
  return fmt::format("{}y", hours / 24 / 365);
}

std::string ShortArtifactId(std::string_view id) {
  constexpr std::string_view kMarker = "@sha256:";
  size_t at = id.find(kMarker);
  if (at == std::string_view::npos) {
    return std::string(id);
  }
  return std::string(id.substr(0, std::min(id.size(), at + kMarker.size() + 12)));
}

std::string FormatTable(const std::vector<crds::ModelCache>& objects, bool wide,
                        std::chrono::system_clock::time_point now,
                        std::string_view namespace_name) {
  if (objects.empty()) {
    if (namespace_name.empty()) {
      return "No resources found.\n";
    }
    return fmt::format("No resources found in {} namespace.\n", namespace_name);
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "PHASE", "REVISION", "ARTIFACT", "AGE"});
  if (wide) {
    rows.back().insert(rows.back().end(), {"PROGRESS", "MESSAGE"});
  }
  for (const auto& mc : objects) {
    const auto& status = mc.status;
    std::string age = "<unknown>";
    if (!mc.metadata.creation_timestamp.empty()) {
      age = FormatAge(now - ParseRfc3339(mc.metadata.creation_timestamp));
    }
    std::vector<std::string> row = {
        mc.metadata.name, status.phase, status.resolved_revision.substr(0, 12),
        status.artifact ? ShortArtifactId(status.artifact->id) : std::string(), age};
    if (wide) {
      const crds::Condition* ready = crds::FindCondition(status.conditions, "Ready");
      row.push_back(Progress(status));
      row.push_back(ready != nullptr ? ready->message : std::string());
    }
    rows.push_back(std::move(row));
  }
  return RenderColumns(rows);
}

std::string FormatList(const std::vector<crds::ModelCache>& objects, bool yaml) {
  nlohmann::json list = nlohmann::json::object();
  list["apiVersion"] = "v1";
  list["kind"] = "List";
  list["items"] = nlohmann::json::array();
  for (const auto& mc : objects) {
    list["items"].push_back(crds::ToJson(mc));
  }
  if (!yaml) {
    return list.dump(4) + "\n";
  }
  YAML::Emitter out;
  EmitYaml(out, list);
  return std::string(out.c_str()) + "\n";
}

}  // namespace modelcache::controller
