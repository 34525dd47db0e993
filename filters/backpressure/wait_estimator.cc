#include "filters/backpressure/wait_estimator.h"

#include <algorithm>
#include <cmath>

namespace deferd::filters::backpressure {

namespace {

// A gap between folds longer than this many time constants restarts the estimate.
constexpr double kMaxGap = 4.0;

double seconds(MonotonicTime::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

} // namespace

WaitEstimator::WaitEstimator(const WaitEstimatorOptions& options) : options_(options) {}

void WaitEstimator::update(MonotonicTime now, uint64_t completions,
                           const std::array<uint64_t, kUrgencyLevels>& accepted) {
  const double time_constant = std::max(seconds(options_.time_constant), 1e-3);
  const double dt = seconds(now - last_fold_);
  if (started_ && dt < seconds(options_.interval)) {
    return;
  }

  const bool restart = !started_ || dt <= 0.0 || dt > kMaxGap * time_constant;
  if (!restart) {
    // The first measured interval sets the rates; later ones are averaged in.
    const double alpha = measured_ ? 1.0 - std::exp(-dt / time_constant) : 1.0;
    const double completed = static_cast<double>(completions - last_completions_);
    if (completed > 0.0) {
      last_completion_ = now;
    }
    completion_rate_ += alpha * (completed / dt - completion_rate_);
    for (int urgency = 0; urgency < kUrgencyLevels; ++urgency) {
      const double arrived = static_cast<double>(accepted[urgency] - last_accepted_[urgency]);
      accepted_rate_[urgency] += alpha * (arrived / dt - accepted_rate_[urgency]);
    }
    measured_ = true;
  } else {
    measured_ = false;
  }

  started_ = true;
  last_fold_ = now;
  last_completions_ = completions;
  last_accepted_ = accepted;
}

std::optional<std::chrono::nanoseconds> WaitEstimator::predictWait(int urgency, size_t ahead,
                                                                   MonotonicTime now) const {
  if (!measured_ || !last_completion_ || now - *last_completion_ > options_.time_constant) {
    return std::nullopt;
  }
  double service = completion_rate_;
  for (int more_urgent = 0; more_urgent < std::clamp(urgency, 0, kUrgencyLevels); ++more_urgent) {
    service -= accepted_rate_[more_urgent];
  }
  const double wait_s = (static_cast<double>(ahead) + 1.0) / service;
  if (service <= 0.0 || wait_s >= 1e6) {
    return std::chrono::nanoseconds::max();
  }
  return std::chrono::nanoseconds(static_cast<int64_t>(wait_s * 1e9));
}

double WaitEstimator::acceptedRate(int urgency) const {
  return accepted_rate_[std::clamp(urgency, 0, kLeastUrgent)];
}

} // namespace deferd::filters::backpressure
