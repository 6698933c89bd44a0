#pragma once

// Private to crds/: the one JSON -> ModelCache converter that both FromJson and the YAML path use,
// and the bits of YAML provenance (lines, scalar text) it needs to report problems in place.

#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "crds/model_cache.h"

namespace modelcache::crds::internal {

// Where the values of a JSON tree came from when it was built from YAML. Keys are JSON pointers
// ("/spec/source/include/0").
struct SourceMap {
  int document_line = 0;                       // 1-based
  std::unordered_map<std::string, int> lines;  // 1-based line of the key (or item)
  // The text as written of plain scalars that resolved to a non-string (`revision: 1.10` is the
  // float 1.1 in JSON but the string "1.10" to a string field).
  std::unordered_map<std::string, std::string> raw_text;

  // Line of `pointer` or its nearest ancestor; document_line if none.
  int LineOf(std::string pointer) const;
};

// A field error together with where it is: the JSON pointer of the offending value.
struct LocatedError {
  std::string pointer;
  FieldError error;
};

struct Conversion {
  // Best effort: a field that has an error keeps its zero value, every other field converts.
  ModelCache object;
  std::vector<LocatedError> errors;
  // Fields the API does not know: {pointer, field path}.
  std::vector<std::pair<std::string, std::string>> unknown_fields;
  // Field path -> JSON pointer of every field visited (for placing Validate's errors).
  std::map<std::string, std::string> field_pointers;
};

// Converts a whole object. apiVersion/kind, when present, must be ours (an error otherwise);
// absent ones are accepted because list items from the API server may omit them.
// `source` may be null (plain JSON: no raw text, no lines).
Conversion ConvertObject(const nlohmann::json& j, const SourceMap* source);

// Converts a status object found at `pointer`/`path` ("/status", "status").
ModelCacheStatus ConvertStatus(const nlohmann::json& j, const SourceMap* source,
                               std::vector<LocatedError>* errors);

// The same tree as ToJson, but with keys in the order of DESIGN.md (apiVersion, kind, metadata,
// spec, status; fields within each in the resource's order) for human-facing YAML.
nlohmann::ordered_json ToOrderedJson(const ModelCache& mc);

// A string quoted the way Go's %q would for printable text: "a//b". Invalid UTF-8 is replaced.
std::string Quote(std::string_view s);

// A JSON value as it appears in an error message: strings quoted, numbers bare, objects and
// arrays abbreviated.
std::string DescribeValue(const nlohmann::json& v);

// Result of reading YAML text into JSON trees, one per non-empty document.
// NOLINTNEXTLINE(bugprone-exception-escape): the implicit moves are noexcept in practice.
struct YamlDocument {
  // Read from the YAML directly. Only documents that BelongsToUs() get a tree: other kinds (a
  // GitOps repo's ConfigMaps and Deployments) are never converted.
  std::string api_version;
  std::string kind;
  nlohmann::json tree;
  SourceMap source;
  std::vector<LocatedError> errors;  // duplicate keys, invalid UTF-8, too deep or too large
};
struct YamlSyntaxError {
  int line = 0;    // 1-based; 0 when the text as a whole is refused (a limit)
  int column = 0;  // 1-based
  std::string message;
};
// Parses all documents; empty documents are skipped. On a syntax error, or text over
// kMaxManifestBytes or kMaxManifestDocuments (checked before parsing), returns false and fills
// *syntax.
bool ReadYaml(std::string_view text, std::vector<YamlDocument>* docs, YamlSyntaxError* syntax);

// Whether a document with this apiVersion/kind is ModelCache's to check: anything in the
// modelcache.dev group, or kind ModelCache without an apiVersion. Another group's "ModelCache"
// belongs to someone else.
bool BelongsToUs(std::string_view api_version, std::string_view kind);

// ParseYamlDocuments' per-document step: classifies one YAML document and converts it when it is
// a ModelCache. `conversion` receives the full conversion (may be null).
Document ToDocument(const YamlDocument& yaml, Conversion* conversion);

}  // namespace modelcache::crds::internal
