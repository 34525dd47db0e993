#include "filters/breaker/outlier_detector.h"

#include <algorithm>
#include <cmath>

namespace deferd::filters::breaker {

OutlierDetector::OutlierDetector(const OutlierOptions& options, size_t endpoints, MonotonicTime now)
    : options_(options), endpoints_(endpoints), last_now_(now),
      next_evaluation_(now + std::max(options.interval, std::chrono::milliseconds(1))) {}

void OutlierDetector::record(size_t endpoint, Outcome outcome, MonotonicTime now) {
  std::lock_guard lock(mutex_);
  now = advanceLocked(now);
  if (endpoint >= endpoints_.size()) {
    return;
  }

  Endpoint& state = endpoints_[endpoint];
  state.calls++;
  if (outcome != Outcome::kFailure) {
    state.successes++;
    state.consecutive_failures = 0;
    return;
  }

  state.consecutive_failures++;
  if (options_.consecutive_failures > 0 && !state.ejected &&
      state.consecutive_failures >= options_.consecutive_failures) {
    ejectLocked(state, now);
  }
}

bool OutlierDetector::isEjected(size_t endpoint, MonotonicTime now) {
  std::lock_guard lock(mutex_);
  advanceLocked(now);
  return endpoint < endpoints_.size() && endpoints_[endpoint].ejected;
}

std::optional<MonotonicTime> OutlierDetector::ejectedUntil(size_t endpoint, MonotonicTime now) {
  std::lock_guard lock(mutex_);
  advanceLocked(now);
  if (endpoint >= endpoints_.size() || !endpoints_[endpoint].ejected) {
    return std::nullopt;
  }
  return endpoints_[endpoint].ejected_until;
}

size_t OutlierDetector::ejectedCount(MonotonicTime now) {
  std::lock_guard lock(mutex_);
  advanceLocked(now);
  return ejected_count_;
}

void OutlierDetector::resize(size_t endpoints, MonotonicTime now) {
  std::lock_guard lock(mutex_);
  advanceLocked(now);
  for (size_t i = endpoints; i < endpoints_.size(); ++i) {
    if (endpoints_[i].ejected) {
      ejected_count_--;
    }
  }
  endpoints_.resize(endpoints);
}

size_t OutlierDetector::endpointCount() {
  std::lock_guard lock(mutex_);
  return endpoints_.size();
}

size_t OutlierDetector::maxEjected() {
  std::lock_guard lock(mutex_);
  return maxEjectedLocked();
}

uint64_t OutlierDetector::ejectionsTotal() {
  std::lock_guard lock(mutex_);
  return ejections_total_;
}

uint64_t OutlierDetector::ejectionsOverflowed() {
  std::lock_guard lock(mutex_);
  return ejections_overflowed_;
}

MonotonicTime OutlierDetector::advanceLocked(MonotonicTime now) {
  now = std::max(now, last_now_);
  last_now_ = now;

  if (now >= next_return_) {
    returnDueLocked(now);
  }
  if (now >= next_evaluation_) {
    evaluateIntervalLocked(now);
  }
  return now;
}

void OutlierDetector::returnDueLocked(MonotonicTime now) {
  next_return_ = MonotonicTime::max();
  for (Endpoint& endpoint : endpoints_) {
    if (!endpoint.ejected) {
      continue;
    }
    if (endpoint.ejected_until <= now) {
      endpoint.ejected = false;
      endpoint.consecutive_failures = 0;
      ejected_count_--;
    } else {
      next_return_ = std::min(next_return_, endpoint.ejected_until);
    }
  }
}

void OutlierDetector::evaluateIntervalLocked(MonotonicTime now) {
  // After an idle period longer than the interval, the missed intervals are not replayed: the
  // next one starts now.
  next_evaluation_ = now + std::max(options_.interval, std::chrono::milliseconds(1));

  // ejected_until is the time a returned endpoint came back.
  for (Endpoint& endpoint : endpoints_) {
    if (!endpoint.ejected && endpoint.times_ejected > 0 &&
        now - endpoint.ejected_until >= options_.interval) {
      endpoint.times_ejected--;
    }
  }

  if (options_.success_rate) {
    std::vector<std::pair<double, size_t>> rates;
    for (size_t i = 0; i < endpoints_.size(); ++i) {
      const Endpoint& endpoint = endpoints_[i];
      if (!endpoint.ejected && endpoint.calls > 0 &&
          endpoint.calls >= options_.success_rate_request_volume) {
        rates.emplace_back(
            static_cast<double>(endpoint.successes) / static_cast<double>(endpoint.calls), i);
      }
    }

    if (!rates.empty() && rates.size() >= options_.success_rate_min_hosts) {
      double mean = 0;
      for (const auto& [rate, index] : rates) {
        mean += rate;
      }
      mean /= static_cast<double>(rates.size());

      double variance = 0;
      for (const auto& [rate, index] : rates) {
        variance += (rate - mean) * (rate - mean);
      }
      double stddev = std::sqrt(variance / static_cast<double>(rates.size()));
      double threshold = mean - options_.success_rate_stdev_factor * stddev;

      // The worst endpoints first, so the cap keeps the better ones in service.
      std::sort(rates.begin(), rates.end());
      for (const auto& [rate, index] : rates) {
        if (rate >= threshold) {
          break;
        }
        ejectLocked(endpoints_[index], now);
      }
    }
  }

  for (Endpoint& endpoint : endpoints_) {
    endpoint.calls = 0;
    endpoint.successes = 0;
  }
}

size_t OutlierDetector::maxEjectedLocked() const {
  size_t count = endpoints_.size();
  if (count <= 1) {
    return 0;
  }
  size_t percent = std::min<uint32_t>(options_.max_ejection_percent, 100);
  return std::min(count * percent / 100, count - 1);
}

bool OutlierDetector::ejectLocked(Endpoint& endpoint, MonotonicTime now) {
  if (ejected_count_ >= maxEjectedLocked()) {
    ejections_overflowed_++;
    return false;
  }

  endpoint.times_ejected++;
  auto duration = options_.base_ejection_time * endpoint.times_ejected;
  duration = std::min(duration, options_.max_ejection_time);

  endpoint.ejected = true;
  endpoint.ejected_until = now + duration;
  endpoint.consecutive_failures = 0;
  ejected_count_++;
  ejections_total_++;
  next_return_ = std::min(next_return_, endpoint.ejected_until);
  return true;
}

} // namespace deferd::filters::breaker
