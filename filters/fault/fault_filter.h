#pragma once

// The fault filter: delays and aborts injected on purpose, to rehearse how callers and the
// other policies behave before a real failure does.
//
// Per request, the filter draws two independent numbers in [0, 1): one against the delay share
// and one against the abort share. When the route allows header control, an `x-deferd-fault`
// request header can request a fault instead: `abort=503`, `delay=200ms`, or both separated by
// a comma. The filter then removes the header, so it does not reach the upstream.
// A delay keeps the request waiting on a dispatcher timer and is cancelled when the stream ends
// (the client left). An abort is a local reply with reason fault-injected and the configured
// status. A gRPC request (content-type application/grpc*) gets a grpc-status instead, with HTTP
// 200. When both happen, the delay comes first. In shadow mode nothing is injected; the access log
// decision records what would have been.
//
// Threading: a filter instance belongs to one request on one worker. The factory is shared
// read-only, and its random source must be safe to call from every worker thread.

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include <prometheus/counter.h>

#include "filters/filter.h"

namespace deferd::filters::fault {

inline constexpr std::string_view kFaultHeader = "x-deferd-fault";

// Maximum delay a request header may request; a longer one makes the header invalid.
inline constexpr std::chrono::milliseconds kMaxHeaderDelay{10000};

// A fault asked for by the x-deferd-fault header.
struct FaultRequest {
  std::optional<std::chrono::milliseconds> delay;
  std::optional<uint16_t> abort_status; // 400 to 599
};

// Parses the header's value. Returns nothing for an invalid value.
std::optional<FaultRequest> parseFaultHeader(std::string_view value);

// The grpc-status for an HTTP status, following the mapping gRPC clients apply to HTTP errors:
// 400 INTERNAL (13), 401 UNAUTHENTICATED (16), 403 PERMISSION_DENIED (7), 404 UNIMPLEMENTED
// (12), 429, 502, 503 and 504 UNAVAILABLE (14), anything else UNKNOWN (2).
uint32_t grpcStatusForHttp(uint16_t status);

// An action of the filter on one request. A request that is delayed and then aborted counts
// once for each. The names are also the access log's `decision` values.
enum class FaultDecision : uint8_t {
  kDelay,         // fault-delay
  kAbort,         // fault-abort
  kDelayShadow,   // fault-delay-shadow: a delay shadow mode did not inject
  kAbortShadow,   // fault-abort-shadow
  kHeaderInvalid, // fault-header-invalid: an x-deferd-fault value that did not parse
  kCount,
};

std::string_view faultDecisionName(FaultDecision decision);

// deferd_fault_decisions_total{policy,decision}, one counter per decision. Set by the metrics
// registry; an unset pointer is not counted.
struct FaultStats {
  std::array<prometheus::Counter*, static_cast<size_t>(FaultDecision::kCount)> decisions{};
};

struct FaultRouteConfig {
  double delay_share = 0; // 0..1
  std::chrono::milliseconds delay{0};
  double abort_share = 0; // 0..1
  uint16_t abort_status = 503;
  std::optional<uint32_t> grpc_status; // unset: grpcStatusForHttp(abort_status)
  bool header_control = false;         // honour x-deferd-fault
  bool enforce = true;                 // false in shadow mode
  std::function<double()> random;      // uniform in [0, 1); called from any worker
  FaultStats* stats = nullptr;         // owned by the metrics registry; may be null
};

class FaultFilterFactory : public FilterFactory {
public:
  explicit FaultFilterFactory(FaultRouteConfig config);
  std::unique_ptr<StreamFilter> createFilter() const override;

private:
  std::shared_ptr<const FaultRouteConfig> config_;
};

} // namespace deferd::filters::fault
