#include "filters/breaker/outcome.h"

namespace deferd::filters::breaker {

OutcomeClassifier::OutcomeClassifier(const ClassifierOptions& options)
    : failure_on_connect_failure_(options.failure_on_connect_failure),
      failure_on_reset_(options.failure_on_reset), failure_on_timeout_(options.failure_on_timeout),
      slow_call_(options.slow_call) {
  for (int status_class : options.failure_status_classes) {
    if (status_class < 1 || status_class > 9) {
      continue;
    }
    for (int status = status_class * 100; status < status_class * 100 + 100; ++status) {
      failing_statuses_.set(static_cast<size_t>(status));
    }
  }

  for (int status : options.failure_statuses) {
    if (status >= 100 && status <= kMaxHttpStatus) {
      failing_statuses_.set(static_cast<size_t>(status));
    }
  }

  for (int code : options.failure_grpc_statuses) {
    if (code >= 0 && code <= kMaxGrpcStatus) {
      failing_grpc_statuses_.set(static_cast<size_t>(code));
    }
  }
}

bool OutcomeClassifier::countsAsFailure(LocalFailure failure) const {
  switch (failure) {
  case LocalFailure::kNone:
    return false;
  case LocalFailure::kConnectFailure:
    return failure_on_connect_failure_;
  case LocalFailure::kReset:
    return failure_on_reset_;
  case LocalFailure::kTimeout:
    return failure_on_timeout_;
  }
  return false;
}

Outcome OutcomeClassifier::classify(const CallResult& result) const {
  if (countsAsFailure(result.local_failure)) {
    return Outcome::kFailure;
  }

  if (result.http_status >= 0 && result.http_status <= kMaxHttpStatus &&
      failing_statuses_.test(static_cast<size_t>(result.http_status))) {
    return Outcome::kFailure;
  }

  if (result.grpc_status && *result.grpc_status >= 0 && *result.grpc_status <= kMaxGrpcStatus &&
      failing_grpc_statuses_.test(static_cast<size_t>(*result.grpc_status))) {
    return Outcome::kFailure;
  }

  if (slow_call_.count() > 0 && result.latency > slow_call_) {
    return Outcome::kSlow;
  }
  return Outcome::kSuccess;
}

} // namespace deferd::filters::breaker
