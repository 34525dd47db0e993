#include "proxy/filter_state.h"

#include <chrono>

namespace deferd {

std::shared_ptr<filters::priority::InheritanceTable>
FilterState::inheritanceTable(const config::InheritanceConfig& options) {
  bool same = table_options_ && table_options_->max_entries == options.max_entries &&
              table_options_->ttl == options.ttl &&
              table_options_->release_grace == options.release_grace;
  if (table_ && same) {
    return table_;
  }

  filters::priority::InheritanceTableOptions table_options;
  table_options.max_entries = options.max_entries;
  table_options.ttl = options.ttl;
  table_options.release_grace = options.release_grace;
  // Each lookup passes its policy's depth limit, so the table's own is never used.
  table_options.max_depth = filters::priority::kMaxHop;
  // TODO: entries of requests in flight are lost when a reload changes the table's bounds.
  table_ = std::make_shared<filters::priority::InheritanceTable>(
      table_options, [] { return std::chrono::steady_clock::now(); });
  table_options_ = options;
  return table_;
}

FilterState::ClusterBreaker FilterState::clusterBreaker(const std::string& policy,
                                                        const config::Cluster& cluster,
                                                        const config::BreakerPolicy& options,
                                                        bool shadow,
                                                        filters::breaker::BreakerStats* stats) {
  using namespace filters::breaker;
  auto now = std::chrono::steady_clock::now();
  BreakerEntry& entry = breakers_[{policy, cluster.name}];
  if (!entry.shared.breaker || !(entry.options == options) || entry.shadow != shadow) {
    entry.shared.breaker = CircuitBreaker::create(breakerOptions(options, shadow), now, {},
                                                  transitionListener(cluster.name, stats));
    entry.shared.outlier.reset();
  }
  if (!options.outlier) {
    entry.shared.outlier.reset();
  } else if (!entry.shared.outlier || entry.endpoints != cluster.endpoints.size()) {
    // TODO: a changed endpoint list starts the detector over; ejections already copied to
    // the endpoints run out by themselves.
    entry.shared.outlier = std::make_shared<OutlierDetector>(outlierOptions(*options.outlier),
                                                             cluster.endpoints.size(), now);
  }
  entry.options = options;
  entry.shadow = shadow;
  entry.endpoints = cluster.endpoints.size();
  entry.stats = stats;
  return entry.shared;
}

std::shared_ptr<filters::breaker::FallbackCapacity>
FilterState::fallbackCapacity(const config::Cluster& cluster) {
  CapacityEntry& entry = capacities_[cluster.name];
  bool same = entry.capacity.max_concurrent == cluster.capacity.max_concurrent &&
              entry.capacity.max_rps == cluster.capacity.max_rps;
  if (!entry.shared || !same) {
    // TODO: nothing calls setAllEndpointsDeferring yet; the backpressure filter's endpoint
    // signals should, so fallback_deferring never rejects for now.
    entry.shared = std::make_shared<filters::breaker::FallbackCapacity>(
        filters::breaker::capacityOptions(cluster.capacity));
    entry.capacity = cluster.capacity;
  }
  return entry.shared;
}

void FilterState::tick(Metrics& metrics) {
  if (table_) {
    table_->removeExpired();
    metrics.recordInheritanceTable(table_->size(), table_->evictions());
  }

  // Reading the state applies the time-driven transitions (cooldown over, probe timed out),
  // so an idle breaker's gauge moves on too.
  // TODO: two policies that route to one cluster share its gauges, so the last entry wins.
  auto now = std::chrono::steady_clock::now();
  for (auto& [key, entry] : breakers_) {
    if (entry.stats == nullptr) {
      continue;
    }
    auto state = static_cast<size_t>(entry.shared.breaker->state(now));
    for (size_t i = 0; i < entry.stats->state.size(); ++i) {
      entry.stats->state[i]->Set(i == state ? 1 : 0);
    }
    if (entry.shared.outlier) {
      entry.stats->ejected_endpoints->Set(
          static_cast<double>(entry.shared.outlier->ejectedCount(now)));
    }
  }
}

} // namespace deferd
