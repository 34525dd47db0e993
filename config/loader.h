#pragma once

// Loading and validation of deferd's YAML configuration.
//
// yaml-cpp throws; nothing here does. Every problem found becomes a Diagnostic that points at
// the file, line and column of the offending node, and the loader keeps going so one run of
// `deferd validate` reports every problem at once.

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/sources.h"

namespace deferd::config {

struct Diagnostic {
  Location location;
  std::string message;

  // "file:line:column: message", the form compilers and editors understand.
  std::string toString() const;
};

struct LoadResult {
  std::shared_ptr<const Config> config; // null when diagnostics is not empty
  std::vector<Diagnostic> diagnostics;

  bool ok() const { return config != nullptr; }
};

// Validates the main file and the policy files of `sources` (see config/sources.h).
LoadResult loadSources(const ConfigSources& sources);

// Reads and validates a main file and the policy files it names.
LoadResult loadFile(const std::string& path);

// Validates YAML text; `name` is used as the file name in diagnostics, and the policy files the
// text names are read relative to `name`'s directory.
LoadResult loadString(const std::string& yaml, const std::string& name);

// Serializes an effective config back to YAML, with every default written out (for /config).
std::string toYaml(const Config& config);

} // namespace deferd::config
