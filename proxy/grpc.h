#pragma once

// gRPC over HTTP/2 as deferd needs it: recognising a gRPC request, the `grpc-timeout` header,
// and the gRPC status that each local reply carries.
//
// A gRPC client reads the call's outcome from the `grpc-status` trailer, not from the HTTP
// status. So a local reply to a gRPC request is an HTTP 200 "trailers-only" response (gRPC over
// HTTP/2 protocol, "Responses"). It is one HEADERS frame with END_STREAM that carries :status,
// content-type, grpc-status and grpc-message.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "filters/common/deadline.h"
#include "proxy/local_reply.h"

namespace deferd {

// The gRPC status codes deferd sends (grpc/status.h numbering).
enum class GrpcStatus : uint8_t {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kDeadlineExceeded = 4,
  kResourceExhausted = 8,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
};

// The gRPC status of each local reply. The switch has no default, so a new LocalReplyReason
// without a gRPC status fails to compile (-Wswitch with -Werror).
constexpr GrpcStatus grpcStatusFor(LocalReplyReason reason) {
  switch (reason) {
  case LocalReplyReason::kBadRequest:
  case LocalReplyReason::kHeaderTooLarge:
  case LocalReplyReason::kTooManyHeaders:
  case LocalReplyReason::kExpectationFailed:
  case LocalReplyReason::kBadUpstreamResponse:
    return GrpcStatus::kInternal;
  case LocalReplyReason::kHeaderTimeout:
  case LocalReplyReason::kUpstreamTimeout:
  case LocalReplyReason::kDeadlineExceeded:
    return GrpcStatus::kDeadlineExceeded;
  case LocalReplyReason::kNoRoute:
    return GrpcStatus::kUnimplemented;
  case LocalReplyReason::kNoHealthyEndpoint:
  case LocalReplyReason::kConnectFailed:
  case LocalReplyReason::kConnectTimeout:
  case LocalReplyReason::kConnectionLimit:
  case LocalReplyReason::kUpstreamReset:
  case LocalReplyReason::kDraining:
  case LocalReplyReason::kBreakerOpen:
  case LocalReplyReason::kFallbackCapacity:
  case LocalReplyReason::kFallbackLoop:
  case LocalReplyReason::kFaultInjected: // unless the fault filter names its own status
    return GrpcStatus::kUnavailable;
  case LocalReplyReason::kLoadShed:
  case LocalReplyReason::kQueueTimeout:
  case LocalReplyReason::kQueueWaitTooLong:
  case LocalReplyReason::kQueueDisplaced:
    return GrpcStatus::kResourceExhausted;
  case LocalReplyReason::kCount:
    break;
  }
  return GrpcStatus::kUnknown;
}

// Whether `content_type` names gRPC: "application/grpc" alone or followed by "+" or ";"
// ("application/grpc+proto"), compared case-insensitively.
bool isGrpcContentType(std::string_view content_type);

// Parses a grpc-timeout value: 1 to 8 ASCII digits and a unit (H, M, S, m, u, n). Returns
// nullopt when the value is invalid. Shared with the filters, which read deadlines too.
using filters::parseGrpcTimeout;

// Formats `timeout` as a grpc-timeout value in the finest unit whose count fits in 8 digits,
// rounded down so the next hop never gets more time than is left. Negative is formatted as 0n.
std::string formatGrpcTimeout(std::chrono::nanoseconds timeout);

} // namespace deferd
