#pragma once

// The typed, validated configuration of one deferd process.
//
// config::load() turns YAML into these structs once; after that they are immutable and shared
// as std::shared_ptr<const Config>. A reload builds a new Config and swaps the pointer, so
// nothing here is ever written after loading and no field needs a lock.
//
// Defaults live here, next to the field, so the loader, the docs and the daemon agree on them.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace deferd::config {

using Duration = std::chrono::milliseconds;

// The file position of a value, for messages that point at the YAML.
struct Location {
  std::string file;
  int line = 0;   // 1-based
  int column = 0; // 1-based
};

// A host (IP literal or DNS name) and a port.
struct Address {
  std::string host;
  uint16_t port = 0;

  std::string toString() const;

  bool operator==(const Address&) const = default;
};

enum class Direction { kInbound, kOutbound };
enum class Trust { kTrusted, kUntrusted };
enum class UpstreamProtocol { kHttp1, kHttp2 };
enum class LbPolicy { kRoundRobin, kLeastRequest, kEwma };
enum class PolicyMode { kEnforce, kShadow, kOff };

struct AdminConfig {
  Address address{"127.0.0.1", 9901};
};

struct LogConfig {
  std::string level = "info"; // trace, debug, info, warn, error, critical, off
};

// JSON-lines access log. `path` "-" writes to standard output.
struct AccessLogConfig {
  bool enabled = true;
  std::string path = "-";
};

// Header additions and removals applied by the header mutation filter.
struct HeaderMutation {
  std::vector<std::pair<std::string, std::string>> add; // replaces an existing value
  std::vector<std::string> remove;                      // lower-case names
};

struct HeaderMatcher {
  std::string name;                 // lower-case
  std::optional<std::string> exact; // absent: the header only has to be present
  bool invert = false;              // match when the header is absent or differs
};

struct RouteMatch {
  std::optional<std::string> authority; // host without port, case-insensitive
  std::string prefix = "/";
  std::vector<HeaderMatcher> headers;
};

struct Route {
  RouteMatch match;
  std::string cluster;
  std::optional<std::string> policy;

  // Time allowed for the upstream to send response headers once the request is sent.
  Duration timeout{15000};

  HeaderMutation request_headers;
  HeaderMutation response_headers;

  Location location;
};

// Limits and timeouts of one listener's downstream connections.
struct ListenerLimits {
  uint32_t max_connections = 10000;
  uint32_t max_header_bytes = 60 * 1024; // request line plus headers
  uint32_t max_header_count = 100;
  Duration header_timeout{10000};       // from the first byte of a request to its last header byte
  Duration idle_timeout{60000};         // keep-alive connection with no request in progress
  Duration stream_idle_timeout{300000}; // no body bytes moving in either direction
};

struct Listener {
  std::string name;
  Address address;
  Direction direction = Direction::kInbound;
  Trust trust = Trust::kTrusted;
  ListenerLimits limits;
  std::vector<Route> routes;
  Location location;
};

struct Capacity {
  std::optional<uint32_t> max_concurrent;
  std::optional<double> max_rps;
};

struct Cluster {
  std::string name;
  std::vector<Address> endpoints;
  UpstreamProtocol protocol = UpstreamProtocol::kHttp1;
  LbPolicy lb = LbPolicy::kRoundRobin;
  Duration connect_timeout{1000};
  Duration resolve_every{5000};      // for endpoints given as DNS names
  uint32_t max_connections = 1024;   // per endpoint; each worker gets ceil(limit / workers)
  Duration pool_idle_timeout{60000}; // idle upstream keep-alive connections are closed after it
  Capacity capacity;
  Location location;
};

// A named policy. Its filter sections are stored as parsed by the loader.
struct Policy {
  std::string name;
  PolicyMode mode = PolicyMode::kEnforce;
  double rollout = 1.0; // share of requests the policy is enforced on, 0..1
  HeaderMutation request_headers;
  HeaderMutation response_headers;
  Location location;
};

struct Config {
  std::string source;  // file the config was loaded from
  std::string service; // node.service
  AdminConfig admin;
  uint32_t workers = 0; // 0: one per core
  Duration drain_timeout{20000};
  LogConfig log;
  AccessLogConfig access_log;
  std::vector<Listener> listeners;
  std::vector<Cluster> clusters;
  std::map<std::string, Policy> policies;

  const Cluster* findCluster(const std::string& name) const;
};

} // namespace deferd::config
