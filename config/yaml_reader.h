#pragma once

// Typed reading of a YAML tree for the config loader, with a Diagnostic for every problem.
//
// yaml-cpp stays behind this header inside config/. Each read function either returns the
// value or records a Diagnostic at the node's position and returns std::nullopt, so the caller
// keeps its default and goes on to the next key.
//
// Several files: the reader keeps a table of file names, and every Field carries the index of
// the file its value was parsed from, because a YAML::Mark holds only a line and a column.
//
// Inheritance (`extends:`): a Field may carry `bases`, the values of the same key in the
// templates it inherits from, nearest first. mapEntries() merges them key by key: a key the
// field's own map lacks comes from the nearest base that has it, with that base's file and
// path, and a key whose values are maps in the field and in its bases merges again one level
// down. A scalar or a list in a nearer map replaces the value further up, and so does a map
// over a scalar. Every section read through openSection() therefore sees the merged map, and a
// problem in an inherited value points at the template's file, line and column.

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
  size_t file = 0;     // index in the reader's file table
  // The same key in the templates this value inherits from, nearest first. Each base is a map
  // and has no bases of its own. Empty for a value that inherits nothing.
  std::vector<Field> bases;
};

// One key of a merged map and its value.
struct MapEntry {
  std::string name;
  Field key; // the key node, with the file and mark of the map that defines it
  Field value;
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

  // `file` is the main file, index 0 of the file table.
  explicit YamlReader(std::string file) { files_.push_back(std::move(file)); }

  const std::string& file() const { return files_.front(); }
  const std::string& fileName(size_t file) const { return files_.at(file); }
  // Appends a file to the table and returns its index.
  size_t addFile(std::string name);
  bool hasErrors() const { return !diagnostics_.empty(); }

  // Returns the diagnostics sorted by file (in table order) and position, without repeats: a
  // template's problem found through each policy that extends it is reported once.
  std::vector<Diagnostic> takeDiagnostics();

  // Converts yaml-cpp's 0-based mark in `file` to a 1-based Location.
  Location locate(size_t file, const YAML::Mark& mark) const;
  // Returns the Location of the field's value.
  Location locate(const Field& field) const { return locate(field.file, field.mark); }
  void error(const Location& location, std::string message);
  void error(size_t file, const YAML::Mark& mark, std::string message);
  // Records "path: message" at the field.
  void error(const Field& field, const std::string& message);
  // Returns "first defined at line N", or "first defined at FILE:LINE:COLUMN" when `first` is
  // in another file than `file`, for messages about a second occurrence.
  std::string firstLine(const Location& first, size_t file) const;

  // Checks that the field is a map, reports unknown and duplicate keys, and returns the keys of
  // `keys` that are present, merged with the field's bases.
  std::optional<Section> openSection(const Field& field, const Keys& keys);
  // Returns the keys of the field's map merged with its bases, in order: the field's own keys
  // first, then inherited ones. Reports keys that are not strings and keys repeated in the
  // field's own map. The caller checks that the field is a map.
  std::vector<MapEntry> mapEntries(const Field& field);
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
  std::vector<std::string> files_;
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
