#pragma once

// Predicts how long a request arriving at a cluster's queue would wait for a slot, so a
// request that cannot be served within max_wait (or before its deadline) is rejected on
// arrival rather than after waiting.
//
// Rates: the controller hands in two running totals, the slots released (completions) and the
// requests accepted (admitted at once or queued) per urgency. At most once per `interval`,
// update() turns the growth of each total into a rate and folds it into an exponential
// average with time constant `time_constant`:
//
//   alpha = 1 - exp(-dt / time_constant)
//   rate  = rate + alpha * (delta / dt - rate)
//
// A gap longer than kMaxGap time constants (an idle cluster) restarts the estimate, so a
// burst after a quiet period is not judged by the quiet period's low completion rate. Without
// a completion in the last time constant there is no prediction at all: a stalled upstream
// gives no rate to predict from, and its waiters keep the plain max_wait.
//
// Prediction: a newcomer of urgency u leaves after the `ahead` waiters that would be served
// before it, while requests more urgent than u keep arriving and go first. Slots free up at
// the completion rate, so the newcomer's share of them is
//
//   service = completions - sum(accepted[v] for v < u)
//   wait    = (ahead + 1) / service           infinite when service <= 0
//
// Refused requests are not in `accepted`, so urgent work that is itself refused does not
// count against the less urgent. The estimate ignores aging (a newcomer ages forward as it
// waits), so it errs on the long side for the least urgent.
//
// Thread safety: none. AdmissionController calls it under its queue mutex.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "filters/backpressure/wait_queue.h"
#include "filters/filter.h"

namespace deferd::filters::backpressure {

struct WaitEstimatorOptions {
  // Shortest time between two folds.
  std::chrono::milliseconds interval{50};
  // Time constant of the rate averages.
  std::chrono::milliseconds time_constant{500};
};

class WaitEstimator {
public:
  explicit WaitEstimator(const WaitEstimatorOptions& options = {});

  // Folds the totals' growth since the previous fold, if `interval` has passed. The totals
  // only grow.
  void update(MonotonicTime now, uint64_t completions,
              const std::array<uint64_t, kUrgencyLevels>& accepted);

  // The predicted wait of a newcomer of `urgency` with `ahead` waiters served before it, or
  // nothing while no rate has been measured yet or no request completed in the last time
  // constant before `now`. A saturated cluster gives std::chrono::nanoseconds::max().
  std::optional<std::chrono::nanoseconds> predictWait(int urgency, size_t ahead,
                                                      MonotonicTime now) const;

  // Completions per second, and accepted requests per second of one urgency.
  double completionRate() const { return completion_rate_; }
  double acceptedRate(int urgency) const;

private:
  const WaitEstimatorOptions options_;
  bool started_ = false;
  bool measured_ = false;
  MonotonicTime last_fold_{};
  // The last fold that saw a completion.
  std::optional<MonotonicTime> last_completion_;
  uint64_t last_completions_ = 0;
  std::array<uint64_t, kUrgencyLevels> last_accepted_{};
  double completion_rate_ = 0.0;
  std::array<double, kUrgencyLevels> accepted_rate_{};
};

} // namespace deferd::filters::backpressure
