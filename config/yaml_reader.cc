#include "config/yaml_reader.h"

#include <algorithm>
#include <map>

#include "config/values.h"

namespace deferd::config {

std::string joinPath(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string sectionName(const std::string& path) {
  return path.empty() ? "the top-level map" : path;
}

std::string describeNode(const YAML::Node& node) {
  switch (node.Type()) {
  case YAML::NodeType::Map:
    return "a map";
  case YAML::NodeType::Sequence:
    return "a list";
  case YAML::NodeType::Scalar:
    return "'" + node.Scalar() + "'";
  default:
    return "an empty value";
  }
}

bool isPlainScalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() == "?"; }

std::vector<Diagnostic> YamlReader::takeDiagnostics() {
  std::stable_sort(diagnostics_.begin(), diagnostics_.end(),
                   [](const Diagnostic& a, const Diagnostic& b) {
                     return std::pair(a.location.line, a.location.column) <
                            std::pair(b.location.line, b.location.column);
                   });
  return std::move(diagnostics_);
}

Location YamlReader::locate(const YAML::Mark& mark) const {
  if (mark.is_null()) {
    return Location{file_, 0, 0};
  }
  return Location{file_, mark.line + 1, mark.column + 1};
}

void YamlReader::error(const Location& location, std::string message) {
  diagnostics_.push_back(Diagnostic{location, std::move(message)});
}

void YamlReader::error(const YAML::Mark& mark, std::string message) {
  error(locate(mark), std::move(message));
}

void YamlReader::error(const Field& field, const std::string& message) {
  error(field.mark, field.path.empty() ? message : field.path + ": " + message);
}

std::string YamlReader::firstLine(const Location& location) const {
  return "first defined at line " + std::to_string(location.line);
}

std::optional<Section> YamlReader::openSection(const Field& field, const Keys& keys) {
  if (!field.value.IsMap()) {
    error(field, "expected a map, found " + describeNode(field.value));
    return std::nullopt;
  }

  std::vector<std::pair<std::string, Field>> fields;
  std::map<std::string, YAML::Mark> seen;
  for (const auto& pair : field.value) {
    const YAML::Node& key = pair.first;
    const YAML::Node& value = pair.second;
    if (!key.IsScalar()) {
      error(key.Mark(),
            "keys in " + sectionName(field.path) + " must be strings, found " + describeNode(key));
      continue;
    }

    const std::string& name = key.Scalar();
    auto [first, inserted] = seen.emplace(name, key.Mark());
    if (!inserted) {
      error(key.Mark(), "duplicate key '" + name + "' in " + sectionName(field.path) + "; " +
                            firstLine(locate(first->second)));
      continue;
    }
    if (std::find(keys.begin(), keys.end(), name) == keys.end()) {
      std::string message = "unknown key '" + name + "' in " + sectionName(field.path);
      if (std::optional<std::string> suggestion = nearestWord(name, keys)) {
        message += "; did you mean '" + *suggestion + "'?";
      }
      error(key.Mark(), message);
      continue;
    }

    YAML::Mark mark = value.IsNull() ? key.Mark() : value.Mark();
    fields.emplace_back(name, Field{value, mark, joinPath(field.path, name), key.Mark()});
  }
  return Section(field, std::move(fields));
}

const Field* YamlReader::require(const Section& section, std::string_view key) {
  const Field* field = section.find(key);
  if (field == nullptr) {
    error(section.field().mark, "missing required key '" + std::string(key) + "' in " +
                                    sectionName(section.field().path));
  }
  return field;
}

std::optional<std::vector<Field>> YamlReader::listItems(const Field& field,
                                                        std::string_view item_kind) {
  if (!field.value.IsSequence()) {
    error(field,
          "expected a list of " + std::string(item_kind) + ", found " + describeNode(field.value));
    return std::nullopt;
  }
  std::vector<Field> items;
  for (size_t i = 0; i < field.value.size(); ++i) {
    YAML::Node item = field.value[i];
    YAML::Mark mark = item.IsNull() ? field.mark : item.Mark();
    items.push_back(Field{item, mark, field.path + "[" + std::to_string(i) + "]", mark});
  }
  return items;
}

// --- Scalars ---------------------------------------------------------------------------------

std::optional<std::string> YamlReader::readString(const Field& field) {
  if (!field.value.IsScalar()) {
    error(field, "expected a string, found " + describeNode(field.value));
    return std::nullopt;
  }
  return field.value.Scalar();
}

std::optional<std::string> YamlReader::readName(const Field& field) {
  std::optional<std::string> name = readString(field);
  if (!name) {
    return std::nullopt;
  }
  std::string problem = checkName(*name);
  if (!problem.empty()) {
    error(field, problem);
    return std::nullopt;
  }
  return name;
}

std::optional<uint64_t> YamlReader::readUnsigned(const Field& field, uint64_t min, uint64_t max) {
  if (!isPlainScalar(field.value)) {
    std::string found = field.value.IsScalar() ? "the quoted string '" + field.value.Scalar() + "'"
                                               : describeNode(field.value);
    error(field, "expected a whole number from " + std::to_string(min) + " to " +
                     std::to_string(max) + ", found " + found);
    return std::nullopt;
  }
  std::string problem;
  std::optional<uint64_t> value = parseUnsigned(field.value.Scalar(), min, max, &problem);
  if (!value) {
    error(field, problem);
  }
  return value;
}

std::optional<bool> YamlReader::readBool(const Field& field) {
  if (isPlainScalar(field.value)) {
    if (field.value.Scalar() == "true") {
      return true;
    }
    if (field.value.Scalar() == "false") {
      return false;
    }
  }
  error(field, "expected true or false, found " + describeNode(field.value));
  return std::nullopt;
}

std::optional<Duration> YamlReader::readDuration(const Field& field) {
  std::optional<std::string> text = readString(field);
  if (!text) {
    return std::nullopt;
  }
  std::string problem;
  std::optional<Duration> duration = parseDuration(*text, &problem);
  if (!duration) {
    error(field, problem);
  }
  return duration;
}

std::optional<double> YamlReader::readPercent(const Field& field) {
  std::optional<std::string> text = readString(field);
  if (!text) {
    return std::nullopt;
  }
  std::string problem;
  std::optional<double> share = parsePercent(*text, &problem);
  if (!share) {
    error(field, problem);
  }
  return share;
}

std::optional<Address> YamlReader::readAddress(const Field& field, AddressUse use) {
  std::optional<std::string> text = readString(field);
  if (!text) {
    return std::nullopt;
  }
  std::string problem;
  std::optional<Address> address = parseAddress(*text, &problem);
  if (!address) {
    error(field, problem);
    return std::nullopt;
  }

  if (use == AddressUse::kBind && !isIpLiteral(address->host)) {
    error(field, "invalid address '" + *text +
                     "': a listening address needs an IP address, not a host name");
    return std::nullopt;
  }
  if (use == AddressUse::kEndpoint && address->port == 0) {
    error(field, "invalid address '" + *text +
                     "': port 0 is only allowed in listener and admin addresses");
    return std::nullopt;
  }
  return address;
}

std::optional<std::string> YamlReader::readHeaderName(const Field& field) {
  std::optional<std::string> name = readString(field);
  if (!name) {
    return std::nullopt;
  }
  std::string problem = checkHeaderName(*name);
  if (!problem.empty()) {
    error(field, problem);
    return std::nullopt;
  }
  return toLower(*name);
}

} // namespace deferd::config
