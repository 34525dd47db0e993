#include "filters/breaker/outcome.h"

#include <gtest/gtest.h>

#include <string>

namespace deferd::filters::breaker {
namespace {

using namespace std::chrono_literals;

CallResult httpStatus(int status) {
  CallResult result;
  result.http_status = status;
  return result;
}

CallResult localFailure(LocalFailure failure) {
  CallResult result;
  result.local_failure = failure;
  return result;
}

CallResult grpcStatus(int code) {
  CallResult result;
  result.http_status = 200;
  result.grpc_status = code;
  return result;
}

TEST(BreakerOutcomeTest, DefaultsCountEvery5xx) {
  OutcomeClassifier classifier{ClassifierOptions{}};
  struct Case {
    int status;
    Outcome outcome;
  };
  const Case cases[] = {
      {200, Outcome::kSuccess}, {204, Outcome::kSuccess}, {404, Outcome::kSuccess},
      {429, Outcome::kSuccess}, {499, Outcome::kSuccess}, {500, Outcome::kFailure},
      {503, Outcome::kFailure}, {599, Outcome::kFailure}, {600, Outcome::kSuccess},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.status);
    EXPECT_EQ(classifier.classify(httpStatus(c.status)), c.outcome);
  }
}

TEST(BreakerOutcomeTest, SpecificCodesWithoutClasses) {
  ClassifierOptions options;
  options.failure_status_classes = {};
  options.failure_statuses = {429, 503};
  OutcomeClassifier classifier{options};

  EXPECT_EQ(classifier.classify(httpStatus(429)), Outcome::kFailure);
  EXPECT_EQ(classifier.classify(httpStatus(503)), Outcome::kFailure);
  EXPECT_EQ(classifier.classify(httpStatus(500)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(httpStatus(502)), Outcome::kSuccess);
}

TEST(BreakerOutcomeTest, IgnoresOutOfRangeOptions) {
  ClassifierOptions options;
  options.failure_status_classes = {0, 10, -5};
  options.failure_statuses = {42, 1000, -1};
  options.failure_grpc_statuses = {17, -1};
  OutcomeClassifier classifier{options};

  EXPECT_EQ(classifier.classify(httpStatus(500)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(httpStatus(42)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(httpStatus(1000)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(httpStatus(-1)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(grpcStatus(14)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(grpcStatus(17)), Outcome::kSuccess);
}

TEST(BreakerOutcomeTest, LocalFailuresFollowOptions) {
  OutcomeClassifier all{ClassifierOptions{}};
  EXPECT_EQ(all.classify(localFailure(LocalFailure::kConnectFailure)), Outcome::kFailure);
  EXPECT_EQ(all.classify(localFailure(LocalFailure::kReset)), Outcome::kFailure);
  EXPECT_EQ(all.classify(localFailure(LocalFailure::kTimeout)), Outcome::kFailure);

  ClassifierOptions options;
  options.failure_on_connect_failure = false;
  options.failure_on_reset = false;
  options.failure_on_timeout = false;
  OutcomeClassifier none{options};
  EXPECT_EQ(none.classify(localFailure(LocalFailure::kConnectFailure)), Outcome::kSuccess);
  EXPECT_EQ(none.classify(localFailure(LocalFailure::kReset)), Outcome::kSuccess);
  EXPECT_EQ(none.classify(localFailure(LocalFailure::kTimeout)), Outcome::kSuccess);
  EXPECT_FALSE(none.countsAsFailure(LocalFailure::kTimeout));
  EXPECT_TRUE(all.countsAsFailure(LocalFailure::kTimeout));
  EXPECT_FALSE(all.countsAsFailure(LocalFailure::kNone));
}

TEST(BreakerOutcomeTest, GrpcStatusList) {
  OutcomeClassifier classifier{ClassifierOptions{}};
  EXPECT_EQ(classifier.classify(grpcStatus(0)), Outcome::kSuccess);
  EXPECT_EQ(classifier.classify(grpcStatus(kGrpcUnavailable)), Outcome::kFailure);
  EXPECT_EQ(classifier.classify(grpcStatus(kGrpcDeadlineExceeded)), Outcome::kFailure);
  EXPECT_EQ(classifier.classify(grpcStatus(kGrpcInternal)), Outcome::kSuccess);

  ClassifierOptions options;
  options.failure_grpc_statuses = {kGrpcInternal, kGrpcResourceExhausted};
  OutcomeClassifier custom{options};
  EXPECT_EQ(custom.classify(grpcStatus(kGrpcInternal)), Outcome::kFailure);
  EXPECT_EQ(custom.classify(grpcStatus(kGrpcResourceExhausted)), Outcome::kFailure);
  EXPECT_EQ(custom.classify(grpcStatus(kGrpcUnavailable)), Outcome::kSuccess);
}

TEST(BreakerOutcomeTest, SlowOnlyAboveThreshold) {
  ClassifierOptions options;
  options.slow_call = 100ms;
  OutcomeClassifier classifier{options};

  CallResult result = httpStatus(200);
  result.latency = 100ms;
  EXPECT_EQ(classifier.classify(result), Outcome::kSuccess);
  result.latency = 101ms;
  EXPECT_EQ(classifier.classify(result), Outcome::kSlow);

  OutcomeClassifier off{ClassifierOptions{}};
  result.latency = 1h;
  EXPECT_EQ(off.classify(result), Outcome::kSuccess);
}

TEST(BreakerOutcomeTest, FailureWinsOverSlow) {
  ClassifierOptions options;
  options.slow_call = 10ms;
  OutcomeClassifier classifier{options};

  CallResult result = httpStatus(503);
  result.latency = 1s;
  EXPECT_EQ(classifier.classify(result), Outcome::kFailure);

  CallResult timeout = localFailure(LocalFailure::kTimeout);
  timeout.latency = 1s;
  EXPECT_EQ(classifier.classify(timeout), Outcome::kFailure);
}

TEST(BreakerOutcomeTest, UncountedTimeoutCanBeSlow) {
  ClassifierOptions options;
  options.failure_on_timeout = false;
  options.slow_call = 10ms;
  OutcomeClassifier classifier{options};

  CallResult timeout = localFailure(LocalFailure::kTimeout);
  timeout.latency = 1s;
  EXPECT_EQ(classifier.classify(timeout), Outcome::kSlow);
}

} // namespace
} // namespace deferd::filters::breaker
