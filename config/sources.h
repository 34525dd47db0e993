#pragma once

// Reading the files of one configuration: the main file and the policy files it names.
//
// The main file's top-level `policy_files` lists paths relative to the main file's directory
// (absolute paths are taken as they are). An entry that names a directory contributes every
// regular file in it whose name ends in ".yaml" and does not start with '.', in byte order of
// the names. Hidden entries such as a Kubernetes ConfigMap's `..data` are skipped, and the
// symlinks the kubelet makes for each key are followed. The main file itself is skipped, so
// `policy_files: [.]` reads every other `*.yaml` file next to it, such as the other keys of the
// ConfigMap that holds the main file. An entry that names a file contributes that file,
// whatever its name.
//
// readConfigSources() reads every file once, so the loader and the config hash see the same
// bytes. It does not validate: a main file that is not YAML, or a `policy_files` that is not a
// list of strings, yields only the main file and the loader reports the problem.

#include <string>
#include <vector>

namespace deferd::config {

struct SourceFile {
  std::string path; // the main file's path, or its directory joined with the entry
  std::string text;
  std::string error; // why the file could not be read; empty when `text` is its content
};

// The files that one item of `policy_files` names.
struct PolicyFileEntry {
  std::string path;          // the item resolved against the main file's directory
  bool directory = false;    // the item names a directory
  std::vector<size_t> files; // indices in ConfigSources::files, in reading order
  std::string error;         // why the item names nothing, such as "not found"
};

struct ConfigSources {
  std::vector<SourceFile> files;        // files[0] is the main file
  std::vector<PolicyFileEntry> entries; // one per item of `policy_files`, in order
};

// Reads the main file at `main_path` and every policy file it names.
ConfigSources readConfigSources(const std::string& main_path);

// Returns sources whose main file is `text`, as if it had been read from `name`. The policy
// files it names are read from disk, relative to `name`'s directory.
ConfigSources sourcesFromText(const std::string& text, const std::string& name);

} // namespace deferd::config
