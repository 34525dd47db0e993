#pragma once

// A config snapshot: the loaded Config plus everything derived from it once (filter factories,
// metric handles, cluster indexes), shared read-only by every worker.
//
// Workers hold a std::shared_ptr<const Snapshot>; each stream keeps the snapshot it started
// with until it ends, so a reload never changes a request midway. Mutable per-worker state
// (connection pools, balancer cursors) lives in the Worker, keyed by cluster name, and carries
// over a reload when the cluster's endpoints are unchanged.

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "filters/filter.h"
#include "proxy/filter_state.h"
#include "proxy/metrics.h"

namespace deferd {

struct RouteRuntime {
  const config::Route* config = nullptr;
  size_t cluster_index = 0;
  RouteStats* stats = nullptr;
  std::vector<std::shared_ptr<const FilterFactory>> filters; // in chain order
};

struct ListenerRuntime {
  const config::Listener* config = nullptr;
  ListenerStats* stats = nullptr;
  std::vector<RouteRuntime> routes;
};

struct ClusterRuntime {
  const config::Cluster* config = nullptr;
  ClusterStats* stats = nullptr;
};

struct Snapshot {
  std::shared_ptr<const config::Config> config;
  std::vector<ListenerRuntime> listeners; // same order as config->listeners
  std::vector<ClusterRuntime> clusters;   // same order as config->clusters
  FilterState* state = nullptr;           // outlives every snapshot

  // Builds the runtime view; metric handles are looked up here, once, and state that outlives
  // the snapshot comes from `state`.
  static std::shared_ptr<const Snapshot> build(std::shared_ptr<const config::Config> config,
                                               Metrics& metrics, FilterState& state);
};

} // namespace deferd
