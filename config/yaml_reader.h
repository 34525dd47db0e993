#pragma once

// Typed reading of a YAML tree for the config loader, with a Diagnostic for every problem.
//
// yaml-cpp stays behind this header inside config/. Each read function either returns the
// value or records a Diagnostic at the node's position and returns std::nullopt, so the caller
// keeps its default and goes on to the next key.

#include <yaml-cpp/yaml.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "config/loader.h"

namespace deferd::config {

using Keys = std::vector<std::string_view>;

// One value of the YAML tree, with the position to report and its path for messages.
struct Field {
  YAML::Node value;
  YAML::Mark mark;     // of the value, or of its key when the value is empty
  std::string path;    // such as "listeners[0].routes[1].timeout"
  YAML::Mark key_mark; // of the key in its map, or of the item in its list
};

// The keys of one YAML map that its section accepts, first occurrence of each.
class Section {
public:
  Section(const Field& field, std::vector<std::pair<std::string, Field>> fields)
      : field_(field), fields_(std::move(fields)) {}

  const Field& field() const { return field_; }

  const Field* find(std::string_view key) const {
    for (const auto& [name, field] : fields_) {
      if (name == key) {
        return &field;
      }
    }
    return nullptr;
  }

private:
  Field field_;
  std::vector<std::pair<std::string, Field>> fields_;
};

// Returns "path.key", or "key" at the top level.
std::string joinPath(const std::string& path, std::string_view key);

// Describes a node for messages: "a map", "a list", "'text'" or "an empty value".
std::string describeNode(const YAML::Node& node);

// Returns whether `node` is an untagged plain scalar. Quoted scalars ("!") and explicit tags are
// strings or other types by YAML's rules, so numbers and booleans must be plain.
bool isPlainScalar(const YAML::Node& node);

template <typename T>
std::string listChoices(const std::vector<std::pair<std::string_view, T>>& table) {
  std::string choices;
  for (size_t i = 0; i < table.size(); ++i) {
    if (i > 0) {
      choices += i + 1 == table.size() ? " or " : ", ";
    }
    choices += table[i].first;
  }
  return choices;
}

class YamlReader {
public:
  enum class AddressUse { kBind, kEndpoint }; // listener or admin address, or cluster endpoint

  explicit YamlReader(std::string file) : file_(std::move(file)) {}

  const std::string& file() const { return file_; }
  bool hasErrors() const { return !diagnostics_.empty(); }

  // Returns the diagnostics sorted by position.
  std::vector<Diagnostic> takeDiagnostics();

  // Converts yaml-cpp's 0-based mark to a 1-based Location.
  Location locate(const YAML::Mark& mark) const;
  void error(const Location& location, std::string message);
  void error(const YAML::Mark& mark, std::string message);
  // Records "path: message" at the field.
  void error(const Field& field, const std::string& message);
  // Returns "first defined at line N", for messages about a second occurrence.
  std::string firstLine(const Location& location) const;

  // Checks that the field is a map, reports unknown and duplicate keys, and returns the keys of
  // `keys` that are present.
  std::optional<Section> openSection(const Field& field, const Keys& keys);
  // Returns the key, or reports it missing and returns nullptr.
  const Field* require(const Section& section, std::string_view key);
  // Returns the items of a list. `item_kind` names them in the message when the field is no list.
  std::optional<std::vector<Field>> listItems(const Field& field, std::string_view item_kind);

  std::optional<std::string> readString(const Field& field);
  std::optional<std::string> readName(const Field& field);
  std::optional<uint64_t> readUnsigned(const Field& field, uint64_t min, uint64_t max);
  std::optional<bool> readBool(const Field& field);
  std::optional<Duration> readDuration(const Field& field);
  std::optional<double> readPercent(const Field& field);
  std::optional<Address> readAddress(const Field& field, AddressUse use);
  // Returns the header name lower-cased.
  std::optional<std::string> readHeaderName(const Field& field);
  template <typename T>
  std::optional<T> readEnum(const Field& field,
                            const std::vector<std::pair<std::string_view, T>>& table);

private:
  std::string file_;
  std::vector<Diagnostic> diagnostics_;
};

template <typename T>
std::optional<T> YamlReader::readEnum(const Field& field,
                                      const std::vector<std::pair<std::string_view, T>>& table) {
  std::optional<std::string> text = readString(field);
  if (!text) {
    return std::nullopt;
  }
  for (const auto& [name, value] : table) {
    if (name == *text) {
      return value;
    }
  }
  error(field, "invalid value '" + *text + "'; expected " + listChoices(table));
  return std::nullopt;
}

} // namespace deferd::config
