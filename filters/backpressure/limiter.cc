#include "filters/backpressure/limiter.h"

#include <algorithm>
#include <cmath>

namespace deferd::filters::backpressure {

namespace {

// Gradient bounds: one window can at most halve the proposed limit.
constexpr double kMinGradient = 0.5;
constexpr double kMaxGradient = 1.0;
// When the long-term latency is over this multiple of the window's latency, load has just
// ended and the long-term average is still inflated by it, so it decays faster.
constexpr double kLongLatencyDecayRatio = 2.0;
constexpr double kLongLatencyDecay = 0.95;
// The gradient algorithm leaves a limit alone when the window used less than this of it.
constexpr double kGradientInUseFraction = 0.5;
// A busy window faster than this share of the long-term latency shows a faster upstream.
constexpr double kSpeedupRatio = 0.9;
// Queueing windows in a row that end slow start.
constexpr int kSlowStartQueueingWindows = 2;
// Factor on the limit per window of slow start.
constexpr double kSlowStartGrowth = 1.5;
// A queueing episode whose in-flight count fell to this share of its start while its latency
// stayed above kSlowdownLatencyRatio of the start is a slower upstream, not a queue.
constexpr double kSlowdownInFlightRatio = 0.7;
constexpr double kSlowdownLatencyRatio = 0.9;

// A baseline taken from a slowdown at least this many times the one before may have been a
// stall. Noise at the equilibrium moves the baseline by less.
constexpr double kStallBaselineRatio = 2.0;
// Recovery after a cut: a limit below this share of the limit held before the cut grows back
// by kSlowStartGrowth per calm window, up to that limit.
constexpr double kRecoveryDepth = 0.8;

// The lowest tolerance kept by sanitize(): 1 % of headroom.
constexpr double kMinTolerance = 1.01;

int64_t toNanos(MonotonicTime time) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(time.time_since_epoch()).count();
}

LimiterOptions sanitize(LimiterOptions options) {
  options.min_limit = std::max(options.min_limit, 1);
  options.max_limit = std::max(options.max_limit, options.min_limit);
  options.initial_limit = std::clamp(options.initial_limit, options.min_limit, options.max_limit);
  options.min_window_samples = std::max<uint32_t>(options.min_window_samples, 1);
  options.gradient.smoothing = std::clamp(options.gradient.smoothing, 0.01, 1.0);
  // Tolerance 1 would leave no headroom, and the limit could never grow after slow start.
  options.gradient.tolerance = std::max(options.gradient.tolerance, kMinTolerance);
  options.gradient.long_window = std::max<uint32_t>(options.gradient.long_window, 1);
  options.aimd.backoff = std::clamp(options.aimd.backoff, 0.1, 0.99);
  options.aimd.increase = std::max(options.aimd.increase, 1);
  options.aimd.in_use_fraction = std::clamp(options.aimd.in_use_fraction, 0.0, 1.0);
  return options;
}

} // namespace

bool classifyDrop(const LimiterOptions& options, int status, bool timed_out,
                  std::chrono::nanoseconds latency) {
  if (timed_out || status == 0 || status >= 500) {
    return true;
  }
  const auto threshold = options.aimd.latency_threshold;
  return options.algorithm == LimitAlgorithmKind::kAimd && threshold.count() > 0 &&
         latency > threshold;
}

GradientAlgorithm::GradientAlgorithm(const GradientOptions& options) : options_(options) {}

double GradientAlgorithm::update(double limit, const SampleWindow& window) {
  if (window.samples == 0) {
    return limit;
  }
  const double short_ns = std::max<double>(static_cast<double>(window.mean_latency.count()), 1.0);
  const bool busy = window.max_in_flight >= limit * kGradientInUseFraction;
  const bool queueing =
      busy && long_latency_ns_ > 0.0 && short_ns > options_.tolerance * long_latency_ns_;

  // Failures answered at once (a refused connection) would pull the baseline toward zero,
  // so a window that is mostly drops leaves it alone. During slow start it holds the limit
  // too: an upstream that is not up yet gives no measure of its capacity.
  const bool mostly_drops = window.drops * 2 > window.samples;
  if (!mostly_drops) {
    updateLongLatency(short_ns, busy, window.max_in_flight);
  } else if (slow_start_) {
    return limit;
  }

  // A window that used under half the limit carries no evidence of queueing caused by this
  // cluster's concurrency. Latency that grows while in-flight stays low is the upstream
  // slowing down, so the limit stays where it is.
  if (!busy) {
    return limit;
  }

  // Slow start: until two queueing windows in a row (or a drop), the limit grows by half per
  // window, so a small initial limit reaches the upstream's concurrency in a few windows. A
  // queueing window holds the limit, since one alone may be noise; the second ends slow start.
  if (!slow_start_) {
    if (const auto recovered = recover(limit, queueing, window.drops > 0)) {
      return *recovered;
    }
  }

  if (slow_start_ && window.drops == 0) {
    if (!queueing) {
      slow_start_queueing_ = 0;
      return limit * kSlowStartGrowth;
    }
    if (++slow_start_queueing_ < kSlowStartQueueingWindows) {
      return limit;
    }
  }
  slow_start_ = false;

  // The limit stays where `long / short + headroom` is 1, which is where the window's latency
  // is tolerance times the long-term latency: a queue of (tolerance - 1) times the upstream's
  // concurrency. Headroom also makes the limit grow while latency is flat.
  const double gradient = std::clamp(long_latency_ns_ / short_ns, kMinGradient, kMaxGradient);
  const double headroom = 1.0 - 1.0 / options_.tolerance;
  double proposed = limit * (gradient + headroom);
  if (window.drops > 0) {
    proposed = std::min(proposed, limit);
  }

  return limit * (1.0 - options_.smoothing) + proposed * options_.smoothing;
}

std::optional<double> GradientAlgorithm::recover(double limit, bool queueing, bool drops) {
  // A queueing window that follows a calm one starts a cut, and the limit it had is the one
  // to come back to. A queueing window during the climb back means that limit is too high
  // now, so the rest of the way is the headroom's.
  if (queueing) {
    if (recovering_) {
      recovery_limit_ = 0.0;
      recovering_ = false;
    } else if (recovery_limit_ <= 0.0 && calm_) {
      recovery_limit_ = limit;
    }
    calm_ = false;
    return std::nullopt;
  }

  // A calm window after a deep cut: the latency is back within the tolerance at a limit well
  // under the one held before, so what cut it was a stall rather than the upstream's
  // capacity. Like slow start up to TCP's ssthresh, the limit grows by half per window back
  // to that limit. A shallow cut is left to the headroom, which is what keeps the equilibrium.
  calm_ = true;
  if (recovery_limit_ <= 0.0) {
    return std::nullopt;
  }
  if (!drops && limit < recovery_limit_ &&
      (recovering_ || limit < recovery_limit_ * kRecoveryDepth)) {
    recovering_ = true;
    return std::min(limit * kSlowStartGrowth, recovery_limit_);
  }
  recovery_limit_ = 0.0;
  recovering_ = false;
  return std::nullopt;
}

void GradientAlgorithm::updateLongLatency(double short_ns, bool busy, int in_flight) {
  if (long_latency_ns_ <= 0.0) {
    long_latency_ns_ = short_ns;
    return;
  }

  // A baseline taken from a slowdown (holdLongLatency) at least twice the one before may have
  // been a stall: a paused upstream or a throttled proxy, long enough for the limit to cut the
  // in-flight count. A window nearer the old baseline than the new one, on a log scale, shows
  // the stall is over, and the old baseline is restored.
  if (prior_long_ns_ > 0.0) {
    if (long_latency_ns_ >= prior_long_ns_ * kStallBaselineRatio &&
        short_ns * short_ns < prior_long_ns_ * long_latency_ns_) {
      long_latency_ns_ = prior_long_ns_;
      prior_long_ns_ = 0.0;
      episode_in_flight_ = 0;
      return;
    }
    if (long_latency_ns_ <= prior_long_ns_) {
      prior_long_ns_ = 0.0;
    }
  }

  if (busy && short_ns > options_.tolerance * long_latency_ns_) {
    holdLongLatency(short_ns, in_flight);
  } else if (busy && short_ns >= long_latency_ns_ * kSpeedupRatio && !slow_start_) {
    // At the equilibrium every busy window sits near tolerance * long, and noise puts some
    // of them under it. Letting those raise the baseline would creep the limit up, and
    // letting only the faster ones lower it would creep it down, so busy windows within this
    // band leave the baseline alone.
    episode_in_flight_ = 0;
  } else if (slow_start_) {
    // Slow start's windows are the first measurements, and the early ones are slowed by new
    // upstream connections, so the baseline is the fastest of them.
    long_latency_ns_ = std::min(long_latency_ns_, short_ns);
  } else {
    // Not busy (no queue of this cluster's making) or clearly faster: the upstream's own
    // latency, which the baseline follows.
    // TODO: with window means scattered by more than about 25 %, only the fast tail reaches
    // this branch, so the baseline sinks and the limit collapses to min_limit.
    episode_in_flight_ = 0;
    long_latency_ns_ += (short_ns - long_latency_ns_) / options_.long_window;
  }

  if (long_latency_ns_ / short_ns > kLongLatencyDecayRatio) {
    long_latency_ns_ *= kLongLatencyDecay;
  }
}

void GradientAlgorithm::holdLongLatency(double short_ns, int in_flight) {
  // A busy window over the tolerance is queueing until shown otherwise, and queueing must not
  // become the baseline: if it did, the limit would follow its own queue upward and never
  // settle under a lasting overload. The long-term latency stays put for the whole episode.
  // The reference is the episode's slowest window. A window's latency lags the limit (its
  // requests were admitted under the previous one), so the first window after a jump of the
  // limit understates the queue it started.
  if (episode_in_flight_ <= 0 || short_ns > episode_latency_ns_) {
    episode_in_flight_ = in_flight;
    episode_latency_ns_ = short_ns;
    return;
  }

  // Queueing latency falls with the concurrency that causes it. When the limit has cut the
  // in-flight count well below the reference and the latency did not follow, the upstream
  // itself became slower: that latency is the new baseline.
  if (in_flight <= episode_in_flight_ * kSlowdownInFlightRatio &&
      short_ns >= episode_latency_ns_ * kSlowdownLatencyRatio) {
    prior_long_ns_ =
        prior_long_ns_ > 0.0 ? std::min(prior_long_ns_, long_latency_ns_) : long_latency_ns_;
    long_latency_ns_ = short_ns;
    episode_in_flight_ = 0;
  }
}

double AimdAlgorithm::update(double limit, const SampleWindow& window) {
  if (window.samples == 0) {
    return limit;
  }
  if (window.drops > 0) {
    return limit * options_.backoff;
  }
  if (window.max_in_flight >= limit * options_.in_use_fraction) {
    return limit + options_.increase;
  }
  return limit;
}

std::unique_ptr<LimitAlgorithm> makeLimitAlgorithm(const LimiterOptions& options) {
  switch (options.algorithm) {
  case LimitAlgorithmKind::kGradient:
    return std::make_unique<GradientAlgorithm>(options.gradient);
  case LimitAlgorithmKind::kAimd:
    return std::make_unique<AimdAlgorithm>(options.aimd);
  case LimitAlgorithmKind::kFixed:
    break;
  }
  return std::make_unique<FixedAlgorithm>();
}

ConcurrencyLimiter::ConcurrencyLimiter(const LimiterOptions& options, MonotonicTime now)
    : options_(sanitize(options)), algorithm_(makeLimitAlgorithm(options_)),
      algorithm_limit_(options_.initial_limit) {
  limit_.store(options_.initial_limit);
  window_start_ns_.store(toNanos(now));
}

bool ConcurrencyLimiter::tryAcquire() {
  int current = in_flight_.load(std::memory_order_acquire);
  while (current < limit_.load(std::memory_order_acquire)) {
    if (in_flight_.compare_exchange_weak(current, current + 1, std::memory_order_acq_rel)) {
      noteInFlight(current + 1);
      return true;
    }
  }
  return false;
}

void ConcurrencyLimiter::forceAcquire() {
  noteInFlight(in_flight_.fetch_add(1, std::memory_order_acq_rel) + 1);
}

void ConcurrencyLimiter::release() { in_flight_.fetch_sub(1, std::memory_order_acq_rel); }

void ConcurrencyLimiter::noteInFlight(int in_flight) {
  int peak = window_max_in_flight_.load(std::memory_order_relaxed);
  while (in_flight > peak &&
         !window_max_in_flight_.compare_exchange_weak(peak, in_flight, std::memory_order_relaxed)) {
  }
}

void ConcurrencyLimiter::recordSample(const LimitSample& sample, MonotonicTime now) {
  const auto latency_ns = static_cast<uint64_t>(std::max<int64_t>(sample.latency.count(), 0));
  window_latency_ns_.fetch_add(latency_ns, std::memory_order_relaxed);
  if (sample.dropped) {
    window_drops_.fetch_add(1, std::memory_order_relaxed);
  }
  const uint64_t samples = window_samples_.fetch_add(1, std::memory_order_relaxed) + 1;

  const int64_t window_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(options_.sample_window).count();
  if (samples < options_.min_window_samples ||
      toNanos(now) - window_start_ns_.load(std::memory_order_relaxed) < window_ns) {
    return;
  }

  // The thread that owns the mutex is folding this window already, so this sample joins the
  // next one.
  std::unique_lock lock(update_mutex_, std::try_to_lock);
  if (!lock.owns_lock()) {
    return;
  }
  foldWindowLocked(now);
}

void ConcurrencyLimiter::foldWindowLocked(MonotonicTime now) {
  const int64_t window_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(options_.sample_window).count();
  if (toNanos(now) - window_start_ns_.load(std::memory_order_relaxed) < window_ns) {
    return; // another thread folded the window between the check and the lock
  }

  SampleWindow window;
  window.samples = window_samples_.exchange(0, std::memory_order_relaxed);
  if (window.samples < options_.min_window_samples) {
    window_samples_.fetch_add(window.samples, std::memory_order_relaxed);
    return;
  }
  window.drops = window_drops_.exchange(0, std::memory_order_relaxed);
  const uint64_t latency_ns = window_latency_ns_.exchange(0, std::memory_order_relaxed);
  window.mean_latency = std::chrono::nanoseconds(latency_ns / window.samples);
  window.max_in_flight = window_max_in_flight_.exchange(in_flight_.load(std::memory_order_relaxed),
                                                        std::memory_order_relaxed);
  // The algorithm compares the peak with its own limit, before the scale. A scaled-down limit
  // that is fully used must still count as used, so the peak is scaled up the same way.
  if (limit_scale_ < 1.0) {
    window.max_in_flight =
        static_cast<int>(std::ceil(window.max_in_flight / std::max(limit_scale_, 0.001)));
  }
  window_start_ns_.store(toNanos(now), std::memory_order_relaxed);

  const double proposed = algorithm_->update(algorithm_limit_, window);
  algorithm_limit_ = std::clamp(proposed, static_cast<double>(options_.min_limit),
                                static_cast<double>(options_.max_limit));
  publishLimitLocked();
  windows_.fetch_add(1, std::memory_order_relaxed);
}

void ConcurrencyLimiter::setLimitScale(double scale) {
  std::lock_guard lock(update_mutex_);
  limit_scale_ = std::isnan(scale) ? 1.0 : std::clamp(scale, 0.0, 1.0);
  publishLimitLocked();
}

void ConcurrencyLimiter::publishLimitLocked() {
  const double scaled = std::floor(algorithm_limit_ * limit_scale_);
  const int limit = static_cast<int>(std::clamp(scaled, static_cast<double>(options_.min_limit),
                                                static_cast<double>(options_.max_limit)));
  limit_.store(limit, std::memory_order_release);
}

} // namespace deferd::filters::backpressure
