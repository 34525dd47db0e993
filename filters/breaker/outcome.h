#pragma once

// Outcome classification: what one call to an upstream cluster means for its breaker.
//
// The proxy describes a finished call by its facts (HTTP status, local failure, gRPC status,
// latency) and the classifier turns them into success, slow or failure. The checks run in
// this order, and the first that matches decides:
//
//   1. a local failure (connect failure, reset, timeout) that the options count as failure;
//   2. an HTTP status in a failing class (5 for 5xx) or in the list of failing codes;
//   3. a gRPC status in the list of failing gRPC codes;
//   4. latency above slow_call, which makes an otherwise successful call slow.
//
// So a failure is never also slow, and a call whose local failure is not counted (for example
// a timeout with failure_on_timeout off) is a success or a slow call by the rules below it.
//
// The classifier is immutable after construction and safe to share between threads.

#include <bitset>
#include <chrono>
#include <cstdint>
#include <optional>
#include <vector>

namespace deferd::filters::breaker {

enum class Outcome : uint8_t { kSuccess, kSlow, kFailure };

// A failure that deferd saw itself, with no response from the upstream.
enum class LocalFailure : uint8_t {
  kNone,
  kConnectFailure, // the connection was refused, or failed or timed out before it was made
  kReset,          // the upstream closed or reset the stream before a complete response
  kTimeout,        // no response within the route or probe timeout
};

// gRPC status codes as defined by gRPC's status code list.
inline constexpr int kGrpcDeadlineExceeded = 4;
inline constexpr int kGrpcResourceExhausted = 8;
inline constexpr int kGrpcInternal = 13;
inline constexpr int kGrpcUnavailable = 14;

struct CallResult {
  // The response's HTTP status, or 0 when there was no response.
  int http_status = 0;
  LocalFailure local_failure = LocalFailure::kNone;
  // The grpc-status of a gRPC response, when it had one.
  std::optional<int> grpc_status;
  // From sending the request to the end of the response headers, or to the failure.
  std::chrono::nanoseconds latency{0};
};

struct ClassifierOptions {
  // Status classes that count as failure, by their first digit: 5 makes every 5xx a failure.
  std::vector<int> failure_status_classes = {5};
  // Single status codes that count as failure in addition to the classes, such as 429.
  std::vector<int> failure_statuses;
  bool failure_on_connect_failure = true;
  bool failure_on_reset = true;
  bool failure_on_timeout = true;
  // gRPC status codes that count as failure.
  std::vector<int> failure_grpc_statuses = {kGrpcUnavailable, kGrpcDeadlineExceeded};
  // A call slower than this is slow. Zero turns slow-call detection off.
  std::chrono::milliseconds slow_call{0};
};

class OutcomeClassifier {
public:
  // Classes outside 1..9, codes outside 100..999 and gRPC codes outside 0..16 are ignored.
  explicit OutcomeClassifier(const ClassifierOptions& options);

  Outcome classify(const CallResult& result) const;

  // Whether this local failure counts as failure under the options.
  bool countsAsFailure(LocalFailure failure) const;

private:
  static constexpr int kMaxHttpStatus = 999;
  static constexpr int kMaxGrpcStatus = 16;

  std::bitset<kMaxHttpStatus + 1> failing_statuses_;
  std::bitset<kMaxGrpcStatus + 1> failing_grpc_statuses_;
  bool failure_on_connect_failure_;
  bool failure_on_reset_;
  bool failure_on_timeout_;
  std::chrono::milliseconds slow_call_;
};

} // namespace deferd::filters::breaker
