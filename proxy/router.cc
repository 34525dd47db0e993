#include "proxy/router.h"

#include <algorithm>
#include <cctype>

namespace deferd {
namespace {

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool headersMatch(const std::vector<config::HeaderMatcher>& matchers, const HeaderMap& headers) {
  for (const config::HeaderMatcher& matcher : matchers) {
    std::optional<std::string_view> value = headers.get(matcher.name);
    bool matched = value.has_value() && (!matcher.exact || *value == *matcher.exact);
    if (matched == matcher.invert) {
      return false;
    }
  }
  return true;
}

} // namespace

std::string_view hostOf(std::string_view authority) {
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    return close == std::string_view::npos ? authority : authority.substr(1, close - 1);
  }
  size_t colon = authority.rfind(':');
  return colon == std::string_view::npos ? authority : authority.substr(0, colon);
}

std::optional<size_t> matchRoute(const std::vector<config::Route>& routes,
                                 std::string_view authority, std::string_view path,
                                 const HeaderMap& headers) {
  std::string_view host = hostOf(authority);
  for (size_t i = 0; i < routes.size(); i++) {
    const config::RouteMatch& match = routes[i].match;
    if (match.authority && !equalsIgnoreCase(*match.authority, host)) {
      continue;
    }
    if (!path.starts_with(match.prefix)) {
      continue;
    }
    if (!headersMatch(match.headers, headers)) {
      continue;
    }
    return i;
  }
  return std::nullopt;
}

std::optional<AbsoluteTarget> parseAbsoluteTarget(std::string_view target) {
  constexpr std::string_view kScheme = "http://";
  if (target.size() < kScheme.size() || !equalsIgnoreCase(target.substr(0, 7), kScheme)) {
    return std::nullopt;
  }
  std::string_view rest = target.substr(kScheme.size());
  size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);

  // Userinfo in a request target is forbidden (RFC 9110, section 4.2.4).
  if (authority.empty() || authority.find('@') != std::string_view::npos) {
    return std::nullopt;
  }
  if (end == std::string_view::npos || rest[end] == '#') {
    return AbsoluteTarget{authority, "/"};
  }
  if (rest[end] == '?') {
    // "http://host?q" has an empty path; its origin form is "/?q".
    return std::nullopt;
  }
  std::string_view path = rest.substr(end);
  size_t fragment = path.find('#');
  return AbsoluteTarget{authority, path.substr(0, fragment)};
}

std::optional<size_t> pickRoundRobin(std::span<const uint8_t> available, size_t& cursor) {
  for (size_t tried = 0; tried < available.size(); tried++) {
    size_t index = cursor % available.size();
    cursor = index + 1;
    if (available[index]) {
      return index;
    }
  }
  return std::nullopt;
}

std::optional<size_t> pickLeastRequest(std::span<const uint32_t> in_flight,
                                       std::span<const uint8_t> available, LbRandom& random) {
  size_t count = in_flight.size();
  if (count == 0) {
    return std::nullopt;
  }
  size_t first = random() % count;
  size_t second = count > 1 ? (first + 1 + random() % (count - 1)) % count : first;

  bool first_ok = available[first];
  bool second_ok = available[second];
  if (first_ok && second_ok) {
    return in_flight[second] < in_flight[first] ? second : first;
  }
  if (first_ok) {
    return first;
  }
  if (second_ok) {
    return second;
  }

  // Both draws were unavailable: fall back to the least loaded available endpoint.
  std::optional<size_t> best;
  for (size_t i = 0; i < count; i++) {
    if (available[i] && (!best || in_flight[i] < in_flight[*best])) {
      best = i;
    }
  }
  return best;
}

} // namespace deferd
