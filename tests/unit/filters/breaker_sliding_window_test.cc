#include "filters/breaker/sliding_window.h"

#include <gtest/gtest.h>

#include "tests/unit/test_support.h"

namespace deferd::filters::breaker {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

WindowCounts counts(uint64_t calls, uint64_t failures, uint64_t slow_calls) {
  return WindowCounts{.calls = calls, .failures = failures, .slow_calls = slow_calls};
}

TEST(BreakerCountWindowTest, CountsUntilFull) {
  CountWindow window(4);
  window.record(Outcome::kFailure);
  window.record(Outcome::kSlow);
  window.record(Outcome::kSuccess);

  EXPECT_EQ(window.counts(), counts(3, 1, 1));
}

TEST(BreakerCountWindowTest, OldestCallLeaves) {
  CountWindow window(3);
  window.record(Outcome::kFailure);
  window.record(Outcome::kSlow);
  window.record(Outcome::kSuccess);
  EXPECT_EQ(window.counts(), counts(3, 1, 1));

  // Each new call pushes out the oldest: failure, then slow, then success.
  window.record(Outcome::kSuccess);
  EXPECT_EQ(window.counts(), counts(3, 0, 1));
  window.record(Outcome::kFailure);
  EXPECT_EQ(window.counts(), counts(3, 1, 0));
  window.record(Outcome::kFailure);
  EXPECT_EQ(window.counts(), counts(3, 2, 0));
}

TEST(BreakerCountWindowTest, LongRunMatchesLastCalls) {
  // The running totals must equal a recount of the last `size` calls after many wraps.
  constexpr size_t kSize = 7;
  CountWindow window(kSize);
  std::vector<Outcome> history;
  for (int i = 0; i < 1000; ++i) {
    Outcome outcome =
        i % 3 == 0 ? Outcome::kFailure : (i % 5 == 0 ? Outcome::kSlow : Outcome::kSuccess);
    window.record(outcome);
    history.push_back(outcome);
  }

  WindowCounts expected;
  for (size_t i = history.size() - kSize; i < history.size(); ++i) {
    expected.calls++;
    expected.failures += history[i] == Outcome::kFailure ? 1 : 0;
    expected.slow_calls += history[i] == Outcome::kSlow ? 1 : 0;
  }
  EXPECT_EQ(window.counts(), expected);
}

TEST(BreakerCountWindowTest, ResetEmpties) {
  CountWindow window(2);
  window.record(Outcome::kFailure);
  window.record(Outcome::kFailure);
  window.reset();
  EXPECT_EQ(window.counts(), counts(0, 0, 0));

  window.record(Outcome::kSuccess);
  EXPECT_EQ(window.counts(), counts(1, 0, 0));
}

TEST(BreakerCountWindowTest, ZeroSizeHoldsOne) {
  CountWindow window(0);
  window.record(Outcome::kFailure);
  window.record(Outcome::kSuccess);
  EXPECT_EQ(window.counts(), counts(1, 0, 0));
}

TEST(BreakerWindowCountsTest, Rates) {
  EXPECT_DOUBLE_EQ(counts(0, 0, 0).failureRate(), 0.0);
  EXPECT_DOUBLE_EQ(counts(0, 0, 0).slowCallRate(), 0.0);
  EXPECT_DOUBLE_EQ(counts(4, 1, 2).failureRate(), 0.25);
  EXPECT_DOUBLE_EQ(counts(4, 1, 2).slowCallRate(), 0.5);
}

class BreakerTimeWindowTest : public ::testing::Test {
protected:
  FakeDispatcher clock_;
};

TEST_F(BreakerTimeWindowTest, CountsWithinDuration) {
  TimeWindow window(10s, 10, clock_.now());
  window.record(Outcome::kFailure, clock_.now());
  clock_.advance(3s);
  window.record(Outcome::kSlow, clock_.now());
  clock_.advance(3s);
  window.record(Outcome::kSuccess, clock_.now());

  EXPECT_EQ(window.counts(clock_.now()), counts(3, 1, 1));
}

TEST_F(BreakerTimeWindowTest, BucketRollover) {
  // Ten 1-second buckets. A call at t=0 lives in slice 0 and leaves when slice 10 begins.
  TimeWindow window(10s, 10, clock_.now());
  window.record(Outcome::kFailure, clock_.now());
  clock_.advance(500ms);
  window.record(Outcome::kFailure, clock_.now());
  clock_.advance(5s);
  window.record(Outcome::kSuccess, clock_.now()); // t=5.5s, slice 5

  clock_.advance(3999ms); // t=9.499s, still slice 9
  EXPECT_EQ(window.counts(clock_.now()), counts(3, 2, 0));

  clock_.advance(501ms); // t=10s, slice 10 reuses the bucket of slice 0
  EXPECT_EQ(window.counts(clock_.now()), counts(1, 0, 0));

  window.record(Outcome::kSlow, clock_.now());
  EXPECT_EQ(window.counts(clock_.now()), counts(2, 0, 1));

  clock_.advance(5s); // t=15s, slice 15: slice 5 has left
  EXPECT_EQ(window.counts(clock_.now()), counts(1, 0, 1));
}

TEST_F(BreakerTimeWindowTest, LongIdleClearsAll) {
  TimeWindow window(10s, 10, clock_.now());
  for (int i = 0; i < 10; ++i) {
    window.record(Outcome::kFailure, clock_.now());
    clock_.advance(1s);
  }
  EXPECT_EQ(window.counts(clock_.now()), counts(9, 9, 0));

  clock_.advance(std::chrono::hours(24 * 365));
  EXPECT_EQ(window.counts(clock_.now()), counts(0, 0, 0));

  window.record(Outcome::kSuccess, clock_.now());
  EXPECT_EQ(window.counts(clock_.now()), counts(1, 0, 0));
}

TEST_F(BreakerTimeWindowTest, EarlierTimeCountsInNewestBucket) {
  TimeWindow window(10s, 10, clock_.now());
  MonotonicTime early = clock_.now();
  clock_.advance(5s);
  window.record(Outcome::kSuccess, clock_.now());

  // A thread that read the clock earlier records after a later one.
  window.record(Outcome::kFailure, early);
  EXPECT_EQ(window.counts(clock_.now()), counts(2, 1, 0));

  clock_.advance(9999ms);
  EXPECT_EQ(window.counts(clock_.now()), counts(2, 1, 0));
  clock_.advance(1ms);
  EXPECT_EQ(window.counts(clock_.now()), counts(0, 0, 0));
}

TEST_F(BreakerTimeWindowTest, ManyCallsOneBucket) {
  // The update cost does not grow with the number of calls: a million calls in one bucket
  // leave one bucket's worth of state.
  TimeWindow window(1s, 4, clock_.now());
  for (int i = 0; i < 1'000'000; ++i) {
    window.record(i % 2 == 0 ? Outcome::kFailure : Outcome::kSuccess, clock_.now());
  }
  EXPECT_EQ(window.counts(clock_.now()), counts(1'000'000, 500'000, 0));
  clock_.advance(1s);
  EXPECT_EQ(window.counts(clock_.now()), counts(0, 0, 0));
}

TEST_F(BreakerTimeWindowTest, ResetEmpties) {
  TimeWindow window(10s, 10, clock_.now());
  window.record(Outcome::kFailure, clock_.now());
  window.reset();
  EXPECT_EQ(window.counts(clock_.now()), counts(0, 0, 0));

  clock_.advance(1s);
  window.record(Outcome::kSuccess, clock_.now());
  EXPECT_EQ(window.counts(clock_.now()), counts(1, 0, 0));
}

TEST_F(BreakerTimeWindowTest, MoreBucketsThanMilliseconds) {
  // Five buckets for 3 ms become three 1 ms buckets.
  TimeWindow window(3ms, 5, clock_.now());
  window.record(Outcome::kFailure, clock_.now());
  clock_.advance(2ms);
  EXPECT_EQ(window.counts(clock_.now()), counts(1, 1, 0));
  clock_.advance(1ms);
  EXPECT_EQ(window.counts(clock_.now()), counts(0, 0, 0));
}

TEST_F(BreakerTimeWindowTest, SlidingWindowPicksKind) {
  WindowOptions count_options;
  count_options.kind = WindowOptions::Kind::kCount;
  count_options.size = 2;
  SlidingWindow by_count(count_options, clock_.now());

  WindowOptions time_options;
  time_options.kind = WindowOptions::Kind::kTime;
  time_options.duration = 2s;
  time_options.buckets = 2;
  SlidingWindow by_time(time_options, clock_.now());

  for (int i = 0; i < 3; ++i) {
    by_count.record(Outcome::kFailure, clock_.now());
    by_time.record(Outcome::kFailure, clock_.now());
  }
  EXPECT_EQ(by_count.counts(clock_.now()), counts(2, 2, 0));
  EXPECT_EQ(by_time.counts(clock_.now()), counts(3, 3, 0));

  clock_.advance(1h);
  EXPECT_EQ(by_count.counts(clock_.now()), counts(2, 2, 0));
  EXPECT_EQ(by_time.counts(clock_.now()), counts(0, 0, 0));

  by_count.reset();
  EXPECT_EQ(by_count.counts(clock_.now()), counts(0, 0, 0));
}

} // namespace
} // namespace deferd::filters::breaker
