#pragma once

// Filter state that outlives config snapshots.
//
// A reload builds a new Snapshot with new filter factories, but some filter state must carry
// over: the priority inheritance table holds the priorities of requests in flight, which the
// app's sub-calls still need after the reload, and an admission controller holds a learned
// limit and waiting requests. FilterState owns such state for the life of the process.
// Snapshot::build asks it for each shared object between beginBuild() and endBuild(); it
// returns the object it already has when the options that shape it are unchanged, and a new
// one otherwise. endBuild() forgets the objects the new snapshot did not ask for; streams of
// the old snapshot keep theirs alive until they end.
//
// Threading: building and tick() run on the main thread only; the objects handed out are safe
// to use from every worker. tick() runs once a second and exports what filters keep in
// atomics as metrics.

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "config/config.h"
#include "filters/backpressure/backpressure_filter.h"
#include "filters/breaker/breaker_filter.h"
#include "filters/common/endpoint.h"
#include "filters/priority/inheritance_table.h"
#include "proxy/metrics.h"

namespace deferd {

class FilterState {
public:
  void beginBuild() { ++generation_; }

  // Forgets the state the new snapshot did not ask for. The gauges of a (policy, cluster)
  // breaker that the new snapshot dropped are set to 0, so an alert on that breaker ends.
  void endBuild();

  // Returns the process-wide inheritance table, created for these options.
  std::shared_ptr<filters::priority::InheritanceTable>
  inheritanceTable(const config::InheritanceConfig& options);

  // Returns the admission state of one policy and cluster pair.
  std::shared_ptr<filters::backpressure::BackpressureShared>
  backpressure(const std::string& policy, const std::string& cluster,
               const config::BackpressurePolicy& options, Metrics& metrics);

  // The breaker of one (policy, cluster) pair and the cluster's outlier detector (null without
  // an outlier section). Both are kept while the policy's breaker section, its mode and the
  // cluster's endpoints are unchanged, so a reload keeps an open breaker open.
  struct ClusterBreaker {
    std::shared_ptr<filters::breaker::CircuitBreaker> breaker;
    std::shared_ptr<filters::breaker::OutlierDetector> outlier;
  };
  ClusterBreaker clusterBreaker(const std::string& policy, const config::Cluster& cluster,
                                const config::BreakerPolicy& options, bool shadow,
                                filters::breaker::BreakerStats* stats);

  // The capacity of a fallback cluster, shared by every route that falls back to it and kept
  // while the cluster's capacity section is unchanged.
  std::shared_ptr<filters::breaker::FallbackCapacity>
  fallbackCapacity(const config::Cluster& cluster);

  // Removes expired state and exports gauges and counters kept in atomics.
  void tick(Metrics& metrics);

  // Shared endpoint state; the registry locks itself, so workers call it directly.
  filters::EndpointRegistry& endpoints() { return endpoints_; }

private:
  using Decision = filters::backpressure::Decision;
  using ShadowDecision = filters::backpressure::ShadowDecision;
  static constexpr size_t kUrgencies = 8;
  template <size_t Kinds>
  using CounterTable = std::array<std::array<prometheus::Counter*, kUrgencies>, Kinds>;
  template <size_t Kinds> using SeenTable = std::array<std::array<uint64_t, kUrgencies>, Kinds>;

  struct BackpressureEntry {
    std::shared_ptr<filters::backpressure::BackpressureShared> shared;
    BackpressureStats* stats = nullptr;
    CounterTable<filters::backpressure::kDecisionKinds> decisions{};
    CounterTable<filters::backpressure::kShadowDecisionKinds> shadow_decisions{};
    // What the counters above already include.
    SeenTable<filters::backpressure::kDecisionKinds> decisions_seen{};
    SeenTable<filters::backpressure::kShadowDecisionKinds> shadow_seen{};
    uint64_t stale_seen = 0;
    uint64_t generation = 0;
  };

  void exportDecisions(BackpressureEntry& entry);

  // Sets each endpoint's deferring flag from the signal tables, so an endpoint that the
  // balancers avoid, and that therefore sends no reports, stops deferring when its signal
  // goes stale.
  void mirrorSignals(MonotonicTime now);

  filters::EndpointRegistry endpoints_;
  std::shared_ptr<filters::priority::InheritanceTable> table_;
  std::optional<config::InheritanceConfig> table_options_;

  struct BreakerEntry {
    config::BreakerPolicy options;
    bool shadow = false;
    size_t endpoints = 0;
    filters::breaker::BreakerStats* stats = nullptr;
    ClusterBreaker shared;
    uint64_t generation = 0;
  };
  std::map<std::pair<std::string, std::string>, BreakerEntry> breakers_; // (policy, cluster)

  struct CapacityEntry {
    config::Capacity capacity;
    std::shared_ptr<filters::breaker::FallbackCapacity> shared;
    uint64_t generation = 0;
  };
  std::map<std::string, CapacityEntry> capacities_; // by cluster
  std::map<std::pair<std::string, std::string>, BackpressureEntry> backpressure_;
  uint64_t generation_ = 0;
};

} // namespace deferd
