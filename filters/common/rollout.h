#pragma once

// Rollout: a policy with `rollout: N%` is enforced on a stable share of requests, chosen by a
// hash of the request id, so every filter of the policy and every retry of the same request
// agree on whether it is in the share.

#include <cstdint>
#include <string_view>

namespace deferd::filters {

// Maps a request id to [0, 1) with the 64-bit FNV-1a hash, finished with a splitmix64 step so
// that ids differing only in their last characters spread over the whole range.
inline double rolloutPoint(std::string_view request_id) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : request_id) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  hash ^= hash >> 30;
  hash *= 0xbf58476d1ce4e5b9ULL;
  hash ^= hash >> 27;
  hash *= 0x94d049bb133111ebULL;
  hash ^= hash >> 31;
  return static_cast<double>(hash >> 11) * 0x1.0p-53;
}

// Whether a request falls in the enforced share. 1.0 always, 0.0 never.
inline bool inRollout(std::string_view request_id, double rollout) {
  if (rollout >= 1.0) {
    return true;
  }
  if (rollout <= 0.0) {
    return false;
  }
  return rolloutPoint(request_id) < rollout;
}

} // namespace deferd::filters
