#include "filters/backpressure/limiter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
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
  // Five windows of slow start take the limit from 20 to 151.
  runBusyWindows(5, 10ms);
  const int before = limiter.limit();
  // The first slower window may be noise, so slow start holds the limit; the second ends it.
  runBusyWindows(1, 20ms);
  ASSERT_EQ(limiter.limit(), before);
  runBusyWindows(1, 20ms);
  int previous = limiter.limit();
  // A doubling gives a gradient of 0.5 plus the headroom of 0.13: about -7.4 % per window.
  // Three windows stay above 70 % of the episode's first in-flight count, where the limiter
  // would take the doubled latency as the upstream's new speed.
  for (int i = 0; i < 3; ++i) {
    runBusyWindows(1, 20ms);
    ASSERT_LE(limiter.limit(), previous) << "window " << i;
    previous = limiter.limit();
  }
  EXPECT_LT(limiter.limit(), before * 0.8);
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
  runBusyWindows(5, 10ms);
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

// The mean latency of a window at an upstream of `workers` workers of 10 ms behind a FIFO
// queue, offered more than it can take, with `in_flight` requests in it.
std::chrono::nanoseconds queueingLatency(int workers, int in_flight) {
  in_flight = std::max(1, in_flight);
  return std::chrono::nanoseconds(10ms) * in_flight / std::min(workers, in_flight);
}

TEST_F(LimiterTest, GradientSettlesUnderLastingQueueing) {
  // The limit starts under the capacity, as it would before an overload, so the first windows
  // see the real latency.
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.initial_limit = 2;
  options.min_limit = 1;
  options.max_limit = 200;
  options.sample_window = 100ms;
  options.min_window_samples = kSamplesPerWindow;
  ConcurrencyLimiter& limiter = makeLimiter(options);
  static constexpr int kWorkers = 8;

  // Ten minutes of overload: if queueing leaked into the long-term latency, the limit would
  // climb after it to max_limit within about a minute.
  int low = options.max_limit;
  int peak = 0;
  for (int i = 0; i < 6000; ++i) {
    runWindow(queueingLatency(kWorkers, limiter.limit()), limiter.limit());
    if (i >= 50) {
      low = std::min(low, limiter.limit());
      peak = std::max(peak, limiter.limit());
    }
  }
  // Tolerance 1.15: the limit settles near 1.15 times the workers, 9.2 here.
  EXPECT_GE(low, kWorkers);
  EXPECT_LE(peak, kWorkers * 5 / 4);
}

// The window mean at `workers` workers of 20 ms each, the overload benchmark's backend.
std::chrono::nanoseconds benchLatency(int workers, int in_flight) {
  return queueingLatency(workers, in_flight) * 2;
}

// A limiter on the overload benchmark's setup: 8 workers of 20 ms, offered more than they can
// take, after 10 s at its equilibrium.
class StallTest : public LimiterTest {
protected:
  static constexpr int kWorkers = 8;

  ConcurrencyLimiter& settle() {
    LimiterOptions options;
    options.algorithm = LimitAlgorithmKind::kGradient;
    options.initial_limit = 2;
    options.min_limit = 1;
    options.max_limit = 256;
    options.min_window_samples = kSamplesPerWindow;
    ConcurrencyLimiter& limiter = makeLimiter(options);
    runOverloaded(100);
    return limiter;
  }

  // Runs `windows` windows at the upstream's own latency, and returns the highest limit.
  int runOverloaded(int windows) {
    int peak = 0;
    for (int i = 0; i < windows; ++i) {
      runWindow(benchLatency(kWorkers, limiter_->limit()), limiter_->limit());
      peak = std::max(peak, limiter_->limit());
    }
    return peak;
  }
};

TEST_F(StallTest, GradientRecoversFastAfterProxyStall) {
  ConcurrencyLimiter& limiter = settle();
  const int before = limiter.limit();
  ASSERT_GE(before, kWorkers);

  // For 2 s the proxy gets a fifth of a CPU (a cgroup quota): responses wait in its socket
  // buffers, and each window's mean grows by 25 ms as the backlog builds. The upstream is not
  // slower, but the limit falls by about 7 % per window for the whole stall.
  for (int i = 0; i < 20; ++i) {
    runWindow(benchLatency(kWorkers, limiter.limit()) + 25ms * (i + 1), limiter.limit());
  }
  ASSERT_LE(limiter.limit(), before / 2);

  // Then the latency is the upstream's own again. Growing back by the headroom alone (2.6 %
  // per window) would take about 6 s. Slow start back to the limit held before the cut takes
  // it from 2 to 9 in 4 windows (2, 3, 4.5, 6.75, 9). The bound of 8 windows leaves 3 for a
  // first window that still contains stall samples and one of latency lag in a real proxy.
  for (int i = 0; i < 8; ++i) {
    runWindow(benchLatency(kWorkers, limiter.limit()), limiter.limit());
  }
  EXPECT_GE(limiter.limit(), before - 1);
  // And it settles where it was, without overshoot.
  const int peak = runOverloaded(300);
  EXPECT_LE(peak, before + 2);
  EXPECT_GE(limiter.limit(), kWorkers);
}

TEST_F(StallTest, GradientBaselineSurvivesLongStall) {
  ConcurrencyLimiter& limiter = settle();
  const int before = limiter.limit();

  // For 2 s every response takes 100 ms longer, whatever the in-flight count (the upstream
  // is paused, or the proxy is throttled at a steady backlog). Cutting the limit by 30 % does
  // not lower the latency, so the limiter takes 100 ms more as the upstream's new speed.
  for (int i = 0; i < 20; ++i) {
    runWindow(benchLatency(kWorkers, limiter.limit()) + 100ms, limiter.limit());
  }

  // When the latency drops back to the upstream's own, that baseline was a stall and the one
  // before it applies again. A baseline kept at the stall's latency would let the limit climb to
  // three times the workers and hold it there, a queue of 20 inside the upstream.
  runOverloaded(20);
  const int peak = runOverloaded(300);
  EXPECT_LE(peak, before + 2);
  EXPECT_GE(limiter.limit(), kWorkers);
}

TEST_F(StallTest, GradientRecoveryStopsWhenCapacityFell) {
  ConcurrencyLimiter& limiter = settle();
  ASSERT_GE(limiter.limit(), kWorkers);

  // Half the workers for good: the cut is deep, like a stall's, but the first step back
  // finds queueing again, which ends the recovery. The limit stays near 1.15 times 4.
  for (int i = 0; i < 30; ++i) {
    runWindow(benchLatency(kWorkers / 2, limiter.limit()), limiter.limit());
  }
  int peak = 0;
  for (int i = 0; i < 300; ++i) {
    runWindow(benchLatency(kWorkers / 2, limiter.limit()), limiter.limit());
    peak = std::max(peak, limiter.limit());
  }
  EXPECT_LE(peak, kWorkers / 2 + 1);
  EXPECT_GE(limiter.limit(), kWorkers / 2);
}

TEST_F(LimiterTest, GradientSlowStartReachesCapacityFast) {
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.initial_limit = 2;
  options.min_limit = 1;
  options.max_limit = 200;
  options.min_window_samples = kSamplesPerWindow;
  ConcurrencyLimiter& limiter = makeLimiter(options);

  // Slow start grows the limit by half per window, so 2 reaches 8 in 4 windows. Without it,
  // the 2.6 % per window that the headroom gives would need about 55.
  for (int i = 0; i < 5; ++i) {
    runWindow(queueingLatency(8, limiter.limit()), limiter.limit());
  }
  EXPECT_GE(limiter.limit(), 8);
}

TEST_F(LimiterTest, GradientBaselineIgnoresFastFailures) {
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.initial_limit = 2;
  options.min_limit = 1;
  options.max_limit = 200;
  options.min_window_samples = kSamplesPerWindow;
  ConcurrencyLimiter& limiter = makeLimiter(options);

  // The upstream is not listening yet: connections are refused within 0.1 ms. Those windows
  // must not become the baseline, or every real response would look like a queue.
  for (int i = 0; i < 3; ++i) {
    runWindow(100us, limiter.limit(), kSamplesPerWindow);
  }
  EXPECT_EQ(limiter.limit(), 2);
  // Slow start is still on once the upstream answers: 2 reaches 8 within 5 windows.
  for (int i = 0; i < 5; ++i) {
    runWindow(queueingLatency(8, limiter.limit()), limiter.limit());
  }
  EXPECT_GE(limiter.limit(), 8);
  for (int i = 0; i < 300; ++i) {
    runWindow(queueingLatency(8, limiter.limit()), limiter.limit());
  }
  EXPECT_GE(limiter.limit(), 8);
  EXPECT_LE(limiter.limit(), 10);
}

TEST_F(LimiterTest, GradientFollowsCapacityChanges) {
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.initial_limit = 2;
  options.min_limit = 1;
  options.max_limit = 200;
  options.min_window_samples = kSamplesPerWindow;
  ConcurrencyLimiter& limiter = makeLimiter(options);
  auto run = [&](int workers, int windows) {
    for (int i = 0; i < windows; ++i) {
      runWindow(queueingLatency(workers, limiter.limit()), limiter.limit());
    }
  };
  run(8, 300);
  ASSERT_GE(limiter.limit(), 8);
  ASSERT_LE(limiter.limit(), 10);

  // Twice the workers at the same latency per request: the limit grows by the headroom,
  // about 2.6 % per window, so it passes 16 within 4 s of 100 ms windows.
  run(16, 40);
  EXPECT_GE(limiter.limit(), 16);
  run(16, 300);
  EXPECT_GE(limiter.limit(), 16);
  EXPECT_LE(limiter.limit(), 20);

  // Half the workers: the latency doubles and the limit falls within 2 s.
  run(4, 20);
  EXPECT_LE(limiter.limit(), 5);
  run(4, 300);
  EXPECT_GE(limiter.limit(), 4);
  EXPECT_LE(limiter.limit(), 5);
}

TEST_F(LimiterTest, GradientBaselineIgnoresNoiseAtEquilibrium) {
  // Window means that scatter by +-8 % around the queueing latency must not move the
  // baseline up or down over ten minutes, so the limit stays near 1.15 times the workers.
  LimiterOptions options;
  options.algorithm = LimitAlgorithmKind::kGradient;
  options.initial_limit = 2;
  options.min_limit = 1;
  options.max_limit = 200;
  options.min_window_samples = kSamplesPerWindow;
  ConcurrencyLimiter& limiter = makeLimiter(options);
  static constexpr int kWorkers = 16;
  static constexpr std::array<int, 5> kNoisePercent = {-8, 4, 0, 8, -4};
  int low = options.max_limit;
  int peak = 0;
  for (int i = 0; i < 6000; ++i) {
    const auto latency = queueingLatency(kWorkers, limiter.limit()) *
                         (100 + kNoisePercent[i % kNoisePercent.size()]) / 100;
    runWindow(latency, limiter.limit());
    if (i >= 100) {
      low = std::min(low, limiter.limit());
      peak = std::max(peak, limiter.limit());
    }
  }
  EXPECT_GE(low, kWorkers * 7 / 8);
  EXPECT_LE(peak, kWorkers * 3 / 2);
}

TEST_F(LimiterTest, GradientAcceptsSlowerUpstream) {
  ConcurrencyLimiter& limiter = makeLimiter(LimitAlgorithmKind::kGradient);
  runBusyWindows(5, 10ms);
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
