#include "filters/backpressure/wait_estimator.h"

#include <gtest/gtest.h>

#include "tests/unit/test_support.h"

namespace deferd::filters::backpressure {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

class WaitEstimatorTest : public ::testing::Test {
protected:
  // Advances `duration` in steps of 50 ms, with `completions_per_step` completions and
  // `accepted_per_step[u]` accepted requests of each urgency per step, folding every step.
  void run(std::chrono::milliseconds duration, uint64_t completions_per_step,
           const std::array<uint64_t, kUrgencyLevels>& accepted_per_step) {
    for (auto elapsed = 0ms; elapsed < duration; elapsed += 50ms) {
      dispatcher_.advance(50ms);
      completions_ += completions_per_step;
      for (int urgency = 0; urgency < kUrgencyLevels; ++urgency) {
        accepted_[urgency] += accepted_per_step[urgency];
      }
      estimator_.update(dispatcher_.now(), completions_, accepted_);
    }
  }

  FakeDispatcher dispatcher_;
  WaitEstimator estimator_;
  uint64_t completions_ = 0;
  std::array<uint64_t, kUrgencyLevels> accepted_{};
};

TEST_F(WaitEstimatorTest, NoPredictionBeforeFirstInterval) {
  EXPECT_FALSE(estimator_.predictWait(3, 5, dispatcher_.now()));
  estimator_.update(dispatcher_.now(), 0, accepted_);
  EXPECT_FALSE(estimator_.predictWait(3, 5, dispatcher_.now()));
  dispatcher_.advance(10ms);
  estimator_.update(dispatcher_.now(), 100, accepted_);
  EXPECT_FALSE(estimator_.predictWait(3, 5, dispatcher_.now()));
}

TEST_F(WaitEstimatorTest, MeasuresSteadyRates) {
  // 20 completions per 50 ms = 400 per second; 2 urgency-0 and 10 urgency-7 arrivals.
  std::array<uint64_t, kUrgencyLevels> accepted{};
  accepted[0] = 2;
  accepted[7] = 10;
  estimator_.update(dispatcher_.now(), 0, accepted_);
  run(1s, 20, accepted);
  EXPECT_NEAR(estimator_.completionRate(), 400.0, 1e-6);
  EXPECT_NEAR(estimator_.acceptedRate(0), 40.0, 1e-6);
  EXPECT_NEAR(estimator_.acceptedRate(7), 200.0, 1e-6);
  EXPECT_NEAR(estimator_.acceptedRate(3), 0.0, 1e-6);
}

TEST_F(WaitEstimatorTest, MoreUrgentArrivalsSlowLessUrgent) {
  std::array<uint64_t, kUrgencyLevels> accepted{};
  accepted[0] = 10; // 200 per second of the 400
  estimator_.update(dispatcher_.now(), 0, accepted_);
  run(1s, 20, accepted);

  // Urgency 0 gets all 400 per second: 4 ahead -> 5 / 400 s = 12.5 ms.
  ASSERT_TRUE(estimator_.predictWait(0, 4, dispatcher_.now()));
  EXPECT_NEAR(
      std::chrono::duration<double>(*estimator_.predictWait(0, 4, dispatcher_.now())).count(),
      0.0125, 1e-6);
  // Urgency 3 gets what urgency 0 leaves: 200 per second, so 25 ms.
  EXPECT_NEAR(
      std::chrono::duration<double>(*estimator_.predictWait(3, 4, dispatcher_.now())).count(),
      0.025, 1e-6);
}

TEST_F(WaitEstimatorTest, SaturatedByMoreUrgentIsInfinite) {
  std::array<uint64_t, kUrgencyLevels> accepted{};
  accepted[1] = 25; // 500 per second against 400 completions
  estimator_.update(dispatcher_.now(), 0, accepted_);
  run(1s, 20, accepted);
  ASSERT_TRUE(estimator_.predictWait(4, 0, dispatcher_.now()));
  EXPECT_EQ(*estimator_.predictWait(4, 0, dispatcher_.now()), std::chrono::nanoseconds::max());
  EXPECT_NE(*estimator_.predictWait(1, 0, dispatcher_.now()), std::chrono::nanoseconds::max());
}

TEST_F(WaitEstimatorTest, FollowsRateChangeWithinTimeConstants) {
  estimator_.update(dispatcher_.now(), 0, accepted_);
  run(2s, 20, {});
  // The completion rate halves; after three time constants (1.5 s) the average is within
  // 5 % of the new rate.
  run(1500ms, 10, {});
  EXPECT_NEAR(estimator_.completionRate(), 200.0, 200.0 * 0.05);
}

TEST_F(WaitEstimatorTest, RestartsAfterIdleGap) {
  estimator_.update(dispatcher_.now(), 0, accepted_);
  run(1s, 1, {});
  ASSERT_NEAR(estimator_.completionRate(), 20.0, 1e-6);

  // Ten quiet seconds: the next fold restarts, and the first interval after it sets the rate
  // rather than averaging it with the quiet period.
  dispatcher_.advance(10s);
  estimator_.update(dispatcher_.now(), completions_, accepted_);
  EXPECT_FALSE(estimator_.predictWait(3, 1, dispatcher_.now()));
  run(50ms, 20, {});
  EXPECT_NEAR(estimator_.completionRate(), 400.0, 1e-6);
}

TEST_F(WaitEstimatorTest, IgnoresFoldsWithinInterval) {
  estimator_.update(dispatcher_.now(), 0, accepted_);
  dispatcher_.advance(50ms);
  estimator_.update(dispatcher_.now(), 20, accepted_);
  ASSERT_NEAR(estimator_.completionRate(), 400.0, 1e-6);
  // 10 ms later, 100 more completions: too short an interval to fold.
  dispatcher_.advance(10ms);
  estimator_.update(dispatcher_.now(), 120, accepted_);
  EXPECT_NEAR(estimator_.completionRate(), 400.0, 1e-6);
}

TEST_F(WaitEstimatorTest, NoPredictionWithoutRecentCompletion) {
  estimator_.update(dispatcher_.now(), 0, accepted_);
  // Requests arrive but nothing completes: no rate to predict from.
  std::array<uint64_t, kUrgencyLevels> accepted{};
  accepted[3] = 5;
  run(1s, 0, accepted);
  EXPECT_FALSE(estimator_.predictWait(3, 1, dispatcher_.now()));

  run(100ms, 20, accepted);
  EXPECT_TRUE(estimator_.predictWait(3, 1, dispatcher_.now()));
  // 600 ms without a completion: more than the 500 ms time constant.
  run(600ms, 0, accepted);
  EXPECT_FALSE(estimator_.predictWait(3, 1, dispatcher_.now()));
}

} // namespace
} // namespace deferd::filters::backpressure
