#include "filters/backpressure/backpressure_filter.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::backpressure {
namespace {

using testing::FakeFilterCallbacks;
using testing::TestHeaderMap;

// One slot, a queue of one, and filters driven by hand with fake callbacks. The controller
// reads the real clock, so waits here are ended by releases and cancels, never by time.
class BackpressureFilterTest : public ::testing::Test {
protected:
  BackpressureFilterTest() {
    options_.limiter = config::LimiterKind::kFixed;
    options_.initial_limit = 1;
    options_.min_limit = 1;
    options_.max_limit = 1;
    options_.queue_max_length = 1;
    options_.max_wait = std::chrono::seconds(30);
    options_.aging = std::chrono::minutes(1);
    options_.deadline_header = "x-deadline";
    options_.emit_signal = true;
    rebuild();
  }

  void rebuild() {
    config_.shared = makeBackpressureShared("p", "app", options_);
    config_.endpoints = &registry_;
  }

  struct Stream {
    FakeFilterCallbacks callbacks;
    std::unique_ptr<BackpressureFilter> filter;
    TestHeaderMap headers;
    FilterStatus status = FilterStatus::kContinue;
  };

  std::unique_ptr<Stream> start(int urgency, TestHeaderMap headers = {}) {
    auto stream = std::make_unique<Stream>();
    stream->callbacks.info.urgency = urgency;
    stream->callbacks.info.request_id = "id";
    stream->callbacks.info.route_cluster = "app";
    stream->headers = std::move(headers);
    stream->filter = std::make_unique<BackpressureFilter>(config_);
    stream->filter->setCallbacks(stream->callbacks);
    stream->status = stream->filter->onRequestHeaders(stream->headers);
    return stream;
  }

  // Completes a stream with a 200 response.
  void finish(Stream& stream) {
    TestHeaderMap response;
    stream.filter->onResponseHeaders(200, response);
    stream.filter->onStreamEnd(StreamEnd::kCompleted);
  }

  config::BackpressurePolicy options_;
  EndpointRegistry registry_;
  BackpressureRouteConfig config_;
};

TEST_F(BackpressureFilterTest, AdmitsWithinLimit) {
  auto first = start(3);
  EXPECT_EQ(first->status, FilterStatus::kContinue);
  EXPECT_EQ(config_.shared->controller->limiter().inFlight(), 1);
  finish(*first);
  EXPECT_EQ(config_.shared->controller->limiter().inFlight(), 0);
}

TEST_F(BackpressureFilterTest, QueuedRequestContinuesWhenSlotFrees) {
  auto holder = start(3);
  auto waiter = start(1);
  ASSERT_EQ(waiter->status, FilterStatus::kStop);
  EXPECT_EQ(waiter->callbacks.info.decision, "queued");

  finish(*holder);
  EXPECT_EQ(waiter->callbacks.continued, 0); // the wake-up is posted to the worker
  waiter->callbacks.fake_dispatcher.runPosted();
  EXPECT_EQ(waiter->callbacks.continued, 1);
  EXPECT_EQ(waiter->callbacks.info.decision, "dequeued");
  EXPECT_EQ(config_.shared->controller->limiter().inFlight(), 1);
  finish(*waiter);
  EXPECT_EQ(config_.shared->controller->limiter().inFlight(), 0);
}

TEST_F(BackpressureFilterTest, FullQueueDisplacesLeastUrgent) {
  auto holder = start(3);
  auto sheddable = start(7);
  auto urgent = start(0);
  EXPECT_EQ(urgent->status, FilterStatus::kStop);

  sheddable->callbacks.fake_dispatcher.runPosted();
  EXPECT_EQ(sheddable->callbacks.replies, std::vector{LocalReplyReason::kQueueDisplaced});
  EXPECT_EQ(sheddable->callbacks.info.decision, "displaced");

  // A newcomer less urgent than the waiter is shed at once.
  auto late = start(5);
  EXPECT_EQ(late->status, FilterStatus::kStop);
  EXPECT_EQ(late->callbacks.replies, std::vector{LocalReplyReason::kLoadShed});
}

TEST_F(BackpressureFilterTest, ClientGoneWhileQueuedFreesPlace) {
  auto holder = start(3);
  auto gone = start(1);
  ASSERT_EQ(gone->status, FilterStatus::kStop);
  gone->filter->onStreamEnd(StreamEnd::kDownstreamClosed);
  gone->filter.reset();

  auto next = start(6);
  EXPECT_EQ(next->status, FilterStatus::kStop);
  EXPECT_TRUE(next->callbacks.replies.empty()); // queued, not shed
  finish(*holder);
  next->callbacks.fake_dispatcher.runPosted();
  EXPECT_EQ(next->callbacks.continued, 1);
}

TEST_F(BackpressureFilterTest, DeadlineTooCloseIsAnswered) {
  auto holder = start(3);
  auto hurried = start(1, TestHeaderMap{{"grpc-timeout", "1m"}});
  EXPECT_EQ(hurried->status, FilterStatus::kStop);
  EXPECT_EQ(hurried->callbacks.replies, std::vector{LocalReplyReason::kDeadlineExceeded});

  auto header = start(1, TestHeaderMap{{"x-deadline", "2ms"}});
  EXPECT_EQ(header->callbacks.replies, std::vector{LocalReplyReason::kDeadlineExceeded});
}

TEST_F(BackpressureFilterTest, InboundResponseCarriesLoad) {
  auto stream = start(3);
  TestHeaderMap response;
  stream->filter->onResponseHeaders(200, response);
  std::optional<std::string_view> report = response.get(kLoadReportHeader);
  ASSERT_TRUE(report.has_value());
  EXPECT_EQ(*report, "TEXT application_utilization=1.000, named_metrics.queue=0, "
                     "named_metrics.defer=0");
  stream->filter->onStreamEnd(StreamEnd::kCompleted);
}

TEST_F(BackpressureFilterTest, OutboundSignalMarksEndpointAndIsRemoved) {
  options_.emit_signal = false;
  options_.signal.emplace();
  options_.signal->hold_above = std::chrono::milliseconds(0);
  rebuild();
  config_.direction = config::Direction::kOutbound;
  std::shared_ptr<SharedEndpoint> endpoint = registry_.get("app", "10.0.0.1:80");

  auto stream = start(3);
  stream->callbacks.info.upstream = endpoint.get();
  TestHeaderMap response{{"endpoint-load-metrics", "TEXT application_utilization=0.990, "
                                                   "named_metrics.queue=5, named_metrics.defer=1"}};
  stream->filter->onResponseHeaders(200, response);
  EXPECT_EQ(response.get(kLoadReportHeader), std::nullopt);
  EXPECT_TRUE(endpoint->deferring.load());
  // The cluster's only endpoint defers: the limit is scaled down, here to its minimum.
  EXPECT_EQ(config_.shared->controller->limiter().limit(), 1);
  stream->filter->onStreamEnd(StreamEnd::kCompleted);
}

TEST_F(BackpressureFilterTest, ShadowNeverHoldsOrRejects) {
  config_.enforce = false;
  auto first = start(3);
  auto second = start(7);
  auto third = start(7);
  for (auto* stream : {first.get(), second.get(), third.get()}) {
    EXPECT_EQ(stream->status, FilterStatus::kContinue);
    EXPECT_TRUE(stream->callbacks.replies.empty());
  }
  EXPECT_GE(config_.shared->controller->shadowDecisions(ShadowDecision::kShed), 1u);
  for (auto* stream : {first.get(), second.get(), third.get()}) {
    finish(*stream);
  }
  EXPECT_EQ(config_.shared->controller->limiter().inFlight(), 0);
}

TEST_F(BackpressureFilterTest, LocalReplyBeforeUpstreamGivesNoSample) {
  auto stream = start(3);
  stream->callbacks.info.local_reply = LocalReplyReason::kNoHealthyEndpoint;
  stream->filter->onStreamEnd(StreamEnd::kLocalReply);
  EXPECT_EQ(config_.shared->controller->limiter().inFlight(), 0);
}

} // namespace
} // namespace deferd::filters::backpressure
