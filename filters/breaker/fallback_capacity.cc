#include "filters/breaker/fallback_capacity.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace deferd::filters::breaker {

namespace {

constexpr double kNanosPerSecond = 1e9;
// A cap on burst / rate, about 31 years, so the product cannot overflow int64_t.
constexpr double kMaxLeadNs = 1e18;

int64_t nanosSinceEpoch(MonotonicTime now) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(now.time_since_epoch()).count();
}

bool isUnlimited(double rate_per_second) { return !(rate_per_second > 0); }

int64_t intervalFor(double rate_per_second) {
  if (isUnlimited(rate_per_second)) {
    return 0;
  }
  // At least 1 ns, so a huge rate still advances the TAT, and at most kMaxLeadNs, so a tiny
  // rate cannot overflow.
  double interval = std::clamp(kNanosPerSecond / rate_per_second, 1.0, kMaxLeadNs);
  return std::llround(interval);
}

int64_t maxLeadFor(double burst, int64_t interval_ns) {
  // Written so that a NaN burst also becomes 1.
  double tokens = burst >= 1.0 ? burst : 1.0;
  return static_cast<int64_t>(std::min(tokens * static_cast<double>(interval_ns), kMaxLeadNs));
}

} // namespace

TokenBucket::TokenBucket(double rate_per_second, double burst)
    : unlimited_(isUnlimited(rate_per_second)), interval_ns_(intervalFor(rate_per_second)),
      max_lead_ns_(maxLeadFor(burst, interval_ns_)), tat_ns_(std::numeric_limits<int64_t>::min()) {}

bool TokenBucket::tryTake(MonotonicTime now) {
  if (unlimited_) {
    return true;
  }

  int64_t now_ns = nanosSinceEpoch(now);
  int64_t tat = tat_ns_.load(std::memory_order_relaxed);
  while (true) {
    int64_t next = std::max(tat, now_ns) + interval_ns_;
    if (next - now_ns > max_lead_ns_) {
      return false;
    }
    if (tat_ns_.compare_exchange_weak(tat, next, std::memory_order_relaxed)) {
      return true;
    }
  }
}

ConcurrencySlot& ConcurrencySlot::operator=(ConcurrencySlot&& other) noexcept {
  if (this != &other) {
    release();
    limit_ = other.limit_;
    other.limit_ = nullptr;
  }
  return *this;
}

void ConcurrencySlot::release() {
  if (limit_ != nullptr) {
    limit_->in_flight_.fetch_sub(1, std::memory_order_relaxed);
    limit_ = nullptr;
  }
}

ConcurrencySlot ConcurrencyLimit::tryAcquire() {
  uint32_t current = in_flight_.load(std::memory_order_relaxed);
  while (max_ == 0 || current < max_) {
    if (in_flight_.compare_exchange_weak(current, current + 1, std::memory_order_relaxed)) {
      return ConcurrencySlot(*this);
    }
  }
  return ConcurrencySlot();
}

std::string_view toString(FallbackRejection rejection) {
  switch (rejection) {
  case FallbackRejection::kFallbackOpen:
    return "fallback_open";
  case FallbackRejection::kFallbackDeferring:
    return "fallback_deferring";
  case FallbackRejection::kMaxConcurrent:
    return "max_concurrent";
  case FallbackRejection::kMaxRps:
    return "max_rps";
  }
  return "unknown";
}

FallbackCapacity::FallbackCapacity(const FallbackCapacityOptions& options)
    : concurrency_(options.max_concurrent),
      bucket_(options.max_rps, options.burst > 0 ? options.burst : options.max_rps) {}

FallbackDecision FallbackCapacity::tryAcquire(MonotonicTime now) {
  FallbackDecision decision;

  if (all_deferring_.load(std::memory_order_relaxed)) {
    decision.rejection = FallbackRejection::kFallbackDeferring;
    return decision;
  }

  ConcurrencySlot slot = concurrency_.tryAcquire();
  if (!slot.held()) {
    decision.rejection = FallbackRejection::kMaxConcurrent;
    return decision;
  }

  if (!bucket_.tryTake(now)) {
    // The slot goes back when it leaves this scope.
    decision.rejection = FallbackRejection::kMaxRps;
    return decision;
  }

  decision.grant.emplace(FallbackGrant{
      .keep_alive = weak_from_this().lock(), .slot = std::move(slot), .admission = Admission()});
  return decision;
}

FallbackDecision admitToFallback(CircuitBreaker& fallback_breaker, FallbackCapacity& capacity,
                                 MonotonicTime now) {
  Admission admission = fallback_breaker.allow(now);
  if (!admission.sendToPrimary()) {
    FallbackDecision rejected;
    rejected.rejection = FallbackRejection::kFallbackOpen;
    return rejected;
  }

  // A capacity rejection gives back a probe ticket the admission held: the request never
  // reaches the fallback.
  FallbackDecision decision = capacity.tryAcquire(now);
  if (decision.grant) {
    decision.grant->admission = std::move(admission);
  } else {
    admission.giveBack();
  }
  return decision;
}

} // namespace deferd::filters::breaker
