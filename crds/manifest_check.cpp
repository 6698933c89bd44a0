// `modelcache validate`: the daemon's own parsing, defaulting and validation, reported per line.
// Validation runs even on a document with conversion errors (on the fields that converted), so
// that one run shows every problem; errors under a field that failed to convert are dropped
// because they would only restate the conversion error ("Required value" for a repo given as a
// list).

#include "crds/manifest_check.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/files.h"
#include "crds/internal/convert.h"
#include "crds/model_cache.h"

namespace modelcache::crds {

std::string ManifestProblem::ToString() const {
  std::string out = file + ":" + std::to_string(line) + ": ";
  if (!field.empty()) {
    out += field + ": ";
  }
  return out + message;
}

namespace {

// True if `field` is `parent` or lies under it ("spec.source.repo" under "spec.source").
bool IsUnder(const std::string& field, const std::string& parent) {
  if (parent.empty()) {
    return true;
  }
  if (!field.starts_with(parent)) {
    return false;
  }
  return field.size() == parent.size() || field[parent.size()] == '.' ||
         field[parent.size()] == '[';
}

}  // namespace

std::vector<ManifestProblem> CheckManifestFile(const std::string& path) {
  std::vector<ManifestProblem> problems;
  // One byte over the limit is enough for ReadYaml to refuse the file without reading all of it.
  Result<std::string> text = ReadFile(path, kMaxManifestBytes);
  if (!text) {
    problems.push_back({path, 0, "", text.error().message});
    return problems;
  }
  std::vector<internal::YamlDocument> yaml_docs;
  internal::YamlSyntaxError syntax;
  if (!internal::ReadYaml(*text, &yaml_docs, &syntax)) {
    problems.push_back({path, syntax.line, "",
                        syntax.line == 0 ? syntax.message
                                         : "YAML syntax error: " + syntax.message + " (column " +
                                               std::to_string(syntax.column) + ")"});
    return problems;
  }

  struct Declared {
    std::string key;
    int line;
  };
  std::vector<Declared> declared;
  for (const internal::YamlDocument& y : yaml_docs) {
    internal::Conversion conv;
    Document doc = internal::ToDocument(y, &conv);
    if (!internal::BelongsToUs(doc.api_version, doc.kind)) {
      continue;
    }
    bool wrong_type = false;  // apiVersion/kind: nothing else is meaningful then
    std::vector<std::string> failed_fields;
    for (const auto& [line, error] : doc.errors) {
      problems.push_back({path, line, error.field, error.ErrorBody()});
      failed_fields.push_back(error.field);
      wrong_type = wrong_type || error.field == "apiVersion" || error.field == "kind";
    }
    if (wrong_type) {
      continue;
    }
    for (const auto& [line, field] : doc.unknown_fields) {
      problems.push_back({path, line, field, "unknown field"});
    }
    ModelCache mc = conv.object;
    ApplyDefaults(mc);
    for (const FieldError& error : Validate(mc)) {
      bool restated = std::any_of(failed_fields.begin(), failed_fields.end(),
                                  [&](const std::string& f) { return IsUnder(error.field, f); });
      if (!restated) {
        problems.push_back({path, doc.LineOf(error.field), error.field, error.ErrorBody()});
      }
    }
    if (!mc.metadata.name.empty()) {
      declared.push_back({mc.key().ToString(), doc.LineOf("metadata.name")});
    }
  }

  std::map<std::string, std::vector<int>> lines_by_key;
  for (const Declared& d : declared) {
    lines_by_key[d.key].push_back(d.line);
  }
  for (const Declared& d : declared) {
    const std::vector<int>& lines = lines_by_key[d.key];
    if (lines.size() < 2) {
      continue;
    }
    std::string others;
    for (int l : lines) {
      if (l != d.line) {
        others += (others.empty() ? "" : ", ") + std::to_string(l);
      }
    }
    FieldError e{FieldError::Type::Duplicate, "metadata.name", internal::Quote(d.key),
                 "also declared at line " + others};
    problems.push_back({path, d.line, e.field, e.ErrorBody()});
  }

  std::stable_sort(
      problems.begin(), problems.end(),
      [](const ManifestProblem& a, const ManifestProblem& b) { return a.line < b.line; });
  return problems;
}

}  // namespace modelcache::crds
