#include "proxy/access_log.h"

#include <prometheus/counter.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>

#include <fcntl.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

namespace deferd {

namespace {

// A worker's buffer is written out once it grows past this many bytes.
constexpr size_t kFlushThresholdBytes = 32 * 1024;

std::shared_ptr<spdlog::logger> logger() {
  auto named = spdlog::get("access_log");
  return named != nullptr ? named : spdlog::default_logger();
}

// Returns the length of the well-formed UTF-8 sequence at the start of `bytes`, or 0 when it
// is not one (overlong forms, surrogates and code points above U+10FFFF are ill-formed).
size_t validUtf8Length(std::string_view bytes) {
  auto byte = [&](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  auto continuation = [&](size_t i) { return i < bytes.size() && (byte(i) & 0xC0) == 0x80; };

  unsigned char lead = byte(0);
  if (lead < 0x80) {
    return 1;
  }
  if (lead >= 0xC2 && lead <= 0xDF) {
    return continuation(1) ? 2 : 0;
  }
  if (lead >= 0xE0 && lead <= 0xEF) {
    if (!continuation(1) || !continuation(2)) {
      return 0;
    }
    if (lead == 0xE0 && byte(1) < 0xA0) {
      return 0; // overlong
    }
    if (lead == 0xED && byte(1) >= 0xA0) {
      return 0; // UTF-16 surrogate
    }
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    if (!continuation(1) || !continuation(2) || !continuation(3)) {
      return 0;
    }
    if (lead == 0xF0 && byte(1) < 0x90) {
      return 0; // overlong
    }
    if (lead == 0xF4 && byte(1) >= 0x90) {
      return 0; // above U+10FFFF
    }
    return 4;
  }
  return 0;
}

void appendUnsigned(std::string& out, uint64_t value) {
  char digits[20];
  auto result = std::to_chars(digits, digits + sizeof(digits), value);
  out.append(digits, result.ptr);
}

// Appends seconds as milliseconds with three decimals (microsecond resolution). JSON has no
// NaN or infinity, and the buffer fits values below about 1e27 ms, so others become null.
void appendMilliseconds(std::string& out, double seconds) {
  double milliseconds = seconds * 1e3;
  char digits[32];
  auto result =
      std::to_chars(digits, digits + sizeof(digits), milliseconds, std::chars_format::fixed, 3);
  if (!std::isfinite(milliseconds) || result.ec != std::errc()) {
    out += "null";
    return;
  }
  out.append(digits, result.ptr);
}

void appendTwoDigits(std::string& out, unsigned value) {
  out += static_cast<char>('0' + value / 10 % 10);
  out += static_cast<char>('0' + value % 10);
}

// Appends `"time":"2024-05-01T12:34:56.789Z"` for the current wall-clock time. The date comes
// from std::chrono's calendar arithmetic, not gmtime_r, because glibc's gmtime_r takes a
// process-wide time zone lock.
void appendTime(std::string& out) {
  using namespace std::chrono;

  auto now = time_point_cast<milliseconds>(system_clock::now());
  auto day = floor<days>(now);
  year_month_day date{day};
  hh_mm_ss time{now - day};

  out += "\"time\":\"";
  appendUnsigned(out, static_cast<uint64_t>(static_cast<int>(date.year())));
  out += '-';
  appendTwoDigits(out, static_cast<unsigned>(date.month()));
  out += '-';
  appendTwoDigits(out, static_cast<unsigned>(date.day()));
  out += 'T';
  appendTwoDigits(out, static_cast<unsigned>(time.hours().count()));
  out += ':';
  appendTwoDigits(out, static_cast<unsigned>(time.minutes().count()));
  out += ':';
  appendTwoDigits(out, static_cast<unsigned>(time.seconds().count()));
  out += '.';
  auto fraction = static_cast<unsigned>(time.subseconds().count());
  out += static_cast<char>('0' + fraction / 100);
  appendTwoDigits(out, fraction);
  out += "Z\"";
}

void appendKey(std::string& out, std::string_view key) {
  out += ",\"";
  out += key;
  out += "\":";
}

void appendStringField(std::string& out, std::string_view key, std::string_view value) {
  appendKey(out, key);
  appendJsonString(out, value);
}

// Writes a small number, or null when it is unset.
void appendOptional(std::string& out, const std::optional<int>& value) {
  if (value) {
    appendUnsigned(out, static_cast<uint64_t>(*value));
  } else {
    out += "null";
  }
}

} // namespace

// The file that every worker's AccessLog writes to. write() is safe to call from any thread,
// because it only issues write(2) calls on an O_APPEND descriptor and the failure flag is
// atomic. A partial write is finished with a second write(2), and another worker's write can
// land between the two.
class AccessLogFile {
public:
  AccessLogFile(int fd, bool owned, std::string path, prometheus::Counter* dropped_bytes)
      : fd_(fd), owned_(owned), path_(std::move(path)), dropped_bytes_(dropped_bytes) {}

  ~AccessLogFile() {
    if (owned_) {
      ::close(fd_);
    }
  }

  AccessLogFile(const AccessLogFile&) = delete;
  AccessLogFile& operator=(const AccessLogFile&) = delete;

  // Writes all of `data`, retrying after EINTR and partial writes. On an error the rest of
  // `data` is dropped, because holding it would grow the buffer without bound.
  void write(std::string_view data) {
    while (!data.empty()) {
      ssize_t written = ::write(fd_, data.data(), data.size());
      if (written < 0 && errno == EINTR) {
        continue;
      }
      if (written < 0) {
        reportFailure(errno, data.size());
        return;
      }
      data.remove_prefix(static_cast<size_t>(written));
    }
    reportSuccess();
  }

private:
  // Counts the dropped bytes, and logs the first failure of a run of failures, so a full disk
  // does not flood the daemon log.
  void reportFailure(int error, size_t dropped_bytes) {
    if (dropped_bytes_ != nullptr) {
      dropped_bytes_->Increment(static_cast<double>(dropped_bytes));
    }
    if (!failing_.exchange(true, std::memory_order_relaxed)) {
      logger()->warn("access log write to {} failed: {}; dropped {} bytes, and lines are dropped "
                     "until a write succeeds",
                     path_, std::strerror(error), dropped_bytes);
    }
  }

  void reportSuccess() {
    if (failing_.load(std::memory_order_relaxed) &&
        failing_.exchange(false, std::memory_order_relaxed)) {
      logger()->info("access log writes to {} succeed again", path_);
    }
  }

  int fd_;
  bool owned_;
  std::string path_;
  prometheus::Counter* dropped_bytes_; // may be null
  std::atomic<bool> failing_{false};
};

std::shared_ptr<AccessLogFile> AccessLog::open(const std::string& path, std::string* error,
                                               prometheus::Counter* dropped_bytes) {
  if (path == "-") {
    return std::make_shared<AccessLogFile>(STDOUT_FILENO, false, "standard output", dropped_bytes);
  }

  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (error != nullptr) {
      *error = "failed to open access log " + path + ": " + std::strerror(errno);
    }
    return nullptr;
  }
  return std::make_shared<AccessLogFile>(fd, true, path, dropped_bytes);
}

AccessLog::AccessLog(std::shared_ptr<AccessLogFile> file) : file_(std::move(file)) {
  buffer_.reserve(kFlushThresholdBytes + 4096);
}

AccessLog::~AccessLog() { flush(); }

// Fields appear in a fixed order. "time" is when the entry was recorded, which is the end of
// the request. A null file, as returned by a failed open(), makes record() a no-op.
void AccessLog::record(const AccessLogEntry& entry) {
  if (file_ == nullptr) {
    return;
  }

  buffer_ += '{';
  appendTime(buffer_);
  appendStringField(buffer_, "listener", entry.listener);
  appendStringField(buffer_, "cluster", entry.cluster);
  appendStringField(buffer_, "method", entry.method);
  appendStringField(buffer_, "authority", entry.authority);
  appendStringField(buffer_, "path", entry.path);
  appendStringField(buffer_, "protocol", entry.protocol);
  appendStringField(buffer_, "request_id", entry.request_id);
  appendStringField(buffer_, "downstream", entry.downstream_address);
  appendStringField(buffer_, "upstream", entry.upstream_endpoint);

  appendKey(buffer_, "status");
  appendUnsigned(buffer_, entry.status);
  appendKey(buffer_, "request_bytes");
  appendUnsigned(buffer_, entry.request_bytes);
  appendKey(buffer_, "response_bytes");
  appendUnsigned(buffer_, entry.response_bytes);
  appendKey(buffer_, "duration_ms");
  appendMilliseconds(buffer_, entry.duration_seconds);
  appendKey(buffer_, "upstream_ms");
  if (entry.upstream_seconds < 0) {
    buffer_ += "null";
  } else {
    appendMilliseconds(buffer_, entry.upstream_seconds);
  }

  appendStringField(buffer_, "reason", entry.reason);
  appendStringField(buffer_, "decision", entry.decision);
  appendKey(buffer_, "urgency");
  appendOptional(buffer_, entry.urgency);
  appendKey(buffer_, "requested_urgency");
  appendOptional(buffer_, entry.requested_urgency);
  appendStringField(buffer_, "priority_source", entry.priority_source);
  appendStringField(buffer_, "grpc_status", entry.grpc_status);
  buffer_ += "}\n";

  if (buffer_.size() > kFlushThresholdBytes) {
    flush();
  }
}

void AccessLog::flush() {
  if (file_ == nullptr || buffer_.empty()) {
    return;
  }
  file_->write(buffer_);
  buffer_.clear();
}

void appendJsonString(std::string& out, std::string_view value) {
  static constexpr char kHex[] = "0123456789abcdef";

  out += '"';
  size_t i = 0;
  while (i < value.size()) {
    auto byte = static_cast<unsigned char>(value[i]);

    if (byte == '"' || byte == '\\') {
      out += '\\';
      out += static_cast<char>(byte);
      ++i;
    } else if (byte < 0x20) {
      out += "\\u00";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xF];
      ++i;
    } else if (byte < 0x80) {
      out += static_cast<char>(byte);
      ++i;
    } else if (size_t length = validUtf8Length(value.substr(i)); length > 0) {
      out.append(value.substr(i, length));
      i += length;
    } else {
      // Each byte that does not start a well-formed sequence becomes U+FFFD.
      out += "\\ufffd";
      ++i;
    }
  }
  out += '"';
}

} // namespace deferd
