#pragma once

// Correlation ids: the key under which the inheritance table remembers an inbound request's
// priority, so that the local app's outbound calls carrying the same id inherit it.
//
// Sources are tried in the configured order and the first usable one wins:
//   - traceparent: the trace-id of a W3C Trace Context `traceparent` header
//     (https://www.w3.org/TR/trace-context/, section 3.2), so every call of one trace shares
//     the key;
//   - a named header such as x-request-id, whose value is used as it is.
// A source is skipped when its header is absent, is sent on more than one field line, or has
// an invalid value.

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "filters/filter.h"

namespace deferd::filters::priority {

inline constexpr std::string_view kTraceparentHeader = "traceparent";
inline constexpr std::string_view kRequestIdHeader = "x-request-id";

// Maximum length of a header value used as a correlation id. Longer values are skipped, so one
// request cannot make a table entry arbitrarily large.
inline constexpr size_t kMaxCorrelationIdLength = 128;

struct CorrelationSource {
  enum class Kind { kTraceparent, kHeader };

  Kind kind = Kind::kTraceparent;
  // The header to read when kind is kHeader, for example x-request-id.
  std::string header_name;

  static CorrelationSource traceparent() { return CorrelationSource{Kind::kTraceparent, {}}; }
  static CorrelationSource header(std::string name) {
    return CorrelationSource{Kind::kHeader, std::move(name)};
  }
};

// Returns the 32-character trace-id of a traceparent value, or nullopt when the value is
// invalid. Version 00 must be exactly `00-<trace-id>-<parent-id>-<flags>` (55 characters).
// A later version is parsed by the rules the specification sets for versions it does not
// know: at least 55 characters with the same first four fields, followed by the end or by
// '-'. Version ff, uppercase hex and all-zero trace-id or parent-id are invalid.
std::optional<std::string_view> traceIdFromTraceparent(std::string_view value);

// Returns the correlation id of a request from the first usable source, or nullopt.
std::optional<std::string> extractCorrelationId(const HeaderMap& headers,
                                                std::span<const CorrelationSource> sources);

} // namespace deferd::filters::priority
