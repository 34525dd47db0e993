#pragma once

// Every reply that deferd makes itself, in one table.
//
// A local reply carries an HTTP status that fits the cause, a `deferd-reason` header naming
// the cause, and a counter (deferd_local_replies_total{reason}). The access log records the
// same reason token. Filters name a reason; they never build a reply themselves.

#include <array>
#include <cstdint>
#include <string_view>

namespace deferd {

enum class LocalReplyReason : uint8_t {
  kBadRequest,          // malformed request line, headers or framing
  kHeaderTooLarge,      // request line plus headers over max_header_bytes
  kTooManyHeaders,      // more fields than max_header_count
  kHeaderTimeout,       // request headers did not arrive within header_timeout
  kExpectationFailed,   // Expect with a value other than 100-continue
  kNoRoute,             // no route of the listener matches
  kNoHealthyEndpoint,   // the cluster has no endpoint to send to
  kConnectFailed,       // every connection attempt was refused or failed
  kConnectTimeout,      // the upstream did not accept within connect_timeout
  kConnectionLimit,     // the endpoint's connection limit was reached and stayed reached
  kUpstreamTimeout,     // the upstream sent no response headers within the route timeout
  kUpstreamReset,       // the upstream closed or reset before the response headers
  kBadUpstreamResponse, // the upstream's response could not be parsed
  kDraining,            // deferd is shutting down
  kLoadShed,            // backpressure: the queue was full and this request was the least urgent
  kQueueTimeout,        // backpressure: waited max_wait for a slot
  kQueueWaitTooLong,    // backpressure: rejected on arrival, its predicted wait exceeds max_wait
  kQueueDisplaced,      // backpressure: pushed out of the full queue by a more urgent request
  kDeadlineExceeded,    // the request's own deadline passed, or could not be met while queued
  kBreakerOpen,         // breaker: open, and no fallback
  kFallbackCapacity,    // breaker: open, and the fallback is at its capacity
  kFallbackLoop,        // breaker: the request already passed this service's fallback
  kFaultInjected,       // fault: an abort injected on purpose; its status is the configured one
  kCount,
};

struct LocalReplySpec {
  uint16_t status;
  std::string_view reason; // value of deferd-reason and of the metric's reason label
  bool close_connection;   // whether the downstream connection is closed after the reply
};

inline constexpr std::array<LocalReplySpec, static_cast<size_t>(LocalReplyReason::kCount)>
    kLocalReplies{{
        {400, "bad-request", true},
        {431, "header-too-large", true},
        {431, "too-many-headers", true},
        {408, "header-timeout", true},
        {417, "expectation-failed", true},
        {404, "no-route", false},
        {503, "no-healthy-endpoint", false},
        {503, "connect-failed", false},
        {503, "connect-timeout", false},
        {503, "connection-limit", false},
        {504, "upstream-timeout", false},
        {502, "upstream-reset", false},
        {502, "bad-upstream-response", false},
        {503, "draining", true},
        {503, "load-shed", false},
        {503, "queue-timeout", false},
        {503, "queue-wait-too-long", false},
        {503, "queue-displaced", false},
        {504, "deadline-exceeded", false},
        {503, "breaker-open", false},
        {503, "fallback-capacity", false},
        {503, "fallback-loop", false},
        {503, "fault-injected", false},
    }};

inline const LocalReplySpec& localReplySpec(LocalReplyReason reason) {
  return kLocalReplies[static_cast<size_t>(reason)];
}

// Seconds in the retry-after header of 503 replies, which tells well-behaved clients to back off.
inline constexpr int kRetryAfterSeconds = 1;

} // namespace deferd
