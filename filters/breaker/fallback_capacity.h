#pragma once

// The declared capacity of a fallback cluster: how much redirected traffic it may take.
//
// A request is redirected only when every check passes, in this order:
//
//   1. the fallback's own breaker lets it through (admitToFallback; a fallback whose breaker
//      is open is not used);
//   2. the fallback's endpoints are not all deferring, a load signal that the proxy sets with
//      setAllEndpointsDeferring();
//   3. the concurrency cap, max_concurrent requests in flight to the fallback;
//   4. the rate, a token bucket of max_rps tokens per second holding at most `burst` tokens.
//
// A rejected check leaves the later ones untouched: a request rejected by the concurrency cap
// takes no token, and a request rejected by the rate gives its concurrency slot back at once.
//
// The concurrency cap is an atomic counter raised by compare-and-swap only while it is below
// the cap, so it never overshoots, also when workers race. The token bucket is the generic
// cell rate algorithm: one atomic holds the theoretical arrival time (TAT) of the next request
// in nanoseconds of the monotonic clock. A request at time t is admitted when
// max(TAT, t) + 1/rate - t <= burst/rate, and then TAT moves to max(TAT, t) + 1/rate. This is
// exactly a bucket of `burst` tokens refilled at `rate` per second, updated by one
// compare-and-swap, with no lock.
//
// A grant is an RAII guard that releases its concurrency slot when destroyed. A slot that was
// moved from or already released releases nothing.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "filters/breaker/circuit_breaker.h"
#include "filters/filter.h"

namespace deferd::filters::breaker {

class TokenBucket {
public:
  // A rate of zero or less (or NaN) turns the bucket off, and every request gets a token. A
  // burst below 1 (or NaN) is treated as 1. The bucket starts full.
  TokenBucket(double rate_per_second, double burst);

  bool tryTake(MonotonicTime now);

private:
  const bool unlimited_;
  // Nanoseconds per token, and the TAT's largest lead over now that still admits a request.
  const int64_t interval_ns_;
  const int64_t max_lead_ns_;
  std::atomic<int64_t> tat_ns_;
};

class ConcurrencyLimit;

// One slot of a ConcurrencyLimit, released when the slot is destroyed. Move-only.
class ConcurrencySlot {
public:
  ConcurrencySlot() = default;
  explicit ConcurrencySlot(ConcurrencyLimit& limit) : limit_(&limit) {}
  ConcurrencySlot(ConcurrencySlot&& other) noexcept : limit_(other.limit_) {
    other.limit_ = nullptr;
  }
  ConcurrencySlot& operator=(ConcurrencySlot&& other) noexcept;
  ConcurrencySlot(const ConcurrencySlot&) = delete;
  ConcurrencySlot& operator=(const ConcurrencySlot&) = delete;
  ~ConcurrencySlot() { release(); }

  bool held() const { return limit_ != nullptr; }
  void release();

private:
  ConcurrencyLimit* limit_ = nullptr;
};

class ConcurrencyLimit {
public:
  // Zero turns the cap off; in_flight() still counts.
  explicit ConcurrencyLimit(uint32_t max_concurrent) : max_(max_concurrent) {}

  // Returns a held slot, or an empty one when max_concurrent are in flight.
  ConcurrencySlot tryAcquire();
  uint32_t inFlight() const { return in_flight_.load(std::memory_order_relaxed); }

private:
  friend class ConcurrencySlot;

  const uint32_t max_;
  std::atomic<uint32_t> in_flight_{0};
};

struct FallbackCapacityOptions {
  // Requests in flight to the fallback. Zero turns the cap off.
  uint32_t max_concurrent = 100;
  // Requests per second redirected to the fallback. Zero turns the rate off.
  double max_rps = 50;
  // Tokens the bucket holds. Zero means one second's worth, max_rps.
  double burst = 0;
};

enum class FallbackRejection : uint8_t {
  kFallbackOpen,      // the fallback's own breaker is open or out of probe tickets
  kFallbackDeferring, // every fallback endpoint signals that it is deferring work
  kMaxConcurrent,     // max_concurrent requests are in flight to the fallback
  kMaxRps,            // the fallback's rate, max_rps, is used up
};

// Lowercase names for the reason header and metric labels: "max_concurrent", and so on.
std::string_view toString(FallbackRejection rejection);

// The right to send one request to the fallback. Destroying it ends the request's share of
// the fallback's concurrency (and frees a probe ticket of the fallback's breaker that was never
// used, see circuit_breaker.h).
struct FallbackGrant {
  // Keeps a capacity owned by a shared_ptr alive until the slot is released, so a config reload
  // cannot free it under a request in flight. Declared first, so it is destroyed last.
  std::shared_ptr<const void> keep_alive;
  ConcurrencySlot slot;
  // The fallback breaker's admission; record the call's result through it. Empty (rejected,
  // no breaker) when the capacity was checked without a breaker.
  Admission admission;
};

struct FallbackDecision {
  // Set when the request may go to the fallback.
  std::optional<FallbackGrant> grant;
  // Why it may not; meaningful only without a grant.
  FallbackRejection rejection = FallbackRejection::kMaxConcurrent;

  bool granted() const { return grant.has_value(); }
};

// Thread-safe: every member may be called from any worker. A capacity owned by a shared_ptr
// is kept alive by its grants. Otherwise it must outlive them.
class FallbackCapacity : public std::enable_shared_from_this<FallbackCapacity> {
public:
  explicit FallbackCapacity(const FallbackCapacityOptions& options);

  // Checks the load signal, the concurrency cap and the rate (steps 2 to 4 above).
  FallbackDecision tryAcquire(MonotonicTime now);

  // Sets the fallback's load signal: true while every fallback endpoint is deferring work.
  void setAllEndpointsDeferring(bool deferring) {
    all_deferring_.store(deferring, std::memory_order_relaxed);
  }

  uint32_t inFlight() const { return concurrency_.inFlight(); }

private:
  std::atomic<bool> all_deferring_{false};
  ConcurrencyLimit concurrency_;
  TokenBucket bucket_;
};

// Runs every check of a redirect (steps 1 to 4 above): the fallback's own breaker first, then
// its capacity. A shadow breaker never stops the redirect.
FallbackDecision admitToFallback(CircuitBreaker& fallback_breaker, FallbackCapacity& capacity,
                                 MonotonicTime now);

} // namespace deferd::filters::breaker
