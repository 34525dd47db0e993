#pragma once

// Facts about one upstream endpoint that every worker shares: whether its load signal reports it
// is deferring, and until when outlier ejection keeps it out. Filters write them from any
// worker; each worker's balancer reads them when it picks an endpoint, and skips an endpoint
// to avoid unless every endpoint of the cluster is avoided.
//
// An endpoint here is one resolved address of a cluster. Each worker has its own connection
// pool per endpoint, but they all point at the same SharedEndpoint, which the registry hands
// out by cluster and address. Ids are dense within a cluster (0, 1, 2, ...) and never reused,
// so per-endpoint tables can be plain vectors.
//
// Threading: the flags are relaxed atomics: a balancer that reads a stale value for a moment
// sends one more request to an endpoint, which is harmless. The registry takes a mutex, only
// when endpoints are created.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "filters/filter.h"

namespace deferd::filters {

struct SharedEndpoint {
  SharedEndpoint(std::string cluster_name, std::string address_text, uint32_t endpoint_id)
      : cluster(std::move(cluster_name)), address(std::move(address_text)), id(endpoint_id) {}

  const std::string cluster;
  const std::string address; // "ip:port"
  const uint32_t id;         // dense within the cluster

  // Set while the endpoint's load signal reports it as deferring.
  std::atomic<bool> deferring{false};
  // Outlier ejection keeps the endpoint out until this steady_clock time, in nanoseconds
  // since the clock's epoch; 0 when it is not ejected.
  std::atomic<int64_t> ejected_until_ns{0};

  // Keeps the endpoint out until `until`, unless another detector ejected it for longer. Two
  // breaker policies on one cluster each run a detector, and neither may cut the other's
  // ejection short.
  void ejectUntil(MonotonicTime until) {
    int64_t until_ns = toNanoseconds(until);
    int64_t current = ejected_until_ns.load(std::memory_order_relaxed);
    while (current < until_ns &&
           !ejected_until_ns.compare_exchange_weak(current, until_ns, std::memory_order_relaxed)) {
    }
  }

  bool ejected(MonotonicTime now) const {
    int64_t until = ejected_until_ns.load(std::memory_order_relaxed);
    return until != 0 && toNanoseconds(now) < until;
  }

  static int64_t toNanoseconds(MonotonicTime time) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count();
  }

  bool avoid(MonotonicTime now) const {
    return deferring.load(std::memory_order_relaxed) || ejected(now);
  }
};

class EndpointRegistry {
public:
  // Returns the endpoint of that cluster and address, created on first use.
  std::shared_ptr<SharedEndpoint> get(const std::string& cluster, const std::string& address) {
    std::lock_guard lock(mutex_);
    auto& slot = endpoints_[{cluster, address}];
    if (!slot) {
      slot = std::make_shared<SharedEndpoint>(cluster, address, next_id_[cluster]++);
    }
    return slot;
  }

  // Whether every endpoint the cluster has had is deferring; false for an unknown cluster.
  bool allDeferring(const std::string& cluster) {
    std::lock_guard lock(mutex_);
    bool any = false;
    for (auto it = endpoints_.lower_bound({cluster, std::string()});
         it != endpoints_.end() && it->first.first == cluster; ++it) {
      if (!it->second->deferring.load(std::memory_order_relaxed)) {
        return false;
      }
      any = true;
    }
    return any;
  }

  // Calls `visit` with each endpoint the cluster has had, under the registry's lock.
  template <typename Visit> void forEach(const std::string& cluster, Visit visit) {
    std::lock_guard lock(mutex_);
    for (auto it = endpoints_.lower_bound({cluster, std::string()});
         it != endpoints_.end() && it->first.first == cluster; ++it) {
      visit(*it->second);
    }
  }

  // The number of endpoints the cluster has had, which is one past its highest id.
  size_t count(const std::string& cluster) {
    std::lock_guard lock(mutex_);
    auto found = next_id_.find(cluster);
    return found == next_id_.end() ? 0 : found->second;
  }

private:
  std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<SharedEndpoint>> endpoints_;
  std::map<std::string, uint32_t> next_id_;
};

} // namespace deferd::filters
