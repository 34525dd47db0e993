#include "proxy/config_watch.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

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

// Whether an event about the entry `name` of the watched directory can change the config: the
// file itself, the kubelet's `..data` and `..<timestamp>` entries, or the directory (no name).
// Other files, such as an access log written next to the config, are ignored, so their writes
// cannot hold off the debounce.
bool concernsConfig(std::string_view name, std::string_view file_name) {
  return name.empty() || name == file_name || name.starts_with("..");
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

std::optional<ConfigBytes> readConfigBytes(const std::string& path, std::string* error) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    *error = path + ": failed to open file: " + std::strerror(errno);
    return std::nullopt;
  }
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) {
    *error = path + ": failed to read file: " + std::strerror(errno);
    return std::nullopt;
  }
  ConfigBytes bytes;
  bytes.text = std::move(text).str();
  bytes.hash = configHash(bytes.text);
  return bytes;
}

class ConfigWatch::Impl : public std::enable_shared_from_this<Impl> {
public:
  Impl(asio::io_context& io, std::string config_path, ConfigWatchOptions options,
       std::function<void()> on_change)
      : directory_(directoryOf(config_path)),
        file_name_(std::filesystem::path(config_path).filename().string()), options_(options),
        on_change_(std::move(on_change)), inotify_(io), debounce_timer_(io), backstop_timer_(io) {}

  void start() {
    int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
      spdlog::warn("config watch: inotify unavailable ({}); checking {} every {} ms only",
                   std::strerror(errno), directory_, options_.backstop.count());
    } else {
      inotify_.assign(fd);
      addWatch();
      doRead();
    }
    scheduleBackstop();
  }

  void stop() {
    stopped_ = true;
    boost::system::error_code ignored;
    inotify_.close(ignored);
    debounce_timer_.cancel();
    backstop_timer_.cancel();
  }

private:
  void addWatch() {
    watch_ = ::inotify_add_watch(inotify_.native_handle(), directory_.c_str(), kWatchMask);
    if (watch_ < 0) {
      spdlog::warn("config watch: cannot watch {}: {}; checking every {} ms only", directory_,
                   std::strerror(errno), options_.backstop.count());
      return;
    }
    spdlog::info("config watch: watching {} (debounce {} ms, backstop every {} ms)", directory_,
                 options_.debounce.count(), options_.backstop.count());
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

    // A removed or moved directory ends the watch (IN_IGNORED follows); the backstop tick adds
    // it again once the directory exists.
    bool relevant = false;
    for (size_t offset = 0; offset + sizeof(inotify_event) <= bytes;) {
      inotify_event event;
      std::memcpy(&event, events_.data() + offset, sizeof(event));
      const char* name = events_.data() + offset + sizeof(inotify_event);
      std::string_view name_view(name, event.len > 0 ? ::strnlen(name, event.len) : 0);
      if ((event.mask & IN_IGNORED) != 0) {
        watch_ = -1;
      }
      // IN_Q_OVERFLOW means events were lost, so any of them may have been about the file.
      if ((event.mask & IN_Q_OVERFLOW) != 0 || concernsConfig(name_view, file_name_)) {
        relevant = true;
      }
      offset += sizeof(inotify_event) + event.len;
    }

    if (relevant) {
      armDebounce();
    }
    doRead();
  }

  // (Re)starts the wait of `debounce` after which on_change runs. Events that never pause for
  // `debounce` delay on_change by at most one `backstop` period.
  void armDebounce() {
    auto now = std::chrono::steady_clock::now();
    if (!pending_since_) {
      pending_since_ = now;
    }
    debounce_timer_.expires_at(
        std::min(now + options_.debounce, *pending_since_ + options_.backstop));
    debounce_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->stopped_) {
        return;
      }
      self->pending_since_.reset();
      self->on_change_();
    });
  }

  void scheduleBackstop() {
    backstop_timer_.expires_after(options_.backstop);
    backstop_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->stopped_) {
        return;
      }
      if (self->inotify_.is_open() && self->watch_ < 0) {
        self->addWatch();
      }

      // Through the debounce, so a file the backstop finds half written gets the same grace.
      self->armDebounce();
      self->scheduleBackstop();
    });
  }

  std::string directory_;
  std::string file_name_;
  ConfigWatchOptions options_;
  std::function<void()> on_change_;
  asio::posix::stream_descriptor inotify_;
  int watch_ = -1;
  asio::steady_timer debounce_timer_;
  asio::steady_timer backstop_timer_;
  std::optional<std::chrono::steady_clock::time_point> pending_since_; // first undebounced event
  bool stopped_ = false;

  // Each inotify_event is followed by its name; this buffer fits many events of the longest name.
  alignas(inotify_event) std::array<char, 16 * 1024> events_;
};

ConfigWatch::ConfigWatch(asio::io_context& io, std::string config_path, ConfigWatchOptions options,
                         std::function<void()> on_change)
    : impl_(std::make_shared<Impl>(io, std::move(config_path), options, std::move(on_change))) {}

ConfigWatch::~ConfigWatch() { impl_->stop(); }

void ConfigWatch::start() { impl_->start(); }

void ConfigWatch::stop() { impl_->stop(); }

} // namespace deferd
