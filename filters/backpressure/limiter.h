#pragma once

// The adaptive concurrency limit of one cluster, shared by every worker.
//
// Admission: tryAcquire() raises the in-flight count with a compare-and-swap loop that only
// succeeds while in-flight < limit, so concurrent workers never take more than `limit` slots
// between them. forceAcquire() takes a slot over the limit, for requests forced through after
// max_wait and for the shadow path. Such slots count as in flight, so the limiter keeps seeing
// the real load. release() gives a slot back.
//
// Learning: each finished request gives one sample (its latency and whether it was a drop).
// Samples are batched. recordSample() adds the sample to atomic window counters, and only
// when the window is over (sample_window has passed and at least min_window_samples arrived)
// does one thread fold the window into the algorithm. That thread is the first to win a
// try_lock on the update mutex; the others do not wait, they return at once and their samples
// stay in the next window. So the hot path costs a few atomic adds per request, and the
// algorithm runs about once per window, never concurrently. A sample that races the fold can
// land its latency in one window and its count in the next, which shifts one window's mean by
// at most one sample.
//
// Algorithms (LimitAlgorithm) see one SampleWindow at a time and return a new limit, which
// the limiter clamps to [min_limit, max_limit]. The published limit is that value times the
// limit scale (1, or all_deferring_scale while every endpoint of the cluster asks its callers
// to defer), rounded down and clamped again. The formulas are in docs/backpressure.md:
//
//   gradient  the proposed limit is limit * (long_latency / short_latency + 1 - 1/tolerance),
//             where short_latency is the window's mean and long_latency a slow average over
//             many windows. It settles where a window is tolerance times slower than the
//             baseline, that is at about tolerance times the upstream's concurrency. The slow
//             average follows windows that are not busy or clearly faster, and holds through
//             busy windows: those over the tolerance are queueing, and a baseline that absorbed
//             them would let the limit climb after its own queue. When cutting the in-flight
//             count does not lower such a window's latency, the upstream became slower per
//             request and that latency becomes the baseline, without a probe at a low limit.
//             The baseline it replaced is kept. If the new one is at least twice as slow, the
//             old one is restored once a window is nearer to it than to the new one: that
//             slowdown was a stall (a pause, a CPU quota).
//             Slow start grows the limit by half per window until two queueing windows in a row.
//             Recovery does the same after a cut below 80 % of the limit held before it, once
//             a window is back within the tolerance, up to that limit or the first queueing
//             window: a stall cuts the limit for its whole length, and the headroom alone
//             would take seconds to grow it back.
//   aimd      +increase per window while the limit is in use, *backoff per window with drops.
//   fixed     initial_limit, always.
//
// Drops: timeouts, 5xx and resets are drops, and with aimd so is a latency above
// aimd.latency_threshold (classifyDrop). No algorithm raises the limit in a window that had a
// drop, so a plateau of requests that all time out cannot raise it.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>

#include "filters/filter.h"

namespace deferd::filters::backpressure {

enum class LimitAlgorithmKind { kGradient, kAimd, kFixed };

struct GradientOptions {
  // How much slower than the long-term latency a window may be before the limit falls. The
  // limit settles near tolerance times the upstream's concurrency. At least 1.01.
  double tolerance = 1.15;
  // Weight of a window's proposed limit in the new limit, in (0, 1].
  double smoothing = 0.2;
  // Time constant of the long-term latency, in windows.
  uint32_t long_window = 100;
};

struct AimdOptions {
  // Added per window without drops while the limit is in use.
  int increase = 1;
  // Factor applied per window with at least one drop, in (0, 1).
  double backoff = 0.9;
  // The limit is in use when the window's peak in-flight reached this fraction of it.
  double in_use_fraction = 0.8;
  // A latency above this is a drop. Zero turns the rule off.
  std::chrono::milliseconds latency_threshold{0};
};

struct LimiterOptions {
  LimitAlgorithmKind algorithm = LimitAlgorithmKind::kGradient;
  int initial_limit = 20;
  int min_limit = 5;
  int max_limit = 1000;
  std::chrono::milliseconds sample_window{100};
  uint32_t min_window_samples = 10;
  GradientOptions gradient;
  AimdOptions aimd;
};

// One finished request, as the caller classified it.
struct LimitSample {
  std::chrono::nanoseconds latency{0};
  bool dropped = false;
};

// The samples of one window.
struct SampleWindow {
  uint64_t samples = 0;
  uint64_t drops = 0;
  // Mean latency over every sample of the window, drops included.
  std::chrono::nanoseconds mean_latency{0};
  // Peak in-flight count seen while the window was open.
  int max_in_flight = 0;
};

// Returns whether a finished request is a drop: no response or a timeout, a 5xx status, or
// with aimd a latency above aimd.latency_threshold. status is 0 when no response arrived.
bool classifyDrop(const LimiterOptions& options, int status, bool timed_out,
                  std::chrono::nanoseconds latency);

// A limit algorithm. The limiter calls update() under its update mutex, one window at a time,
// so an implementation needs no locking of its own.
class LimitAlgorithm {
public:
  virtual ~LimitAlgorithm() = default;
  // Returns the new limit for the current one after a window. The caller clamps it.
  virtual double update(double limit, const SampleWindow& window) = 0;
};

class GradientAlgorithm : public LimitAlgorithm {
public:
  explicit GradientAlgorithm(const GradientOptions& options);
  double update(double limit, const SampleWindow& window) override;

  // Long-term latency in nanoseconds, zero before the first window.
  double longLatency() const { return long_latency_ns_; }

  // Whether slow start is still on; update() describes when it ends.
  bool inSlowStart() const { return slow_start_; }

private:
  // Moves the long-term latency after a window (see docs/backpressure.md).
  void updateLongLatency(double short_ns, bool busy, int in_flight);
  // A busy window slower than tolerance * long: keeps the long-term latency, or moves it to
  // the window's latency when the episode shows a slower upstream rather than a queue.
  void holdLongLatency(double short_ns, int in_flight);
  // After slow start, for a busy window: the limit of a step back after a deep cut, or
  // nothing when the gradient rule applies (see docs/backpressure.md).
  std::optional<double> recover(double limit, bool queueing, bool drops);

  const GradientOptions options_;
  double long_latency_ns_ = 0.0;
  // The queueing episode in progress: the in-flight peak and latency of its slowest window.
  // Zero in-flight means no episode.
  int episode_in_flight_ = 0;
  double episode_latency_ns_ = 0.0;
  bool slow_start_ = true;
  // Queueing windows in a row seen during slow start.
  int slow_start_queueing_ = 0;
  // The baseline before the last slowdown replaced it, zero when none.
  double prior_long_ns_ = 0.0;
  // Recovery: the limit held when the current cut began (zero when none), whether the limit
  // is climbing back to it, and whether the last busy window was within the tolerance.
  double recovery_limit_ = 0.0;
  bool recovering_ = false;
  bool calm_ = false;
};

class AimdAlgorithm : public LimitAlgorithm {
public:
  explicit AimdAlgorithm(const AimdOptions& options) : options_(options) {}
  double update(double limit, const SampleWindow& window) override;

private:
  const AimdOptions options_;
};

class FixedAlgorithm : public LimitAlgorithm {
public:
  double update(double limit, const SampleWindow&) override { return limit; }
};

std::unique_ptr<LimitAlgorithm> makeLimitAlgorithm(const LimiterOptions& options);

class ConcurrencyLimiter {
public:
  // Options are sanitized: min_limit >= 1, max_limit >= min_limit, initial_limit within them.
  ConcurrencyLimiter(const LimiterOptions& options, MonotonicTime now);

  ConcurrencyLimiter(const ConcurrencyLimiter&) = delete;
  ConcurrencyLimiter& operator=(const ConcurrencyLimiter&) = delete;

  // Takes a slot if in-flight is below the limit. Safe from any thread.
  bool tryAcquire();
  // Takes a slot even over the limit.
  void forceAcquire();
  // Gives one slot back. Every acquire is matched by exactly one release.
  void release();

  // Adds a finished request's sample and may fold the window into the algorithm (see above).
  void recordSample(const LimitSample& sample, MonotonicTime now);

  // Scales the published limit, for example to 0.5 while every endpoint defers. The scale is
  // clamped to [0, 1] and NaN means 1; the published limit never goes below min_limit.
  void setLimitScale(double scale);

  int limit() const { return limit_.load(std::memory_order_acquire); }
  int inFlight() const { return in_flight_.load(std::memory_order_acquire); }
  int minLimit() const { return options_.min_limit; }
  int maxLimit() const { return options_.max_limit; }
  // Windows folded into the algorithm so far.
  uint64_t windows() const { return windows_.load(std::memory_order_relaxed); }

private:
  void noteInFlight(int in_flight);
  // Both expect update_mutex_ to be held.
  void foldWindowLocked(MonotonicTime now);
  void publishLimitLocked();

  LimiterOptions options_;
  std::unique_ptr<LimitAlgorithm> algorithm_;

  std::atomic<int> in_flight_{0};
  std::atomic<int> limit_{0};

  // The open window. Written with relaxed atomics by every worker.
  std::atomic<uint64_t> window_samples_{0};
  std::atomic<uint64_t> window_drops_{0};
  std::atomic<uint64_t> window_latency_ns_{0};
  std::atomic<int> window_max_in_flight_{0};
  std::atomic<int64_t> window_start_ns_{0};

  // Guards algorithm_, algorithm_limit_ and limit_scale_. Taken with try_lock on the hot path.
  std::mutex update_mutex_;
  double algorithm_limit_ = 0.0;
  double limit_scale_ = 1.0;

  std::atomic<uint64_t> windows_{0};
};

} // namespace deferd::filters::backpressure
