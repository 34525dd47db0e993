#pragma once

// The deferd-priority request header: urgency and inheritance hop count as an RFC 8941
// Dictionary, for example `u=1, hop=2`.
//
// Members:
//   u    Integer 0 (most urgent) to 7 (least urgent), the scale of RFC 9218. Absent means the
//        header does not set an urgency, so the route's default applies.
//   hop  Integer >= 0: how many deferd-to-deferd inheritance steps produced this priority.
//        Absent means 0. Values above kMaxHop are capped to it, which is already past any
//        useful inheritance depth.
// Parameters on members and unknown members are ignored, so later versions can add members.
// A field that fails to parse, or a `u` or `hop` of the wrong type or out of range, makes the
// whole header malformed. The parser only reports that. The filter is expected to use the
// route's default and count it, not to fail the request.
//
// RFC 9218's own Priority header (`priority: u=3, i`) is parsed by parseRfc9218Priority with
// that RFC's rules: a member of the wrong type or out of range is ignored rather than making
// the field malformed, and there is no hop count. It is a separate function, not a fallback
// inside parsePriority, because browsers and HTTP libraries set that header on their own. A
// route has to opt in to reading it, and the trust rules apply to it exactly as to
// deferd-priority.

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "filters/filter.h"

namespace deferd::filters::priority {

inline constexpr std::string_view kPriorityHeader = "deferd-priority";
inline constexpr std::string_view kRfc9218PriorityHeader = "priority";

inline constexpr int kMostUrgent = 0;
inline constexpr int kLeastUrgent = 7;
inline constexpr int kDefaultUrgency = 3;
inline constexpr int kMaxHop = 255;

struct Priority {
  int urgency = kDefaultUrgency;
  int hop = 0;

  bool operator==(const Priority&) const = default;
};

enum class PriorityParseStatus {
  kAbsent,    // no field line
  kValid,     // parsed, though urgency may be unset
  kMalformed, // present but invalid, as error describes
};

struct PriorityParseResult {
  PriorityParseStatus status = PriorityParseStatus::kAbsent;
  // Set only when the status is kValid and the header contains `u`.
  std::optional<int> urgency;
  // 0 unless the status is kValid and the header contains `hop`.
  int hop = 0;
  // The parse error of a malformed header, for a debug log.
  std::string error;

  // Returns the requested priority, with default_urgency where the header sets no urgency or
  // is malformed.
  Priority resolve(int default_urgency) const;
};

// Parses the field lines of a deferd-priority header, in the order they arrived. An empty span
// means the header is absent.
PriorityParseResult parsePriority(std::span<const std::string_view> field_lines);

// Parses the field lines of an RFC 9218 Priority header. The result's hop is always 0.
PriorityParseResult parseRfc9218Priority(std::span<const std::string_view> field_lines);

// Returns the values of every field line with that name (compared case-insensitively), in
// order. The views point into the header map and are valid until it changes.
std::vector<std::string_view> fieldLines(const HeaderMap& headers, std::string_view name);

// Formats a priority as a deferd-priority value, for example `u=1, hop=2`. Both members are
// always written, so the value reads the same on every hop.
std::string serializePriority(const Priority& priority);

} // namespace deferd::filters::priority
