#include "filters/fault/fault_filter.h"

#include <deque>

#include <gtest/gtest.h>

#include "tests/unit/test_support.h"

namespace deferd::filters::fault {
namespace {

using std::chrono::milliseconds;
using testing::FakeFilterCallbacks;
using testing::TestHeaderMap;

// Runs one request through a fault filter whose random source returns `draws` in order.
class FaultFilterTest : public ::testing::Test {
protected:
  std::unique_ptr<StreamFilter> makeFilter(FaultRouteConfig config, std::deque<double> draws) {
    draws_ = std::move(draws);
    config.random = [this] {
      double next = draws_.empty() ? 0.999 : draws_.front();
      if (!draws_.empty()) {
        draws_.pop_front();
      }
      return next;
    };
    auto filter = FaultFilterFactory(std::move(config)).createFilter();
    filter->setCallbacks(callbacks_);
    return filter;
  }

  FakeFilterCallbacks callbacks_;
  std::deque<double> draws_;
};

FaultRouteConfig abortHalf() {
  FaultRouteConfig config;
  config.abort_share = 0.5;
  config.abort_status = 429;
  return config;
}

TEST(FaultHeader, ParsesAbortAndDelay) {
  std::optional<FaultRequest> both = parseFaultHeader("abort=503, delay=200ms");
  ASSERT_TRUE(both.has_value());
  EXPECT_EQ(both->abort_status, 503);
  EXPECT_EQ(both->delay, milliseconds(200));

  std::optional<FaultRequest> seconds = parseFaultHeader("delay=2s");
  ASSERT_TRUE(seconds.has_value());
  EXPECT_EQ(seconds->delay, milliseconds(2000));
  EXPECT_FALSE(seconds->abort_status.has_value());
}

TEST(FaultHeader, RejectsInvalidValues) {
  for (std::string_view value :
       {"", "abort", "abort=200", "abort=600", "abort=5o3", "delay=200", "delay=-1ms", "delay=11s",
        "delay=10001ms", "retry=1", "abort=503,abort=500", "abort=503,"}) {
    EXPECT_FALSE(parseFaultHeader(value).has_value()) << value;
  }
  EXPECT_TRUE(parseFaultHeader("delay=10s").has_value());
}

TEST(FaultGrpcStatus, MapsHttpStatus) {
  EXPECT_EQ(grpcStatusForHttp(503), 14u);
  EXPECT_EQ(grpcStatusForHttp(429), 14u);
  EXPECT_EQ(grpcStatusForHttp(404), 12u);
  EXPECT_EQ(grpcStatusForHttp(500), 2u);
}

TEST_F(FaultFilterTest, AbortsDrawBelowShare) {
  auto filter = makeFilter(abortHalf(), {0.49});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  ASSERT_EQ(callbacks_.replies.size(), 1u);
  EXPECT_EQ(callbacks_.replies[0], LocalReplyReason::kFaultInjected);
  EXPECT_EQ(callbacks_.info.local_reply_status, 429);
  EXPECT_FALSE(callbacks_.info.grpc_status.has_value());
  EXPECT_EQ(callbacks_.info.decision, "fault-abort");
}

TEST_F(FaultFilterTest, PassesDrawAtOrAboveShare) {
  auto filter = makeFilter(abortHalf(), {0.5});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);
  EXPECT_TRUE(callbacks_.replies.empty());
  EXPECT_FALSE(callbacks_.info.local_reply_status.has_value());
}

TEST_F(FaultFilterTest, GrpcAbortCarriesGrpcStatus) {
  FaultRouteConfig config = abortHalf();
  config.grpc_status = 8;
  auto filter = makeFilter(config, {0.1});
  TestHeaderMap headers{{"content-type", "application/grpc+proto"}};

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  EXPECT_EQ(callbacks_.info.grpc_status, 8u);
  EXPECT_EQ(callbacks_.replies.size(), 1u);
}

TEST_F(FaultFilterTest, DelayThenContinue) {
  FaultRouteConfig config;
  config.delay_share = 1.0;
  config.delay = milliseconds(200);
  auto filter = makeFilter(config, {0.0});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  callbacks_.fake_dispatcher.advance(milliseconds(199));
  EXPECT_EQ(callbacks_.continued, 0);
  callbacks_.fake_dispatcher.advance(milliseconds(1));
  EXPECT_EQ(callbacks_.continued, 1);
  EXPECT_TRUE(callbacks_.replies.empty());
  EXPECT_EQ(callbacks_.info.decision, "fault-delay");
}

TEST_F(FaultFilterTest, DelayThenAbort) {
  FaultRouteConfig config = abortHalf();
  config.delay_share = 1.0;
  config.delay = milliseconds(100);
  auto filter = makeFilter(config, {0.0, 0.0});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  EXPECT_TRUE(callbacks_.replies.empty());
  callbacks_.fake_dispatcher.advance(milliseconds(100));
  EXPECT_EQ(callbacks_.continued, 0);
  ASSERT_EQ(callbacks_.replies.size(), 1u);
  EXPECT_EQ(callbacks_.info.local_reply_status, 429);
}

TEST_F(FaultFilterTest, StreamEndCancelsDelay) {
  FaultRouteConfig config;
  config.delay_share = 1.0;
  config.delay = milliseconds(100);
  auto filter = makeFilter(config, {0.0});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  filter->onStreamEnd(StreamEnd::kDownstreamClosed);
  callbacks_.fake_dispatcher.advance(milliseconds(500));
  EXPECT_EQ(callbacks_.continued, 0);
  EXPECT_TRUE(callbacks_.replies.empty());
}

TEST_F(FaultFilterTest, HeaderControlAbortsAndIsRemoved) {
  FaultRouteConfig config;
  config.header_control = true;
  auto filter = makeFilter(config, {});
  TestHeaderMap headers{{"x-deferd-fault", "abort=504"}, {"content-type", "application/grpc"}};

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  EXPECT_EQ(callbacks_.info.local_reply_status, 504);
  EXPECT_EQ(callbacks_.info.grpc_status, 14u);
  EXPECT_FALSE(headers.get("x-deferd-fault").has_value());
}

TEST_F(FaultFilterTest, HeaderIgnoredWithoutHeaderControl) {
  auto filter = makeFilter(FaultRouteConfig{}, {});
  TestHeaderMap headers{{"x-deferd-fault", "abort=503"}};

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);
  EXPECT_TRUE(callbacks_.replies.empty());
  EXPECT_TRUE(headers.get("x-deferd-fault").has_value());
}

TEST_F(FaultFilterTest, InvalidHeaderInjectsNothing) {
  FaultRouteConfig config = abortHalf();
  config.header_control = true;
  auto filter = makeFilter(config, {0.0});
  TestHeaderMap headers{{"x-deferd-fault", "abort=200"}};

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);
  EXPECT_TRUE(callbacks_.replies.empty());
  EXPECT_EQ(callbacks_.info.decision, "fault-header-invalid");
  EXPECT_FALSE(headers.get("x-deferd-fault").has_value());
}

TEST_F(FaultFilterTest, ShadowInjectsNothing) {
  FaultRouteConfig config = abortHalf();
  config.enforce = false;
  auto filter = makeFilter(config, {0.0});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);
  EXPECT_TRUE(callbacks_.replies.empty());
  EXPECT_EQ(callbacks_.info.decision, "fault-abort-shadow");
}

// Counters of every decision, wired as the metrics registry wires them.
class FaultStatsTest : public FaultFilterTest {
protected:
  FaultStatsTest() {
    for (size_t i = 0; i < counters_.size(); ++i) {
      stats_.decisions[i] = &counters_[i];
    }
  }

  double count(FaultDecision decision) const {
    return counters_[static_cast<size_t>(decision)].Value();
  }

  std::array<prometheus::Counter, static_cast<size_t>(FaultDecision::kCount)> counters_;
  FaultStats stats_;
};

TEST_F(FaultStatsTest, DelayAndAbortCountOnceEach) {
  FaultRouteConfig config = abortHalf();
  config.delay_share = 1.0;
  config.delay = milliseconds(100);
  config.stats = &stats_;
  auto filter = makeFilter(config, {0.0, 0.0});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kStop);
  EXPECT_EQ(count(FaultDecision::kDelay), 1);
  EXPECT_EQ(count(FaultDecision::kAbort), 0);
  callbacks_.fake_dispatcher.advance(milliseconds(100));
  EXPECT_EQ(count(FaultDecision::kAbort), 1);
  EXPECT_EQ(callbacks_.info.decision, "fault-abort");
}

TEST_F(FaultStatsTest, ShadowCountsWhatWouldHaveHappened) {
  FaultRouteConfig config = abortHalf();
  config.delay_share = 1.0;
  config.delay = milliseconds(100);
  config.enforce = false;
  config.stats = &stats_;
  auto filter = makeFilter(config, {0.0, 0.0});
  TestHeaderMap headers;

  EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);
  EXPECT_EQ(count(FaultDecision::kDelayShadow), 1);
  EXPECT_EQ(count(FaultDecision::kAbortShadow), 1);
  EXPECT_EQ(count(FaultDecision::kDelay), 0);
  EXPECT_EQ(count(FaultDecision::kAbort), 0);
}

TEST_F(FaultStatsTest, InvalidHeaderAndPassCounted) {
  FaultRouteConfig config = abortHalf();
  config.header_control = true;
  config.stats = &stats_;
  auto invalid = makeFilter(config, {});
  TestHeaderMap bad{{"x-deferd-fault", "delay=forever"}};
  EXPECT_EQ(invalid->onRequestHeaders(bad), FilterStatus::kContinue);
  EXPECT_EQ(count(FaultDecision::kHeaderInvalid), 1);

  auto passed = makeFilter(config, {0.9});
  TestHeaderMap plain;
  EXPECT_EQ(passed->onRequestHeaders(plain), FilterStatus::kContinue);
  for (size_t i = 0; i < counters_.size(); ++i) {
    double expected = i == static_cast<size_t>(FaultDecision::kHeaderInvalid) ? 1 : 0;
    EXPECT_EQ(counters_[i].Value(), expected) << faultDecisionName(static_cast<FaultDecision>(i));
  }
}

} // namespace
} // namespace deferd::filters::fault
