#pragma once

// The breaker filter: the request path's side of the breaker core in this directory.
//
// For each request, on the way up:
//
//   1. Ask the route cluster's breaker (allow). A request it lets through, or any request in
//      shadow mode or outside the policy's rollout, goes to the primary.
//   2. A rejected request without a fallback gets the local reply breaker-open, with a
//      retry-after of the seconds until the breaker lets the next probe through.
//   3. With a fallback, the loop guard reads deferd-fallback-path. A request that already
//      passed this service is rejected (fallback-loop) or sent to the primary anyway, as the
//      policy's on_loop sets.
//   4. Otherwise admitToFallback checks the fallback's own breaker and its capacity. A
//      fallback whose breaker is open gets no request (breaker-open); one at its capacity gets
//      none either (fallback-capacity). A granted request has this service appended to the
//      path header and is redirected with routeToCluster().
//
// On the way down, the call's result is taken from the response status and grpc-status, or
// from RequestInfo.local_reply when deferd replied in the upstream's place (connect failure, reset,
// timeout). It is recorded once, with the latency since the filter let the request through,
// in the breaker that admitted it (the primary's or the fallback's) and in that cluster's
// outlier detector, keyed by the endpoint's id. An ejection is copied to the SharedEndpoint,
// whose ejected_until_ns every worker's balancer reads. A probe that has no answer after the
// probe timeout is recorded as timed out by a timer, so the breaker reopens even when the
// upstream hangs; a request cancelled first gives its probe ticket back.
//
// Threading: a filter belongs to one stream on one worker. The breakers, detectors and
// capacities are shared by every worker and lock themselves; the route config is read-only.

#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "config/config.h"
#include "filters/breaker/circuit_breaker.h"
#include "filters/breaker/fallback_capacity.h"
#include "filters/breaker/loop_guard.h"
#include "filters/breaker/outlier_detector.h"
#include "filters/common/endpoint.h"
#include "filters/filter.h"

namespace deferd::filters::breaker {

inline constexpr size_t kBreakerStates = 3;
inline constexpr size_t kTransitionCauses = 7;
inline constexpr size_t kFallbackRejections = 4;

// Outcomes of deferd_breaker_calls_total; the first three match Outcome.
enum class CallCount : uint8_t { kSuccess, kFailure, kSlow, kRejected, kCount };

std::string_view callCountName(CallCount count);

// The metrics of one policy's breaker on one cluster. Every pointer is set by the metrics
// registry, and every series carries the `policy` and `cluster` labels.
struct BreakerStats {
  // deferd_breaker_state{state}, by BreakerState.
  std::array<prometheus::Gauge*, kBreakerStates> state{};
  // deferd_breaker_transitions_total{to,cause}, by [to][cause].
  std::array<std::array<prometheus::Counter*, kTransitionCauses>, kBreakerStates> transitions{};
  // deferd_breaker_calls_total{outcome}, by CallCount.
  std::array<prometheus::Counter*, static_cast<size_t>(CallCount::kCount)> calls{};
  // deferd_breaker_shadow_rejections_total: requests let through that an enforcing breaker
  // would have rejected (shadow mode, or outside the rollout).
  prometheus::Counter* shadow_rejections = nullptr;
  // deferd_breaker_fallback_rejections_total{reason}, by FallbackRejection, and the loop
  // guard's rejections.
  std::array<prometheus::Counter*, kFallbackRejections> fallback_rejections{};
  prometheus::Counter* fallback_loop = nullptr;
  // deferd_outlier_ejected_endpoints: the endpoints that this policy's detector ejected.
  prometheus::Gauge* ejected_endpoints = nullptr;
};

// The core's options from a policy's breaker section.
BreakerOptions breakerOptions(const config::BreakerPolicy& policy, bool shadow);
OutlierOptions outlierOptions(const config::OutlierPolicy& policy);
FallbackCapacityOptions capacityOptions(const config::Capacity& capacity);

// Logs each transition once, at info level, and counts it.
CircuitBreaker::Listener transitionListener(std::string policy, std::string cluster,
                                            BreakerStats* stats);

// One cluster as the filter sends to it.
struct BreakerTarget {
  std::string cluster;
  size_t cluster_index = 0;                 // in the snapshot's cluster list
  std::shared_ptr<CircuitBreaker> breaker;  // per (policy, cluster), kept across reloads
  std::shared_ptr<OutlierDetector> outlier; // null without an outlier section
  BreakerStats* stats = nullptr;
};

// Everything one route's breaker filters need, built once per config snapshot.
struct BreakerRouteConfig {
  BreakerTarget primary;
  std::optional<BreakerTarget> fallback;
  std::shared_ptr<FallbackCapacity> capacity; // set with a fallback
  // deferd_breaker_fallback_requests_total{policy,cluster,fallback}, set with a fallback.
  prometheus::Counter* fallback_requests = nullptr;
  LoopPolicy on_loop = LoopPolicy::kReject;
  std::string service;  // node.service, appended to deferd-fallback-path
  double rollout = 1.0; // share of requests enforced, 0..1
  std::chrono::milliseconds probe_timeout{5000};
  // Redirect within the fallback's capacity while every primary endpoint defers.
  bool fallback_when_deferring = false;
  // The endpoints' load-signal flags, for the deferring checks of both clusters.
  EndpointRegistry* endpoints = nullptr;
};

class BreakerFilter : public StreamFilter {
public:
  explicit BreakerFilter(const BreakerRouteConfig& config) : config_(config) {}

  FilterStatus onRequestHeaders(HeaderMap& headers) override;
  void onResponseHeaders(int status, HeaderMap& headers) override;
  void onStreamEnd(StreamEnd end) override;

private:
  FilterStatus redirect(HeaderMap& headers, const Admission& rejected, MonotonicTime now);
  FilterStatus rejectOpen(const Admission& rejected);
  // Sends a request to the fallback while every primary endpoint defers, when the fallback
  // has room; nothing when it has not, and the request goes on to the primary.
  std::optional<FilterStatus> redirectWhileDeferring(HeaderMap& headers, MonotonicTime now);
  // Checks the fallback's breaker and capacity, with its endpoints' load signals.
  FallbackDecision admitFallback(MonotonicTime now);
  // Sends the request to the fallback under a granted decision. Returns false, and gives the
  // grant back, when the stream cannot change cluster.
  bool sendToFallback(HeaderMap& headers, const LoopCheck& loop, FallbackDecision& decision,
                      std::string_view decision_name, MonotonicTime now);
  void letThrough(const BreakerTarget& target, MonotonicTime now);
  void startProbeTimer(const Admission& admission);
  void onProbeTimeout();
  // Records the call in the breaker that admitted it, the target's counters and its outlier
  // detector. Only the first call counts.
  void finish(CallResult result, MonotonicTime now);
  void recordOutlier(Outcome outcome, MonotonicTime now);
  Admission& admission() { return grant_ ? grant_->admission : admission_; }

  const BreakerRouteConfig& config_;
  // The primary's admission; empty (rejected) when the request went to the fallback.
  Admission admission_;
  std::optional<FallbackGrant> grant_;
  const BreakerTarget* target_ = nullptr; // where the request went; null when it did not
  MonotonicTime let_through_at_;
  bool recorded_ = false;
  std::unique_ptr<Timer> probe_timer_;
};

class BreakerFilterFactory : public FilterFactory {
public:
  explicit BreakerFilterFactory(BreakerRouteConfig config) : config_(std::move(config)) {}

  std::unique_ptr<StreamFilter> createFilter() const override {
    return std::make_unique<BreakerFilter>(config_);
  }

private:
  BreakerRouteConfig config_;
};

// Builds the call's result from the response status and headers, or from the local reply that
// deferd sent in the upstream's place. Returns nothing for other local replies (a filter's),
// because they tell nothing about the upstream.
std::optional<CallResult> callResult(int status, const HeaderMap& headers,
                                     std::optional<LocalReplyReason> local_reply);

} // namespace deferd::filters::breaker
