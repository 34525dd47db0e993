#include "config/yaml_reader.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

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

size_t YamlReader::addFile(std::string name) {
  files_.push_back(std::move(name));
  return files_.size() - 1;
}

std::vector<Diagnostic> YamlReader::takeDiagnostics() {
  std::map<std::string, size_t> rank;
  for (size_t i = 0; i < files_.size(); ++i) {
    rank.emplace(files_[i], i);
  }
  auto position = [&](const Diagnostic& d) {
    auto found = rank.find(d.location.file);
    size_t file = found == rank.end() ? files_.size() : found->second;
    return std::tuple(file, d.location.line, d.location.column);
  };
  std::stable_sort(
      diagnostics_.begin(), diagnostics_.end(),
      [&](const Diagnostic& a, const Diagnostic& b) { return position(a) < position(b); });

  // Equal diagnostics share a position but need not be neighbours, so each one is compared
  // with the run of kept diagnostics at its position.
  std::vector<Diagnostic> unique;
  size_t run_start = 0;
  for (Diagnostic& diagnostic : diagnostics_) {
    if (unique.empty() || position(unique.back()) != position(diagnostic)) {
      run_start = unique.size();
    }
    bool repeated =
        std::any_of(unique.begin() + static_cast<std::ptrdiff_t>(run_start), unique.end(),
                    [&](const Diagnostic& kept) { return kept.message == diagnostic.message; });
    if (!repeated) {
      unique.push_back(std::move(diagnostic));
    }
  }
  diagnostics_.clear();
  return unique;
}

Location YamlReader::locate(size_t file, const YAML::Mark& mark) const {
  if (mark.is_null()) {
    return Location{files_.at(file), 0, 0};
  }
  return Location{files_.at(file), mark.line + 1, mark.column + 1};
}

void YamlReader::error(const Location& location, std::string message) {
  diagnostics_.push_back(Diagnostic{location, std::move(message)});
}

void YamlReader::error(size_t file, const YAML::Mark& mark, std::string message) {
  error(locate(file, mark), std::move(message));
}

void YamlReader::error(const Field& field, const std::string& message) {
  error(field.file, field.mark, field.path.empty() ? message : field.path + ": " + message);
}

std::string YamlReader::firstLine(const Location& first, size_t file) const {
  if (first.file == files_.at(file)) {
    return "first defined at line " + std::to_string(first.line);
  }
  return "first defined at " + first.file + ":" + std::to_string(first.line) + ":" +
         std::to_string(first.column);
}

std::vector<MapEntry> YamlReader::mapEntries(const Field& field) {
  std::vector<MapEntry> entries;
  std::map<std::string, size_t> index;    // entry of each name
  std::vector<bool> mergeable;            // per entry: every value so far is a map
  std::map<std::string, YAML::Mark> seen; // keys of the field's own map

  std::vector<const Field*> layers = {&field};
  for (const Field& base : field.bases) {
    layers.push_back(&base);
  }
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    const Field& map = *layers[layer];
    if (!map.value.IsMap()) {
      break; // a scalar or a list replaces everything further up
    }
    std::set<std::string> in_layer;
    for (const auto& pair : map.value) {
      const YAML::Node& key = pair.first;
      const YAML::Node& value = pair.second;
      if (!key.IsScalar()) {
        if (layer == 0) {
          error(map.file, key.Mark(),
                "keys in " + sectionName(map.path) + " must be strings, found " +
                    describeNode(key));
        }
        continue;
      }
      const std::string& name = key.Scalar();
      if (layer == 0) {
        auto [first, inserted] = seen.emplace(name, key.Mark());
        if (!inserted) {
          error(map.file, key.Mark(),
                "duplicate key '" + name + "' in " + sectionName(map.path) + "; " +
                    firstLine(locate(map.file, first->second), map.file));
          continue;
        }
      } else if (!in_layer.insert(name).second) {
        continue; // reported where the template itself is checked
      }

      YAML::Mark mark = value.IsNull() ? key.Mark() : value.Mark();
      Field child{value, mark, joinPath(map.path, name), key.Mark(), map.file, {}};
      auto found = index.find(name);
      if (found == index.end()) {
        index.emplace(name, entries.size());
        mergeable.push_back(value.IsMap());
        Field key_field{key, key.Mark(), map.path, key.Mark(), map.file, {}};
        entries.push_back(MapEntry{name, std::move(key_field), std::move(child)});
      } else if (mergeable[found->second] && value.IsMap()) {
        entries[found->second].value.bases.push_back(std::move(child));
      } else {
        mergeable[found->second] = false;
      }
    }
  }
  return entries;
}

std::optional<Section> YamlReader::openSection(const Field& field, const Keys& keys) {
  if (!field.value.IsMap()) {
    error(field, "expected a map, found " + describeNode(field.value));
    return std::nullopt;
  }

  std::vector<std::pair<std::string, Field>> fields;
  for (MapEntry& entry : mapEntries(field)) {
    if (std::find(keys.begin(), keys.end(), entry.name) == keys.end()) {
      std::string message = "unknown key '" + entry.name + "' in " + sectionName(entry.key.path);
      if (std::optional<std::string> suggestion = nearestWord(entry.name, keys)) {
        message += "; did you mean '" + *suggestion + "'?";
      }
      error(entry.key.file, entry.key.mark, message);
      continue;
    }
    fields.emplace_back(std::move(entry.name), std::move(entry.value));
  }
  return Section(field, std::move(fields));
}

const Field* YamlReader::require(const Section& section, std::string_view key) {
  const Field* field = section.find(key);
  if (field == nullptr) {
    error(section.field().file, section.field().mark,
          "missing required key '" + std::string(key) + "' in " +
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
    items.push_back(
        Field{item, mark, field.path + "[" + std::to_string(i) + "]", mark, field.file, {}});
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
