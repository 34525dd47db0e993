#pragma once

// The breaker of one upstream cluster, shared by every worker thread.
//
// State machine:
//
//             failure_rate, slow_call_rate,
//             consecutive_failures
//   CLOSED ─────────────────────────────────► OPEN ◄───────────────────┐
//     ▲                                        │                        │ probe_failed,
//     │ probes_succeeded                       │ cooldown_elapsed       │ probe_timeout
//     │                                        ▼                        │
//     └─────────────────────────────────── HALF-OPEN ───────────────────┘
//
// Closed: every request goes to the primary and its outcome enters the sliding window. The
// breaker opens when the window contains at least min_requests calls and the failure rate or the
// slow-call rate reaches its threshold, or when consecutive_failures calls in a row failed.
// Those checks run after each recorded outcome, in that order, and the first that is met is the
// cause.
//
// Open: no request goes to the primary until the cooldown has passed. The n-th trip in a row
// (counting since the last close) has the cooldown
//     min(max_cooldown, base_cooldown * cooldown_multiplier^(n-1)) * (1 + jitter * u),
// with u drawn uniformly from [-1, 1) by the random source, and the result capped at
// max_cooldown again. Closing resets n.
//
// Half-open: `probes` probe tickets exist, and a request gets one only while one is free, so no
// more than `probes` probes are ever outstanding or succeeded, whichever threads ask. When all
// of them report success, the breaker closes with an empty window. A failed or slow probe
// reopens it at once. A probe that has not reported after probe_timeout counts as failed. The
// caller reports the timeout through its admission, and the breaker also reopens by itself
// when it is next consulted (allow, record or state) and finds a probe outstanding that long,
// so it can never stay half-open. A probe admission released without a result (the request was
// cancelled before the primary's response) keeps its ticket, since the primary may still be
// working on it; it times out like a silent probe. So a half-open period lets exactly `probes`
// requests through, never more, across all threads.
//
// Stale results: each transition starts a new epoch. A result whose admission was made in an
// earlier epoch (a call that was in flight when the breaker opened) is ignored.
//
// Transitions: each one is reported exactly once to the listener, with its cause, after the
// lock is released. Listener calls from different threads may arrive out of order, and the
// sequence number in BreakerTransition gives their true order.
//
// Shadow mode: the state machine runs the same way and reports its transitions, but every
// admission lets the request through to the primary. A request that would have been rejected
// is counted in shadowRejections(), and its outcome is not recorded, so the machine behaves as
// if it had been rejected.
//
// Locking: one mutex guards the state, the window and the probe tickets. A call holds it for
// O(probes) work, plus O(window buckets) at worst after an idle period (see sliding_window.h),
// and never while calling the listener. The state and the counters are mirrored in atomics
// for lock-free reads.
//
// Lifetime: create() returns a shared_ptr, and each admission keeps the breaker alive until
// it is destroyed, so a config reload cannot free a breaker under a request in flight.

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string_view>
#include <vector>

#include "filters/breaker/outcome.h"
#include "filters/breaker/sliding_window.h"
#include "filters/filter.h"

namespace deferd::filters::breaker {

enum class BreakerState : uint8_t { kClosed, kOpen, kHalfOpen };

enum class TransitionCause : uint8_t {
  kFailureRate,
  kSlowCallRate,
  kConsecutiveFailures,
  kProbeFailed,
  kProbeTimeout,
  kProbesSucceeded,
  kCooldownElapsed,
};

// Lowercase names for logs and metric labels: "closed", "half_open", "failure_rate", and so on.
std::string_view toString(BreakerState state);
std::string_view toString(TransitionCause cause);

struct BreakerOptions {
  WindowOptions window;
  // Calls the window must contain before the failure and slow-call rates can open the breaker.
  uint64_t min_requests = 20;
  // Failure rate (0..1] at or above which the breaker opens. Zero turns the check off.
  double failure_rate_threshold = 0.5;
  // Slow-call rate (0..1] at or above which the breaker opens. Zero turns the check off. Calls
  // are slow only when the classifier's slow_call is set.
  double slow_call_rate_threshold = 1.0;
  // Failures in a row that open the breaker, regardless of min_requests. Zero turns it off.
  uint32_t consecutive_failures = 5;

  // Probe tickets per half-open period. Zero is treated as 1.
  uint32_t probes = 3;
  std::chrono::milliseconds probe_timeout = std::chrono::seconds(5);

  std::chrono::milliseconds base_cooldown = std::chrono::seconds(5);
  // Growth factor of the cooldown per trip in a row. Values below 1 are treated as 1.
  double cooldown_multiplier = 2.0;
  std::chrono::milliseconds max_cooldown = std::chrono::minutes(5);
  // Fraction of the cooldown added or removed at random, clamped to [0, 1].
  double jitter = 0.1;

  bool shadow = false;
  ClassifierOptions classifier;
};

struct BreakerTransition {
  BreakerState from = BreakerState::kClosed;
  BreakerState to = BreakerState::kClosed;
  TransitionCause cause = TransitionCause::kFailureRate;
  // The cooldown that starts with this transition, or zero unless `to` is open.
  std::chrono::milliseconds cooldown{0};
  // The window when the breaker opened from closed, or empty for other transitions.
  WindowCounts window;
  // Counts up from 1 per breaker, in the order the transitions happened.
  uint64_t sequence = 0;
  MonotonicTime at;
  bool shadow = false;
};

class CircuitBreaker;

// The breaker's decision for one request. Move-only. A probe admission that is destroyed
// without record() frees its probe ticket.
class Admission {
public:
  enum class Verdict : uint8_t {
    kAllowed,  // closed: send to the primary
    kProbe,    // half-open: send to the primary as one of the probes
    kRejected, // open, or half-open with every probe ticket taken
  };

  Admission() = default;
  Admission(Admission&& other) noexcept;
  Admission& operator=(Admission&& other) noexcept;
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;
  ~Admission();

  // The breaker's own decision. In shadow mode it may be kRejected while the request still
  // goes to the primary.
  Verdict verdict() const { return verdict_; }
  bool shadow() const { return shadow_; }
  // Whether the request goes to the primary: any verdict but kRejected, and any in shadow mode.
  bool sendToPrimary() const { return verdict_ != Verdict::kRejected || shadow_; }
  // Time until the next request could be let through, rounded up to whole milliseconds, for
  // the retry-after header. Zero unless the verdict is kRejected.
  std::chrono::milliseconds retryAfter() const { return retry_after_; }

  // Records the call's result, with now minus the admission time as its latency. Only the
  // first call counts, and nothing is recorded for a rejected verdict.
  void record(const CallResult& result, MonotonicTime now);
  // Records that the call timed out, also for a probe whose timeout the classifier would not
  // count as failure.
  void recordTimeout(MonotonicTime now);
  // Ends an admission whose request was never sent to the primary (a capacity check or
  // another filter stopped it first). A probe ticket goes back for another request. Dropping
  // an admission without this keeps the ticket until it times out.
  void giveBack();

private:
  friend class CircuitBreaker;

  void release();

  std::shared_ptr<CircuitBreaker> breaker_;
  Verdict verdict_ = Verdict::kRejected;
  bool shadow_ = false;
  std::chrono::milliseconds retry_after_{0};
  uint64_t epoch_ = 0;
  // The probe ticket's slot, meaningful only for kProbe.
  size_t slot_ = 0;
  MonotonicTime admitted_at_;
  bool done_ = true;
};

class CircuitBreaker : public std::enable_shared_from_this<CircuitBreaker> {
public:
  using Listener = std::function<void(const BreakerTransition&)>;
  // Returns a value uniform in [0, 1). Called with the breaker's lock held.
  using RandomSource = std::function<double()>;

  // An empty random source is replaced by a generator seeded from std::random_device. The
  // listener may be empty. It runs without the breaker's lock, so it may read the breaker.
  static std::shared_ptr<CircuitBreaker> create(const BreakerOptions& options, MonotonicTime now,
                                                RandomSource random = {}, Listener listener = {});

  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  // Decides whether a request may go to the primary now.
  Admission allow(MonotonicTime now);

  // The state as of now, after the time-driven transitions (cooldown over, probe timed out).
  BreakerState state(MonotonicTime now);
  // The last state, without applying time-driven transitions. Lock-free.
  BreakerState lastState() const { return state_mirror_.load(std::memory_order_acquire); }
  WindowCounts windowCounts(MonotonicTime now);

  bool shadow() const { return options_.shadow; }
  const OutcomeClassifier& classifier() const { return classifier_; }

  // Counters, lock-free.
  uint64_t trips() const { return trips_.load(std::memory_order_relaxed); }
  uint64_t rejections() const { return rejections_.load(std::memory_order_relaxed); }
  uint64_t shadowRejections() const { return shadow_rejections_.load(std::memory_order_relaxed); }
  uint64_t probesIssued() const { return probes_issued_.load(std::memory_order_relaxed); }
  uint64_t staleResults() const { return stale_results_.load(std::memory_order_relaxed); }

private:
  enum class SlotState : uint8_t { kFree, kOutstanding, kSucceeded };

  struct ProbeSlot {
    SlotState state = SlotState::kFree;
    MonotonicTime issued;
  };

  // The transitions of one call, reported after the lock is released. One call makes at most two.
  class PendingTransitions {
  public:
    void push(const BreakerTransition& transition);
    void notify(const Listener& listener) const;

  private:
    std::array<BreakerTransition, 2> items_;
    size_t size_ = 0;
  };

  CircuitBreaker(const BreakerOptions& options, MonotonicTime now, RandomSource random,
                 Listener listener);

  friend class Admission;
  void recordOutcome(Admission& admission, Outcome outcome, bool timed_out, MonotonicTime now);
  void releaseProbe(const Admission& admission);
  void returnProbe(const Admission& admission);

  // Each function below expects mutex_ to be held.
  void applyTimersLocked(MonotonicTime now, PendingTransitions& pending);
  void recordClosedLocked(Outcome outcome, MonotonicTime now, PendingTransitions& pending);
  void recordProbeLocked(size_t slot, Outcome outcome, bool timed_out, MonotonicTime now,
                         PendingTransitions& pending);
  void transitionLocked(BreakerState to, TransitionCause cause, MonotonicTime now,
                        const WindowCounts& window, PendingTransitions& pending);
  std::chrono::milliseconds nextCooldownLocked();
  // Time until the earliest outstanding probe times out.
  std::chrono::milliseconds earliestProbeDeadlineLocked(MonotonicTime now) const;

  const BreakerOptions options_;
  const OutcomeClassifier classifier_;
  const Listener listener_;
  RandomSource random_;
  std::minstd_rand fallback_random_;

  std::mutex mutex_;
  BreakerState state_ = BreakerState::kClosed;
  uint64_t epoch_ = 1;
  uint64_t sequence_ = 0;
  SlidingWindow window_;
  uint32_t consecutive_failures_ = 0;
  // Trips since the last close; sets the cooldown's exponent.
  uint32_t trips_in_a_row_ = 0;
  MonotonicTime open_until_;
  std::vector<ProbeSlot> probe_slots_;

  std::atomic<BreakerState> state_mirror_{BreakerState::kClosed};
  std::atomic<uint64_t> trips_{0};
  std::atomic<uint64_t> rejections_{0};
  std::atomic<uint64_t> shadow_rejections_{0};
  std::atomic<uint64_t> probes_issued_{0};
  std::atomic<uint64_t> stale_results_{0};
};

} // namespace deferd::filters::breaker
