#include "proxy/metrics.h"

#include <algorithm>
#include <limits>
#include <sstream>
#include <vector>

#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>
#include <prometheus/metric_type.h>
#include <prometheus/text_serializer.h>

#include "proxy/http_translation.h"

namespace deferd {

namespace {

constexpr std::array<std::string_view, 5> kStatusClasses{"1xx", "2xx", "3xx", "4xx", "5xx"};

constexpr std::string_view kDurationName = "deferd_request_duration_seconds";
constexpr std::string_view kDurationHelp =
    "Time from the first request byte to the last response byte, in seconds.";

// Maximum observation added to the sum, about 31 years. Clamping keeps the conversion to
// nanoseconds defined for huge and infinite inputs.
constexpr double kMaxObservedSeconds = 1e9;

} // namespace

// The reasons use the same kebab-case tokens as the local reply reasons, so one request's
// failure reads the same in the counter, the deferd-reason header and the access log.
std::string_view upstreamFailureName(UpstreamFailure failure) {
  switch (failure) {
  case UpstreamFailure::kConnectFailed:
    return "connect-failed";
  case UpstreamFailure::kConnectTimeout:
    return "connect-timeout";
  case UpstreamFailure::kConnectionLimit:
    return "connection-limit";
  case UpstreamFailure::kTimeout:
    return "timeout";
  case UpstreamFailure::kReset:
    return "reset";
  case UpstreamFailure::kBadResponse:
    return "bad-response";
  case UpstreamFailure::kCount:
    break;
  }
  return "unknown";
}

// Lock-free: one relaxed increment of the bucket and one relaxed add to the sum. A scrape may
// see an increment without its add, so the sum can lag the count by the observations in
// progress.
void LatencyHistogram::observe(double seconds) {
  // A negative or NaN duration counts as zero.
  if (!(seconds >= 0)) {
    seconds = 0;
  }

  // Find the first bucket whose upper bound is >= seconds. Index kBuckets.size() is +Inf.
  auto bound = std::lower_bound(kBuckets.begin(), kBuckets.end(), seconds);
  auto index = static_cast<size_t>(bound - kBuckets.begin());
  counts_[index].fetch_add(1, std::memory_order_relaxed);

  double clamped = std::min(seconds, kMaxObservedSeconds);
  auto nanoseconds = static_cast<uint64_t>(clamped * 1e9 + 0.5);
  sum_nanoseconds_.fetch_add(nanoseconds, std::memory_order_relaxed);
}

LatencyHistogram::Snapshot LatencyHistogram::snapshot() const {
  Snapshot result;
  uint64_t running = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    result.cumulative[i] = running;
  }

  // The count is the +Inf bucket, so the two always agree within one snapshot.
  result.count = running;
  result.sum = static_cast<double>(sum_nanoseconds_.load(std::memory_order_relaxed)) / 1e9;
  return result;
}

std::string_view protocolName(Protocol protocol) {
  switch (protocol) {
  case Protocol::kHttp1:
    return "http1";
  case Protocol::kHttp2:
    return "http2";
  case Protocol::kCount:
    break;
  }
  return "unknown";
}

// Requests with a status outside 100..599 (0 when no response was sent) are counted in neither
// the status classes nor the histogram, so the histogram's count equals the sum of the classes.
void RouteStats::recordRequest(Protocol protocol, unsigned status, double seconds) {
  if (!isValidStatus(status)) {
    return;
  }

  size_t index = static_cast<size_t>(protocol);
  auto* counter = requests_by_class[index][status / 100 - 1];
  if (counter != nullptr) {
    counter->Increment();
  }
  if (LatencyHistogram* histogram = duration[index]) {
    histogram->observe(seconds);
  }
}

// The LatencyHistograms of every route, exposed as the deferd_request_duration_seconds family.
// prometheus::Registry 1.0.1 accepts only its own Family types, so Metrics::serialize() appends
// this collector's output to the registry's.
// NOTE: code that collects registry() directly, such as a prometheus::Exposer, misses this family.
class Metrics::HistogramCollector : public prometheus::Collectable {
public:
  // Creates the histogram of one listener and cluster pair. The caller makes sure each pair is
  // added once.
  LatencyHistogram* add(const std::string& listener, const std::string& cluster,
                        std::string_view protocol) {
    auto entry = std::make_unique<Entry>();
    entry->listener = listener;
    entry->cluster = cluster;
    entry->protocol = protocol;
    LatencyHistogram* histogram = &entry->histogram;

    std::lock_guard lock(mutex_);
    entries_.push_back(std::move(entry));
    return histogram;
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily family;
    family.name = kDurationName;
    family.help = kDurationHelp;
    family.type = prometheus::MetricType::Histogram;

    std::lock_guard lock(mutex_);
    family.metric.reserve(entries_.size());
    for (const auto& entry : entries_) {
      family.metric.push_back(collectOne(*entry));
    }
    return {std::move(family)};
  }

private:
  struct Entry {
    std::string listener;
    std::string cluster;
    std::string protocol;
    LatencyHistogram histogram;
  };

  static prometheus::ClientMetric collectOne(const Entry& entry) {
    prometheus::ClientMetric metric;
    metric.label = {
        {"cluster", entry.cluster}, {"listener", entry.listener}, {"protocol", entry.protocol}};

    LatencyHistogram::Snapshot snapshot = entry.histogram.snapshot();
    metric.histogram.sample_count = snapshot.count;
    metric.histogram.sample_sum = snapshot.sum;
    metric.histogram.bucket.reserve(snapshot.cumulative.size());
    for (size_t i = 0; i < snapshot.cumulative.size(); ++i) {
      prometheus::ClientMetric::Bucket bucket;
      bucket.cumulative_count = snapshot.cumulative[i];
      bucket.upper_bound = i < LatencyHistogram::kBuckets.size()
                               ? LatencyHistogram::kBuckets[i]
                               : std::numeric_limits<double>::infinity();
      metric.histogram.bucket.push_back(bucket);
    }
    return metric;
  }

  mutable std::mutex mutex_; // guards entries_; taken by route() and by scrapes
  std::vector<std::unique_ptr<Entry>> entries_;
};

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      histograms_(std::make_shared<HistogramCollector>()) {
  connections_active_ = &prometheus::BuildGauge()
                             .Name("deferd_downstream_connections_active")
                             .Help("Open downstream connections.")
                             .Register(*registry_);
  connections_total_ = &prometheus::BuildCounter()
                            .Name("deferd_downstream_connections_total")
                            .Help("Downstream connections accepted.")
                            .Register(*registry_);
  connections_rejected_ = &prometheus::BuildCounter()
                               .Name("deferd_downstream_connections_rejected_total")
                               .Help("Downstream connections closed at once because the "
                                     "listener was at max_connections.")
                               .Register(*registry_);
  in_flight_ = &prometheus::BuildGauge()
                    .Name("deferd_requests_in_flight")
                    .Help("Requests received and not yet completed.")
                    .Register(*registry_);
  local_replies_ = &prometheus::BuildCounter()
                        .Name("deferd_local_replies_total")
                        .Help("Replies made by deferd itself instead of an upstream, by reason.")
                        .Register(*registry_);
  requests_ = &prometheus::BuildCounter()
                   .Name("deferd_requests_total")
                   .Help("Requests completed, by response status class.")
                   .Register(*registry_);
  upstream_active_ = &prometheus::BuildGauge()
                          .Name("deferd_upstream_connections_active")
                          .Help("Open upstream connections.")
                          .Register(*registry_);
  upstream_created_ = &prometheus::BuildCounter()
                           .Name("deferd_upstream_connections_created_total")
                           .Help("Upstream connections established.")
                           .Register(*registry_);
  upstream_failures_ = &prometheus::BuildCounter()
                            .Name("deferd_upstream_failures_total")
                            .Help("Failed upstream connections and exchanges, by reason.")
                            .Register(*registry_);
  http2_connection_errors_ = &prometheus::BuildCounter()
                                  .Name("deferd_http2_connection_errors_total")
                                  .Help("Downstream HTTP/2 connections ended by a protocol "
                                        "error, a flood or a frame nghttp2 rejected.")
                                  .Register(*registry_);
  http2_flood_goaways_ = &prometheus::BuildCounter()
                              .Name("deferd_http2_flood_goaways_total")
                              .Help("GOAWAY ENHANCE_YOUR_CALM sent to downstream HTTP/2 "
                                    "clients that reset or sent control frames too fast.")
                              .Register(*registry_);
  reloads_ = &prometheus::BuildCounter()
                  .Name("deferd_config_reloads_total")
                  .Help("Config reloads attempted, by result.")
                  .Register(*registry_);
  config_hash_ = &prometheus::BuildGauge()
                      .Name("deferd_config_hash")
                      .Help("Hash of the running config file's bytes: the top 52 bits of their "
                            "64-bit FNV-1a.")
                      .Register(*registry_)
                      .Add({});
  admin_unauthorized_ = &prometheus::BuildCounter()
                             .Name("deferd_admin_unauthorized_total")
                             .Help("Admin POST requests rejected for a missing or wrong token.")
                             .Register(*registry_)
                             .Add({});
  access_log_dropped_ = &prometheus::BuildCounter()
                             .Name("deferd_access_log_dropped_bytes_total")
                             .Help("Access log bytes lost because a write to the file failed.")
                             .Register(*registry_)
                             .Add({});
  ready_ = &prometheus::BuildGauge()
                .Name("deferd_ready")
                .Help("1 while deferd accepts requests, 0 while starting or draining.")
                .Register(*registry_)
                .Add({});

  priority_requests_ = &prometheus::BuildCounter()
                            .Name("deferd_priority_requests_total")
                            .Help("Requests by effective urgency (0 most urgent) and by where "
                                  "it came from: header, inherited, boosted or default.")
                            .Register(*registry_);
  priority_clamped_ = &prometheus::BuildCounter()
                           .Name("deferd_priority_clamped_total")
                           .Help("Priority headers clamped to the floor or stripped at an "
                                 "untrusted listener.")
                           .Register(*registry_);
  priority_malformed_ = &prometheus::BuildCounter()
                             .Name("deferd_priority_malformed_total")
                             .Help("Priority headers that failed to parse; the route default "
                                   "applied.")
                             .Register(*registry_);
  priority_depth_exceeded_ = &prometheus::BuildCounter()
                                  .Name("deferd_priority_depth_exceeded_total")
                                  .Help("Outbound calls that got the route default because "
                                        "inheriting would exceed max_depth.")
                                  .Register(*registry_);
  breaker_state_ = &prometheus::BuildGauge()
                        .Name("deferd_breaker_state")
                        .Help("1 for the current state of a policy's breaker on a cluster "
                              "(closed, open or half_open), 0 for the others.")
                        .Register(*registry_);
  breaker_transitions_ = &prometheus::BuildCounter()
                              .Name("deferd_breaker_transitions_total")
                              .Help("Breaker transitions, by the state entered and the cause.")
                              .Register(*registry_);
  breaker_calls_ = &prometheus::BuildCounter()
                        .Name("deferd_breaker_calls_total")
                        .Help("Calls through a policy's breaker on a cluster by outcome: success, "
                              "failure, slow, or rejected by an open breaker.")
                        .Register(*registry_);
  breaker_shadow_rejections_ = &prometheus::BuildCounter()
                                    .Name("deferd_breaker_shadow_rejections_total")
                                    .Help("Requests let through that an enforcing breaker would "
                                          "have rejected (shadow mode or outside the rollout).")
                                    .Register(*registry_);
  breaker_fallback_requests_ = &prometheus::BuildCounter()
                                    .Name("deferd_breaker_fallback_requests_total")
                                    .Help("Requests redirected from an open breaker's cluster "
                                          "to its fallback cluster.")
                                    .Register(*registry_);
  breaker_fallback_rejections_ = &prometheus::BuildCounter()
                                      .Name("deferd_breaker_fallback_rejections_total")
                                      .Help("Requests that could not go to the fallback, by "
                                            "reason.")
                                      .Register(*registry_);
  outlier_ejected_ = &prometheus::BuildGauge()
                          .Name("deferd_outlier_ejected_endpoints")
                          .Help("Endpoints of the cluster that a policy's outlier ejection keeps "
                                "out.")
                          .Register(*registry_);
  bp_limit_ = &prometheus::BuildGauge()
                   .Name("deferd_backpressure_limit")
                   .Help("Current concurrency limit of a cluster's admission controller.")
                   .Register(*registry_);
  bp_in_flight_ = &prometheus::BuildGauge()
                       .Name("deferd_backpressure_in_flight")
                       .Help("Requests holding a slot of a cluster's limit.")
                       .Register(*registry_);
  bp_queue_depth_ = &prometheus::BuildGauge()
                         .Name("deferd_backpressure_queue_depth")
                         .Help("Requests waiting for a slot, by the urgency they arrived with.")
                         .Register(*registry_);
  bp_queue_wait_ = &prometheus::BuildHistogram()
                        .Name("deferd_backpressure_queue_wait_seconds")
                        .Help("Time queued requests waited before they were let through.")
                        .Register(*registry_);
  bp_decisions_ = &prometheus::BuildCounter()
                       .Name("deferd_backpressure_decisions_total")
                       .Help("Admission decisions by policy, decision, urgency and mode.")
                       .Register(*registry_);
  bp_deferring_ = &prometheus::BuildGauge()
                       .Name("deferd_backpressure_endpoints_deferring")
                       .Help("Endpoints of a cluster whose load signal says they defer.")
                       .Register(*registry_);
  bp_stale_ = &prometheus::BuildCounter()
                   .Name("deferd_backpressure_signals_stale_total")
                   .Help("Endpoint load signals forgotten because they outlived their ttl.")
                   .Register(*registry_);
  priority_boosts_ = &prometheus::BuildCounter()
                          .Name("deferd_priority_boosts_total")
                          .Help("Slot holders raised to the urgency of a request they blocked.")
                          .Register(*registry_);
  fault_decisions_ = &prometheus::BuildCounter()
                          .Name("deferd_fault_decisions_total")
                          .Help("Faults injected, or only counted in shadow mode, by policy.")
                          .Register(*registry_);
  table_entries_ = &prometheus::BuildGauge()
                        .Name("deferd_priority_table_entries")
                        .Help("Entries in the priority inheritance table.")
                        .Register(*registry_)
                        .Add({});
  table_evictions_ = &prometheus::BuildCounter()
                          .Name("deferd_priority_table_evictions_total")
                          .Help("Live inheritance entries evicted to make room for new ones.")
                          .Register(*registry_)
                          .Add({});

  // Both results are exported from the start, so queries see 0 instead of no data before the
  // first reload.
  reloads_->Add({{"result", "success"}});
  reloads_->Add({{"result", "failure"}});
}

ListenerStats* Metrics::listener(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto& slot = listeners_[name];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<ListenerStats>();
  stats->connections_active = &connections_active_->Add({{"listener", name}});
  stats->connections_total = &connections_total_->Add({{"listener", name}});
  stats->connections_rejected = &connections_rejected_->Add({{"listener", name}});
  stats->requests_in_flight = &in_flight_->Add({{"listener", name}});
  stats->http2_connection_errors = &http2_connection_errors_->Add({{"listener", name}});
  stats->http2_flood_goaways = &http2_flood_goaways_->Add({{"listener", name}});
  for (size_t p = 0; p < kProtocolCount; ++p) {
    std::string protocol(protocolName(static_cast<Protocol>(p)));
    for (size_t i = 0; i < stats->local_replies[p].size(); ++i) {
      std::string_view reason = localReplySpec(static_cast<LocalReplyReason>(i)).reason;
      stats->local_replies[p][i] = &local_replies_->Add(
          {{"listener", name}, {"protocol", protocol}, {"reason", std::string(reason)}});
    }
  }

  slot = std::move(stats);
  return slot.get();
}

ClusterStats* Metrics::cluster(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto& slot = clusters_[name];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<ClusterStats>();
  stats->connections_active = &upstream_active_->Add({{"cluster", name}});
  stats->connections_created = &upstream_created_->Add({{"cluster", name}});
  for (size_t i = 0; i < stats->failures.size(); ++i) {
    std::string_view reason = upstreamFailureName(static_cast<UpstreamFailure>(i));
    stats->failures[i] =
        &upstream_failures_->Add({{"cluster", name}, {"reason", std::string(reason)}});
  }

  slot = std::move(stats);
  return slot.get();
}

RouteStats* Metrics::route(const std::string& listener, const std::string& cluster) {
  std::lock_guard lock(mutex_);
  auto& slot = routes_[{listener, cluster}];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<RouteStats>();
  for (size_t p = 0; p < kProtocolCount; ++p) {
    std::string protocol(protocolName(static_cast<Protocol>(p)));
    for (size_t i = 0; i < kStatusClasses.size(); ++i) {
      stats->requests_by_class[p][i] =
          &requests_->Add({{"listener", listener},
                           {"cluster", cluster},
                           {"protocol", protocol},
                           {"status_class", std::string(kStatusClasses[i])}});
    }
    stats->duration[p] = histograms_->add(listener, cluster, protocol);
  }

  slot = std::move(stats);
  return slot.get();
}

filters::fault::FaultStats* Metrics::fault(const std::string& policy) {
  using filters::fault::FaultDecision;
  std::lock_guard lock(mutex_);
  auto& slot = fault_[policy];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<filters::fault::FaultStats>();
  for (size_t decision = 0; decision < stats->decisions.size(); ++decision) {
    std::string_view name = filters::fault::faultDecisionName(static_cast<FaultDecision>(decision));
    stats->decisions[decision] =
        &fault_decisions_->Add({{"policy", policy}, {"decision", std::string(name)}});
  }

  slot = std::move(stats);
  return slot.get();
}

filters::priority::PriorityStats* Metrics::priority(const std::string& listener) {
  using filters::priority::PrioritySource;
  std::lock_guard lock(mutex_);
  auto& slot = priority_[listener];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<filters::priority::PriorityStats>();
  for (size_t urgency = 0; urgency < stats->requests.size(); ++urgency) {
    for (size_t source = 0; source < stats->requests[urgency].size(); ++source) {
      std::string_view name = prioritySourceName(static_cast<PrioritySource>(source));
      stats->requests[urgency][source] =
          &priority_requests_->Add({{"listener", listener},
                                    {"urgency", std::to_string(urgency)},
                                    {"source", std::string(name)}});
    }
  }
  stats->clamped = &priority_clamped_->Add({{"listener", listener}});
  stats->malformed = &priority_malformed_->Add({{"listener", listener}});
  stats->depth_exceeded = &priority_depth_exceeded_->Add({{"listener", listener}});

  slot = std::move(stats);
  return slot.get();
}

BackpressureStats* Metrics::backpressure(const std::string& cluster) {
  std::lock_guard lock(mutex_);
  auto& slot = backpressure_[cluster];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<BackpressureStats>();
  stats->limit = &bp_limit_->Add({{"cluster", cluster}});
  stats->in_flight = &bp_in_flight_->Add({{"cluster", cluster}});
  for (size_t urgency = 0; urgency < stats->queue_depth.size(); ++urgency) {
    stats->queue_depth[urgency] =
        &bp_queue_depth_->Add({{"cluster", cluster}, {"urgency", std::to_string(urgency)}});
  }
  stats->queue_wait = &bp_queue_wait_->Add(
      {{"cluster", cluster}},
      prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                              0.5, 1, 2.5, 5, 10});
  stats->endpoints_deferring = &bp_deferring_->Add({{"cluster", cluster}});
  stats->signals_stale = &bp_stale_->Add({{"cluster", cluster}});
  stats->boosts = &priority_boosts_->Add({{"cluster", cluster}});

  slot = std::move(stats);
  return slot.get();
}

prometheus::Counter* Metrics::backpressureDecision(const std::string& policy,
                                                   std::string_view decision, int urgency,
                                                   bool shadow) {
  std::lock_guard lock(mutex_);
  return &bp_decisions_->Add({{"policy", policy},
                              {"decision", std::string(decision)},
                              {"urgency", std::to_string(urgency)},
                              {"mode", shadow ? "shadow" : "enforce"}});
}

filters::breaker::BreakerStats* Metrics::breaker(const std::string& policy,
                                                 const std::string& cluster) {
  using namespace filters::breaker;
  std::lock_guard lock(mutex_);
  auto& slot = breakers_[{policy, cluster}];
  if (slot != nullptr) {
    return slot.get();
  }

  auto stats = std::make_unique<BreakerStats>();
  for (size_t state = 0; state < kBreakerStates; ++state) {
    std::string state_name(toString(static_cast<BreakerState>(state)));
    stats->state[state] =
        &breaker_state_->Add({{"policy", policy}, {"cluster", cluster}, {"state", state_name}});
    stats->state[state]->Set(state == 0 ? 1 : 0);
    for (size_t cause = 0; cause < kTransitionCauses; ++cause) {
      stats->transitions[state][cause] = &breaker_transitions_->Add(
          {{"policy", policy},
           {"cluster", cluster},
           {"to", state_name},
           {"cause", std::string(toString(static_cast<TransitionCause>(cause)))}});
    }
  }
  for (size_t count = 0; count < stats->calls.size(); ++count) {
    stats->calls[count] = &breaker_calls_->Add(
        {{"policy", policy},
         {"cluster", cluster},
         {"outcome", std::string(callCountName(static_cast<CallCount>(count)))}});
  }
  stats->shadow_rejections =
      &breaker_shadow_rejections_->Add({{"policy", policy}, {"cluster", cluster}});
  for (size_t reason = 0; reason < kFallbackRejections; ++reason) {
    stats->fallback_rejections[reason] = &breaker_fallback_rejections_->Add(
        {{"policy", policy},
         {"cluster", cluster},
         {"reason", std::string(toString(static_cast<FallbackRejection>(reason)))}});
  }
  stats->fallback_loop = &breaker_fallback_rejections_->Add(
      {{"policy", policy}, {"cluster", cluster}, {"reason", "fallback_loop"}});
  stats->ejected_endpoints = &outlier_ejected_->Add({{"policy", policy}, {"cluster", cluster}});

  slot = std::move(stats);
  return slot.get();
}

prometheus::Counter* Metrics::breakerFallback(const std::string& policy, const std::string& cluster,
                                              const std::string& fallback) {
  std::lock_guard lock(mutex_);
  return &breaker_fallback_requests_->Add(
      {{"policy", policy}, {"cluster", cluster}, {"fallback", fallback}});
}

void Metrics::recordInheritanceTable(size_t entries, uint64_t evictions) {
  std::lock_guard lock(mutex_);
  table_entries_->Set(static_cast<double>(entries));
  if (evictions < table_evictions_seen_) {
    table_evictions_seen_ = 0; // a new table, after a reload changed its bounds
  }
  if (evictions > table_evictions_seen_) {
    table_evictions_->Increment(static_cast<double>(evictions - table_evictions_seen_));
    table_evictions_seen_ = evictions;
  }
}

void Metrics::recordReload(bool success) {
  reloads_->Add({{"result", success ? "success" : "failure"}}).Increment();
}

void Metrics::recordAdminUnauthorized() { admin_unauthorized_->Increment(); }

void Metrics::setConfigHash(double hash) { config_hash_->Set(hash); }

void Metrics::setReady(bool ready) { ready_->Set(ready ? 1 : 0); }

std::string Metrics::serialize() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<prometheus::MetricFamily> histograms = histograms_->Collect();
  families.insert(families.end(), std::make_move_iterator(histograms.begin()),
                  std::make_move_iterator(histograms.end()));

  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

} // namespace deferd
