#pragma once

// Filter state that outlives config snapshots.
//
// A reload builds a new Snapshot with new filter factories, but some filter state must carry
// over: the priority inheritance table holds the priorities of requests in flight, which the
// app's sub-calls still need after the reload. FilterState owns such state for the life of the
// process. Snapshot::build asks it for each shared object; it returns the object it already
// has when the options that shape it are unchanged, and a new one otherwise.
//
// Threading: build() runs on the main thread only; the objects it hands out are safe to use
// from every worker. tick() also runs on the main thread, once a second.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "config/config.h"
#include "filters/breaker/breaker_filter.h"
#include "filters/common/endpoint.h"
#include "filters/priority/inheritance_table.h"
#include "proxy/metrics.h"

namespace deferd {

class FilterState {
public:
  // Returns the process-wide inheritance table, created for these options.
  std::shared_ptr<filters::priority::InheritanceTable>
  inheritanceTable(const config::InheritanceConfig& options);

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

  // Removes expired state and exports gauges that are read rather than counted.
  void tick(Metrics& metrics);

  // Shared endpoint state; the registry locks itself, so workers call it directly.
  filters::EndpointRegistry& endpoints() { return endpoints_; }

private:
  filters::EndpointRegistry endpoints_;
  std::shared_ptr<filters::priority::InheritanceTable> table_;
  std::optional<config::InheritanceConfig> table_options_;

  struct BreakerEntry {
    config::BreakerPolicy options;
    bool shadow = false;
    size_t endpoints = 0;
    filters::breaker::BreakerStats* stats = nullptr;
    ClusterBreaker shared;
  };
  // TODO: entries of policies or clusters removed by a reload stay, and so do their gauges.
  std::map<std::pair<std::string, std::string>, BreakerEntry> breakers_; // (policy, cluster)

  struct CapacityEntry {
    config::Capacity capacity;
    std::shared_ptr<filters::breaker::FallbackCapacity> shared;
  };
  std::map<std::string, CapacityEntry> capacities_; // by cluster
};

} // namespace deferd
