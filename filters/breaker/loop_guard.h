#pragma once

// The loop guard: a request that this service already redirected to a fallback is not
// redirected again, so two services whose fallbacks point at each other cannot pass a request
// back and forth.
//
// When deferd redirects a request, it appends its own service name to the request header
// `deferd-fallback-path`, a Structured Field List (RFC 8941 section 3.1) of bare Tokens or
// Strings, oldest hop first:
//
//     deferd-fallback-path: checkout, "cart service", payments
//
// A name that is a valid Token is written as a Token, any other printable ASCII name as a
// String. Parameters and inner lists are not part of this header, and make it malformed. Field
// lines sent more than once are joined with ", " before parsing, as RFC 8941 section 4.2
// prescribes.
//
// Bounds: at most kMaxFallbackPathEntries entries of at most kMaxServiceNameLength bytes each,
// and at most kMaxFallbackPathBytes for the whole joined value. Parsing stops as soon as a
// bound is passed, so its cost is bounded whatever the client sends.
//
// A header that is malformed or too long counts as already visited: the service cannot tell
// whether it is on the path, and a header that has grown past 16 hops is itself the sign of a
// loop. The same holds when the path is full and the service's name cannot be appended. So
// the guard fails closed, and such a request is never redirected; the policy decides whether
// it is rejected or sent to the primary anyway.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"

namespace deferd::filters::breaker {

inline constexpr std::string_view kFallbackPathHeader = "deferd-fallback-path";
inline constexpr size_t kMaxFallbackPathEntries = 16;
inline constexpr size_t kMaxServiceNameLength = 128;
// Room for every entry written as a quoted String with escapes, plus the separators.
inline constexpr size_t kMaxFallbackPathBytes = 4096;

enum class FallbackPathStatus : uint8_t {
  kValid,
  kMalformed, // not a List of bare Tokens and Strings
  kTooLong,   // too many entries, an entry too long, or the value too long
};

struct FallbackPath {
  FallbackPathStatus status = FallbackPathStatus::kValid;
  // The services in order; complete only when status is kValid.
  std::vector<std::string> services;

  // Whether the service is on the path. Always true for a path that is not valid, as the
  // design notes above explain.
  bool contains(std::string_view service) const;
};

// Whether a service name can be written to the header: 1 to kMaxServiceNameLength bytes of
// printable ASCII (0x20 to 0x7e). The config loader should reject other names.
bool isValidServiceName(std::string_view service);

FallbackPath parseFallbackPath(std::string_view field_value);
// Joins every field line of the header and parses the result. A missing header is an empty,
// valid path.
FallbackPath readFallbackPath(const HeaderMap& headers);

// Returns the header value with the service appended, or nothing when the path is not valid,
// is already full, or the name is not a valid service name.
std::optional<std::string> appendToFallbackPath(const FallbackPath& path, std::string_view service);

// The action for a request that the loop guard stops.
enum class LoopPolicy : uint8_t {
  kReject,        // reject the request with a local reply
  kSendToPrimary, // send it to the primary even though its breaker is open
};

enum class LoopVerdict : uint8_t { kRedirect, kReject, kSendToPrimary };

struct LoopCheck {
  LoopVerdict verdict = LoopVerdict::kRedirect;
  // The new header value, set only for kRedirect.
  std::string fallback_path;
};

// Decides whether a request may be redirected to a fallback by `service`.
LoopCheck checkFallbackLoop(const HeaderMap& headers, std::string_view service, LoopPolicy policy);

} // namespace deferd::filters::breaker
