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

// A ModelCache of a file, defaulted, with the lines to point at.
struct Declared {
  std::string key;
  int line = 0;       // metadata.name
  int name_line = 0;  // spec.artifactName, or spec.source.repo when it was defaulted from it
  bool defaulted = false;
  ModelCache object;
};

// CheckManifestFile's per-document problems; each ModelCache with a name goes to `declared`.
std::vector<ManifestProblem> ScanManifestFile(const std::string& path,
                                              std::vector<Declared>& declared) {
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
    bool defaulted = mc.spec.artifact_name.empty();
    ApplyDefaults(mc);
    for (const FieldError& error : Validate(mc)) {
      bool restated = std::any_of(failed_fields.begin(), failed_fields.end(),
                                  [&](const std::string& f) { return IsUnder(error.field, f); });
      if (!restated) {
        problems.push_back({path, doc.LineOf(error.field), error.field, error.ErrorBody()});
      }
    }
    if (!mc.metadata.name.empty()) {
      declared.push_back({mc.key().ToString(), doc.LineOf("metadata.name"),
                          doc.LineOf(defaulted ? "spec.source.repo" : "spec.artifactName"),
                          defaulted, std::move(mc)});
    }
  }
  return problems;
}

}  // namespace

std::vector<ManifestProblem> CheckManifestFile(const std::string& path) {
  std::vector<Declared> declared;
  std::vector<ManifestProblem> problems = ScanManifestFile(path, declared);

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

namespace modelcache::crds {

std::vector<ManifestProblem> CheckArtifactNames(const std::vector<std::string>& paths) {
  struct Claim {
    std::string file;
    int line;
    bool defaulted;
    std::string key, identity;
  };
  std::map<std::string, std::vector<Claim>> by_name;  // artifact name -> its claims, in order
  for (const auto& path : paths) {
    std::vector<Declared> declared;
    (void)ScanManifestFile(path, declared);  // CheckManifestFile reports these problems
    for (Declared& d : declared) {
      const ModelCacheSpec& spec = d.object.spec;
      if (!spec.artifact_name.empty()) {
        by_name[spec.artifact_name].push_back(
            {path, d.name_line, d.defaulted, d.key, ArtifactSpecIdentity(spec, "")});
      }
    }
  }
  std::vector<ManifestProblem> warnings;
  for (const auto& [name, claims] : by_name) {
    const Claim& owner = claims.front();
    for (size_t i = 1; i < claims.size(); ++i) {
      const Claim& c = claims[i];
      if (c.identity == owner.identity) {
        continue;  // the same artifact: the daemon lets them share the name
      }
      warnings.push_back({c.file, c.line, "spec.artifactName",
                          std::string("warning: \"") + name + "\"" +
                              (c.defaulted ? " (the default from spec.source.repo)" : "") +
                              " is also the artifact name of " + owner.key +
                              " (" + owner.file + ":" + std::to_string(owner.line) +
                              ") with a different spec; whichever the daemon sees second fails "
                              "with ArtifactNameConflict (set spec.artifactName)"});
    }
  }
  return warnings;
}

}  // namespace modelcache::crds
