#include "filters/breaker/fallback_capacity.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::breaker {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;

int takeAll(TokenBucket& bucket, MonotonicTime now, int attempts) {
  int tokens = 0;
  for (int i = 0; i < attempts; ++i) {
    tokens += bucket.tryTake(now) ? 1 : 0;
  }
  return tokens;
}

TEST(BreakerTokenBucketTest, StartsWithBurst) {
  FakeDispatcher clock;
  TokenBucket bucket(10, 5);
  EXPECT_EQ(takeAll(bucket, clock.now(), 100), 5);
}

TEST(BreakerTokenBucketTest, RefillsAtRate) {
  FakeDispatcher clock;
  TokenBucket bucket(10, 5);
  ASSERT_EQ(takeAll(bucket, clock.now(), 5), 5);

  // One token per 100 ms.
  clock.advance(99ms);
  EXPECT_FALSE(bucket.tryTake(clock.now()));
  clock.advance(1ms);
  EXPECT_TRUE(bucket.tryTake(clock.now()));
  EXPECT_FALSE(bucket.tryTake(clock.now()));

  clock.advance(350ms);
  EXPECT_EQ(takeAll(bucket, clock.now(), 100), 3);
}

TEST(BreakerTokenBucketTest, RefillCapsAtBurst) {
  FakeDispatcher clock;
  TokenBucket bucket(10, 5);
  ASSERT_EQ(takeAll(bucket, clock.now(), 5), 5);

  clock.advance(1h);
  EXPECT_EQ(takeAll(bucket, clock.now(), 100), 5);
}

TEST(BreakerTokenBucketTest, SteadyRateOverTime) {
  // Asking 100 times per second for 10 s from a 20/s bucket with a burst of 20: the burst,
  // then the rate.
  FakeDispatcher clock;
  TokenBucket bucket(20, 20);
  int tokens = 0;
  for (int i = 0; i < 1000; ++i) {
    tokens += bucket.tryTake(clock.now()) ? 1 : 0;
    clock.advance(10ms);
  }
  EXPECT_GE(tokens, 20 + 199);
  EXPECT_LE(tokens, 20 + 200);
}

TEST(BreakerTokenBucketTest, ZeroRateIsUnlimited) {
  FakeDispatcher clock;
  TokenBucket bucket(0, 0);
  EXPECT_EQ(takeAll(bucket, clock.now(), 1000), 1000);
}

TEST(BreakerTokenBucketTest, BurstBelowOneIsOne) {
  FakeDispatcher clock;
  TokenBucket bucket(1, 0.2);
  EXPECT_EQ(takeAll(bucket, clock.now(), 10), 1);
}

TEST(BreakerTokenBucketTest, ExtremeOptionsStayBounded) {
  FakeDispatcher clock;
  TokenBucket tiny_rate(1e-30, 1);
  EXPECT_TRUE(tiny_rate.tryTake(clock.now()));
  EXPECT_FALSE(tiny_rate.tryTake(clock.now()));

  TokenBucket huge_burst(1, 1e300);
  EXPECT_EQ(takeAll(huge_burst, clock.now(), 1000), 1000);

  TokenBucket nan_rate(std::nan(""), 1);
  EXPECT_EQ(takeAll(nan_rate, clock.now(), 10), 10);

  TokenBucket nan_burst(1, std::nan(""));
  EXPECT_EQ(takeAll(nan_burst, clock.now(), 10), 1);
}

TEST(BreakerTokenBucketTest, ExactAcrossThreads) {
  // Eight threads race for the tokens of a bucket on a stopped clock, and get exactly the burst.
  FakeDispatcher clock;
  TokenBucket bucket(1, 1000);
  std::atomic<int> tokens{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] { tokens.fetch_add(takeAll(bucket, clock.now(), 1000)); });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_EQ(tokens.load(), 1000);
}

TEST(BreakerConcurrencyLimitTest, SlotsReturnOnDestruction) {
  ConcurrencyLimit limit(2);
  ConcurrencySlot first = limit.tryAcquire();
  ConcurrencySlot second = limit.tryAcquire();
  EXPECT_TRUE(first.held());
  EXPECT_TRUE(second.held());
  EXPECT_FALSE(limit.tryAcquire().held());
  EXPECT_EQ(limit.inFlight(), 2u);

  second = ConcurrencySlot();
  EXPECT_EQ(limit.inFlight(), 1u);
  ConcurrencySlot moved = std::move(first);
  EXPECT_FALSE(first.held());
  EXPECT_EQ(limit.inFlight(), 1u);
  moved.release();
  moved.release();
  EXPECT_EQ(limit.inFlight(), 0u);
}

TEST(BreakerConcurrencyLimitTest, NeverOvershootsAcrossThreads) {
  constexpr uint32_t kMax = 5;
  ConcurrencyLimit limit(kMax);
  std::atomic<uint32_t> peak{0};
  std::atomic<uint64_t> granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        ConcurrencySlot slot = limit.tryAcquire();
        if (!slot.held()) {
          continue;
        }
        granted.fetch_add(1);
        uint32_t now_in_flight = limit.inFlight();
        uint32_t seen = peak.load();
        while (now_in_flight > seen && !peak.compare_exchange_weak(seen, now_in_flight)) {
        }
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_LE(peak.load(), kMax);
  EXPECT_GT(granted.load(), 0u);
  EXPECT_EQ(limit.inFlight(), 0u);
}

TEST(BreakerConcurrencyLimitTest, ZeroIsUncapped) {
  ConcurrencyLimit limit(0);
  std::vector<ConcurrencySlot> slots;
  for (int i = 0; i < 1000; ++i) {
    slots.push_back(limit.tryAcquire());
    ASSERT_TRUE(slots.back().held());
  }
  EXPECT_EQ(limit.inFlight(), 1000u);
}

class BreakerFallbackCapacityTest : public ::testing::Test {
protected:
  static FallbackCapacityOptions options(uint32_t max_concurrent, double max_rps, double burst) {
    FallbackCapacityOptions result;
    result.max_concurrent = max_concurrent;
    result.max_rps = max_rps;
    result.burst = burst;
    return result;
  }

  FakeDispatcher clock_;
};

TEST_F(BreakerFallbackCapacityTest, RejectsAtMaxConcurrent) {
  FallbackCapacity capacity(options(2, 0, 0));
  FallbackDecision first = capacity.tryAcquire(clock_.now());
  FallbackDecision second = capacity.tryAcquire(clock_.now());
  FallbackDecision third = capacity.tryAcquire(clock_.now());
  EXPECT_TRUE(first.granted());
  EXPECT_TRUE(second.granted());
  EXPECT_FALSE(third.granted());
  EXPECT_EQ(third.rejection, FallbackRejection::kMaxConcurrent);
  EXPECT_EQ(capacity.inFlight(), 2u);

  first.grant.reset();
  EXPECT_EQ(capacity.inFlight(), 1u);
  EXPECT_TRUE(capacity.tryAcquire(clock_.now()).granted());
}

TEST_F(BreakerFallbackCapacityTest, RejectsAtMaxRps) {
  FallbackCapacity capacity(options(100, 2, 2));
  std::vector<FallbackDecision> decisions;
  for (int i = 0; i < 3; ++i) {
    decisions.push_back(capacity.tryAcquire(clock_.now()));
  }
  EXPECT_TRUE(decisions[0].granted());
  EXPECT_TRUE(decisions[1].granted());
  EXPECT_FALSE(decisions[2].granted());
  EXPECT_EQ(decisions[2].rejection, FallbackRejection::kMaxRps);
  // The request rejected by the rate gave its concurrency slot back.
  EXPECT_EQ(capacity.inFlight(), 2u);

  clock_.advance(500ms);
  EXPECT_TRUE(capacity.tryAcquire(clock_.now()).granted());
}

TEST_F(BreakerFallbackCapacityTest, ConcurrencyRejectTakesNoToken) {
  FallbackCapacity capacity(options(1, 1, 2));
  FallbackDecision first = capacity.tryAcquire(clock_.now());
  ASSERT_TRUE(first.granted());
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(capacity.tryAcquire(clock_.now()).rejection, FallbackRejection::kMaxConcurrent);
  }

  // The bucket still contains its second token.
  first.grant.reset();
  EXPECT_TRUE(capacity.tryAcquire(clock_.now()).granted());
}

TEST_F(BreakerFallbackCapacityTest, BurstDefaultsToOneSecond) {
  FallbackCapacity capacity(options(0, 5, 0));
  int granted = 0;
  for (int i = 0; i < 20; ++i) {
    granted += capacity.tryAcquire(clock_.now()).granted() ? 1 : 0;
  }
  EXPECT_EQ(granted, 5);
}

TEST_F(BreakerFallbackCapacityTest, DeferringSignalRejects) {
  FallbackCapacity capacity(options(10, 0, 0));
  capacity.setAllEndpointsDeferring(true);
  FallbackDecision decision = capacity.tryAcquire(clock_.now());
  EXPECT_FALSE(decision.granted());
  EXPECT_EQ(decision.rejection, FallbackRejection::kFallbackDeferring);
  EXPECT_EQ(capacity.inFlight(), 0u);

  capacity.setAllEndpointsDeferring(false);
  EXPECT_TRUE(capacity.tryAcquire(clock_.now()).granted());
}

TEST_F(BreakerFallbackCapacityTest, ConcurrencyCapAcrossThreads) {
  constexpr uint32_t kMax = 4;
  FallbackCapacity capacity(options(kMax, 0, 0));
  std::atomic<bool> start{false};
  std::atomic<uint32_t> peak{0};
  std::atomic<int> rejected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      while (!start.load()) {
        std::this_thread::yield();
      }
      for (int i = 0; i < 10000; ++i) {
        FallbackDecision decision = capacity.tryAcquire(clock_.now());
        if (!decision.granted()) {
          EXPECT_EQ(decision.rejection, FallbackRejection::kMaxConcurrent);
          rejected.fetch_add(1);
          continue;
        }
        uint32_t in_flight = capacity.inFlight();
        uint32_t seen = peak.load();
        while (in_flight > seen && !peak.compare_exchange_weak(seen, in_flight)) {
        }
      }
    });
  }
  start.store(true);
  for (std::thread& thread : threads) {
    thread.join();
  }
  EXPECT_LE(peak.load(), kMax);
  EXPECT_EQ(capacity.inFlight(), 0u);
}

TEST_F(BreakerFallbackCapacityTest, GrantKeepsSharedCapacityAlive) {
  auto capacity = std::make_shared<FallbackCapacity>(options(1, 0, 0));
  std::weak_ptr<FallbackCapacity> watch = capacity;
  FallbackDecision decision = capacity->tryAcquire(clock_.now());
  ASSERT_TRUE(decision.granted());

  // A reload drops the cluster's reference while the request is in flight.
  capacity.reset();
  EXPECT_FALSE(watch.expired());
  decision.grant.reset();
  EXPECT_TRUE(watch.expired());
}

TEST_F(BreakerFallbackCapacityTest, RejectionNames) {
  EXPECT_EQ(toString(FallbackRejection::kMaxConcurrent), "max_concurrent");
  EXPECT_EQ(toString(FallbackRejection::kMaxRps), "max_rps");
  EXPECT_EQ(toString(FallbackRejection::kFallbackOpen), "fallback_open");
  EXPECT_EQ(toString(FallbackRejection::kFallbackDeferring), "fallback_deferring");
}

class BreakerFallbackAdmissionTest : public BreakerFallbackCapacityTest {
protected:
  std::shared_ptr<CircuitBreaker> makeFallbackBreaker(bool shadow) {
    BreakerOptions breaker_options;
    breaker_options.consecutive_failures = 1;
    breaker_options.probes = 1;
    breaker_options.base_cooldown = 10s;
    breaker_options.jitter = 0;
    breaker_options.shadow = shadow;
    return CircuitBreaker::create(breaker_options, clock_.now(), [] { return 0.5; });
  }

  void tripFallback(CircuitBreaker& breaker) {
    CallResult failure;
    failure.local_failure = LocalFailure::kConnectFailure;
    breaker.allow(clock_.now()).record(failure, clock_.now());
    ASSERT_EQ(breaker.lastState(), BreakerState::kOpen);
  }
};

TEST_F(BreakerFallbackAdmissionTest, OpenFallbackNotUsed) {
  auto breaker = makeFallbackBreaker(false);
  FallbackCapacity capacity(options(10, 0, 0));
  EXPECT_TRUE(admitToFallback(*breaker, capacity, clock_.now()).granted());

  tripFallback(*breaker);
  FallbackDecision decision = admitToFallback(*breaker, capacity, clock_.now());
  EXPECT_FALSE(decision.granted());
  EXPECT_EQ(decision.rejection, FallbackRejection::kFallbackOpen);
  EXPECT_EQ(capacity.inFlight(), 0u);
}

TEST_F(BreakerFallbackAdmissionTest, GrantCarriesBreakerAdmission) {
  auto breaker = makeFallbackBreaker(false);
  FallbackCapacity capacity(options(10, 0, 0));
  FallbackDecision decision = admitToFallback(*breaker, capacity, clock_.now());
  ASSERT_TRUE(decision.granted());
  EXPECT_EQ(decision.grant->admission.verdict(), Admission::Verdict::kAllowed);

  // The fallback's failure, recorded through the grant, opens the fallback's breaker.
  CallResult failure;
  failure.http_status = 503;
  decision.grant->admission.record(failure, clock_.now());
  EXPECT_EQ(breaker->lastState(), BreakerState::kOpen);
}

TEST_F(BreakerFallbackAdmissionTest, CapacityRejectFreesProbeTicket) {
  auto breaker = makeFallbackBreaker(false);
  FallbackCapacity capacity(options(1, 0, 0));
  tripFallback(*breaker);
  clock_.advance(10s);

  FallbackDecision blocker = capacity.tryAcquire(clock_.now());
  ASSERT_TRUE(blocker.granted());
  FallbackDecision rejected = admitToFallback(*breaker, capacity, clock_.now());
  EXPECT_EQ(rejected.rejection, FallbackRejection::kMaxConcurrent);
  blocker.grant.reset();

  // The single probe ticket was not used up by the rejected request.
  FallbackDecision probe = admitToFallback(*breaker, capacity, clock_.now());
  ASSERT_TRUE(probe.granted());
  EXPECT_EQ(probe.grant->admission.verdict(), Admission::Verdict::kProbe);
}

TEST_F(BreakerFallbackAdmissionTest, ShadowFallbackStillUsed) {
  auto breaker = makeFallbackBreaker(true);
  FallbackCapacity capacity(options(10, 0, 0));
  tripFallback(*breaker);

  EXPECT_TRUE(admitToFallback(*breaker, capacity, clock_.now()).granted());
  EXPECT_EQ(breaker->shadowRejections(), 1u);
}

} // namespace
} // namespace deferd::filters::breaker
