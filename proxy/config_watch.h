#pragma once

// Watching the config file for changes, and the hash that identifies a config's bytes.
//
// Kubernetes mounts a ConfigMap as a directory in which every key is a symlink through a
// `..data` symlink; an update writes a new hidden directory and renames a new `..data` over the
// old one. The config file's own inode never changes, so a watch on the file misses updates.
// ConfigWatch therefore watches the file's directory with inotify and treats every event in it
// as a possible change.
//
// Debounce: an event arms a timer, and each further event moves it to `debounce` after the last
// one, so a file written in several steps (an editor, `cp`, a kubelet swap) is read once the
// writer has finished. A writer that pauses longer than `debounce` in the middle of a file can
// still be read half. The loader rejects a half that is invalid YAML or config, but a prefix
// that happens to be a valid config is applied until the rest arrives.
// TODO: detect a file still open for writing (IN_CLOSE_WRITE not yet seen) before reading it.
//
// Backstop: inotify can miss changes (a file system without inotify support, such as some
// network file systems, or a directory replaced as a whole), so every `backstop` period the
// watch also fires. Both paths call the same `on_change`, which compares the file's hash with
// the last one it read, so a tick that finds nothing new costs one read of the file.
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

namespace boost::asio {
class io_context;
}

namespace deferd {

// FNV-1a, 64 bits, of `bytes`.
uint64_t fnv1a64(std::string_view bytes);

// The value of deferd_config_hash: the top 52 bits of fnv1a64(bytes), which a double represents
// exactly, so two hosts that export the same value run the same bytes.
double configHash(std::string_view bytes);

// The bytes of a config file as read once, for loading and hashing the same text.
struct ConfigBytes {
  std::string text;
  double hash = 0;
};

// Reads `path` whole. Returns nothing and sets `error` when it cannot be opened or read.
std::optional<ConfigBytes> readConfigBytes(const std::string& path, std::string* error);

struct ConfigWatchOptions {
  std::chrono::milliseconds debounce{200};
  std::chrono::milliseconds backstop{5000};
};

class ConfigWatch {
public:
  ConfigWatch(boost::asio::io_context& io, std::string config_path, ConfigWatchOptions options,
              std::function<void()> on_change);
  ~ConfigWatch();

  ConfigWatch(const ConfigWatch&) = delete;
  ConfigWatch& operator=(const ConfigWatch&) = delete;

  // Starts the inotify watch and the backstop timer. When inotify is unavailable it logs a
  // warning and keeps only the backstop; start() itself cannot fail.
  void start();

  // Cancels every pending wait; `on_change` is not called afterwards.
  void stop();

private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

} // namespace deferd
