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

#include "config/cidr.h"

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
  // File whose content (surrounding whitespace removed) is the bearer token that POST requests
  // to the admin listener must carry. Unset: POST is allowed only on a loopback admin address.
  std::optional<std::string> token_file;
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

  // Default urgency of the route's requests (`priority:`, a class of its policy or 0..7);
  // unset means the policy's default. Needs a policy with a priority section.
  std::optional<int> urgency;

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

// Protection limits of the listener's downstream HTTP/2 connections. The defaults suit a
// sidecar; the maximum header list size is the listener's max_header_bytes.
struct Http2Limits {
  uint32_t max_concurrent_streams = 100;     // SETTINGS_MAX_CONCURRENT_STREAMS
  uint32_t initial_window_size = 256 * 1024; // SETTINGS_INITIAL_WINDOW_SIZE, bytes per stream
  // Receive window of the whole connection, shared by its streams (RFC 9113 section 6.9.2).
  uint32_t connection_window_size = 1024 * 1024;
  // RST_STREAM frames a client may send in a burst, and refilled per second, before the
  // connection ends with GOAWAY ENHANCE_YOUR_CALM (nghttp2 1.52's own limit is 1000 and 33).
  uint32_t reset_burst = 200;
  uint32_t reset_rate = 33;
  // Queued SETTINGS and PING acknowledgements before the connection ends.
  uint32_t max_control_frames = 1000;
  // CONTINUATION frames allowed per header block.
  uint32_t max_continuations = 8;
  // DATA frames in a row with no payload and no END_STREAM, which cost deferd work and the
  // client nothing, before the connection ends with GOAWAY ENHANCE_YOUR_CALM.
  uint32_t max_empty_frames = 16;
};

struct Listener {
  std::string name;
  Address address;
  Direction direction = Direction::kInbound;
  Trust trust = Trust::kTrusted;

  // On an untrusted listener, peers in these ranges are trusted all the same.
  std::vector<CidrRange> trusted_cidrs;
  // On an untrusted listener, the most urgent urgency an outside caller may ask for; a more
  // urgent one is raised to it. Unset (`priority_floor: strip`) ignores their header.
  std::optional<int> priority_floor = 3;
  // Whether a request that arrives without an x-request-id gets a new one (a UUID). Either way
  // a caller's x-request-id is kept.
  bool generate_request_id = true;
  ListenerLimits limits;
  Http2Limits http2;
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

// The urgency scale of RFC 9218: 0 is the most urgent, 7 the least.
inline constexpr int kMostUrgent = 0;
inline constexpr int kLeastUrgent = 7;

// The priority section of a policy: how a request's urgency is read, defaulted and inherited.
struct PriorityPolicy {
  std::string header = "deferd-priority"; // lower-case
  std::map<std::string, int> classes = {
      {"critical", 0}, {"high", 1}, {"normal", 3}, {"low", 5}, {"sheddable", 7}};
  int default_urgency = 3;

  // Inheritance: inbound requests are recorded under their correlation id, and outbound
  // calls carrying a known id and no priority of their own inherit it with hop + 1.
  bool inherit = true;
  // Correlation sources, tried in order: "traceparent" or a lower-case header name.
  std::vector<std::string> correlation = {"traceparent", "x-request-id"};
  uint32_t max_depth = 3; // an outbound call whose hop would exceed it gets the route default

  // Holders of a backpressure slot that block a more urgent request waiting longer than this
  // are boosted to its urgency. Unset: no boost.
  std::optional<Duration> boost_after;
};

enum class LimiterKind { kGradient, kAimd, kFixed };
enum class MaxWaitAction { kReject, kProceed };

// Load signals read from the responses of a cluster's endpoints (outbound side).
struct SignalPolicy {
  Duration ttl{10000};           // a signal older than this is forgotten
  Duration ewma_half_life{1000}; // time for a new level to move the average half way
  double defer_above = 0.9;      // smoothed load above which an endpoint starts deferring
  Duration hold_above{500};      // ... after staying above for this long
  double resume_below = 0.7;     // smoothed load below which it stops deferring
  Duration hold_below{2000};     // ... after staying below for this long

  bool operator==(const SignalPolicy&) const = default;
};

// The backpressure section of a policy: an adaptive concurrency limit per route cluster, a
// priority queue for requests over it, and load signals between sidecars.
struct BackpressurePolicy {
  LimiterKind limiter = LimiterKind::kGradient;
  uint32_t initial_limit = 20;
  uint32_t min_limit = 5;
  uint32_t max_limit = 1000;
  double tolerance = 1.15; // gradient: how much slower than the baseline a window may be
  double smoothing = 0.2;  // gradient: weight of a window's proposed limit
  uint32_t increase = 1;   // aimd: added per window while the limit is in use
  double backoff = 0.9;    // aimd: factor per window with a drop
  std::optional<Duration> latency_threshold; // aimd: a response slower than this is a drop

  uint32_t queue_max_length = 1000; // 0: requests over the limit are shed at once
  Duration max_wait{1000};
  Duration aging{200}; // a waiting request gains one level of urgency per interval
  MaxWaitAction on_max_wait = MaxWaitAction::kReject;
  bool predict_wait = true; // refuse on arrival a request that would wait past max_wait

  // Header whose value (a duration, such as 250ms) is the request's remaining deadline, read
  // when the request has no grpc-timeout.
  std::optional<std::string> deadline_header;

  bool emit_signal = false;           // inbound: report this cluster's load in every response
  std::optional<SignalPolicy> signal; // outbound: read the endpoints' signals
  double all_deferring_scale = 0.5;   // limit factor while every endpoint defers

  bool operator==(const BackpressurePolicy&) const = default;
};

enum class BreakerWindowType { kCount, kTime };
enum class LoopAction { kReject, kPrimary };

// Outlier ejection of a cluster's endpoints, part of a breaker section.
struct OutlierPolicy {
  uint32_t consecutive_failures = 5; // failures in a row that eject an endpoint
  Duration base_ejection{30000};     // first ejection; the n-th lasts n times as long
  Duration max_ejection{300000};     // cap of one ejection
  double max_ejection_percent = 0.1; // share of endpoints out at once, 0..1

  bool operator==(const OutlierPolicy&) const = default;
};

// The breaker section of a policy: a circuit breaker per (policy, route cluster), an optional
// fallback cluster, and optional outlier ejection. Defaults match filters/breaker/.
struct BreakerPolicy {
  BreakerWindowType window_type = BreakerWindowType::kCount;
  uint32_t window_calls = 100;     // count window: the last N calls
  Duration window_duration{10000}; // time window: the last duration
  uint32_t min_requests = 20;

  double failure_rate = 0.5;   // 0..1; 0 turns it off
  double slow_call_rate = 1.0; // 0..1; 0 turns it off
  std::optional<Duration> slow_call;
  uint32_t consecutive_failures = 5; // 0 turns it off

  std::vector<int> failure_status_classes = {5}; // 5 is every 5xx
  std::vector<int> failure_statuses;             // single codes, such as 429
  bool failure_connect_failure = true;
  bool failure_reset = true;
  bool failure_timeout = true;
  std::vector<int> failure_grpc = {14, 4}; // UNAVAILABLE, DEADLINE_EXCEEDED

  Duration cooldown{5000};
  Duration max_cooldown{300000};
  double cooldown_multiplier = 2.0;
  double jitter = 0.1; // 0..1

  uint32_t probes = 3;
  Duration probe_timeout{5000};

  std::optional<std::string> fallback; // cluster name; it must declare a capacity
  LoopAction on_loop = LoopAction::kReject;
  // Also send requests to the fallback, within its capacity, while the backpressure filter's
  // load signals mark every endpoint of the primary as deferring.
  bool fallback_when_deferring = false;

  std::optional<OutlierPolicy> outlier;

  bool operator==(const BreakerPolicy&) const = default;
};

// The fault section of a policy: delays and aborts injected on purpose, for rehearsals.
struct FaultPolicy {
  double delay_share = 0; // share of requests delayed, 0..1
  Duration delay{0};
  double abort_share = 0; // share of requests aborted, 0..1
  uint16_t abort_status = 503;
  std::optional<uint32_t> grpc_status; // for gRPC requests; unset: mapped from abort_status
  bool header_control = false;         // honour x-deferd-fault on trusted listeners

  bool operator==(const FaultPolicy&) const = default;
};

// The process-wide table behind priority inheritance.
struct InheritanceConfig {
  uint32_t max_entries = 65536;
  Duration ttl{30000};          // an entry never released is forgotten after it
  Duration release_grace{1000}; // kept after the inbound request ends, for late sub-calls
};

// A named policy. Its filter sections are stored as parsed by the loader.
struct Policy {
  std::string name;
  PolicyMode mode = PolicyMode::kEnforce;
  double rollout = 1.0; // share of requests the policy is enforced on, 0..1
  HeaderMutation request_headers;
  HeaderMutation response_headers;
  std::optional<PriorityPolicy> priority;
  std::optional<BackpressurePolicy> backpressure;
  std::optional<BreakerPolicy> breaker;
  std::optional<FaultPolicy> fault;
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
  InheritanceConfig inheritance;
  std::vector<Listener> listeners;
  std::vector<Cluster> clusters;
  std::map<std::string, Policy> policies;

  const Cluster* findCluster(const std::string& name) const;
};

} // namespace deferd::config
