#include "filters/backpressure/limiter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::backpressure {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

class LimiterTest : public ::testing::Test {
protected:
  ConcurrencyLimiter& makeLimiter(LimitAlgorithmKind algorithm) {
    LimiterOptions options;
    options.algorithm = algorithm;
    options.initial_limit = 20;
    options.min_limit = 5;
    options.max_limit = 200;
    options.sample_window = 100ms;
    options.min_window_samples = kSamplesPerWindow;
    return makeLimiter(options);
  }

  ConcurrencyLimiter& makeLimiter(const LimiterOptions& options) {
    limiter_ = std::make_unique<ConcurrencyLimiter>(options, dispatcher_.now());
    return *limiter_;
  }

  static constexpr int kSamplesPerWindow = 20;

  // Runs one sample window: fills `in_flight` slots (at most the limit), lets the window's
  // time pass, then finishes kSamplesPerWindow requests with the given latency, `drops` of them
  // dropped.
  void runWindow(std::chrono::nanoseconds latency, int in_flight, int drops = 0) {
    int acquired = 0;
    while (acquired < in_flight && limiter_->tryAcquire()) {
      ++acquired;
    }
    for (int i = 0; i < acquired; ++i) {
      limiter_->release();
    }
    dispatcher_.advance(100ms);
    for (int i = 0; i < kSamplesPerWindow; ++i) {
      limiter_->recordSample(LimitSample{.latency = latency, .dropped = i < drops},
                             dispatcher_.now());
    }
  }

  // Runs windows that use the whole limit.
  void runBusyWindows(int count, std::chrono::nanoseconds latency, int drops = 0) {
    for (int i = 0; i < count; ++i) {
      runWindow(latency, limiter_->limit(), drops);
    }
  }

  FakeDispatcher dispatcher_;
  std::unique_ptr<ConcurrencyLimiter> limiter_;
};

TEST_F(LimiterTest, GradientRaisesLimitWithSteadyLatency) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  int previous = limiter.limit();
  for (int i = 0; i < 30; ++i) {
    runBusyWindows(1, 10ms);
    ASSERT_GE(limiter.limit(), previous) << "window " << i;
    previous = limiter.limit();
  }
  EXPECT_EQ(limiter.windows(), 30u);
  EXPECT_GT(limiter.limit(), 40);
}

TEST_F(LimiterTest, GradientFallsWhenLatencyDoubles) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(20, 10ms);
  const int before = limiter.limit();
  int previous = before;
  // With tolerance 1.5 a doubling gives a gradient of 0.75, and the queue allowance damps the
  // fall at small limits: about 1 % per window here, until the long-term latency catches up.
  for (int i = 0; i < 10; ++i) {
    runBusyWindows(1, 20ms);
    ASSERT_LE(limiter.limit(), previous) << "window " << i;
    previous = limiter.limit();
  }
  EXPECT_LT(limiter.limit(), before * 0.95);
}

TEST_F(LimiterTest, GradientFallsFastWhenLatencyTriples) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(20, 10ms);
  const int before = limiter.limit();
  runBusyWindows(10, 30ms);
  EXPECT_LT(limiter.limit(), before * 0.8);
}

TEST_F(LimiterTest, GradientRecoversAfterLastingSlowdown) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(20, 10ms);
  const int before = limiter.limit();
  runBusyWindows(10, 20ms);
  const int low = limiter.limit();
  ASSERT_LT(low, before);

  // The upstream stays at 20 ms per request: the long-term latency moves to it and the limit
  // grows again, with no probe at a low limit.
  runBusyWindows(300, 20ms);
  EXPECT_GT(limiter.limit(), before);
  EXPECT_EQ(limiter.limit(), limiter.maxLimit());
}

TEST_F(LimiterTest, GradientSettlesUnderLastingQueueing) {
  // An upstream with 8 workers of 10 ms and a queue in front, offered more than it can take:
  // a window's latency grows with the in-flight count past 8. The limit starts under the
  // capacity, as it would before an overload, so the first windows see the real latency.
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.initial_limit = 4;
  options.min_limit = 1;
  options.max_limit = 200;
  options.sample_window = 100ms;
  options.min_window_samples = kSamplesPerWindow;
  ConcurrencyLimiter& limiter = makeLimiter(options);
  static constexpr int kWorkers = 8;
  auto queueing_latency = [](int in_flight) {
    return 10ms * std::max(1, in_flight) / std::min(kWorkers, std::max(1, in_flight));
  };

  // Ten minutes of overload: if queueing leaked into the long-term latency, the limit would
  // climb after it to max_limit within about a minute.
  int peak = 0;
  for (int i = 0; i < 6000; ++i) {
    runWindow(queueing_latency(limiter.limit()), limiter.limit());
    if (i >= 100) {
      peak = std::max(peak, limiter.limit());
    }
  }
  EXPECT_GE(limiter.limit(), kWorkers);
  EXPECT_LE(peak, 3 * kWorkers);
}

TEST_F(LimiterTest, GradientAcceptsSlowerUpstream) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(20, 10ms);
  const int before = limiter.limit();

  // Three times slower whatever the in-flight count: the cut gains nothing, so once it has
  // cut the in-flight count by 30 % the limiter takes 30 ms as the new baseline and grows.
  int low = before;
  for (int i = 0; i < 100; ++i) {
    runBusyWindows(1, 30ms);
    low = std::min(low, limiter.limit());
  }
  EXPECT_LE(low, before * 0.7);
  EXPECT_GT(limiter.limit(), before);
}

TEST_F(LimiterTest, GradientDoesNotGrowWhenAppLimited) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  for (int i = 0; i < 20; ++i) {
    runWindow(10ms, 2);
  }
  EXPECT_EQ(limiter.limit(), 20);
}

TEST_F(LimiterTest, GradientKeepsLimitForSlowIdleUpstream) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(10, 10ms);
  const int before = limiter.limit();
  for (int i = 0; i < 20; ++i) {
    runWindow(100ms, 2);
  }
  EXPECT_EQ(limiter.limit(), before);
}

TEST_F(LimiterTest, GradientTimeoutPlateauCannotRaiseLimit) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  // Every request times out at the same 1 s: the latency is flat, but all are drops.
  for (int i = 0; i < 200; ++i) {
    runWindow(1s, limiter.limit(), 20);
    ASSERT_LE(limiter.limit(), 20) << "window " << i;
  }
}

TEST_F(LimiterTest, GradientStaysWithinBounds) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(500, 10ms);
  EXPECT_EQ(limiter.limit(), 200);
  for (int latency_ms = 20; latency_ms < 100'000; latency_ms *= 2) {
    runBusyWindows(3, std::chrono::milliseconds(latency_ms));
  }
  EXPECT_GE(limiter.limit(), 5);
}

TEST_F(LimiterTest, AimdIncreasesWhileInUse) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kAimd);
  runBusyWindows(10, 10ms);
  EXPECT_EQ(limiter.limit(), 30);
}

TEST_F(LimiterTest, AimdHoldsWhileLimitUnused) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kAimd);
  for (int i = 0; i < 10; ++i) {
    runWindow(10ms, 10);
  }
  EXPECT_EQ(limiter.limit(), 20);
}

TEST_F(LimiterTest, AimdBacksOffOnDrops) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kAimd);
  runWindow(10ms, 20, 1);
  EXPECT_EQ(limiter.limit(), 18);
  runWindow(10ms, 20, 20);
  EXPECT_EQ(limiter.limit(), 16);
  runBusyWindows(50, 10ms, 5);
  EXPECT_EQ(limiter.limit(), 5);
}

TEST_F(LimiterTest, AimdTimeoutPlateauCannotRaiseLimit) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kAimd);
  for (int i = 0; i < 50; ++i) {
    runWindow(1s, limiter.limit(), 20);
    ASSERT_LE(limiter.limit(), 20) << "window " << i;
  }
}

TEST_F(LimiterTest, FixedNeverMoves) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kFixed);
  runBusyWindows(20, 10ms);
  EXPECT_EQ(limiter.limit(), 20);
  runBusyWindows(20, 10s, 20);
  EXPECT_EQ(limiter.limit(), 20);
}

TEST_F(LimiterTest, WaitsForWindowTimeAndSamples) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kAimd);
  for (int i = 0; i < 50; ++i) {
    limiter.recordSample(LimitSample{.latency = 10ms, .dropped = true}, dispatcher_.now());
  }
  EXPECT_EQ(limiter.windows(), 0u);

  dispatcher_.advance(100ms);
  limiter.recordSample(LimitSample{.latency = 10ms, .dropped = false}, dispatcher_.now());
  EXPECT_EQ(limiter.windows(), 1u);
  EXPECT_EQ(limiter.limit(), 18);

  // Past the window time but with too few samples, the window stays open.
  dispatcher_.advance(500ms);
  for (int i = 0; i < kSamplesPerWindow - 1; ++i) {
    limiter.recordSample(LimitSample{.latency = 10ms, .dropped = true}, dispatcher_.now());
  }
  EXPECT_EQ(limiter.windows(), 1u);
  limiter.recordSample(LimitSample{.latency = 10ms, .dropped = true}, dispatcher_.now());
  EXPECT_EQ(limiter.windows(), 2u);
}

TEST_F(LimiterTest, ScaleLowersPublishedLimit) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kFixed);
  limiter.setLimitScale(0.5);
  EXPECT_EQ(limiter.limit(), 10);
  limiter.setLimitScale(0.01);
  EXPECT_EQ(limiter.limit(), 5);
  limiter.setLimitScale(1.0);
  EXPECT_EQ(limiter.limit(), 20);
}

TEST_F(LimiterTest, ScaledLimitStillLearns) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kAimd);
  limiter.setLimitScale(0.5);
  ASSERT_EQ(limiter.limit(), 10);
  // Using the whole scaled limit counts as using the limit, so aimd still grows it.
  runBusyWindows(4, 10ms);
  limiter.setLimitScale(1.0);
  EXPECT_EQ(limiter.limit(), 24);
}

TEST_F(LimiterTest, ForceAcquireGoesOverLimit) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kFixed);
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(limiter.tryAcquire());
  }
  EXPECT_FALSE(limiter.tryAcquire());
  limiter.forceAcquire();
  EXPECT_EQ(limiter.inFlight(), 21);
  limiter.release();
  EXPECT_FALSE(limiter.tryAcquire());
  limiter.release();
  EXPECT_TRUE(limiter.tryAcquire());
}

TEST(LimiterClassifyTest, ClassifiesDrops) {
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kAimd;
  options.aimd.latency_threshold = 500ms;
  EXPECT_TRUE(classifyDrop(options, 0, false, 1ms));
  EXPECT_TRUE(classifyDrop(options, 200, true, 1ms));
  EXPECT_TRUE(classifyDrop(options, 503, false, 1ms));
  EXPECT_FALSE(classifyDrop(options, 404, false, 1ms));
  EXPECT_TRUE(classifyDrop(options, 200, false, 501ms));
  EXPECT_FALSE(classifyDrop(options, 200, false, 500ms));

  options.algorithm = LimitAlgorithmKind::kGradient;
  EXPECT_FALSE(classifyDrop(options, 200, false, 501ms));
}

TEST(LimiterThreadsTest, NeverOvershootsWithFourThreads) {
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kFixed;
  options.initial_limit = 8;
  options.min_limit = 1;
  options.max_limit = 8;
  ConcurrencyLimiter limiter(options, std::chrono::steady_clock::now());

  std::atomic<int> holding{0};
  std::atomic<int> peak{0};
  std::atomic<uint64_t> acquired{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50'000; ++i) {
        if (!limiter.tryAcquire()) {
          continue;
        }
        acquired.fetch_add(1);
        const int now_holding = holding.fetch_add(1) + 1;
        int seen = peak.load();
        while (now_holding > seen && !peak.compare_exchange_weak(seen, now_holding)) {
        }
        holding.fetch_sub(1);
        limiter.release();
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  EXPECT_GT(acquired.load(), 0u);
  EXPECT_LE(peak.load(), 8);
  EXPECT_EQ(limiter.inFlight(), 0);
}

TEST(LimiterThreadsTest, FoldsWindowsWhileThreadsRecord) {
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.sample_window = 1ms;
  ConcurrencyLimiter limiter(options, std::chrono::steady_clock::now());

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20'000; ++i) {
        if (limiter.tryAcquire()) {
          limiter.release();
        }
        limiter.recordSample(LimitSample{.latency = 2ms, .dropped = i % 100 == 0},
                             std::chrono::steady_clock::now());
      }
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  EXPECT_GT(limiter.windows(), 0u);
  EXPECT_GE(limiter.limit(), limiter.minLimit());
  EXPECT_LE(limiter.limit(), limiter.maxLimit());
  EXPECT_EQ(limiter.inFlight(), 0);
}

} // namespace
} // namespace deferd::filters::backpressure
