#include "filters/common/rollout.h"

#include <cmath>

namespace deferd::filters {

namespace {

constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

uint64_t finalize(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

} // namespace

uint64_t rolloutHash(std::string_view request_id) {
  uint64_t hash = kFnvOffsetBasis;
  for (char c : request_id) {
    hash ^= static_cast<unsigned char>(c);
    hash *= kFnvPrime;
  }
  return finalize(hash);
}

double rolloutFraction(std::string_view request_id) {
  // 53 bits fit a double's mantissa exactly, so the result is strictly below 1.
  constexpr double kScale = 1.0 / static_cast<double>(uint64_t{1} << 53);
  return static_cast<double>(rolloutHash(request_id) >> 11) * kScale;
}

bool inRollout(std::string_view request_id, double percent) {
  if (std::isnan(percent) || percent <= 0.0) {
    return false;
  }
  if (percent >= 100.0) {
    return true;
  }
  return rolloutFraction(request_id) < percent / 100.0;
}

} // namespace deferd::filters
