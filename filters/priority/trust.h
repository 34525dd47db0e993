#pragma once

// The trust boundary for priority headers: the priority a request may set depends on the
// listener it arrived on and on the address of the peer that sent it.
//
// A trusted listener, or a peer inside one of the trusted CIDR ranges, gets the priority its
// header requests. Any other peer on an untrusted listener is an outside caller and may not
// forge urgency or inheritance state:
//   - with an urgency floor configured, an urgency more urgent than the floor is raised to the
//     floor (clamped), and the hop count is reset to 0, since an outside caller starts a new
//     inheritance chain;
//   - without a floor, the header is ignored entirely (stripped) and the route default
//     applies.
// The route's own default urgency is operator configuration and is never clamped.
//
// The peer address and the trusted ranges are config::IpAddress and config::CidrRange.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/cidr.h"
#include "filters/priority/priority_header.h"

namespace deferd::filters::priority {

using config::cidrListContains;
using config::CidrListParseResult;
using config::CidrRange;
using config::IpAddress;
using config::parseCidrList;

enum class ListenerTrust { kTrusted, kUntrusted };

struct TrustPolicy {
  ListenerTrust listener = ListenerTrust::kUntrusted;
  // The lowest (most urgent) urgency value an outside caller may request. Without a floor, an
  // outside caller's header is stripped.
  std::optional<int> untrusted_floor = kDefaultUrgency;
};

enum class TrustOutcome {
  kUnchanged, // the header was absent or malformed, or taken as it was
  kClamped,   // an outside caller's urgency was raised to the floor or its hop reset
  kStripped,  // an outside caller's header was ignored
};

struct TrustDecision {
  Priority priority;
  TrustOutcome outcome = TrustOutcome::kUnchanged;
};

// Decides the priority a request gets from its parsed header. default_urgency is the route's
// default, used where the header sets no urgency or is malformed.
TrustDecision applyTrust(const PriorityParseResult& requested, int default_urgency,
                         const TrustPolicy& policy, bool peer_in_trusted_cidrs);

} // namespace deferd::filters::priority
