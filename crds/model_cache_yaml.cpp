// YAML <-> ModelCache. Reading goes YAML -> nlohmann::json -> the JSON converter, so there is one
// set of field rules; what JSON cannot carry (lines, a plain scalar's text) travels beside the tree
// in a SourceMap. Scalars resolve by the YAML 1.2 core schema (`yes` is a string, `1.0` a float,
// "1.0" a string), which is what Kubernetes' sigs.k8s.io/yaml does for JSON-compatible input.

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include "crds/internal/convert.h"
#include "crds/model_cache.h"

namespace modelcache::crds {

using nlohmann::json;

namespace internal {
namespace {

// Aliases can make a small file expand enormously ("billion laughs"). A ModelCache has about 50
// nodes; these bounds leave ample room and keep a hostile document to a few milliseconds.
constexpr int kMaxDepth = 64;
constexpr size_t kMaxNodes = 10'000;

std::string EscapeToken(std::string_view token) {
  std::string out;
  for (char c : token) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

// Replaces invalid UTF-8 sequences by U+FFFD; returns false if there were any. nlohmann refuses
// to dump invalid UTF-8, and yaml-cpp does not check it.
bool SanitizeUtf8(std::string* s) {
  std::string out;
  bool valid = true;
  const auto* p = reinterpret_cast<const unsigned char*>(s->data());
  size_t n = s->size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    size_t len = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      len = 1;
      cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    }
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xC0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    ok = ok && !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) &&
         !(len == 4 && cp < 0x10000) && !(cp >= 0xD800 && cp <= 0xDFFF) && cp <= 0x10FFFF;
    if (ok) {
      out.append(s->data() + i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      valid = false;
      ++i;
    }
  }
  if (!valid) {
    *s = std::move(out);
  }
  return valid;
}

bool AllOf(std::string_view s, bool (*pred)(char)) {
  if (s.empty()) {
    return false;
  }
  for (char c : s) {
    if (!pred(c)) {
      return false;
    }
  }
  return true;
}
bool IsDec(char c) { return c >= '0' && c <= '9'; }
bool IsOct(char c) { return c >= '0' && c <= '7'; }
bool IsHex(char c) { return IsDec(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Plain-scalar resolution of the YAML 1.2 core schema. Returns a string json when the text is
// none of null, bool, int or float. .inf and .nan stay strings: JSON has no such numbers.
json ResolvePlain(const std::string& text) {
  if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL") {
    return nullptr;
  }
  if (text == "true" || text == "True" || text == "TRUE") {
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    return false;
  }
  std::string_view body = text;
  bool negative = false;
  if (body.front() == '-' || body.front() == '+') {
    negative = body.front() == '-';
    body.remove_prefix(1);
  }
  int base = 0;
  std::string_view digits;
  if (AllOf(body, IsDec)) {
    base = 10;
    digits = body;
  } else if (body.size() > 2 && body.starts_with("0x") && text.front() != '-' &&
             text.front() != '+' && AllOf(body.substr(2), IsHex)) {
    base = 16;
    digits = body.substr(2);
  } else if (body.size() > 2 && body.starts_with("0o") && text.front() != '-' &&
             text.front() != '+' && AllOf(body.substr(2), IsOct)) {
    base = 8;
    digits = body.substr(2);
  }
  if (base != 0) {
    uint64_t magnitude = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
    if (ec == std::errc() && end == digits.data() + digits.size()) {
      if (!negative) {
        return magnitude;
      }
      if (magnitude <= static_cast<uint64_t>(INT64_MAX) + 1) {
        return static_cast<int64_t>(0 - magnitude);
      }
    }
    // Out of range: a float, as a YAML library would make it.
    double d = 0;
    std::from_chars(body.data(), body.data() + body.size(), d);
    return negative ? -d : d;
  }
  // [-+]? ( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE][-+]?[0-9]+ )?
  size_t i = 0;
  size_t int_digits = 0;
  while (i < body.size() && IsDec(body[i])) {
    ++i;
    ++int_digits;
  }
  size_t frac_digits = 0;
  if (i < body.size() && body[i] == '.') {
    ++i;
    while (i < body.size() && IsDec(body[i])) {
      ++i;
      ++frac_digits;
    }
  }
  bool mantissa = int_digits > 0 || frac_digits > 0;
  if (mantissa && i < body.size() && (body[i] == 'e' || body[i] == 'E')) {
    ++i;
    if (i < body.size() && (body[i] == '+' || body[i] == '-')) {
      ++i;
    }
    size_t exp_digits = 0;
    while (i < body.size() && IsDec(body[i])) {
      ++i;
      ++exp_digits;
    }
    mantissa = exp_digits > 0;
  }
  if (mantissa && i == body.size()) {
    double d = 0;
    auto [end, ec] = std::from_chars(body.data(), body.data() + body.size(), d);
    if ((ec == std::errc() || ec == std::errc::result_out_of_range) &&
        end == body.data() + body.size()) {
      return negative ? -d : d;
    }
  }
  return text;
}

// The tags a JSON-compatible document may carry: none ("?" for plain nodes, "!" for quoted
// scalars) or one of the YAML 1.2 core schema's.
bool IsCoreTag(const std::string& tag) {
  static constexpr std::array<std::string_view, 10> kCore = {"",
                                                             "?",
                                                             "!",
                                                             "tag:yaml.org,2002:str",
                                                             "tag:yaml.org,2002:int",
                                                             "tag:yaml.org,2002:float",
                                                             "tag:yaml.org,2002:bool",
                                                             "tag:yaml.org,2002:null",
                                                             "tag:yaml.org,2002:map",
                                                             "tag:yaml.org,2002:seq"};
  return std::find(kCore.begin(), kCore.end(), tag) != kCore.end();
}

class YamlReader {
 public:
  explicit YamlReader(YamlDocument* doc) : doc_(doc) {}

  // Whether Build stopped at the size bounds.
  bool too_big() const { return too_big_; }

  json Build(const YAML::Node& node, const std::string& pointer, int depth) {
    if (++nodes_ > kMaxNodes || depth > kMaxDepth) {
      if (!too_big_) {
        // Reported once, for the whole document (ReadYaml drops the partial tree, whose
        // truncated fields would each add an error of their own).
        too_big_ = true;
        Error("", FieldError::Type::Forbidden, "",
              "the document nests deeper than " + std::to_string(kMaxDepth) +
                  " levels or has more than " + std::to_string(kMaxNodes) +
                  " nodes (aliases expanded)");
      }
      return nullptr;
    }
    if (!IsCoreTag(node.Tag())) {
      // `!!python/object/apply:os.system [...]` and the like: a tag asks the reader to build
      // something; Kubernetes' reader refuses tags it does not know, and so do we.
      Error(pointer, FieldError::Type::Invalid, Quote(node.Tag()),
            "YAML tags other than the core schema's (!!str, !!int, !!float, !!bool, !!null, "
            "!!map, !!seq) are not allowed");
      return nullptr;
    }
    switch (node.Type()) {
      case YAML::NodeType::Undefined:
      case YAML::NodeType::Null:
        return nullptr;
      case YAML::NodeType::Scalar:
        return Scalar(node, pointer);
      case YAML::NodeType::Sequence: {
        json arr = json::array();
        size_t i = 0;
        for (const YAML::Node& item : node) {
          std::string child = pointer + "/" + std::to_string(i++);
          doc_->source.lines[child] = item.Mark().line + 1;
          arr.push_back(Build(item, child, depth + 1));
        }
        return arr;
      }
      case YAML::NodeType::Map: {
        json obj = json::object();
        for (auto it = node.begin(); it != node.end(); ++it) {
          // yaml-cpp's iterator yields its pairs by value; `it->first` would dangle.
          const auto entry = *it;
          const YAML::Node& key_node = entry.first;
          int key_line = key_node.Mark().line + 1;
          if (!key_node.IsScalar()) {
            Error(pointer, FieldError::Type::Invalid, "", "mapping keys must be scalars");
            continue;
          }
          std::string key = key_node.Scalar();
          if (!SanitizeUtf8(&key)) {
            Error(pointer, FieldError::Type::Invalid, Quote(key), "keys must be valid UTF-8");
          }
          std::string child = pointer + "/" + EscapeToken(key);
          if (obj.contains(key)) {
            // Kubernetes' strict decoding rejects this too; silently taking one would hide it.
            // The error gets a pointer of its own so that it is reported at the repeat's line.
            std::string repeat = child + "#" + std::to_string(key_line);
            doc_->source.lines[repeat] = key_line;
            doc_->errors.push_back(
                {repeat,
                 FieldError{FieldError::Type::Duplicate, Join(PathOf(pointer), key), Quote(key),
                            "the key is already defined at line " +
                                std::to_string(doc_->source.lines[child])}});
            continue;
          }
          doc_->source.lines[child] = key_line;
          obj[key] = Build(entry.second, child, depth + 1);
        }
        return obj;
      }
    }
    return nullptr;
  }

 private:
  json Scalar(const YAML::Node& node, const std::string& pointer) {
    std::string text = node.Scalar();
    if (!SanitizeUtf8(&text)) {
      Error(pointer, FieldError::Type::Invalid, Quote(text), "must be valid UTF-8");
    }
    const std::string& tag = node.Tag();
    // "!" is a quoted (or otherwise non-plain) scalar: always a string.
    if (tag == "!" || tag == "tag:yaml.org,2002:str") {
      return text;
    }
    json v = ResolvePlain(text);
    if (!v.is_string() && !v.is_null()) {
      doc_->source.raw_text[pointer] = text;
    }
    return v;
  }

  static std::string Join(const std::string& path, const std::string& key) {
    if (!key.empty() && AllOf(key, IsDec)) {
      return path + "[" + key + "]";
    }
    return path.empty() ? key : path + "." + key;
  }

  // A JSON pointer's Kubernetes-style path ("/spec/source/include/0" ->
  // "spec.source.include[0]"), for the few errors found before conversion.
  static std::string PathOf(const std::string& pointer) {
    std::string path;
    size_t i = 0;
    while (i < pointer.size()) {
      size_t next = pointer.find('/', i + 1);
      std::string token =
          pointer.substr(i + 1, next == std::string::npos ? std::string::npos : next - i - 1);
      std::string unescaped;
      for (size_t k = 0; k < token.size(); ++k) {
        if (token[k] == '~' && k + 1 < token.size()) {
          unescaped += token[k + 1] == '1' ? '/' : '~';
          ++k;
        } else {
          unescaped += token[k];
        }
      }
      path = Join(path, unescaped);
      i = next == std::string::npos ? pointer.size() : next;
    }
    return path;
  }

  void Error(const std::string& pointer, FieldError::Type type, std::string value,
             std::string detail) {
    doc_->errors.push_back(
        {pointer, FieldError{type, PathOf(pointer), std::move(value), std::move(detail)}});
  }

  YamlDocument* doc_;
  size_t nodes_ = 0;
  bool too_big_ = false;
};

// Document markers ("---" at the start of a line, then a space, a tab or the line's end): one
// more than this is an upper bound on the documents of the text. A marker line cannot occur
// inside a scalar, so nothing is counted that the parser would not split on.
size_t CountDocumentMarkers(std::string_view text) {
  size_t count = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    std::string_view line = text.substr(pos, text.find('\n', pos) - pos);
    if (line.starts_with("---") &&
        (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r')) {
      ++count;
    }
    pos += line.size() + 1;
  }
  return count;
}

}  // namespace

bool ReadYaml(std::string_view text, std::vector<YamlDocument>* docs, YamlSyntaxError* syntax) {
  if (text.size() > kMaxManifestBytes) {
    syntax->message = "larger than " + std::to_string(kMaxManifestBytes / 1024) +
                      " KiB, the limit for a manifest file; split it";
    return false;
  }
  if (CountDocumentMarkers(text) > kMaxManifestDocuments) {
    syntax->message = "holds more than " + std::to_string(kMaxManifestDocuments) +
                      " YAML documents, the limit for a manifest file; split it";
    return false;
  }
  std::vector<YAML::Node> nodes;
  try {
    nodes = YAML::LoadAll(std::string(text));
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp's own guard against stack exhaustion; its message ("bad file") says nothing.
    syntax->line = e.mark.is_null() ? 0 : e.mark.line + 1;
    syntax->column = e.mark.is_null() ? 0 : e.mark.column + 1;
    syntax->message = "nesting is too deep";
    return false;
  } catch (const YAML::Exception& e) {
    syntax->line = e.mark.is_null() ? 0 : e.mark.line + 1;
    syntax->column = e.mark.is_null() ? 0 : e.mark.column + 1;
    syntax->message = e.msg;
    return false;
  } catch (const std::exception& e) {
    syntax->message = e.what();
    return false;
  }
  for (const YAML::Node& node : nodes) {
    // An empty document ("---" followed by nothing, or only comments) is not a resource.
    if (!node.IsDefined() || node.IsNull()) {
      continue;
    }
    YamlDocument doc;
    doc.source.document_line = node.Mark().line + 1;
    doc.source.lines[""] = doc.source.document_line;
    YamlReader reader(&doc);
    try {
      if (node.IsMap()) {
        auto scalar = [&](const char* key) {
          const YAML::Node value = node[key];
          return value.IsDefined() && value.IsScalar() ? value.Scalar() : std::string();
        };
        doc.api_version = scalar("apiVersion");
        doc.kind = scalar("kind");
      }
      if (!BelongsToUs(doc.api_version, doc.kind)) {
        docs->push_back(std::move(doc));
        continue;
      }
      doc.tree = reader.Build(node, "", 0);
      if (reader.too_big()) {
        doc.tree = json::object();
      }
    } catch (const std::exception& e) {
      // yaml-cpp or nlohmann threw on something unforeseen: the document is unusable, not the
      // process.
      doc.tree = nullptr;
      doc.errors.push_back({"", FieldError{FieldError::Type::Invalid, "", "",
                                           std::string("cannot read the document: ") + e.what()}});
    }
    docs->push_back(std::move(doc));
  }
  return true;
}

bool BelongsToUs(std::string_view api_version, std::string_view kind) {
  std::string_view group =
      api_version.substr(0, std::min(api_version.find('/'), api_version.size()));
  return group == kGroup || (api_version.empty() && kind == kKind);
}

Document ToDocument(const YamlDocument& yaml, Conversion* conversion) {
  Document doc;
  doc.line = yaml.source.document_line;
  const json& tree = yaml.tree;
  doc.api_version = yaml.api_version;
  doc.kind = yaml.kind;
  if (!BelongsToUs(doc.api_version, doc.kind)) {
    return doc;
  }
  std::vector<LocatedError> errors = yaml.errors;
  if (doc.api_version.empty()) {
    errors.push_back({"", FieldError{FieldError::Type::Required, "apiVersion", "",
                                     "must be " + Quote(kApiVersion)}});
  }
  if (doc.kind.empty()) {
    errors.push_back(
        {"", FieldError{FieldError::Type::Required, "kind", "", "must be " + Quote(kKind)}});
  }
  Conversion local;
  Conversion& conv = conversion != nullptr ? *conversion : local;
  conv = ConvertObject(tree, &yaml.source);
  errors.insert(errors.end(), conv.errors.begin(), conv.errors.end());
  for (const LocatedError& e : errors) {
    doc.errors.emplace_back(yaml.source.LineOf(e.pointer), e.error);
  }
  for (const auto& [pointer, path] : conv.unknown_fields) {
    doc.unknown_fields.emplace_back(yaml.source.LineOf(pointer), path);
  }
  for (const auto& [path, pointer] : conv.field_pointers) {
    doc.field_lines[path] = yaml.source.LineOf(pointer);
  }
  if (doc.errors.empty()) {
    doc.object = conv.object;
  }
  return doc;
}

}  // namespace internal

int Document::LineOf(std::string_view field) const {
  std::string path(field);
  while (!path.empty()) {
    auto it = field_lines.find(path);
    if (it != field_lines.end()) {
      return it->second;
    }
    // Drop the last component: "[key]" (which may itself contain '.') or ".name".
    size_t cut = std::string::npos;
    if (path.back() == ']') {
      cut = path.rfind('[');
    } else {
      size_t dot = path.rfind('.');
      size_t bracket = path.rfind('[');
      if (dot != std::string::npos && (bracket == std::string::npos || dot > bracket)) {
        cut = dot;
      } else {
        cut = bracket;
      }
    }
    if (cut == std::string::npos) {
      break;
    }
    path.resize(cut);
  }
  return line;
}

Result<std::vector<Document>> ParseYamlDocuments(std::string_view text,
                                                 const std::string& filename) {
  std::vector<internal::YamlDocument> yaml_docs;
  internal::YamlSyntaxError syntax;
  if (!internal::ReadYaml(text, &yaml_docs, &syntax)) {
    if (syntax.line == 0) {
      return Error(Reason::InvalidSpec, filename + ": " + syntax.message);
    }
    return Error(Reason::InvalidSpec, filename + ":" + std::to_string(syntax.line) + ":" +
                                          std::to_string(syntax.column) + ": " + syntax.message);
  }
  std::vector<Document> docs;
  docs.reserve(yaml_docs.size());
  for (const internal::YamlDocument& y : yaml_docs) {
    docs.push_back(internal::ToDocument(y, nullptr));
  }
  return docs;
}

namespace {

// Strings that a YAML reader would take for something else (null, bool, number; also YAML 1.1's
// yes/no/on/off, timestamps, 1_000 and 1:30 sexagesimals, which readers such as go-yaml v2 still
// resolve) are written quoted. Anything number-like at its start is quoted: cheap and safe.
bool NeedsQuotes(const std::string& s) {
  if (!internal::ResolvePlain(s).is_string()) {
    return true;
  }
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (!s.empty() && (digit(s[0]) || ((s[0] == '+' || s[0] == '-' || s[0] == '.') && s.size() > 1 &&
                                     digit(s[1])))) {
    return true;
  }
  static constexpr std::array<std::string_view, 20> kYaml11 = {
      "y",  "Y",  "yes", "Yes", "YES", "n",   "N",    "no",   "No", "NO",
      "on", "On", "ON",  "off", "Off", "OFF", ".inf", ".nan", "=",  "<<"};
  for (std::string_view w : kYaml11) {
    if (s == w) {
      return true;
    }
  }
  return false;
}

void Emit(YAML::Emitter& out, const nlohmann::ordered_json& v) {
  switch (v.type()) {
    case nlohmann::ordered_json::value_t::object:
      out << YAML::BeginMap;
      for (auto it = v.begin(); it != v.end(); ++it) {
        out << YAML::Key << it.key() << YAML::Value;
        Emit(out, *it);
      }
      out << YAML::EndMap;
      break;
    case nlohmann::ordered_json::value_t::array:
      out << YAML::BeginSeq;
      for (const auto& item : v) {
        Emit(out, item);
      }
      out << YAML::EndSeq;
      break;
    case nlohmann::ordered_json::value_t::string: {
      const auto& s = v.get_ref<const std::string&>();
      if (NeedsQuotes(s)) {
        out << YAML::DoubleQuoted << s;
      } else {
        out << s;
      }
      break;
    }
    case nlohmann::ordered_json::value_t::boolean:
      out << v.get<bool>();
      break;
    case nlohmann::ordered_json::value_t::number_integer:
      out << v.get<int64_t>();
      break;
    case nlohmann::ordered_json::value_t::number_unsigned:
      out << v.get<uint64_t>();
      break;
    case nlohmann::ordered_json::value_t::number_float:
      out << v.get<double>();
      break;
    default:
      out << YAML::Null;
      break;
  }
}

}  // namespace

std::string ToYaml(const ModelCache& mc) {
  YAML::Emitter out;
  Emit(out, internal::ToOrderedJson(mc));
  return std::string(out.c_str()) + "\n";
}

}  // namespace modelcache::crds
