#include "filters/backpressure/signal_table.h"

#include <algorithm>
#include <cmath>

namespace deferd::filters::backpressure {

namespace {

int64_t toNanos(MonotonicTime time) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count();
}

double smoothingWeight(std::chrono::nanoseconds elapsed, std::chrono::milliseconds half_life) {
  if (half_life.count() <= 0) {
    return 1.0;
  }
  if (elapsed.count() <= 0) {
    return 0.0;
  }
  const double half_lives = std::chrono::duration<double>(elapsed).count() /
                            std::chrono::duration<double>(half_life).count();
  return 1.0 - std::exp2(-half_lives);
}

} // namespace

SignalTable::SignalTable(size_t endpoints, const SignalTableOptions& options,
                         AllDeferringCallback on_all_deferring)
    : options_(options), on_all_deferring_(std::move(on_all_deferring)) {
  endpoints_.reserve(endpoints);
  for (size_t i = 0; i < endpoints; ++i) {
    endpoints_.push_back(std::make_unique<Endpoint>());
  }
}

SignalTable::~SignalTable() = default;

void SignalTable::update(size_t index, const LoadReport& report, MonotonicTime now) {
  if (index >= endpoints_.size()) {
    return;
  }
  Endpoint& endpoint = *endpoints_[index];
  double load = std::isfinite(report.utilization) ? std::max(report.utilization, 0.0) : 0.0;
  if (report.defer) {
    load = std::max(load, options_.defer_flag_load);
  }

  {
    std::lock_guard lock(endpoint.mutex);
    forgetIfStaleLocked(endpoint, now);
    if (!endpoint.has_signal) {
      endpoint.smoothed = load;
      endpoint.has_signal = true;
    } else {
      const double weight = smoothingWeight(now - endpoint.last_report, options_.half_life);
      endpoint.smoothed += weight * (load - endpoint.smoothed);
    }
    endpoint.last_report = std::max(endpoint.last_report, now);
    endpoint.last_report_ns.store(toNanos(endpoint.last_report), std::memory_order_release);
    advanceHoldLocked(endpoint, now);
  }
  notifyAllDeferring(now);
}

void SignalTable::poll(MonotonicTime now) {
  for (auto& endpoint : endpoints_) {
    std::lock_guard lock(endpoint->mutex);
    forgetIfStaleLocked(*endpoint, now);
    if (endpoint->has_signal) {
      advanceHoldLocked(*endpoint, now);
    }
  }
  notifyAllDeferring(now);
}

bool SignalTable::fresh(const Endpoint& endpoint, MonotonicTime now) const {
  const int64_t last = endpoint.last_report_ns.load(std::memory_order_acquire);
  const int64_t ttl_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(options_.ttl).count();
  return last != 0 && toNanos(now) - last < ttl_ns;
}

bool SignalTable::isDeferring(size_t index, MonotonicTime now) const {
  if (index >= endpoints_.size()) {
    return false;
  }
  const Endpoint& endpoint = *endpoints_[index];
  return endpoint.deferring.load(std::memory_order_acquire) && fresh(endpoint, now);
}

bool SignalTable::allDeferring(MonotonicTime now) const {
  return !endpoints_.empty() && deferringCount(now) == endpoints_.size();
}

size_t SignalTable::deferringCount(MonotonicTime now) const {
  size_t count = 0;
  for (size_t i = 0; i < endpoints_.size(); ++i) {
    count += isDeferring(i, now) ? 1 : 0;
  }
  return count;
}

std::optional<double> SignalTable::smoothedLoad(size_t index, MonotonicTime now) const {
  if (index >= endpoints_.size()) {
    return std::nullopt;
  }
  Endpoint& endpoint = *endpoints_[index];
  std::lock_guard lock(endpoint.mutex);
  if (!endpoint.has_signal || !fresh(endpoint, now)) {
    return std::nullopt;
  }
  return endpoint.smoothed;
}

void SignalTable::forgetIfStaleLocked(Endpoint& endpoint, MonotonicTime now) {
  if (!endpoint.has_signal || fresh(endpoint, now)) {
    return;
  }
  endpoint.has_signal = false;
  endpoint.smoothed = 0.0;
  endpoint.above_since.reset();
  endpoint.below_since.reset();
  endpoint.last_report_ns.store(0, std::memory_order_release);
  if (endpoint.deferring.exchange(false, std::memory_order_acq_rel)) {
    transitions_.fetch_add(1, std::memory_order_relaxed);
  }
  stale_signals_.fetch_add(1, std::memory_order_relaxed);
}

void SignalTable::advanceHoldLocked(Endpoint& endpoint, MonotonicTime now) {
  const bool deferring = endpoint.deferring.load(std::memory_order_relaxed);
  if (!deferring) {
    endpoint.below_since.reset();
    if (endpoint.smoothed <= options_.defer_above) {
      endpoint.above_since.reset();
      return;
    }
    if (!endpoint.above_since) {
      endpoint.above_since = now;
    }
    if (now - *endpoint.above_since >= options_.hold_above) {
      endpoint.deferring.store(true, std::memory_order_release);
      endpoint.above_since.reset();
      transitions_.fetch_add(1, std::memory_order_relaxed);
    }
    return;
  }

  endpoint.above_since.reset();
  if (endpoint.smoothed >= options_.resume_below) {
    endpoint.below_since.reset();
    return;
  }
  if (!endpoint.below_since) {
    endpoint.below_since = now;
  }
  if (now - *endpoint.below_since >= options_.hold_below) {
    endpoint.deferring.store(false, std::memory_order_release);
    endpoint.below_since.reset();
    transitions_.fetch_add(1, std::memory_order_relaxed);
  }
}

void SignalTable::notifyAllDeferring(MonotonicTime now) {
  if (!on_all_deferring_) {
    return;
  }
  std::lock_guard lock(notify_mutex_);
  const bool all = allDeferring(now);
  if (all == all_deferring_reported_) {
    return;
  }
  all_deferring_reported_ = all;
  on_all_deferring_(all);
}

} // namespace deferd::filters::backpressure
