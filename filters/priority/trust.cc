#include "filters/priority/trust.h"

namespace deferd::filters::priority {

TrustDecision applyTrust(const PriorityParseResult& requested, int default_urgency,
                         const TrustPolicy& policy, bool peer_in_trusted_cidrs) {
  Priority asked = requested.resolve(default_urgency);
  bool outside_caller = policy.listener == ListenerTrust::kUntrusted && !peer_in_trusted_cidrs;
  if (!outside_caller || requested.status != PriorityParseStatus::kValid) {
    return TrustDecision{.priority = asked, .outcome = TrustOutcome::kUnchanged};
  }

  if (!policy.untrusted_floor) {
    return TrustDecision{.priority = Priority{.urgency = default_urgency, .hop = 0},
                         .outcome = TrustOutcome::kStripped};
  }

  Priority allowed = asked;
  if (requested.urgency && *requested.urgency < *policy.untrusted_floor) {
    allowed.urgency = *policy.untrusted_floor;
  }
  allowed.hop = 0;
  TrustOutcome outcome = allowed == asked ? TrustOutcome::kUnchanged : TrustOutcome::kClamped;
  return TrustDecision{.priority = allowed, .outcome = outcome};
}

} // namespace deferd::filters::priority
