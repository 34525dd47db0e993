#pragma once

// Outlier ejection for the endpoints of one cluster.
//
// Two detectors decide that an endpoint is an outlier:
//
//   consecutive failures  an endpoint whose last consecutive_failures calls all failed is
//                         ejected at once, on the call that completes the run.
//   success rate          every `interval`, the endpoints with at least request_volume calls in
//                         that interval are compared. When there are at least min_hosts of
//                         them, each one whose success rate is below
//                         mean - stdev_factor * stddev is ejected. Off unless enabled.
//
// An ejected endpoint gets no traffic for base_ejection_time * (times it has been ejected),
// capped at max_ejection_time. It returns by itself when that time has passed, with its failure
// run cleared. Each evaluation lowers the ejection count by one for an endpoint that has been
// back in service for at least one interval, so an endpoint that was ejected long ago starts
// again from base_ejection_time.
//
// Cap: at most floor(endpoints * max_ejection_percent / 100) endpoints are ejected at once,
// and never all of them, so at least one endpoint always remains. An ejection that would pass
// the cap does not happen (the endpoint stays in service and is counted in
// ejectionsOverflowed()). With few endpoints and a low percentage the cap may be zero: 10 % of
// 5 endpoints allows no ejection at all.
//
// Time: there is no timer. The interval's evaluation and the return of ejected endpoints happen
// lazily, in whichever call first comes after they are due. A call with a time earlier than the
// last one is treated as happening at the last one.
//
// Locking: one mutex per cluster, held for O(1) work by record() and isEjected(), and O(number
// of endpoints) by the interval's evaluation and by ejectedCount().

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "filters/breaker/outcome.h"
#include "filters/filter.h"

namespace deferd::filters::breaker {

struct OutlierOptions {
  // Failures in a row that eject an endpoint. Zero turns the check off.
  uint32_t consecutive_failures = 5;

  // Success-rate ejection, off by default.
  bool success_rate = false;
  // Endpoints with enough calls that must exist for the success-rate check to run.
  uint32_t success_rate_min_hosts = 5;
  // Calls in the interval an endpoint needs to be compared with its peers.
  uint32_t success_rate_request_volume = 100;
  // How many standard deviations below the mean counts as an outlier.
  double success_rate_stdev_factor = 1.9;

  std::chrono::milliseconds interval = std::chrono::seconds(10);
  std::chrono::milliseconds base_ejection_time = std::chrono::seconds(30);
  std::chrono::milliseconds max_ejection_time = std::chrono::minutes(5);
  // Share of the cluster's endpoints that may be ejected at once, 0..100.
  uint32_t max_ejection_percent = 10;
};

class OutlierDetector {
public:
  OutlierDetector(const OutlierOptions& options, size_t endpoints, MonotonicTime now);

  OutlierDetector(const OutlierDetector&) = delete;
  OutlierDetector& operator=(const OutlierDetector&) = delete;

  // Records a call to endpoint `endpoint`; a slow call is not a failure here. An index out of
  // range is ignored.
  void record(size_t endpoint, Outcome outcome, MonotonicTime now);

  // Whether the endpoint is ejected now. An index out of range is not ejected.
  bool isEjected(size_t endpoint, MonotonicTime now);
  size_t ejectedCount(MonotonicTime now);
  // When the endpoint's ejection ends, or nothing when it is not ejected now. The proxy copies
  // it to the endpoint that every worker's balancer reads.
  std::optional<MonotonicTime> ejectedUntil(size_t endpoint, MonotonicTime now);

  // TODO: endpoints are matched by index, so a re-resolution that reorders the endpoint list
  // moves their state and ejections to other endpoints. Key them by address instead.
  // Changes the number of endpoints, keeping the state of the first ones. Endpoints past the
  // new size are dropped, with their ejections. Ejections above the new size's cap stay until
  // they end.
  void resize(size_t endpoints, MonotonicTime now);

  size_t endpointCount();
  // The maximum number of endpoints ejected at once, for the current size.
  size_t maxEjected();

  uint64_t ejectionsTotal();
  // Ejections that the cap prevented.
  uint64_t ejectionsOverflowed();

private:
  struct Endpoint {
    uint32_t consecutive_failures = 0;
    bool ejected = false;
    MonotonicTime ejected_until;
    // Ejections so far, lowered by one per evaluation after an interval back in service.
    uint32_t times_ejected = 0;
    // Calls and successes in the current interval.
    uint64_t calls = 0;
    uint64_t successes = 0;
  };

  // Each function below expects mutex_ to be held.
  MonotonicTime advanceLocked(MonotonicTime now);
  void returnDueLocked(MonotonicTime now);
  void evaluateIntervalLocked(MonotonicTime now);
  size_t maxEjectedLocked() const;
  bool ejectLocked(Endpoint& endpoint, MonotonicTime now);

  const OutlierOptions options_;

  std::mutex mutex_;
  std::vector<Endpoint> endpoints_;
  size_t ejected_count_ = 0;
  MonotonicTime last_now_;
  MonotonicTime next_evaluation_;
  // The earliest ejected_until of the ejected endpoints, so record() sweeps only when one is due.
  MonotonicTime next_return_ = MonotonicTime::max();
  uint64_t ejections_total_ = 0;
  uint64_t ejections_overflowed_ = 0;
};

} // namespace deferd::filters::breaker
