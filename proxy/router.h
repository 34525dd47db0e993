#pragma once

// Route matching and request-target helpers, free of any HTTP library so they are unit-tested
// directly.
//
// Routes are tried in config order and the first match wins, as in Envoy's virtual host route
// lists: an authority (host without port, compared case-insensitively), a path prefix, and
// header matchers must all match.

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "filters/filter.h"

namespace deferd {

// The host of an authority: "[::1]:80" -> "::1", "example.com:8080" -> "example.com".
std::string_view hostOf(std::string_view authority);

// Returns the index of the first route that matches, or nullopt.
std::optional<size_t> matchRoute(const std::vector<config::Route>& routes,
                                 std::string_view authority, std::string_view path,
                                 const HeaderMap& headers);

// An absolute-form request target ("http://host:port/path?q"), split for forwarding.
struct AbsoluteTarget {
  std::string_view authority;
  std::string_view path; // origin-form, "/" when the target has none
};

// Splits an absolute-form target with the http scheme. Returns nullopt for origin-form
// ("/path") and for anything that is not a valid http URI.
std::optional<AbsoluteTarget> parseAbsoluteTarget(std::string_view target);

// A small, fast generator for load balancing choices; not for anything secret.
using LbRandom = std::minstd_rand;

// Least request with two random choices: of two distinct endpoints drawn at random, the one
// with fewer requests in flight on this worker. Skips endpoints marked unavailable.
std::optional<size_t> pickLeastRequest(std::span<const uint32_t> in_flight,
                                       std::span<const uint8_t> available, LbRandom& random);

// Round robin over the available endpoints, starting after `cursor`, which it advances.
std::optional<size_t> pickRoundRobin(std::span<const uint8_t> available, size_t& cursor);

} // namespace deferd
