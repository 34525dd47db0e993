#include "config/sources.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <system_error>

namespace deferd::config {
namespace {

namespace fs = std::filesystem;

SourceFile readSource(const std::string& path) {
  SourceFile source{path, "", ""};
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    source.error = "failed to open file: " + std::string(std::strerror(errno));
    return source;
  }
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) {
    source.error = "failed to read file: " + std::string(std::strerror(errno));
    return source;
  }
  source.text = std::move(text).str();
  return source;
}

// Returns the items of the main file's `policy_files`, or nothing when the text is not YAML or
// the key is not a list. Items that are not strings become empty strings, which name nothing.
std::vector<std::string> policyFileItems(const std::string& text) {
  std::vector<std::string> items;
  try {
    YAML::Node root = YAML::Load(text);
    if (!root.IsMap()) {
      return items;
    }
    YAML::Node list = root["policy_files"];
    if (!list.IsSequence()) {
      return items;
    }
    for (const YAML::Node& item : list) {
      items.push_back(item.IsScalar() ? item.Scalar() : std::string());
    }
  } catch (const YAML::Exception&) {
    items.clear(); // the loader reports the same problem with its position
  }
  return items;
}

// Returns the names of the policy files in `directory`, sorted.
std::vector<std::string> listPolicyDirectory(const fs::path& directory, std::string* error) {
  std::vector<std::string> names;
  std::error_code ec;
  fs::directory_iterator it(directory, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.starts_with('.') || !name.ends_with(".yaml")) {
      continue;
    }
    // A dangling symlink (a ConfigMap key during a swap) is listed, so its read error shows.
    std::error_code status_ec;
    fs::file_status status = fs::status(it->path(), status_ec);
    if (status_ec || fs::is_regular_file(status)) {
      names.push_back(std::move(name));
    }
  }
  if (ec) {
    *error = "failed to list directory: " + ec.message();
    return {};
  }
  std::sort(names.begin(), names.end());
  return names;
}

void addEntries(ConfigSources* sources) {
  const fs::path main(sources->files[0].path);
  const fs::path base = main.parent_path();
  std::map<std::string, size_t> index; // normalized path of each file read
  auto addFile = [&](const fs::path& path) {
    std::string key = path.lexically_normal().string();
    auto [found, inserted] = index.emplace(key, sources->files.size());
    if (inserted) {
      sources->files.push_back(readSource(path.string()));
    }
    return found->second;
  };

  for (const std::string& item : policyFileItems(sources->files[0].text)) {
    PolicyFileEntry entry;
    if (item.empty()) {
      sources->entries.push_back(std::move(entry));
      continue;
    }
    fs::path path = base / item;
    entry.path = path.string();

    std::error_code ec;
    fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status)) {
      entry.error = ec && ec != std::errc::no_such_file_or_directory
                        ? "cannot access '" + entry.path + "': " + ec.message()
                        : "'" + entry.path + "' not found";
    } else if (fs::is_directory(status)) {
      entry.directory = true;
      for (const std::string& name : listPolicyDirectory(path, &entry.error)) {
        // The main file is no policy file, also when its own directory is listed.
        std::error_code same_ec;
        if (fs::equivalent(path / name, main, same_ec)) {
          continue;
        }
        entry.files.push_back(addFile(path / name));
      }
    } else {
      entry.files.push_back(addFile(path));
    }
    sources->entries.push_back(std::move(entry));
  }
}

} // namespace

ConfigSources readConfigSources(const std::string& main_path) {
  ConfigSources sources;
  sources.files.push_back(readSource(main_path));
  if (sources.files[0].error.empty()) {
    addEntries(&sources);
  }
  return sources;
}

ConfigSources sourcesFromText(const std::string& text, const std::string& name) {
  ConfigSources sources;
  sources.files.push_back(SourceFile{name, text, ""});
  addEntries(&sources);
  return sources;
}

} // namespace deferd::config
