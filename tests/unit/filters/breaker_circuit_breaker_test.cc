#include "filters/breaker/circuit_breaker.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <mutex>
#include <thread>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::breaker {
namespace {

using namespace std::chrono_literals;
using deferd::testing::FakeDispatcher;
using Verdict = Admission::Verdict;

CallResult ok() {
  CallResult result;
  result.http_status = 200;
  return result;
}

CallResult serverError() {
  CallResult result;
  result.http_status = 503;
  return result;
}

// A breaker that opens only on consecutive failures unless a test sets other options, without
// jitter, on a fake clock, recording every transition.
class BreakerStateMachineTest : public ::testing::Test {
protected:
  static BreakerOptions baseOptions() {
    BreakerOptions options;
    options.window.kind = WindowOptions::Kind::kCount;
    options.window.size = 10;
    options.min_requests = 10;
    options.failure_rate_threshold = 0;
    options.slow_call_rate_threshold = 0;
    options.consecutive_failures = 3;
    options.probes = 2;
    options.probe_timeout = 2s;
    options.base_cooldown = 10s;
    options.cooldown_multiplier = 2.0;
    options.max_cooldown = 60s;
    options.jitter = 0;
    return options;
  }

  CircuitBreaker& makeBreaker(const BreakerOptions& options) {
    breaker_ = CircuitBreaker::create(
        options, clock_.now(), [this] { return random_value_; },
        [this](const BreakerTransition& transition) {
          std::lock_guard lock(transitions_mutex_);
          transitions_.push_back(transition);
        });
    return *breaker_;
  }

  // Sends one request through the breaker and records its result at once.
  Verdict call(const CallResult& result) {
    Admission admission = breaker_->allow(clock_.now());
    Verdict verdict = admission.verdict();
    admission.record(result, clock_.now());
    return verdict;
  }

  void trip() {
    for (int i = 0; i < 3; ++i) {
      call(serverError());
    }
    ASSERT_EQ(breaker_->state(clock_.now()), BreakerState::kOpen);
  }

  const BreakerTransition& lastTransition() {
    EXPECT_FALSE(transitions_.empty());
    return transitions_.back();
  }

  FakeDispatcher clock_;
  double random_value_ = 0.5;
  std::shared_ptr<CircuitBreaker> breaker_;
  std::mutex transitions_mutex_;
  std::vector<BreakerTransition> transitions_;
};

TEST_F(BreakerStateMachineTest, ClosedAllowsEverything) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(call(ok()), Verdict::kAllowed);
  }
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
  EXPECT_TRUE(transitions_.empty());
  EXPECT_EQ(breaker.windowCounts(clock_.now()).calls, 10u);
}

TEST_F(BreakerStateMachineTest, OpensOnConsecutiveFailures) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  call(serverError());
  call(serverError());
  call(ok()); // breaks the run
  call(serverError());
  call(serverError());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);

  call(serverError());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  ASSERT_EQ(transitions_.size(), 1u);
  EXPECT_EQ(lastTransition().from, BreakerState::kClosed);
  EXPECT_EQ(lastTransition().to, BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kConsecutiveFailures);
  EXPECT_EQ(lastTransition().cooldown, 10s);
  EXPECT_EQ(lastTransition().window.failures, 5u);
  EXPECT_EQ(breaker.trips(), 1u);
}

TEST_F(BreakerStateMachineTest, FailureRateNeedsMinRequests) {
  BreakerOptions options = baseOptions();
  options.consecutive_failures = 0;
  options.failure_rate_threshold = 0.5;
  options.min_requests = 10;
  CircuitBreaker& breaker = makeBreaker(options);

  // Nine failures in a row: a rate of 100 %, but below min_requests.
  for (int i = 0; i < 9; ++i) {
    call(serverError());
  }
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);

  call(serverError());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kFailureRate);
  EXPECT_EQ(lastTransition().window.calls, 10u);
}

TEST_F(BreakerStateMachineTest, OpensAtFailureRateThreshold) {
  BreakerOptions options = baseOptions();
  options.consecutive_failures = 0;
  options.failure_rate_threshold = 0.5;
  CircuitBreaker& breaker = makeBreaker(options);

  // Alternating outcomes: 4 failures after 9 calls, and the 10th call makes 5 of 10.
  for (int i = 0; i < 9; ++i) {
    call(i % 2 == 0 ? ok() : serverError());
  }
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
  call(serverError());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kFailureRate);
  EXPECT_EQ(lastTransition().window.failures, 5u);
}

TEST_F(BreakerStateMachineTest, StaysClosedBelowFailureRate) {
  BreakerOptions options = baseOptions();
  options.consecutive_failures = 0;
  options.failure_rate_threshold = 0.5;
  CircuitBreaker& breaker = makeBreaker(options);

  // Four failures in every ten calls, for a long time.
  for (int i = 0; i < 200; ++i) {
    call(i % 10 < 4 ? serverError() : ok());
  }
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
  EXPECT_TRUE(transitions_.empty());
}

TEST_F(BreakerStateMachineTest, OpensOnSlowCallRate) {
  BreakerOptions options = baseOptions();
  options.consecutive_failures = 0;
  options.failure_rate_threshold = 0.5;
  options.slow_call_rate_threshold = 0.8;
  options.classifier.slow_call = 100ms;
  CircuitBreaker& breaker = makeBreaker(options);

  // Eight slow calls and two fast ones: 80 % slow once the window contains ten.
  for (int i = 0; i < 10; ++i) {
    Admission admission = breaker.allow(clock_.now());
    clock_.advance(i < 2 ? 10ms : 200ms);
    admission.record(ok(), clock_.now());
    EXPECT_EQ(breaker.state(clock_.now()), i < 9 ? BreakerState::kClosed : BreakerState::kOpen);
  }
  EXPECT_EQ(lastTransition().cause, TransitionCause::kSlowCallRate);
  EXPECT_EQ(lastTransition().window.slow_calls, 8u);
}

TEST_F(BreakerStateMachineTest, OpenRejectsWithRetryAfter) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();

  clock_.advance(2500ms);
  Admission rejected = breaker.allow(clock_.now());
  EXPECT_EQ(rejected.verdict(), Verdict::kRejected);
  EXPECT_FALSE(rejected.sendToPrimary());
  EXPECT_EQ(rejected.retryAfter(), 7500ms);
  EXPECT_EQ(breaker.rejections(), 1u);

  // Recording on a rejected admission does nothing.
  rejected.record(serverError(), clock_.now());
  EXPECT_EQ(breaker.windowCounts(clock_.now()).calls, 3u);
}

TEST_F(BreakerStateMachineTest, HalfOpenAfterCooldown) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();

  clock_.advance(9999ms);
  EXPECT_EQ(breaker.allow(clock_.now()).verdict(), Verdict::kRejected);
  clock_.advance(1ms);

  Admission probe = breaker.allow(clock_.now());
  EXPECT_EQ(probe.verdict(), Verdict::kProbe);
  EXPECT_TRUE(probe.sendToPrimary());
  EXPECT_EQ(breaker.lastState(), BreakerState::kHalfOpen);
  EXPECT_EQ(lastTransition().from, BreakerState::kOpen);
  EXPECT_EQ(lastTransition().to, BreakerState::kHalfOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kCooldownElapsed);
}

TEST_F(BreakerStateMachineTest, ExactlyProbesThenRejects) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  Admission first = breaker.allow(clock_.now());
  clock_.advance(500ms);
  Admission second = breaker.allow(clock_.now());
  Admission third = breaker.allow(clock_.now());
  EXPECT_EQ(first.verdict(), Verdict::kProbe);
  EXPECT_EQ(second.verdict(), Verdict::kProbe);
  EXPECT_EQ(third.verdict(), Verdict::kRejected);
  // The first probe times out 1.5 s from now, the earliest moment anything can change.
  EXPECT_EQ(third.retryAfter(), 1500ms);
  EXPECT_EQ(breaker.probesIssued(), 2u);
}

TEST_F(BreakerStateMachineTest, ClosesWhenAllProbesSucceed) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  Admission first = breaker.allow(clock_.now());
  Admission second = breaker.allow(clock_.now());
  first.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kHalfOpen);
  // A succeeded probe keeps its ticket: no third probe.
  EXPECT_EQ(breaker.allow(clock_.now()).verdict(), Verdict::kRejected);

  second.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbesSucceeded);
  EXPECT_EQ(breaker.windowCounts(clock_.now()).calls, 0u);
  EXPECT_EQ(breaker.allow(clock_.now()).verdict(), Verdict::kAllowed);
}

TEST_F(BreakerStateMachineTest, FailedProbeReopensLonger) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  Admission first = breaker.allow(clock_.now());
  Admission second = breaker.allow(clock_.now());
  first.record(ok(), clock_.now());
  second.record(serverError(), clock_.now());

  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().from, BreakerState::kHalfOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeFailed);
  EXPECT_EQ(lastTransition().cooldown, 20s);
  EXPECT_EQ(breaker.allow(clock_.now()).retryAfter(), 20s);
}

TEST_F(BreakerStateMachineTest, SlowProbeFails) {
  BreakerOptions options = baseOptions();
  options.classifier.slow_call = 100ms;
  CircuitBreaker& breaker = makeBreaker(options);
  trip();
  clock_.advance(10s);

  Admission probe = breaker.allow(clock_.now());
  clock_.advance(150ms);
  probe.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeFailed);
}

TEST_F(BreakerStateMachineTest, ReportedProbeTimeoutReopens) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  Admission probe = breaker.allow(clock_.now());
  clock_.advance(1s);
  probe.recordTimeout(clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeTimeout);
  EXPECT_EQ(lastTransition().cooldown, 20s);
}

TEST_F(BreakerStateMachineTest, ProbeTimeoutEvenWhenTimeoutsDoNotCount) {
  BreakerOptions options = baseOptions();
  options.classifier.failure_on_timeout = false;
  CircuitBreaker& breaker = makeBreaker(options);
  trip();
  clock_.advance(10s);

  Admission probe = breaker.allow(clock_.now());
  probe.recordTimeout(clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeTimeout);
}

TEST_F(BreakerStateMachineTest, SilentProbeTimesOutByItself) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  // The probe never answers and no caller reports it.
  Admission probe = breaker.allow(clock_.now());
  Admission second = breaker.allow(clock_.now());
  clock_.advance(1999ms);
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kHalfOpen);

  clock_.advance(1ms);
  Admission next = breaker.allow(clock_.now());
  EXPECT_EQ(next.verdict(), Verdict::kRejected);
  EXPECT_EQ(next.retryAfter(), 20s);
  EXPECT_EQ(breaker.lastState(), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeTimeout);
  EXPECT_EQ(lastTransition().at, clock_.now());

  // The late result belongs to the ended half-open period and changes nothing.
  size_t before = transitions_.size();
  probe.record(ok(), clock_.now());
  second.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(transitions_.size(), before);
  EXPECT_EQ(breaker.staleResults(), 2u);
}

TEST_F(BreakerStateMachineTest, LateSuccessAfterTimeoutStillFails) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  Admission probe = breaker.allow(clock_.now());
  Admission second = breaker.allow(clock_.now());
  second.record(ok(), clock_.now());
  clock_.advance(3s);
  probe.record(ok(), clock_.now());

  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeTimeout);
}

TEST_F(BreakerStateMachineTest, AbandonedProbeKeepsTicketUntilTimeout) {
  BreakerOptions options = baseOptions();
  CircuitBreaker& breaker = makeBreaker(options);
  trip();
  clock_.advance(10s);

  Admission first = breaker.allow(clock_.now());
  {
    Admission cancelled = breaker.allow(clock_.now());
    EXPECT_EQ(cancelled.verdict(), Verdict::kProbe);
  }

  // No request takes the abandoned probe's place.
  EXPECT_EQ(breaker.allow(clock_.now()).verdict(), Verdict::kRejected);
  first.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kHalfOpen);

  // Without a response, it fails like a silent probe.
  clock_.advance(options.probe_timeout);
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);
  EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeTimeout);
}

TEST_F(BreakerStateMachineTest, MovedAdmissionRecordsOnce) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);

  Admission original = breaker.allow(clock_.now());
  Admission moved = std::move(original);
  // The moved-from admission contains nothing: it neither records nor frees the ticket.
  original.record(serverError(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kHalfOpen);

  moved.record(ok(), clock_.now());
  moved.record(serverError(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kHalfOpen);

  Admission second = breaker.allow(clock_.now());
  second.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
}

TEST_F(BreakerStateMachineTest, StaleClosedResultIgnored) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  Admission slow_call = breaker.allow(clock_.now());
  trip();

  slow_call.record(serverError(), clock_.now());
  EXPECT_EQ(breaker.staleResults(), 1u);
  EXPECT_EQ(breaker.windowCounts(clock_.now()).calls, 3u);
}

TEST_F(BreakerStateMachineTest, CooldownGrowsToCap) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();

  // Each failed half-open period doubles the cooldown: 10, 20, 40, then 60 (the cap).
  const std::chrono::milliseconds expected[] = {20s, 40s, 60s, 60s, 60s};
  std::chrono::milliseconds cooldown = 10s;
  for (auto next : expected) {
    SCOPED_TRACE(next.count());
    clock_.advance(cooldown);
    EXPECT_EQ(call(serverError()), Verdict::kProbe);
    EXPECT_EQ(lastTransition().cause, TransitionCause::kProbeFailed);
    EXPECT_EQ(lastTransition().cooldown, next);
    cooldown = next;
  }
  EXPECT_EQ(breaker.trips(), 6u);
}

TEST_F(BreakerStateMachineTest, CloseResetsBackoff) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);
  call(serverError());
  EXPECT_EQ(lastTransition().cooldown, 20s);

  clock_.advance(20s);
  call(ok());
  call(ok());
  ASSERT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);

  trip();
  EXPECT_EQ(lastTransition().cooldown, 10s);
}

TEST_F(BreakerStateMachineTest, JitterStaysInBounds) {
  BreakerOptions options = baseOptions();
  options.jitter = 0.2;
  options.max_cooldown = 30s;
  makeBreaker(options);

  // Lowest random value: 20 % less. Highest: 20 % more, then the cap once the base passes it.
  random_value_ = 0.0;
  trip();
  EXPECT_EQ(lastTransition().cooldown, 8s);

  random_value_ = 0.999999;
  clock_.advance(8s);
  call(serverError());
  EXPECT_GE(lastTransition().cooldown, 23999ms);
  EXPECT_LE(lastTransition().cooldown, 24s);

  clock_.advance(24s);
  call(serverError());
  EXPECT_EQ(lastTransition().cooldown, 30s); // 40 s capped to 30 s, and jitter cannot pass it

  random_value_ = 0.0;
  clock_.advance(30s);
  call(serverError());
  EXPECT_EQ(lastTransition().cooldown, 24s); // the capped 30 s, less 20 %
}

TEST_F(BreakerStateMachineTest, NanOptionsMeanNoGrowth) {
  BreakerOptions options = baseOptions();
  options.cooldown_multiplier = std::nan("");
  options.jitter = std::nan("");
  makeBreaker(options);
  random_value_ = std::nan("");

  trip();
  EXPECT_EQ(lastTransition().cooldown, 10s);
  clock_.advance(10s);
  call(serverError());
  EXPECT_EQ(lastTransition().cooldown, 10s);
}

TEST_F(BreakerStateMachineTest, DefaultRandomSourceWithinJitter) {
  BreakerOptions options = baseOptions();
  options.jitter = 0.5;
  breaker_ = CircuitBreaker::create(options, clock_.now());
  trip();

  Admission rejected = breaker_->allow(clock_.now());
  EXPECT_GE(rejected.retryAfter(), 5s);
  EXPECT_LE(rejected.retryAfter(), 15s);
}

TEST_F(BreakerStateMachineTest, EachTransitionReportedOnce) {
  CircuitBreaker& breaker = makeBreaker(baseOptions());
  trip();
  clock_.advance(10s);
  call(ok());
  call(ok());
  ASSERT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);

  ASSERT_EQ(transitions_.size(), 3u);
  EXPECT_EQ(transitions_[0].cause, TransitionCause::kConsecutiveFailures);
  EXPECT_EQ(transitions_[1].cause, TransitionCause::kCooldownElapsed);
  EXPECT_EQ(transitions_[2].cause, TransitionCause::kProbesSucceeded);
  for (size_t i = 0; i < transitions_.size(); ++i) {
    EXPECT_EQ(transitions_[i].sequence, i + 1);
    EXPECT_FALSE(transitions_[i].shadow);
  }
}

TEST_F(BreakerStateMachineTest, ListenerRunsOutsideLock) {
  // A listener that reads the breaker would deadlock if it ran under the breaker's lock.
  std::vector<BreakerState> seen;
  std::shared_ptr<CircuitBreaker> breaker;
  breaker = CircuitBreaker::create(baseOptions(), clock_.now(), {},
                                   [&](const BreakerTransition& transition) {
                                     seen.push_back(transition.to);
                                     breaker->windowCounts(clock_.now());
                                   });
  for (int i = 0; i < 3; ++i) {
    breaker->allow(clock_.now()).record(serverError(), clock_.now());
  }
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], BreakerState::kOpen);
}

TEST_F(BreakerStateMachineTest, CauseNames) {
  EXPECT_EQ(toString(TransitionCause::kFailureRate), "failure_rate");
  EXPECT_EQ(toString(TransitionCause::kSlowCallRate), "slow_call_rate");
  EXPECT_EQ(toString(TransitionCause::kConsecutiveFailures), "consecutive_failures");
  EXPECT_EQ(toString(TransitionCause::kProbeFailed), "probe_failed");
  EXPECT_EQ(toString(TransitionCause::kProbeTimeout), "probe_timeout");
  EXPECT_EQ(toString(TransitionCause::kProbesSucceeded), "probes_succeeded");
  EXPECT_EQ(toString(TransitionCause::kCooldownElapsed), "cooldown_elapsed");
  EXPECT_EQ(toString(BreakerState::kHalfOpen), "half_open");
}

TEST_F(BreakerStateMachineTest, ShadowLetsEverythingThrough) {
  BreakerOptions options = baseOptions();
  options.shadow = true;
  CircuitBreaker& breaker = makeBreaker(options);
  trip();
  EXPECT_TRUE(lastTransition().shadow);

  // Open: the verdict is rejected, but the request still goes to the primary.
  Admission would_reject = breaker.allow(clock_.now());
  EXPECT_EQ(would_reject.verdict(), Verdict::kRejected);
  EXPECT_TRUE(would_reject.shadow());
  EXPECT_TRUE(would_reject.sendToPrimary());
  would_reject.record(ok(), clock_.now());
  EXPECT_EQ(breaker.shadowRejections(), 1u);
  EXPECT_EQ(breaker.rejections(), 0u);
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kOpen);

  // Half-open: two would-be probes, then every other request would be rejected.
  clock_.advance(10s);
  Admission first = breaker.allow(clock_.now());
  Admission second = breaker.allow(clock_.now());
  Admission third = breaker.allow(clock_.now());
  EXPECT_EQ(first.verdict(), Verdict::kProbe);
  EXPECT_EQ(second.verdict(), Verdict::kProbe);
  EXPECT_EQ(third.verdict(), Verdict::kRejected);
  EXPECT_TRUE(third.sendToPrimary());
  EXPECT_EQ(breaker.shadowRejections(), 2u);

  // The would-be rejected request's result does not count; the probes decide.
  third.record(serverError(), clock_.now());
  first.record(ok(), clock_.now());
  second.record(ok(), clock_.now());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
  EXPECT_EQ(breaker.trips(), 1u);
}

TEST_F(BreakerStateMachineTest, TimeWindowForgetsOldFailures) {
  BreakerOptions options = baseOptions();
  options.window.kind = WindowOptions::Kind::kTime;
  options.window.duration = 10s;
  options.window.buckets = 10;
  options.consecutive_failures = 0;
  options.failure_rate_threshold = 0.5;
  options.min_requests = 4;
  CircuitBreaker& breaker = makeBreaker(options);

  call(serverError());
  call(serverError());
  call(serverError());
  clock_.advance(10s);
  // The three failures have left the window: 1 of 4 would not open, and this makes 1 of 1.
  call(serverError());
  EXPECT_EQ(breaker.state(clock_.now()), BreakerState::kClosed);
  EXPECT_EQ(breaker.windowCounts(clock_.now()).calls, 1u);
}

TEST_F(BreakerStateMachineTest, ProbesNeverExceedLimitAcrossThreads) {
  BreakerOptions options = baseOptions();
  options.probes = 3;
  CircuitBreaker& breaker = makeBreaker(options);
  trip();
  clock_.advance(10s);

  // Eight threads race for tickets and keep every probe they get; the clock does not move.
  constexpr int kThreads = 8;
  constexpr int kAttempts = 2000;
  MonotonicTime now = clock_.now();
  std::atomic<bool> start{false};
  std::mutex probes_mutex;
  std::vector<Admission> probes_held;
  std::atomic<int> rejected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      while (!start.load()) {
        std::this_thread::yield();
      }
      for (int i = 0; i < kAttempts; ++i) {
        Admission admission = breaker.allow(now);
        if (admission.verdict() == Verdict::kProbe) {
          std::lock_guard lock(probes_mutex);
          probes_held.push_back(std::move(admission));
        } else {
          rejected.fetch_add(1);
        }
      }
    });
  }
  start.store(true);
  for (std::thread& thread : threads) {
    thread.join();
  }

  EXPECT_EQ(probes_held.size(), 3u);
  EXPECT_EQ(rejected.load(), kThreads * kAttempts - 3);
  EXPECT_EQ(breaker.probesIssued(), 3u);

  for (Admission& admission : probes_held) {
    admission.record(ok(), now);
  }
  EXPECT_EQ(breaker.state(now), BreakerState::kClosed);
}

TEST_F(BreakerStateMachineTest, ProbesAndReleasesAcrossThreads) {
  // Threads take tickets and drop them at once. A dropped ticket is not given back, so the
  // whole half-open period lets exactly `probes` requests through.
  BreakerOptions options = baseOptions();
  options.probes = 2;
  CircuitBreaker& breaker = makeBreaker(options);
  trip();
  clock_.advance(10s);

  constexpr int kThreads = 8;
  MonotonicTime now = clock_.now();
  std::atomic<int> outstanding{0};
  std::atomic<int> max_outstanding{0};
  std::atomic<int> probes{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) {
        Admission admission = breaker.allow(now);
        if (admission.verdict() != Verdict::kProbe) {
          continue;
        }
        probes.fetch_add(1);
        int current = outstanding.fetch_add(1) + 1;
        int seen = max_outstanding.load();
        while (current > seen && !max_outstanding.compare_exchange_weak(seen, current)) {
        }
        // Counted down before the admission frees its ticket at the end of the scope.
        outstanding.fetch_sub(1);
      }
    });
  }
  for (std::thread& thread : threads) {
    thread.join();
  }

  EXPECT_LE(max_outstanding.load(), 2);
  EXPECT_EQ(probes.load(), 2);
  EXPECT_EQ(breaker.state(now), BreakerState::kHalfOpen);
}

} // namespace
} // namespace deferd::filters::breaker
