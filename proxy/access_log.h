#pragma once

// The JSON-lines access log.
//
// Each worker owns one AccessLog writer and appends finished lines to a private buffer, so a
// request never takes a lock for logging. The buffer is written with one write(2) to a file
// opened with O_APPEND when it passes 32 KiB or when the worker's periodic flush runs, and
// Linux keeps each such write contiguous in the file, so lines from different workers never
// interleave.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace prometheus {
class Counter;
} // namespace prometheus

namespace deferd {

struct AccessLogEntry {
  std::string_view listener;
  std::string_view cluster; // empty when no route matched
  std::string_view method;
  std::string_view authority;
  std::string_view path;
  std::string_view protocol; // "HTTP/1.1", "HTTP/1.0", "HTTP/2"
  std::string_view request_id;
  std::string_view downstream_address;
  std::string_view upstream_endpoint;   // "host:port", empty when none was used
  unsigned status = 0;                  // 0 when no response was sent
  uint64_t request_bytes = 0;           // body bytes received from the client
  uint64_t response_bytes = 0;          // body bytes sent to the client
  double duration_seconds = 0;          // first request byte to last response byte
  double upstream_seconds = -1;         // request sent to response headers; -1 if none
  std::string_view reason;              // local reply reason or upstream failure, if any
  std::string_view decision;            // filter decision code, if any
  std::optional<int> urgency;           // effective urgency, when a priority filter ran
  std::optional<int> requested_urgency; // urgency the priority header asked for
  std::string_view priority_source;     // where the effective urgency came from
  std::string_view grpc_status;         // grpc-status sent to a gRPC client; empty if none
};

class AccessLogFile;

class AccessLog {
public:
  // Opens `path` for appending; "-" means standard output. The file is shared by the workers.
  // `dropped_bytes`, when given, counts the bytes that failed writes lost.
  static std::shared_ptr<AccessLogFile> open(const std::string& path, std::string* error,
                                             prometheus::Counter* dropped_bytes = nullptr);

  explicit AccessLog(std::shared_ptr<AccessLogFile> file);
  ~AccessLog();

  void record(const AccessLogEntry& entry);
  void flush();

private:
  std::shared_ptr<AccessLogFile> file_;
  std::string buffer_;
};

// Appends `value` to `out` as a JSON string literal, escaped per RFC 8259.
void appendJsonString(std::string& out, std::string_view value);

} // namespace deferd
