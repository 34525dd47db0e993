#include "proxy/filter_state.h"

#include <algorithm>
#include <chrono>
#include <vector>

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

namespace {

std::string_view decisionName(filters::backpressure::Decision decision) {
  using filters::backpressure::Decision;
  switch (decision) {
  case Decision::kAdmitted:
    return "admitted";
  case Decision::kQueued:
    return "queued";
  case Decision::kAdmittedFromQueue:
    return "dequeued";
  case Decision::kShed:
    return "shed";
  case Decision::kTimedOut:
    return "timed_out";
  case Decision::kExpired:
    return "expired";
  case Decision::kForced:
    return "forced";
  case Decision::kWaitTooLong:
    return "wait_too_long";
  case Decision::kDisplaced:
    return "displaced";
  case Decision::kCancelled:
    break;
  }
  return "cancelled";
}

std::string_view shadowDecisionName(filters::backpressure::ShadowDecision decision) {
  using filters::backpressure::ShadowDecision;
  switch (decision) {
  case ShadowDecision::kAdmitted:
    return "admitted";
  case ShadowDecision::kQueued:
    return "queued";
  case ShadowDecision::kShed:
    return "shed";
  case ShadowDecision::kWaitTooLong:
    return "wait_too_long";
  case ShadowDecision::kExpired:
    break;
  }
  return "expired";
}

} // namespace

void FilterState::endBuild() {
  auto stale = [this](const auto& item) { return item.second.generation != generation_; };
  std::erase_if(backpressure_, stale);
  std::erase_if(capacities_, stale);

  // Each (policy, cluster) pair has series of its own, so the gauges of a dropped breaker
  // belong to no other breaker and go to 0.
  for (const auto& [key, entry] : breakers_) {
    if (entry.generation == generation_ || entry.stats == nullptr) {
      continue;
    }
    for (prometheus::Gauge* gauge : entry.stats->state) {
      if (gauge != nullptr) {
        gauge->Set(0);
      }
    }
    if (entry.stats->ejected_endpoints != nullptr) {
      entry.stats->ejected_endpoints->Set(0);
    }
  }
  std::erase_if(breakers_, stale);
}

std::shared_ptr<filters::backpressure::BackpressureShared>
FilterState::backpressure(const std::string& policy, const std::string& cluster,
                          const config::BackpressurePolicy& options, Metrics& metrics) {
  BackpressureEntry& entry = backpressure_[{policy, cluster}];
  entry.generation = generation_;
  if (entry.shared && entry.shared->options == options) {
    return entry.shared;
  }

  // TODO: a changed policy starts a new controller: its learned limit and its waiting
  // requests stay with the old one until they end.
  entry.shared = filters::backpressure::makeBackpressureShared(policy, cluster, options);
  entry.stats = metrics.backpressure(cluster);
  entry.shared->queue_wait = entry.stats->queue_wait;
  entry.shared->boosts = entry.stats->boosts;
  for (size_t kind = 0; kind < entry.decisions.size(); ++kind) {
    for (size_t urgency = 0; urgency < kUrgencies; ++urgency) {
      entry.decisions[kind][urgency] = metrics.backpressureDecision(
          policy, decisionName(static_cast<Decision>(kind)), static_cast<int>(urgency), false);
    }
  }
  for (size_t kind = 0; kind < entry.shadow_decisions.size(); ++kind) {
    for (size_t urgency = 0; urgency < kUrgencies; ++urgency) {
      entry.shadow_decisions[kind][urgency] = metrics.backpressureDecision(
          policy, shadowDecisionName(static_cast<ShadowDecision>(kind)), static_cast<int>(urgency),
          true);
    }
  }
  entry.decisions_seen = {};
  entry.shadow_seen = {};
  entry.stale_seen = 0;
  return entry.shared;
}

void FilterState::exportDecisions(BackpressureEntry& entry) {
  const auto& controller = *entry.shared->controller;
  for (size_t kind = 0; kind < entry.decisions.size(); ++kind) {
    for (size_t urgency = 0; urgency < kUrgencies; ++urgency) {
      uint64_t total = controller.decisions(static_cast<Decision>(kind), static_cast<int>(urgency));
      uint64_t& seen = entry.decisions_seen[kind][urgency];
      if (total > seen) {
        entry.decisions[kind][urgency]->Increment(static_cast<double>(total - seen));
        seen = total;
      }
    }
  }
  for (size_t kind = 0; kind < entry.shadow_decisions.size(); ++kind) {
    for (size_t urgency = 0; urgency < kUrgencies; ++urgency) {
      uint64_t total =
          controller.shadowDecisions(static_cast<ShadowDecision>(kind), static_cast<int>(urgency));
      uint64_t& seen = entry.shadow_seen[kind][urgency];
      if (total > seen) {
        entry.shadow_decisions[kind][urgency]->Increment(static_cast<double>(total - seen));
        seen = total;
      }
    }
  }
}

FilterState::ClusterBreaker FilterState::clusterBreaker(const std::string& policy,
                                                        const config::Cluster& cluster,
                                                        const config::BreakerPolicy& options,
                                                        bool shadow,
                                                        filters::breaker::BreakerStats* stats) {
  using namespace filters::breaker;
  auto now = std::chrono::steady_clock::now();
  BreakerEntry& entry = breakers_[{policy, cluster.name}];
  entry.generation = generation_;
  if (!entry.shared.breaker || !(entry.options == options) || entry.shadow != shadow) {
    entry.shared.breaker = CircuitBreaker::create(breakerOptions(options, shadow), now, {},
                                                  transitionListener(policy, cluster.name, stats));
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
  entry.generation = generation_;
  bool same = entry.capacity.max_concurrent == cluster.capacity.max_concurrent &&
              entry.capacity.max_rps == cluster.capacity.max_rps;
  if (!entry.shared || !same) {
    // The breaker filter sets its all-deferring state before each fallback admission, from
    // the endpoint flags that the backpressure filter's signals maintain.
    entry.shared = std::make_shared<filters::breaker::FallbackCapacity>(
        filters::breaker::capacityOptions(cluster.capacity));
    entry.capacity = cluster.capacity;
  }
  return entry.shared;
}

void FilterState::mirrorSignals(MonotonicTime now) {
  // Every policy that calls a cluster has a table of its signals, and an endpoint defers
  // while any of those tables marks it deferring.
  std::map<std::string, std::vector<const filters::backpressure::SignalTable*>> tables;
  for (const auto& [key, entry] : backpressure_) {
    if (entry.shared->signals) {
      tables[entry.shared->cluster].push_back(entry.shared->signals.get());
    }
  }
  for (const auto& [cluster, cluster_tables] : tables) {
    endpoints_.forEach(cluster, [&](filters::SharedEndpoint& endpoint) {
      bool deferring =
          std::any_of(cluster_tables.begin(), cluster_tables.end(),
                      [&](const auto* table) { return table->isDeferring(endpoint.id, now); });
      endpoint.deferring.store(deferring, std::memory_order_relaxed);
    });
  }
  for (auto& [key, entry] : backpressure_) {
    filters::backpressure::recheckAllDeferring(*entry.shared,
                                               endpoints_.count(entry.shared->cluster), now);
  }
}

void FilterState::tick(Metrics& metrics) {
  if (table_) {
    table_->removeExpired();
    metrics.recordInheritanceTable(table_->size(), table_->evictions());
  }

  // Gauges are per cluster, so pairs of one cluster add up.
  struct ClusterTotals {
    double limit = 0;
    double in_flight = 0;
    std::array<double, kUrgencies> queued{};
    double deferring = 0;
  };
  std::map<BackpressureStats*, ClusterTotals> totals;
  MonotonicTime now = std::chrono::steady_clock::now();
  for (auto& [key, entry] : backpressure_) {
    auto& controller = *entry.shared->controller;
    controller.poll();
    ClusterTotals& cluster = totals[entry.stats];
    cluster.limit += controller.limiter().limit();
    cluster.in_flight += controller.limiter().inFlight();
    auto depth = controller.queueDepthByUrgency();
    for (size_t urgency = 0; urgency < kUrgencies && urgency < depth.size(); ++urgency) {
      cluster.queued[urgency] += static_cast<double>(depth[urgency]);
    }
    if (auto& signals = entry.shared->signals) {
      signals->poll(now);
      cluster.deferring += static_cast<double>(signals->deferringCount(now));
      uint64_t stale = signals->staleSignals();
      if (stale > entry.stale_seen) {
        entry.stats->signals_stale->Increment(static_cast<double>(stale - entry.stale_seen));
        entry.stale_seen = stale;
      }
    }
    exportDecisions(entry);
  }
  mirrorSignals(now);
  for (const auto& [stats, cluster] : totals) {
    stats->limit->Set(cluster.limit);
    stats->in_flight->Set(cluster.in_flight);
    for (size_t urgency = 0; urgency < kUrgencies; ++urgency) {
      stats->queue_depth[urgency]->Set(cluster.queued[urgency]);
    }
    stats->endpoints_deferring->Set(cluster.deferring);
  }

  // Reading the state applies the time-driven transitions (cooldown over, probe timed out),
  // so an idle breaker's gauge moves on too.
  for (auto& [key, entry] : breakers_) {
    if (entry.stats == nullptr) {
      continue;
    }
    auto state = static_cast<size_t>(entry.shared.breaker->state(now));
    for (size_t i = 0; i < entry.stats->state.size(); ++i) {
      entry.stats->state[i]->Set(i == state ? 1 : 0);
    }
    // The gauge belongs to this pair alone, so a policy without an outlier section reports 0.
    double ejected =
        entry.shared.outlier ? static_cast<double>(entry.shared.outlier->ejectedCount(now)) : 0.0;
    entry.stats->ejected_endpoints->Set(ejected);
  }
}

} // namespace deferd
