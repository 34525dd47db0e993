#include "filters/breaker/outlier_detector.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::breaker {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

class BreakerOutlierTest : public ::testing::Test {
protected:
  static OutlierOptions consecutiveOnly() {
    OutlierOptions options;
    options.consecutive_failures = 3;
    options.success_rate = false;
    options.interval = 10s;
    options.base_ejection_time = 30s;
    options.max_ejection_time = 100s;
    options.max_ejection_percent = 50;
    return options;
  }

  void fail(OutlierDetector& detector, size_t endpoint, int times) {
    for (int i = 0; i < times; ++i) {
      detector.record(endpoint, Outcome::kFailure, clock_.now());
    }
  }

  FakeDispatcher clock_;
};

TEST_F(BreakerOutlierTest, EjectsOnConsecutiveFailures) {
  OutlierDetector detector(consecutiveOnly(), 4, clock_.now());
  fail(detector, 1, 2);
  detector.record(1, Outcome::kSuccess, clock_.now());
  fail(detector, 1, 2);
  EXPECT_FALSE(detector.isEjected(1, clock_.now()));

  fail(detector, 1, 1);
  EXPECT_TRUE(detector.isEjected(1, clock_.now()));
  EXPECT_FALSE(detector.isEjected(0, clock_.now()));
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 1u);
  EXPECT_EQ(detector.ejectionsTotal(), 1u);
}

TEST_F(BreakerOutlierTest, EjectedUntilGivesTheEndOfTheEjection) {
  OutlierDetector detector(consecutiveOnly(), 4, clock_.now());
  EXPECT_FALSE(detector.ejectedUntil(2, clock_.now()));
  fail(detector, 2, 3);
  MonotonicTime ejected_at = clock_.now();
  EXPECT_EQ(detector.ejectedUntil(2, clock_.now()), ejected_at + 30s);
  EXPECT_FALSE(detector.ejectedUntil(1, clock_.now()));
  EXPECT_FALSE(detector.ejectedUntil(9, clock_.now()));

  clock_.advance(30s);
  EXPECT_FALSE(detector.ejectedUntil(2, clock_.now()));
}

TEST_F(BreakerOutlierTest, SlowCallIsNotFailure) {
  OutlierDetector detector(consecutiveOnly(), 4, clock_.now());
  fail(detector, 0, 2);
  detector.record(0, Outcome::kSlow, clock_.now());
  fail(detector, 0, 2);
  EXPECT_FALSE(detector.isEjected(0, clock_.now()));
}

TEST_F(BreakerOutlierTest, ReturnsAfterEjectionTime) {
  OutlierDetector detector(consecutiveOnly(), 4, clock_.now());
  fail(detector, 2, 3);
  clock_.advance(29999ms);
  EXPECT_TRUE(detector.isEjected(2, clock_.now()));
  clock_.advance(1ms);
  EXPECT_FALSE(detector.isEjected(2, clock_.now()));
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);

  // Its failure run starts again from zero.
  fail(detector, 2, 2);
  EXPECT_FALSE(detector.isEjected(2, clock_.now()));
}

TEST_F(BreakerOutlierTest, EjectionTimeGrowsToCap) {
  // An endpoint that fails again right after it returns is out for 30, 60, 90, then 100 s.
  OutlierOptions options = consecutiveOnly();
  options.interval = 1h; // no decay during the test
  OutlierDetector detector(options, 4, clock_.now());

  const std::chrono::milliseconds expected[] = {30s, 60s, 90s, 100s, 100s};
  for (auto duration : expected) {
    SCOPED_TRACE(duration.count());
    fail(detector, 0, 3);
    ASSERT_TRUE(detector.isEjected(0, clock_.now()));
    clock_.advance(duration - 1ms);
    EXPECT_TRUE(detector.isEjected(0, clock_.now()));
    clock_.advance(1ms);
    EXPECT_FALSE(detector.isEjected(0, clock_.now()));
  }
}

TEST_F(BreakerOutlierTest, EjectionCountDecays) {
  OutlierDetector detector(consecutiveOnly(), 4, clock_.now());
  fail(detector, 0, 3);
  clock_.advance(30s);
  fail(detector, 0, 3); // the second ejection in a row lasts 60 s
  clock_.advance(60s);
  ASSERT_FALSE(detector.isEjected(0, clock_.now()));

  // One interval back in service lowers the count from 2 to 1, so the next ejection is the
  // second again: 60 s, not 90 s.
  clock_.advance(10s);
  ASSERT_FALSE(detector.isEjected(0, clock_.now()));
  fail(detector, 0, 3);
  clock_.advance(59999ms);
  EXPECT_TRUE(detector.isEjected(0, clock_.now()));
  clock_.advance(1ms);
  EXPECT_FALSE(detector.isEjected(0, clock_.now()));
}

TEST_F(BreakerOutlierTest, MaxEjectionPercentCaps) {
  // 50 % of 5 endpoints is 2 (rounded down).
  OutlierDetector detector(consecutiveOnly(), 5, clock_.now());
  EXPECT_EQ(detector.maxEjected(), 2u);
  for (size_t endpoint = 0; endpoint < 5; ++endpoint) {
    fail(detector, endpoint, 3);
  }
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 2u);
  EXPECT_TRUE(detector.isEjected(0, clock_.now()));
  EXPECT_TRUE(detector.isEjected(1, clock_.now()));
  EXPECT_FALSE(detector.isEjected(2, clock_.now()));
  EXPECT_EQ(detector.ejectionsOverflowed(), 3u);

  // Once one returns, the next failing endpoint can take its place.
  clock_.advance(30s);
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);
  fail(detector, 4, 3);
  EXPECT_TRUE(detector.isEjected(4, clock_.now()));
}

TEST_F(BreakerOutlierTest, OneEndpointAlwaysRemains) {
  OutlierOptions options = consecutiveOnly();
  options.max_ejection_percent = 100;
  OutlierDetector detector(options, 3, clock_.now());
  EXPECT_EQ(detector.maxEjected(), 2u);
  for (size_t endpoint = 0; endpoint < 3; ++endpoint) {
    fail(detector, endpoint, 3);
  }
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 2u);
  EXPECT_FALSE(detector.isEjected(2, clock_.now()));

  OutlierDetector single(options, 1, clock_.now());
  fail(single, 0, 10);
  EXPECT_FALSE(single.isEjected(0, clock_.now()));
}

TEST_F(BreakerOutlierTest, SmallClusterLowPercentEjectsNone) {
  OutlierOptions options = consecutiveOnly();
  options.max_ejection_percent = 10;
  OutlierDetector detector(options, 5, clock_.now());
  EXPECT_EQ(detector.maxEjected(), 0u);
  fail(detector, 0, 10);
  EXPECT_FALSE(detector.isEjected(0, clock_.now()));
}

TEST_F(BreakerOutlierTest, OutOfRangeIndexIgnored) {
  OutlierDetector detector(consecutiveOnly(), 2, clock_.now());
  fail(detector, 7, 10);
  EXPECT_FALSE(detector.isEjected(7, clock_.now()));
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);
}

TEST_F(BreakerOutlierTest, ResizeDropsEjections) {
  OutlierDetector detector(consecutiveOnly(), 4, clock_.now());
  fail(detector, 3, 3);
  ASSERT_EQ(detector.ejectedCount(clock_.now()), 1u);

  detector.resize(3, clock_.now());
  EXPECT_EQ(detector.endpointCount(), 3u);
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);
  detector.resize(4, clock_.now());
  EXPECT_FALSE(detector.isEjected(3, clock_.now()));
}

class BreakerSuccessRateTest : public BreakerOutlierTest {
protected:
  static OutlierOptions successRateOnly() {
    OutlierOptions options;
    options.consecutive_failures = 0;
    options.success_rate = true;
    options.success_rate_min_hosts = 5;
    options.success_rate_request_volume = 100;
    options.success_rate_stdev_factor = 1.9;
    options.interval = 10s;
    options.base_ejection_time = 30s;
    options.max_ejection_percent = 50;
    return options;
  }

  // Records `calls` calls to the endpoint, of which `failures` fail.
  void traffic(OutlierDetector& detector, size_t endpoint, int calls, int failures) {
    for (int i = 0; i < calls; ++i) {
      detector.record(endpoint, i < failures ? Outcome::kFailure : Outcome::kSuccess, clock_.now());
    }
  }
};

TEST_F(BreakerSuccessRateTest, EjectsFarBelowPeers) {
  OutlierDetector detector(successRateOnly(), 6, clock_.now());
  for (size_t endpoint = 0; endpoint < 5; ++endpoint) {
    traffic(detector, endpoint, 200, 2);
  }
  traffic(detector, 5, 200, 100);
  EXPECT_FALSE(detector.isEjected(5, clock_.now()));

  clock_.advance(10s);
  EXPECT_TRUE(detector.isEjected(5, clock_.now()));
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 1u);
}

TEST_F(BreakerSuccessRateTest, UniformClusterKeepsAll) {
  OutlierDetector detector(successRateOnly(), 6, clock_.now());
  for (size_t endpoint = 0; endpoint < 6; ++endpoint) {
    traffic(detector, endpoint, 200, 40);
  }
  clock_.advance(10s);
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);
}

TEST_F(BreakerSuccessRateTest, NeedsMinHosts) {
  // Only four endpoints reach the request volume: no comparison.
  OutlierDetector detector(successRateOnly(), 6, clock_.now());
  for (size_t endpoint = 0; endpoint < 3; ++endpoint) {
    traffic(detector, endpoint, 200, 0);
  }
  traffic(detector, 3, 200, 150);
  traffic(detector, 4, 99, 0);
  traffic(detector, 5, 99, 0);
  clock_.advance(10s);
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);
}

TEST_F(BreakerSuccessRateTest, CountsResetEachInterval) {
  OutlierDetector detector(successRateOnly(), 6, clock_.now());
  for (size_t endpoint = 0; endpoint < 5; ++endpoint) {
    traffic(detector, endpoint, 200, 0);
  }
  clock_.advance(10s);
  ASSERT_EQ(detector.ejectedCount(clock_.now()), 0u);

  // Endpoint 5's bad interval is compared only with the next interval's traffic, where the
  // others have too few calls.
  traffic(detector, 5, 200, 150);
  for (size_t endpoint = 0; endpoint < 5; ++endpoint) {
    traffic(detector, endpoint, 50, 0);
  }
  clock_.advance(10s);
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 0u);
}

TEST_F(BreakerSuccessRateTest, CapKeepsBetterOutliers) {
  // Twenty endpoints, cap 5 %: of two outliers, only the worse one goes. The rates are 1.0
  // (18 endpoints), 0.3 and 0.2, so the threshold is about 0.925 - 1.9 * 0.226 = 0.50.
  OutlierOptions options = successRateOnly();
  options.max_ejection_percent = 5;
  OutlierDetector detector(options, 20, clock_.now());
  for (size_t endpoint = 0; endpoint < 18; ++endpoint) {
    traffic(detector, endpoint, 200, 0);
  }
  traffic(detector, 18, 200, 140);
  traffic(detector, 19, 200, 160);
  clock_.advance(10s);
  EXPECT_EQ(detector.ejectedCount(clock_.now()), 1u);
  EXPECT_TRUE(detector.isEjected(19, clock_.now()));
  EXPECT_FALSE(detector.isEjected(18, clock_.now()));
  EXPECT_EQ(detector.ejectionsOverflowed(), 1u);
}

TEST_F(BreakerOutlierTest, CapHoldsAcrossThreads) {
  OutlierOptions options = consecutiveOnly();
  options.max_ejection_percent = 30;
  constexpr size_t kEndpoints = 10;
  OutlierDetector detector(options, kEndpoints, clock_.now());
  MonotonicTime now = clock_.now();

  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        size_t endpoint = static_cast<size_t>(t + i) % kEndpoints;
        detector.record(endpoint, Outcome::kFailure, now);
        EXPECT_LE(detector.ejectedCount(now), 3u);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(detector.ejectedCount(now), 3u);
}

} // namespace
} // namespace deferd::filters::breaker
