#pragma once

// Watching the config files for changes, and the hash that identifies a config's bytes.
//
// Kubernetes mounts a ConfigMap as a directory in which every key is a symlink through a
// `..data` symlink; an update writes a new hidden directory and renames a new `..data` over the
// old one. The config file's own inode never changes, so a watch on the file misses updates.
// ConfigWatch therefore watches directories with inotify: the main file's, every policy
// directory, and the directory of every policy file named on its own (see config/sources.h).
// In each it cares about the names it was given, every `*.yaml` in a policy directory, and the
// kubelet's `..data` and `..<timestamp>` entries. The set changes with the config, so the
// server calls setTargets() after every read.
//
// Debounce: an event arms a timer, and each further event moves it to `debounce` after the last
// one, so a file written in several steps (an editor, `cp`, a kubelet swap) is read once the
// writer has finished. A file that was modified and not yet closed after writing (no
// IN_CLOSE_WRITE seen) holds the timer off for up to `max_write_hold`, so a writer that pauses
// mid-file is waited for. The server adds a second guard for what inotify cannot see (the
// backstop path, a writer on another host of a network file system): it applies new bytes only
// when two reads, one debounce apart, hash the same (see recheck()). A writer that pauses
// longer than both guards can still have a valid prefix applied until the rest arrives, which
// is why the docs advise writing a new file and renaming it over the old one.
//
// Backstop: inotify can miss changes (a file system without inotify support, such as some
// network file systems, or a directory replaced as a whole), so every `backstop` period the
// watch also fires. Both paths call the same `on_change`, which compares the files' hash with
// the last one it read, so a tick that finds nothing new costs one read of the files.
//
// Thread model: everything runs on the io_context given to start(), the main thread's. The
// callback runs on that thread too.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/sources.h"

namespace boost::asio {
class io_context;
}

namespace deferd {

// FNV-1a, 64 bits, of `bytes`.
uint64_t fnv1a64(std::string_view bytes);

// The value of deferd_config_hash: the top 52 bits of fnv1a64(bytes), which a double represents
// exactly, so two hosts that export the same value run the same bytes.
double configHash(std::string_view bytes);

// The value of deferd_config_hash for a set of files: configHash() of the main file's bytes
// when it names no policy files, so a single-file config keeps its hash. Otherwise each policy
// file's path, size and bytes (or its read error) are appended in reading order, as are the
// errors of `policy_files` entries that name nothing.
double configHash(const config::ConfigSources& sources);

// The files of a config as read once, for loading and hashing the same bytes.
struct ConfigFiles {
  config::ConfigSources sources;
  double hash = 0; // configHash(sources)
};

// Reads the main file at `path` and the policy files it names. Returns nothing and sets `error`
// when the main file cannot be opened or read. A policy file that cannot be read is left in
// the sources for the loader to report with its entry.
std::optional<ConfigFiles> readConfigFiles(const std::string& path, std::string* error);

// A directory to watch and the entries in it that can change the config.
struct WatchTarget {
  std::string directory;
  std::vector<std::string> names; // entries of the directory that matter
  bool every_yaml = false;        // also every "*.yaml" entry not starting with '.'
};

// Returns the directories to watch for `sources`, one target per directory, for
// ConfigWatch::setTargets().
std::vector<WatchTarget> watchTargets(const config::ConfigSources& sources);

struct ConfigWatchOptions {
  std::chrono::milliseconds debounce{200};
  std::chrono::milliseconds backstop{5000};
  // Longest wait for a modified file to be closed; a writer that never closes it (or a lost
  // IN_CLOSE_WRITE) delays a reload by at most this much.
  std::chrono::milliseconds max_write_hold{10000};
};

class ConfigWatch {
public:
  // Watches the directory of `config_path` for that file until setTargets() says more.
  ConfigWatch(boost::asio::io_context& io, std::string config_path, ConfigWatchOptions options,
              std::function<void()> on_change);
  ~ConfigWatch();

  ConfigWatch(const ConfigWatch&) = delete;
  ConfigWatch& operator=(const ConfigWatch&) = delete;

  // Starts the inotify watch and the backstop timer. When inotify is unavailable it logs a
  // warning and keeps only the backstop; start() itself cannot fail.
  void start();

  // Replaces the watched directories. Directories that stay keep their inotify watch.
  void setTargets(std::vector<WatchTarget> targets);

  // Calls `on_change` again once `debounce` has passed without a further event, for a read that
  // found new bytes and wants to confirm them with a second read.
  void recheck();

  // Cancels every pending wait; `on_change` is not called afterwards.
  void stop();

private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

} // namespace deferd
