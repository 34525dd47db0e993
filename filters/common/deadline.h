#pragma once

// Request deadlines carried in headers.
//
// grpc-timeout (gRPC over HTTP/2, "Requests"): 1 to 8 ASCII digits and one unit, H (hours),
// M (minutes), S (seconds), m (milliseconds), u (microseconds) or n (nanoseconds). A
// configured deadline header instead carries a config-style duration such as 250ms or 2s.
// Both give the time the caller is still willing to wait, counted from when deferd read them.
// Eight digits of hours reach 11,000 years, more than a 64-bit count of nanoseconds holds, so a
// longer timeout is read as kMaxHeaderTimeout: as good as none, and safe to add to a time.

#include <chrono>
#include <optional>
#include <string_view>

namespace deferd::filters {

inline constexpr std::chrono::nanoseconds kMaxHeaderTimeout = std::chrono::hours(24 * 365 * 100);

inline std::optional<std::chrono::nanoseconds> parseGrpcTimeout(std::string_view value) {
  if (value.size() < 2 || value.size() > 9) {
    return std::nullopt;
  }
  int64_t amount = 0;
  for (char c : value.substr(0, value.size() - 1)) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    amount = amount * 10 + (c - '0');
  }

  using namespace std::chrono;
  int64_t unit_ns = 0;
  switch (value.back()) {
  case 'H':
    unit_ns = duration_cast<nanoseconds>(hours(1)).count();
    break;
  case 'M':
    unit_ns = duration_cast<nanoseconds>(minutes(1)).count();
    break;
  case 'S':
    unit_ns = duration_cast<nanoseconds>(seconds(1)).count();
    break;
  case 'm':
    unit_ns = duration_cast<nanoseconds>(milliseconds(1)).count();
    break;
  case 'u':
    unit_ns = duration_cast<nanoseconds>(microseconds(1)).count();
    break;
  case 'n':
    unit_ns = 1;
    break;
  default:
    return std::nullopt;
  }
  if (amount > kMaxHeaderTimeout.count() / unit_ns) {
    return kMaxHeaderTimeout;
  }
  return nanoseconds(amount * unit_ns);
}

// Parses a duration with unit ms, s, m or h and an optional fraction, such as 250ms or 1.5s.
inline std::optional<std::chrono::nanoseconds> parseDeadlineDuration(std::string_view value) {
  size_t digits = 0;
  while (digits < value.size() &&
         ((value[digits] >= '0' && value[digits] <= '9') || value[digits] == '.')) {
    ++digits;
  }
  if (digits == 0 || digits > 12) {
    return std::nullopt;
  }
  double amount = 0;
  double scale = 0; // 0 before the point, then 0.1, 0.01, ...
  for (char c : value.substr(0, digits)) {
    if (c == '.') {
      if (scale != 0) {
        return std::nullopt;
      }
      scale = 0.1;
    } else if (scale == 0) {
      amount = amount * 10 + (c - '0');
    } else {
      amount += (c - '0') * scale;
      scale /= 10;
    }
  }
  std::string_view unit = value.substr(digits);
  double seconds_per_unit = 0;
  if (unit == "ms") {
    seconds_per_unit = 0.001;
  } else if (unit == "s") {
    seconds_per_unit = 1;
  } else if (unit == "m") {
    seconds_per_unit = 60;
  } else if (unit == "h") {
    seconds_per_unit = 3600;
  } else {
    return std::nullopt;
  }
  double nanoseconds = amount * seconds_per_unit * 1e9;
  if (nanoseconds >= static_cast<double>(kMaxHeaderTimeout.count())) {
    return kMaxHeaderTimeout;
  }
  return std::chrono::nanoseconds(static_cast<int64_t>(nanoseconds));
}

} // namespace deferd::filters
