#include "proxy/config_watch.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include <sys/inotify.h>
#include <unistd.h>

namespace deferd {

namespace asio = boost::asio;

namespace {

constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

// A double has a 53-bit significand, so every integer below 2^52 converts exactly.
constexpr int kHashBits = 52;

// Events that can mean the file's bytes changed: writes, files and symlinks created, removed,
// renamed in or out (the `..data` swap is a rename), and metadata changes such as a touch.
constexpr uint32_t kWatchMask = IN_CLOSE_WRITE | IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM |
                                IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF;

std::string directoryOf(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

std::string fileNameOf(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

// Whether an event about the entry `name` of a watched directory can change the config: one of
// the target's names, a policy file of a policy directory, the kubelet's `..data` and
// `..<timestamp>` entries, or the directory itself (no name). Other files, such as an access
// log written next to the config, are ignored, so their writes cannot hold off the debounce.
bool concernsConfig(std::string_view name, const WatchTarget& target) {
  if (name.empty() || name.starts_with("..")) {
    return true;
  }
  if (target.every_yaml && !name.starts_with('.') && name.ends_with(".yaml")) {
    return true;
  }
  return std::find(target.names.begin(), target.names.end(), name) != target.names.end();
}

void addTarget(std::vector<WatchTarget>* targets, const std::string& directory,
               const std::string& name, bool every_yaml) {
  auto found = std::find_if(targets->begin(), targets->end(),
                            [&](const WatchTarget& t) { return t.directory == directory; });
  if (found == targets->end()) {
    targets->push_back(WatchTarget{directory, {}, false});
    found = targets->end() - 1;
  }
  if (!name.empty() &&
      std::find(found->names.begin(), found->names.end(), name) == found->names.end()) {
    found->names.push_back(name);
  }
  found->every_yaml = found->every_yaml || every_yaml;
}

} // namespace

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t hash = kFnvOffsetBasis;
  for (char c : bytes) {
    hash ^= static_cast<unsigned char>(c);
    hash *= kFnvPrime;
  }
  return hash;
}

double configHash(std::string_view bytes) {
  return static_cast<double>(fnv1a64(bytes) >> (64 - kHashBits));
}

double configHash(const config::ConfigSources& sources) {
  // Each field after the main text carries a tag and its size, so a file boundary cannot move
  // without changing the bytes.
  std::string bytes;
  auto append = [&bytes](std::string_view tag, std::string_view field) {
    bytes.push_back('\0');
    bytes.append(tag);
    bytes.push_back('\0');
    bytes.append(std::to_string(field.size()));
    bytes.push_back('\0');
    bytes.append(field);
  };

  const config::SourceFile& main = sources.files.at(0);
  if (main.error.empty()) {
    bytes = main.text;
  } else {
    append("error", main.error);
  }
  for (size_t i = 1; i < sources.files.size(); ++i) {
    const config::SourceFile& file = sources.files[i];
    append("file", file.path);
    if (file.error.empty()) {
      append("text", file.text);
    } else {
      append("error", file.error);
    }
  }
  for (const config::PolicyFileEntry& entry : sources.entries) {
    if (!entry.error.empty()) {
      append("entry", entry.error);
    }
  }
  return configHash(bytes);
}

std::optional<ConfigFiles> readConfigFiles(const std::string& path, std::string* error) {
  ConfigFiles files;
  files.sources = config::readConfigSources(path);
  if (!files.sources.files.at(0).error.empty()) {
    *error = path + ": " + files.sources.files[0].error;
    return std::nullopt;
  }
  files.hash = configHash(files.sources);
  return files;
}

std::vector<WatchTarget> watchTargets(const config::ConfigSources& sources) {
  std::vector<WatchTarget> targets;
  const std::string& main = sources.files.at(0).path;
  addTarget(&targets, directoryOf(main), fileNameOf(main), false);

  // Each entry is watched in its parent too, so a policy directory or file that is created,
  // removed or renamed as a whole is seen.
  for (const config::PolicyFileEntry& entry : sources.entries) {
    if (entry.path.empty()) {
      continue;
    }
    std::filesystem::path path(entry.path);
    std::string name = fileNameOf(entry.path);
    if (name.empty() || name == "." || name == "..") {
      path = path.lexically_normal(); // "policies.d/" or "." name the directory itself
      if (path.filename().empty()) {
        path = path.parent_path();
      }
      name = path.filename().string();
    }
    if (name != "." && name != "..") {
      addTarget(&targets, directoryOf(path.string()), name, false);
    }
    if (entry.directory) {
      addTarget(&targets, path.string(), "", true);
    }
  }
  return targets;
}

class ConfigWatch::Impl : public std::enable_shared_from_this<Impl> {
public:
  Impl(asio::io_context& io, const std::string& config_path, ConfigWatchOptions options,
       std::function<void()> on_change)
      : targets_{WatchTarget{directoryOf(config_path), {fileNameOf(config_path)}, false}},
        options_(options), on_change_(std::move(on_change)), inotify_(io), debounce_timer_(io),
        backstop_timer_(io) {}

  void start() {
    int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
      spdlog::warn("config watch: inotify unavailable ({}); checking every {} ms only",
                   std::strerror(errno), options_.backstop.count());
    } else {
      inotify_.assign(fd);
      addWatches();
      doRead();
    }
    scheduleBackstop();
  }

  void setTargets(std::vector<WatchTarget> targets) {
    targets_ = std::move(targets);
    if (inotify_.is_open()) {
      addWatches();
    }
  }

  void recheck() { armDebounce(); }

  void stop() {
    stopped_ = true;
    boost::system::error_code ignored;
    inotify_.close(ignored);
    debounce_timer_.cancel();
    backstop_timer_.cancel();
  }

private:
  // Adds a watch for every target and removes the watches of directories no longer targeted.
  // A directory that does not exist yet is tried again at the next backstop tick.
  void addWatches() {
    std::map<int, std::vector<size_t>> watches;
    for (size_t i = 0; i < targets_.size(); ++i) {
      const std::string& directory = targets_[i].directory;
      int wd = ::inotify_add_watch(inotify_.native_handle(), directory.c_str(), kWatchMask);
      if (wd < 0) {
        if (failed_.insert(directory).second) {
          spdlog::warn("config watch: cannot watch {}: {}; checking every {} ms until it can",
                       directory, std::strerror(errno), options_.backstop.count());
        }
        missing_ = true;
        continue;
      }
      if (failed_.erase(directory) > 0 || watched_.insert(directory).second) {
        spdlog::info("config watch: watching {} (debounce {} ms, backstop every {} ms)", directory,
                     options_.debounce.count(), options_.backstop.count());
      }
      watches[wd].push_back(i); // two paths to one directory share a watch descriptor
    }
    for (const auto& [wd, unused] : watches_) {
      if (watches.count(wd) == 0) {
        ::inotify_rm_watch(inotify_.native_handle(), wd);
      }
    }
    watches_ = std::move(watches);
    std::erase_if(watched_, [this](const std::string& directory) {
      return std::none_of(targets_.begin(), targets_.end(),
                          [&](const WatchTarget& t) { return t.directory == directory; });
    });
  }

  void doRead() {
    inotify_.async_read_some(asio::buffer(events_), [self = shared_from_this()](
                                                        const boost::system::error_code& ec,
                                                        size_t bytes) { self->onRead(ec, bytes); });
  }

  void onRead(const boost::system::error_code& ec, size_t bytes) {
    if (stopped_ || ec == asio::error::operation_aborted) {
      return;
    }
    if (ec) {
      spdlog::warn("config watch: reading inotify events failed: {}; checking every {} ms only",
                   ec.message(), options_.backstop.count());
      return;
    }

    bool relevant = false;
    for (size_t offset = 0; offset + sizeof(inotify_event) <= bytes;) {
      inotify_event event;
      std::memcpy(&event, events_.data() + offset, sizeof(event));
      const char* name = events_.data() + offset + sizeof(inotify_event);
      std::string_view name_view(name, event.len > 0 ? ::strnlen(name, event.len) : 0);
      offset += sizeof(inotify_event) + event.len;

      // IN_Q_OVERFLOW means events were lost, so any of them may have been about the files.
      if ((event.mask & IN_Q_OVERFLOW) != 0) {
        relevant = true;
        continue;
      }
      // A removed or moved directory ends its watch (IN_IGNORED follows); the next backstop
      // tick or setTargets() adds it again once the directory exists.
      // A watch removed by addWatches() also reports IN_IGNORED, after it left watches_.
      if ((event.mask & IN_IGNORED) != 0) {
        if (watches_.erase(event.wd) > 0) {
          missing_ = true;
          relevant = true;
        }
        continue;
      }
      if (concerns(event.wd, name_view)) {
        relevant = true;
        trackWriter(event, name_view);
      }
    }

    if (relevant) {
      armDebounce();
    }
    doRead();
  }

  bool concerns(int wd, std::string_view name) const {
    auto found = watches_.find(wd);
    if (found == watches_.end()) {
      return false;
    }
    return std::any_of(found->second.begin(), found->second.end(),
                       [&](size_t i) { return concernsConfig(name, targets_[i]); });
  }

  // Records a file as open for writing from its first IN_MODIFY to its IN_CLOSE_WRITE, or
  // until it is removed or renamed away.
  void trackWriter(const inotify_event& event, std::string_view name) {
    if (name.empty()) {
      return;
    }
    std::pair<int, std::string> key(event.wd, std::string(name));
    if ((event.mask & (IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM)) != 0) {
      writers_.erase(key);
    } else if ((event.mask & IN_MODIFY) != 0) {
      writers_.emplace(std::move(key), std::chrono::steady_clock::now());
    }
  }

  // Returns whether a file modified within `max_write_hold` is still open for writing.
  bool writerActive(std::chrono::steady_clock::time_point now) {
    bool active = false;
    for (auto it = writers_.begin(); it != writers_.end();) {
      if (now - it->second < options_.max_write_hold) {
        active = true;
        ++it;
        continue;
      }
      spdlog::info("config watch: {} was modified {} ms ago and is still not closed; reading it",
                   it->first.second, options_.max_write_hold.count());
      it = writers_.erase(it);
    }
    return active;
  }

  // (Re)starts the wait of `debounce` after which on_change runs. Events that never pause for
  // `debounce` delay on_change by at most one `backstop` period, and an open writer by at most
  // `max_write_hold`.
  void armDebounce() {
    auto now = std::chrono::steady_clock::now();
    if (!pending_since_) {
      pending_since_ = now;
    }
    waitDebounce(std::min(now + options_.debounce, *pending_since_ + options_.backstop));
  }

  // Waits until `deadline`, then runs onDebounce(). Re-arming cannot cancel a wait whose
  // expiry is already queued, so each wait carries a number and only the newest one acts.
  void waitDebounce(std::chrono::steady_clock::time_point deadline) {
    uint64_t wait = ++debounce_waits_;
    debounce_timer_.expires_at(deadline);
    debounce_timer_.async_wait(
        [self = shared_from_this(), wait](const boost::system::error_code& ec) {
          if (ec || self->stopped_ || wait != self->debounce_waits_) {
            return;
          }
          self->onDebounce();
        });
  }

  void onDebounce() {
    auto now = std::chrono::steady_clock::now();
    if (writerActive(now)) {
      waitDebounce(now + options_.debounce);
      return;
    }
    pending_since_.reset();
    on_change_();
  }

  void scheduleBackstop() {
    backstop_timer_.expires_after(options_.backstop);
    backstop_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->stopped_) {
        return;
      }
      if (self->inotify_.is_open() && self->missing_) {
        self->missing_ = false;
        self->addWatches();
      }

      // Through the debounce, so a file the backstop finds half written gets the same grace.
      self->armDebounce();
      self->scheduleBackstop();
    });
  }

  std::vector<WatchTarget> targets_;
  std::map<int, std::vector<size_t>> watches_; // watch descriptor to indices in targets_
  std::set<std::string> watched_;              // directories watched, for one log line each
  std::set<std::string> failed_;               // directories that could not be watched
  bool missing_ = false;                       // a target has no watch
  // Files modified and not yet closed, by watch descriptor and name, with the first change.
  std::map<std::pair<int, std::string>, std::chrono::steady_clock::time_point> writers_;
  ConfigWatchOptions options_;
  std::function<void()> on_change_;
  asio::posix::stream_descriptor inotify_;
  asio::steady_timer debounce_timer_;
  uint64_t debounce_waits_ = 0; // number of the newest debounce wait
  asio::steady_timer backstop_timer_;
  std::optional<std::chrono::steady_clock::time_point> pending_since_; // first undebounced event
  bool stopped_ = false;

  // Each inotify_event is followed by its name; this buffer fits many events of the longest name.
  alignas(inotify_event) std::array<char, 16 * 1024> events_;
};

ConfigWatch::ConfigWatch(asio::io_context& io, std::string config_path, ConfigWatchOptions options,
                         std::function<void()> on_change)
    : impl_(std::make_shared<Impl>(io, config_path, options, std::move(on_change))) {}

ConfigWatch::~ConfigWatch() { impl_->stop(); }

void ConfigWatch::start() { impl_->start(); }

void ConfigWatch::setTargets(std::vector<WatchTarget> targets) {
  impl_->setTargets(std::move(targets));
}

void ConfigWatch::recheck() { impl_->recheck(); }

void ConfigWatch::stop() { impl_->stop(); }

} // namespace deferd
