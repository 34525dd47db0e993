#pragma once

// The load signals of one cluster's endpoints, as their sidecars reported them in the
// `endpoint-load-metrics` response header (load_report.h), shared by every worker.
//
// Per endpoint (by its index in the cluster):
//
//   load       max(utilization, defer_flag_load if the report's defer flag is set)
//   smoothing  an exponentially weighted moving average with a time-based decay: a report
//              that arrives dt after the previous one moves the average by
//              alpha = 1 - 2^(-dt / half_life) of the difference. So the weight of a report
//              depends on elapsed time, not on how many responses carried one, and a burst of
//              reports at one instant moves nothing after the first. The first report (and the
//              first after a stale one) sets the average.
//   hysteresis an endpoint enters "deferring" once the average has stayed above defer_above
//              for hold_above, and leaves once it has stayed below resume_below for
//              hold_below. The hold times are checked on each report and on poll(), so a hold
//              ends at the first of those after it elapsed.
//   ttl        an endpoint with no report for ttl is neutral: not deferring, no average.
//              Queries see that at once. poll() or the next report also clears its state and
//              counts it in staleSignals().
//
// When every endpoint of the cluster is deferring, the cluster should send less. The table
// calls the all-deferring callback on each change of allDeferring(), so the owner can lower
// the cluster's limit (AdmissionController::setAllEndpointsDeferring).
//
// Locking: a mutex per endpoint guards its average and hold state for the few arithmetic steps
// of one report. The deferring flag and the last report time are atomics, so the queries on
// the request path take no lock. The callback runs under a table-wide notification mutex, so
// its calls arrive in order; it must be short and must not call update() or poll().

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "filters/backpressure/load_report.h"
#include "filters/filter.h"

namespace deferd::filters::backpressure {

struct SignalTableOptions {
  std::chrono::milliseconds half_life{1000};
  double defer_above = 0.9;
  double resume_below = 0.7;
  std::chrono::milliseconds hold_above{500};
  std::chrono::milliseconds hold_below{2000};
  std::chrono::milliseconds ttl{10000};
  // The load a report with the defer flag counts as, at least.
  double defer_flag_load = 1.0;
};

class SignalTable {
public:
  using AllDeferringCallback = std::function<void(bool all_deferring)>;

  // TODO: the endpoint count is fixed, so a cluster whose DNS answer changes needs a new
  // table and loses its signals.
  SignalTable(size_t endpoints, const SignalTableOptions& options,
              AllDeferringCallback on_all_deferring = {});
  ~SignalTable();

  SignalTable(const SignalTable&) = delete;
  SignalTable& operator=(const SignalTable&) = delete;

  // Adds one report of an endpoint. An index out of range is ignored.
  void update(size_t endpoint, const LoadReport& report, MonotonicTime now);

  // Advances hold times and clears stale signals. Call it on the worker tick.
  void poll(MonotonicTime now);

  bool isDeferring(size_t endpoint, MonotonicTime now) const;
  // False for a table without endpoints.
  bool allDeferring(MonotonicTime now) const;
  size_t deferringCount(MonotonicTime now) const;
  // The smoothed load, or nothing when the endpoint has no live signal.
  std::optional<double> smoothedLoad(size_t endpoint, MonotonicTime now) const;

  size_t size() const { return endpoints_.size(); }
  uint64_t staleSignals() const { return stale_signals_.load(std::memory_order_relaxed); }
  // Transitions into and out of deferring, over all endpoints.
  uint64_t transitions() const { return transitions_.load(std::memory_order_relaxed); }

private:
  struct Endpoint {
    std::mutex mutex;
    bool has_signal = false;
    double smoothed = 0.0;
    MonotonicTime last_report;
    std::optional<MonotonicTime> above_since;
    std::optional<MonotonicTime> below_since;

    std::atomic<bool> deferring{false};
    std::atomic<int64_t> last_report_ns{0};
  };

  bool fresh(const Endpoint& endpoint, MonotonicTime now) const;
  // Each expects the endpoint's mutex to be held.
  void forgetIfStaleLocked(Endpoint& endpoint, MonotonicTime now);
  void advanceHoldLocked(Endpoint& endpoint, MonotonicTime now);
  void notifyAllDeferring(MonotonicTime now);

  const SignalTableOptions options_;
  const AllDeferringCallback on_all_deferring_;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;

  std::mutex notify_mutex_;
  bool all_deferring_reported_ = false; // guarded by notify_mutex_

  std::atomic<uint64_t> stale_signals_{0};
  std::atomic<uint64_t> transitions_{0};
};

} // namespace deferd::filters::backpressure
