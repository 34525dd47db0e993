#pragma once

// deferd's Prometheus metrics.
//
// Counters and gauges are prometheus-cpp's (lock-free atomics). prometheus-cpp's Histogram
// takes a mutex on every Observe(), so request durations use LatencyHistogram below: relaxed
// atomic buckets, summed only when /metrics is scraped. Together nothing on the request path
// takes a lock.
//
// Handles are looked up once, when a config snapshot is built, and kept as pointers; the
// objects they point at live as long as the Metrics object, across reloads, so a counter keeps
// counting when its listener or cluster survives a reload.
//
// Label values are bounded by the config: listener, cluster, policy and reason names, status
// classes.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "filters/breaker/breaker_filter.h"
#include "filters/fault/fault_filter.h"
#include "filters/priority/priority_filter.h"
#include "proxy/local_reply.h"

namespace deferd {

// Causes of upstream failures, the `reason` label of deferd_upstream_failures_total.
enum class UpstreamFailure : uint8_t {
  kConnectFailed,
  kConnectTimeout,
  kConnectionLimit,
  kTimeout,
  kReset, // closed or reset before the response was complete
  kBadResponse,
  kCount,
};

std::string_view upstreamFailureName(UpstreamFailure failure);

// The downstream protocol of a request: the `protocol` label ("http1", "http2") of the request,
// duration and local reply metrics.
enum class Protocol : uint8_t { kHttp1, kHttp2, kCount };

inline constexpr size_t kProtocolCount = static_cast<size_t>(Protocol::kCount);

std::string_view protocolName(Protocol protocol);

// A histogram of seconds with fixed buckets, updated with relaxed atomics.
class LatencyHistogram {
public:
  static constexpr std::array<double, 14> kBuckets{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10};

  void observe(double seconds);

  // Cumulative counts per bucket (the last is +Inf), the count and the sum.
  struct Snapshot {
    std::array<uint64_t, kBuckets.size() + 1> cumulative{};
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot snapshot() const;

private:
  std::array<std::atomic<uint64_t>, kBuckets.size() + 1> counts_{};
  std::atomic<uint64_t> sum_nanoseconds_{0};
};

struct ListenerStats {
  prometheus::Gauge* connections_active = nullptr;
  prometheus::Counter* connections_total = nullptr;
  prometheus::Counter* connections_rejected = nullptr; // over max_connections
  prometheus::Gauge* requests_in_flight = nullptr;
  // By protocol, then by reason.
  std::array<std::array<prometheus::Counter*, static_cast<size_t>(LocalReplyReason::kCount)>,
             kProtocolCount>
      local_replies{};

  prometheus::Counter* localReply(Protocol protocol, LocalReplyReason reason) const {
    return local_replies[static_cast<size_t>(protocol)][static_cast<size_t>(reason)];
  }
  prometheus::Counter* http2_connection_errors = nullptr; // HTTP/2 connection-level errors
  prometheus::Counter* http2_flood_goaways = nullptr;     // GOAWAY ENHANCE_YOUR_CALM sent
};

// One listener and cluster pair; requests counted by protocol and status class 1xx..5xx.
struct RouteStats {
  std::array<std::array<prometheus::Counter*, 5>, kProtocolCount> requests_by_class{};
  std::array<LatencyHistogram*, kProtocolCount> duration{};

  void recordRequest(Protocol protocol, unsigned status, double seconds);
};

// Backpressure gauges and counters of one cluster, refreshed once a second from the admission
// controllers; the queue wait histogram and the boost counter are written by the filters.
struct BackpressureStats {
  prometheus::Gauge* limit = nullptr;
  prometheus::Gauge* in_flight = nullptr;
  std::array<prometheus::Gauge*, 8> queue_depth{}; // by urgency
  prometheus::Histogram* queue_wait = nullptr;
  prometheus::Gauge* endpoints_deferring = nullptr;
  prometheus::Counter* signals_stale = nullptr;
  prometheus::Counter* boosts = nullptr;
};

struct ClusterStats {
  prometheus::Gauge* connections_active = nullptr;
  prometheus::Counter* connections_created = nullptr;
  std::array<prometheus::Counter*, static_cast<size_t>(UpstreamFailure::kCount)> failures{};
};

class Metrics {
public:
  Metrics();

  // Each returns the same object for the same names for the life of this Metrics. Takes a
  // mutex: call it when building a snapshot, never per request.
  ListenerStats* listener(const std::string& name);
  ClusterStats* cluster(const std::string& name);
  RouteStats* route(const std::string& listener, const std::string& cluster);
  filters::priority::PriorityStats* priority(const std::string& listener);

  // The fault filter's counters of one policy, created on first use and kept across reloads.
  filters::fault::FaultStats* fault(const std::string& policy);
  // The metrics of one policy's breaker on one cluster. Each policy has its own breaker per
  // cluster, so two policies that route to one cluster export two sets of series.
  filters::breaker::BreakerStats* breaker(const std::string& policy, const std::string& cluster);
  // deferd_breaker_fallback_requests_total{policy,cluster,fallback}
  prometheus::Counter* breakerFallback(const std::string& policy, const std::string& cluster,
                                       const std::string& fallback);

  BackpressureStats* backpressure(const std::string& cluster);
  // deferd_backpressure_decisions_total for one policy, decision, urgency and mode.
  prometheus::Counter* backpressureDecision(const std::string& policy, std::string_view decision,
                                            int urgency, bool shadow);

  // Exports the inheritance table's size and its total evictions so far.
  void recordInheritanceTable(size_t entries, uint64_t evictions);

  // deferd_config_reloads_total{result="success"|"failure"}.
  void recordReload(bool success);

  // deferd_access_log_dropped_bytes_total: access log bytes lost to failed writes.
  prometheus::Counter* accessLogDroppedBytes() { return access_log_dropped_; }

  // deferd_admin_unauthorized_total: admin POST requests rejected for a missing or wrong token.
  void recordAdminUnauthorized();

  // Sets deferd_config_hash to the hash of the running config's bytes (see configHash()).
  void setConfigHash(double hash);

  // Sets deferd_ready (1 serving, 0 draining or not started).
  void setReady(bool ready);

  // The Prometheus text exposition format (version 0.0.4) of every metric.
  std::string serialize() const;

  prometheus::Registry& registry() { return *registry_; }

private:
  class HistogramCollector;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<HistogramCollector> histograms_;

  prometheus::Family<prometheus::Gauge>* connections_active_;
  prometheus::Family<prometheus::Counter>* connections_total_;
  prometheus::Family<prometheus::Counter>* connections_rejected_;
  prometheus::Family<prometheus::Gauge>* in_flight_;
  prometheus::Family<prometheus::Counter>* local_replies_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Gauge>* upstream_active_;
  prometheus::Family<prometheus::Counter>* upstream_created_;
  prometheus::Family<prometheus::Counter>* upstream_failures_;
  prometheus::Family<prometheus::Counter>* http2_connection_errors_;
  prometheus::Family<prometheus::Counter>* http2_flood_goaways_;
  prometheus::Family<prometheus::Counter>* reloads_;
  prometheus::Gauge* config_hash_;
  prometheus::Counter* admin_unauthorized_;
  prometheus::Counter* access_log_dropped_;
  prometheus::Gauge* ready_;
  prometheus::Family<prometheus::Counter>* priority_requests_;
  prometheus::Family<prometheus::Counter>* priority_clamped_;
  prometheus::Family<prometheus::Counter>* priority_malformed_;
  prometheus::Family<prometheus::Counter>* priority_depth_exceeded_;
  prometheus::Family<prometheus::Gauge>* breaker_state_;
  prometheus::Family<prometheus::Counter>* breaker_transitions_;
  prometheus::Family<prometheus::Counter>* breaker_calls_;
  prometheus::Family<prometheus::Counter>* breaker_shadow_rejections_;
  prometheus::Family<prometheus::Counter>* breaker_fallback_requests_;
  prometheus::Family<prometheus::Counter>* breaker_fallback_rejections_;
  prometheus::Family<prometheus::Gauge>* outlier_ejected_;
  prometheus::Family<prometheus::Gauge>* bp_limit_;
  prometheus::Family<prometheus::Gauge>* bp_in_flight_;
  prometheus::Family<prometheus::Gauge>* bp_queue_depth_;
  prometheus::Family<prometheus::Histogram>* bp_queue_wait_;
  prometheus::Family<prometheus::Counter>* bp_decisions_;
  prometheus::Family<prometheus::Gauge>* bp_deferring_;
  prometheus::Family<prometheus::Counter>* bp_stale_;
  prometheus::Family<prometheus::Counter>* priority_boosts_;
  prometheus::Family<prometheus::Counter>* fault_decisions_;
  prometheus::Gauge* table_entries_;
  prometheus::Counter* table_evictions_;
  uint64_t table_evictions_seen_ = 0; // guarded by mutex_

  std::mutex mutex_; // guards the maps below; never taken on the request path
  std::map<std::string, std::unique_ptr<ListenerStats>> listeners_;
  std::map<std::string, std::unique_ptr<ClusterStats>> clusters_;
  std::map<std::pair<std::string, std::string>, std::unique_ptr<RouteStats>> routes_;
  std::map<std::string, std::unique_ptr<filters::priority::PriorityStats>> priority_;
  std::map<std::string, std::unique_ptr<filters::fault::FaultStats>> fault_;
  // Keyed by (policy, cluster).
  std::map<std::pair<std::string, std::string>, std::unique_ptr<filters::breaker::BreakerStats>>
      breakers_;
  std::map<std::string, std::unique_ptr<BackpressureStats>> backpressure_;
};

} // namespace deferd
