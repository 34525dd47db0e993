#include "filters/breaker/breaker_filter.h"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "filters/common/endpoint.h"
#include "tests/unit/test_support.h"

namespace deferd::filters::breaker {
namespace {

using namespace std::chrono_literals;
using testing::FakeDispatcher;
using testing::FakeFilterCallbacks;
using testing::TestHeaderMap;

constexpr size_t kPrimaryIndex = 0;
constexpr size_t kFallbackIndex = 1;

// Callbacks of one request that share the test's clock.
class RequestCallbacks : public FakeFilterCallbacks {
public:
  explicit RequestCallbacks(FakeDispatcher& clock) : clock_(clock) {}
  Dispatcher& dispatcher() override { return clock_; }

private:
  FakeDispatcher& clock_;
};

// One request through its own filter instance.
struct Request {
  Request(const BreakerRouteConfig& config, FakeDispatcher& clock, std::string id = "")
      : callbacks(clock), filter(config) {
    callbacks.info.request_id = id_storage = std::move(id);
    filter.setCallbacks(callbacks);
  }

  FilterStatus start() { return filter.onRequestHeaders(headers); }

  // The upstream responded with `status`.
  void respond(int status) {
    TestHeaderMap response;
    filter.onResponseHeaders(status, response);
    filter.onStreamEnd(StreamEnd::kCompleted);
  }

  // deferd replied in the upstream's place with `reason`.
  void failLocally(LocalReplyReason reason) {
    callbacks.info.local_reply = reason;
    TestHeaderMap response;
    filter.onResponseHeaders(localReplySpec(reason).status, response);
    filter.onStreamEnd(StreamEnd::kLocalReply);
  }

  std::string id_storage;
  RequestCallbacks callbacks;
  TestHeaderMap headers;
  BreakerFilter filter;
};

class BreakerFilterTest : public ::testing::Test {
protected:
  BreakerFilterTest() {
    policy_.consecutive_failures = 3;
    policy_.min_requests = 100;
    policy_.cooldown = 5s;
    policy_.jitter = 0;
    policy_.probes = 1;
    policy_.probe_timeout = 2s;

    auto& state = prometheus::BuildGauge().Name("state").Register(registry_);
    auto& counters = prometheus::BuildCounter().Name("counters").Register(registry_);
    auto& gauges = prometheus::BuildGauge().Name("gauges").Register(registry_);
    for (BreakerStats* stats : {&primary_stats_, &fallback_stats_}) {
      std::string cluster = stats == &primary_stats_ ? "primary" : "fallback";
      for (size_t s = 0; s < kBreakerStates; ++s) {
        stats->state[s] = &state.Add({{"c", cluster}, {"s", std::to_string(s)}});
        for (size_t c = 0; c < kTransitionCauses; ++c) {
          stats->transitions[s][c] = &counters.Add(
              {{"c", cluster}, {"to", std::to_string(s)}, {"cause", std::to_string(c)}});
        }
      }
      for (size_t i = 0; i < stats->calls.size(); ++i) {
        stats->calls[i] = &counters.Add({{"c", cluster}, {"call", std::to_string(i)}});
      }
      stats->shadow_rejections = &counters.Add({{"c", cluster}, {"what", "shadow"}});
      for (size_t r = 0; r < kFallbackRejections; ++r) {
        stats->fallback_rejections[r] =
            &counters.Add({{"c", cluster}, {"rejection", std::to_string(r)}});
      }
      stats->fallback_loop = &counters.Add({{"c", cluster}, {"what", "loop"}});
      stats->ejected_endpoints = &gauges.Add({{"c", cluster}});
    }
    fallback_requests_ = &counters.Add({{"what", "fallback_requests"}});
  }

  BreakerTarget target(const std::string& cluster, size_t index, BreakerStats* stats,
                       bool shadow = false) {
    BreakerTarget target;
    target.cluster = cluster;
    target.cluster_index = index;
    target.breaker = CircuitBreaker::create(breakerOptions(policy_, shadow), clock_.now(), {},
                                            transitionListener("guard", cluster, stats));
    target.stats = stats;
    return target;
  }

  // A route config without a fallback.
  BreakerRouteConfig withoutFallback(bool shadow = false) {
    BreakerRouteConfig config;
    config.primary = target("primary", kPrimaryIndex, &primary_stats_, shadow);
    config.service = "checkout";
    config.probe_timeout = policy_.probe_timeout;
    return config;
  }

  BreakerRouteConfig withFallback(uint32_t max_concurrent, double max_rps = 0) {
    BreakerRouteConfig config = withoutFallback();
    config.fallback = target("fallback", kFallbackIndex, &fallback_stats_);
    config::Capacity capacity;
    capacity.max_concurrent = max_concurrent;
    if (max_rps > 0) {
      capacity.max_rps = max_rps;
    }
    config.capacity = std::make_shared<FallbackCapacity>(capacityOptions(capacity));
    config.fallback_requests = fallback_requests_;
    return config;
  }

  // Opens the primary's breaker with consecutive connect failures.
  void trip(const BreakerRouteConfig& config) {
    for (uint32_t i = 0; i < policy_.consecutive_failures; ++i) {
      Request request(config, clock_);
      ASSERT_EQ(request.start(), FilterStatus::kContinue);
      request.failLocally(LocalReplyReason::kConnectFailed);
    }
    ASSERT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kOpen);
  }

  static double count(const BreakerStats& stats, CallCount call) {
    return stats.calls[static_cast<size_t>(call)]->Value();
  }

  config::BreakerPolicy policy_;
  FakeDispatcher clock_;
  prometheus::Registry registry_;
  BreakerStats primary_stats_;
  BreakerStats fallback_stats_;
  prometheus::Counter* fallback_requests_ = nullptr;
};

TEST_F(BreakerFilterTest, ClosedPassesAndCountsOutcomes) {
  BreakerRouteConfig config = withoutFallback();
  Request ok(config, clock_);
  EXPECT_EQ(ok.start(), FilterStatus::kContinue);
  ok.respond(200);
  Request failed(config, clock_);
  EXPECT_EQ(failed.start(), FilterStatus::kContinue);
  failed.respond(503);

  EXPECT_EQ(count(primary_stats_, CallCount::kSuccess), 1);
  EXPECT_EQ(count(primary_stats_, CallCount::kFailure), 1);
  EXPECT_TRUE(ok.callbacks.replies.empty());
  EXPECT_FALSE(ok.callbacks.routed_to);
}

TEST_F(BreakerFilterTest, OpenWithoutFallbackRepliesWithRetryAfter) {
  BreakerRouteConfig config = withoutFallback();
  trip(config);
  EXPECT_EQ(primary_stats_
                .transitions[static_cast<size_t>(BreakerState::kOpen)]
                            [static_cast<size_t>(TransitionCause::kConsecutiveFailures)]
                ->Value(),
            1);

  clock_.advance(1500ms);
  Request request(config, clock_);
  EXPECT_EQ(request.start(), FilterStatus::kStop);
  EXPECT_EQ(request.callbacks.replies, std::vector{LocalReplyReason::kBreakerOpen});
  // 3.5 s until the cooldown ends, rounded up.
  EXPECT_EQ(request.callbacks.info.retry_after, 4s);
  EXPECT_EQ(count(primary_stats_, CallCount::kRejected), 1);
}

TEST_F(BreakerFilterTest, OwnLocalRepliesAreNotUpstreamOutcomes) {
  BreakerRouteConfig config = withoutFallback();
  for (int i = 0; i < 5; ++i) {
    Request request(config, clock_);
    ASSERT_EQ(request.start(), FilterStatus::kContinue);
    request.failLocally(LocalReplyReason::kLoadShed);
  }
  EXPECT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kClosed);
  EXPECT_EQ(count(primary_stats_, CallCount::kFailure), 0);
}

TEST_F(BreakerFilterTest, ResetAfterResponseStartedIsFailure) {
  BreakerRouteConfig config = withoutFallback();
  for (uint32_t i = 0; i < policy_.consecutive_failures; ++i) {
    Request request(config, clock_);
    ASSERT_EQ(request.start(), FilterStatus::kContinue);
    request.filter.onStreamEnd(StreamEnd::kUpstreamFailed);
  }
  EXPECT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kOpen);
}

TEST_F(BreakerFilterTest, GrpcStatusCounts) {
  BreakerRouteConfig config = withoutFallback();
  for (uint32_t i = 0; i < policy_.consecutive_failures; ++i) {
    Request request(config, clock_);
    ASSERT_EQ(request.start(), FilterStatus::kContinue);
    TestHeaderMap response{{"grpc-status", "14"}};
    request.filter.onResponseHeaders(200, response);
    request.filter.onStreamEnd(StreamEnd::kCompleted);
  }
  EXPECT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kOpen);
}

TEST_F(BreakerFilterTest, RedirectsWithinFallbackCapacity) {
  BreakerRouteConfig config = withFallback(/*max_concurrent=*/1);
  trip(config);

  Request first(config, clock_);
  EXPECT_EQ(first.start(), FilterStatus::kContinue);
  EXPECT_EQ(first.callbacks.routed_to, kFallbackIndex);
  EXPECT_EQ(first.headers.get(kFallbackPathHeader), "checkout");
  EXPECT_EQ(first.callbacks.info.decision, "fallback");
  EXPECT_EQ(fallback_requests_->Value(), 1);

  // The fallback's single slot is taken until the first request ends.
  Request second(config, clock_);
  EXPECT_EQ(second.start(), FilterStatus::kStop);
  EXPECT_EQ(second.callbacks.replies, std::vector{LocalReplyReason::kFallbackCapacity});
  EXPECT_FALSE(second.callbacks.routed_to);
  EXPECT_EQ(
      primary_stats_.fallback_rejections[static_cast<size_t>(FallbackRejection::kMaxConcurrent)]
          ->Value(),
      1);

  first.respond(200);
  EXPECT_EQ(count(fallback_stats_, CallCount::kSuccess), 1);
  Request third(config, clock_);
  EXPECT_EQ(third.start(), FilterStatus::kContinue);
  EXPECT_EQ(third.callbacks.routed_to, kFallbackIndex);
}

TEST_F(BreakerFilterTest, DeferringPrimaryMovesWhatFallbackCanTake) {
  EndpointRegistry registry;
  BreakerRouteConfig config = withFallback(1);
  config.fallback_when_deferring = true;
  config.endpoints = &registry;
  std::shared_ptr<SharedEndpoint> primary = registry.get("primary", "10.0.0.1:80");
  registry.get("fallback", "10.0.0.2:80");

  // A healthy primary that does not defer keeps its traffic.
  Request normal(config, clock_);
  EXPECT_EQ(normal.start(), FilterStatus::kContinue);
  EXPECT_FALSE(normal.callbacks.routed_to);
  normal.respond(200);

  // Every primary endpoint defers: the first request fits the fallback, the second goes on
  // to the primary instead of being rejected.
  primary->deferring = true;
  Request moved(config, clock_);
  EXPECT_EQ(moved.start(), FilterStatus::kContinue);
  EXPECT_EQ(moved.callbacks.routed_to, kFallbackIndex);
  EXPECT_EQ(moved.callbacks.info.decision, "fallback-deferring");
  Request kept(config, clock_);
  EXPECT_EQ(kept.start(), FilterStatus::kContinue);
  EXPECT_FALSE(kept.callbacks.routed_to);
  EXPECT_TRUE(kept.callbacks.replies.empty());
  moved.respond(200);
  kept.respond(200);
}

TEST_F(BreakerFilterTest, DeferringFallbackIsNotUsed) {
  EndpointRegistry registry;
  BreakerRouteConfig config = withFallback(10);
  config.endpoints = &registry;
  registry.get("fallback", "10.0.0.2:80")->deferring = true;
  trip(config);

  Request request(config, clock_);
  EXPECT_EQ(request.start(), FilterStatus::kStop);
  EXPECT_EQ(request.callbacks.replies, std::vector{LocalReplyReason::kFallbackCapacity});
  EXPECT_EQ(primary_stats_
                .fallback_rejections[static_cast<size_t>(FallbackRejection::kFallbackDeferring)]
                ->Value(),
            1);
}

TEST_F(BreakerFilterTest, FallbackWithOpenBreakerIsNotUsed) {
  BreakerRouteConfig config = withFallback(10);
  trip(config);
  // Three failed redirects open the fallback's own breaker.
  for (uint32_t i = 0; i < policy_.consecutive_failures; ++i) {
    Request request(config, clock_);
    ASSERT_EQ(request.start(), FilterStatus::kContinue);
    ASSERT_EQ(request.callbacks.routed_to, kFallbackIndex);
    request.respond(502);
  }
  Request request(config, clock_);
  EXPECT_EQ(request.start(), FilterStatus::kStop);
  EXPECT_EQ(request.callbacks.replies, std::vector{LocalReplyReason::kBreakerOpen});
  EXPECT_EQ(
      primary_stats_.fallback_rejections[static_cast<size_t>(FallbackRejection::kFallbackOpen)]
          ->Value(),
      1);
}

TEST_F(BreakerFilterTest, LoopGuardRejectsOrSendsToPrimary) {
  BreakerRouteConfig config = withFallback(10);
  trip(config);

  Request looped(config, clock_);
  looped.headers.set(kFallbackPathHeader, "cart, checkout");
  EXPECT_EQ(looped.start(), FilterStatus::kStop);
  EXPECT_EQ(looped.callbacks.replies, std::vector{LocalReplyReason::kFallbackLoop});
  EXPECT_EQ(primary_stats_.fallback_loop->Value(), 1);

  config.on_loop = LoopPolicy::kSendToPrimary;
  Request primary(config, clock_);
  primary.headers.set(kFallbackPathHeader, "checkout");
  EXPECT_EQ(primary.start(), FilterStatus::kContinue);
  EXPECT_FALSE(primary.callbacks.routed_to);
  EXPECT_TRUE(primary.callbacks.replies.empty());

  Request other(config, clock_);
  other.headers.set(kFallbackPathHeader, "cart");
  EXPECT_EQ(other.start(), FilterStatus::kContinue);
  EXPECT_EQ(other.callbacks.routed_to, kFallbackIndex);
  EXPECT_EQ(other.headers.get(kFallbackPathHeader), "cart, checkout");
}

TEST_F(BreakerFilterTest, ShadowLetsEverythingThroughAndCounts) {
  BreakerRouteConfig config = withoutFallback(/*shadow=*/true);
  trip(config);
  for (int i = 0; i < 4; ++i) {
    Request request(config, clock_);
    EXPECT_EQ(request.start(), FilterStatus::kContinue);
    EXPECT_TRUE(request.callbacks.replies.empty());
    EXPECT_EQ(request.callbacks.info.decision, "breaker-shadow");
    request.respond(200);
  }
  EXPECT_EQ(primary_stats_.shadow_rejections->Value(), 4);
  EXPECT_EQ(count(primary_stats_, CallCount::kRejected), 0);
}

TEST_F(BreakerFilterTest, OutsideRolloutOnlyWatches) {
  BreakerRouteConfig config = withoutFallback();
  config.rollout = 0;
  trip(config);
  Request request(config, clock_, "request-1");
  EXPECT_EQ(request.start(), FilterStatus::kContinue);
  EXPECT_EQ(primary_stats_.shadow_rejections->Value(), 1);
  // Its response is not recorded, so the breaker stays open.
  request.respond(200);
  EXPECT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kOpen);
}

TEST_F(BreakerFilterTest, ProbesCloseTheBreaker) {
  BreakerRouteConfig config = withoutFallback();
  trip(config);
  clock_.advance(5s);
  Request probe(config, clock_);
  EXPECT_EQ(probe.start(), FilterStatus::kContinue);
  Request other(config, clock_);
  EXPECT_EQ(other.start(), FilterStatus::kStop); // the only probe ticket is taken
  probe.respond(200);
  EXPECT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kClosed);
}

TEST_F(BreakerFilterTest, HangingProbeReopensAfterProbeTimeout) {
  BreakerRouteConfig config = withoutFallback();
  trip(config);
  clock_.advance(5s);
  Request probe(config, clock_);
  ASSERT_EQ(probe.start(), FilterStatus::kContinue);
  EXPECT_EQ(config.primary.breaker->lastState(), BreakerState::kHalfOpen);

  clock_.advance(2s);
  EXPECT_EQ(config.primary.breaker->lastState(), BreakerState::kOpen);
  EXPECT_EQ(primary_stats_
                .transitions[static_cast<size_t>(BreakerState::kOpen)]
                            [static_cast<size_t>(TransitionCause::kProbeTimeout)]
                ->Value(),
            1);
  // The late response changes nothing.
  probe.respond(200);
  EXPECT_EQ(config.primary.breaker->state(clock_.now()), BreakerState::kOpen);
}

TEST_F(BreakerFilterTest, CancelledProbeKeepsItsTicket) {
  BreakerRouteConfig config = withoutFallback();
  trip(config);
  clock_.advance(5s);
  SharedEndpoint endpoint("primary", "127.0.0.1:1", 0);
  {
    Request probe(config, clock_);
    ASSERT_EQ(probe.start(), FilterStatus::kContinue);
    probe.callbacks.info.upstream = &endpoint; // it was sent
    probe.filter.onStreamEnd(StreamEnd::kDownstreamClosed);
  }
  // The primary may still be working on the cancelled probe: nothing else goes through.
  Request next(config, clock_);
  EXPECT_EQ(next.start(), FilterStatus::kStop);
  EXPECT_EQ(next.callbacks.replies, std::vector{LocalReplyReason::kBreakerOpen});
}

TEST_F(BreakerFilterTest, ProbeStoppedBeforeSendingGivesTicketBack) {
  BreakerRouteConfig config = withoutFallback();
  trip(config);
  clock_.advance(5s);
  {
    // A later filter (backpressure shedding, say) replied to it before any endpoint was picked.
    Request probe(config, clock_);
    ASSERT_EQ(probe.start(), FilterStatus::kContinue);
    probe.callbacks.info.local_reply = LocalReplyReason::kLoadShed;
    probe.filter.onStreamEnd(StreamEnd::kLocalReply);
  }
  Request next(config, clock_);
  EXPECT_EQ(next.start(), FilterStatus::kContinue);
}

TEST_F(BreakerFilterTest, OutlierEjectionIsCopiedToTheEndpoint) {
  BreakerRouteConfig config = withoutFallback();
  policy_.consecutive_failures = 0; // keep the breaker closed
  config.primary.breaker = CircuitBreaker::create(breakerOptions(policy_, false), clock_.now());
  config::OutlierPolicy outlier;
  outlier.consecutive_failures = 2;
  outlier.base_ejection = 10s;
  outlier.max_ejection_percent = 0.5;
  config.primary.outlier =
      std::make_shared<OutlierDetector>(outlierOptions(outlier), 2, clock_.now());

  SharedEndpoint bad("primary", "127.0.0.1:1", 1);
  SharedEndpoint good("primary", "127.0.0.1:2", 0);
  for (int i = 0; i < 2; ++i) {
    Request request(config, clock_);
    ASSERT_EQ(request.start(), FilterStatus::kContinue);
    request.callbacks.info.upstream = &good;
    request.respond(200);
    EXPECT_FALSE(bad.ejected(clock_.now()));
    Request failing(config, clock_);
    ASSERT_EQ(failing.start(), FilterStatus::kContinue);
    failing.callbacks.info.upstream = &bad;
    failing.respond(500);
  }
  EXPECT_TRUE(bad.ejected(clock_.now()));
  EXPECT_FALSE(good.ejected(clock_.now()));
  EXPECT_EQ(bad.ejected_until_ns.load(), SharedEndpoint::toNanoseconds(clock_.now() + 10s));
  clock_.advance(10s);
  EXPECT_FALSE(bad.ejected(clock_.now()));
}

TEST_F(BreakerFilterTest, ShorterEjectionKeepsLongerOne) {
  // Two breaker policies on one cluster, each with its own outlier detector.
  auto withDetector = [this](std::chrono::milliseconds base_ejection) {
    BreakerRouteConfig config = withoutFallback();
    policy_.consecutive_failures = 0; // keep the breaker closed
    config.primary.breaker = CircuitBreaker::create(breakerOptions(policy_, false), clock_.now());
    config::OutlierPolicy outlier;
    outlier.consecutive_failures = 1;
    outlier.base_ejection = base_ejection;
    outlier.max_ejection_percent = 0.5;
    config.primary.outlier =
        std::make_shared<OutlierDetector>(outlierOptions(outlier), 2, clock_.now());
    return config;
  };
  BreakerRouteConfig long_ejection = withDetector(10s);
  BreakerRouteConfig short_ejection = withDetector(1s);
  SharedEndpoint endpoint("primary", "127.0.0.1:1", 1);

  for (BreakerRouteConfig* config : {&long_ejection, &short_ejection}) {
    Request failing(*config, clock_);
    ASSERT_EQ(failing.start(), FilterStatus::kContinue);
    failing.callbacks.info.upstream = &endpoint;
    failing.respond(500);
  }

  EXPECT_EQ(endpoint.ejected_until_ns.load(), SharedEndpoint::toNanoseconds(clock_.now() + 10s));
  clock_.advance(5s);
  EXPECT_TRUE(endpoint.ejected(clock_.now()));
}

TEST(BreakerCallResultTest, MapsLocalReplies) {
  TestHeaderMap none;
  EXPECT_EQ(callResult(503, none, LocalReplyReason::kConnectFailed)->local_failure,
            LocalFailure::kConnectFailure);
  EXPECT_EQ(callResult(504, none, LocalReplyReason::kUpstreamTimeout)->local_failure,
            LocalFailure::kTimeout);
  EXPECT_EQ(callResult(502, none, LocalReplyReason::kUpstreamReset)->local_failure,
            LocalFailure::kReset);
  EXPECT_FALSE(callResult(503, none, LocalReplyReason::kBreakerOpen));
  EXPECT_FALSE(callResult(503, none, LocalReplyReason::kConnectionLimit));

  TestHeaderMap grpc{{"grpc-status", "4"}};
  std::optional<CallResult> result = callResult(200, grpc, std::nullopt);
  ASSERT_TRUE(result);
  EXPECT_EQ(result->http_status, 200);
  EXPECT_EQ(result->grpc_status, 4);
  TestHeaderMap bad_grpc{{"grpc-status", "x4"}};
  EXPECT_FALSE(callResult(200, bad_grpc, std::nullopt)->grpc_status);
}

} // namespace
} // namespace deferd::filters::breaker
