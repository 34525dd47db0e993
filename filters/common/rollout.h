#pragma once

// Stable rollout selection: `rollout: N%` applies a policy to the same share of requests on
// every sidecar, and to the same request on every hop, because the choice depends only on the
// request id.
//
// The id is hashed with 64-bit FNV-1a and the result is passed through the splitmix64
// finalizer, so ids that differ in one trailing character still spread over the whole range.
// The top 53 bits become a fraction in [0, 1). A request is in a rollout of p percent when its
// fraction is below p / 100, so raising p only adds requests and never swaps one out.

#include <cstdint>
#include <string_view>

namespace deferd::filters {

// Returns the stable 64-bit hash of a request id.
uint64_t rolloutHash(std::string_view request_id);

// Maps a request id to [0, 1).
double rolloutFraction(std::string_view request_id);

// Returns whether the request falls in a rollout of `percent` (clamped to [0, 100]). 0 selects
// nothing and 100 selects every request, including the empty id.
bool inRollout(std::string_view request_id, double percent);

} // namespace deferd::filters
