#pragma once

// The load report that a sidecar adds to every response of its inbound side, and that the
// callers' sidecars read on their outbound side. It uses the text form of gRPC ORCA's
// `endpoint-load-metrics` response header (ORCA is the Open Request Cost Aggregation protocol
// of xDS; the fields are those of xds.data.orca.v3.OrcaLoadReport, with map entries written as
// `<map>.<key>`):
//
//   endpoint-load-metrics: TEXT application_utilization=0.930, named_metrics.queue=12,
//                          named_metrics.defer=1
//
//   application_utilization  in-flight / concurrency limit of the reporting cluster
//   named_metrics.queue      requests waiting in the reporter's queue (a whole number)
//   named_metrics.defer      1 when the reporter requests that its callers defer work, else 0
//
// Parsing is strict because the header crosses a trust boundary: the value is at most
// kMaxLoadReportLength bytes and kMaxLoadReportFields fields, must start with "TEXT ", and
// each comma-separated field is `name=value` with optional spaces or tabs around it. Values
// must be finite, non-negative decimal numbers; a repeated name, an empty field, an unknown
// name or a value out of range rejects the whole header. Other ORCA fields (cpu_utilization,
// mem_utilization, rps_fractional, eps, and any `named_metrics.`, `utilization.` or
// `request_cost.` entry) are checked the same way and then ignored, except that
// cpu_utilization stands in for a missing application_utilization.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace deferd::filters::backpressure {

inline constexpr std::string_view kLoadReportHeader = "endpoint-load-metrics";
inline constexpr size_t kMaxLoadReportLength = 1024;
inline constexpr size_t kMaxLoadReportFields = 32;
// Utilization above this is rejected as nonsense. ORCA allows values over 1 for a reporter
// past its soft limit, so the bound is generous.
inline constexpr double kMaxReportedUtilization = 100.0;
inline constexpr uint64_t kMaxReportedQueue = 1'000'000'000;

struct LoadReport {
  double utilization = 0.0;
  uint64_t queue = 0;
  bool defer = false;
};

struct LoadReportParse {
  std::optional<LoadReport> report;
  // Reason for the rejection, empty on success. Points to a string literal.
  std::string_view error;
};

// Formats the header value. Utilization is written with three decimals, and NaN or a negative
// value is written as 0.
std::string formatLoadReport(const LoadReport& report);

// Parses a header value. Malformed input gives an error, never an exception.
LoadReportParse parseLoadReport(std::string_view value) noexcept;

} // namespace deferd::filters::backpressure
