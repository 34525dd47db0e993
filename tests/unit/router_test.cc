#include "proxy/router.h"

#include <gtest/gtest.h>

#include "tests/unit/test_support.h"

namespace deferd {
namespace {

using testing::TestHeaderMap;

config::Route route(std::string prefix, std::optional<std::string> authority = std::nullopt,
                    std::vector<config::HeaderMatcher> headers = {}) {
  config::Route result;
  result.match.prefix = std::move(prefix);
  result.match.authority = std::move(authority);
  result.match.headers = std::move(headers);
  return result;
}

TEST(RouterTest, FirstMatchingRouteWins) {
  std::vector<config::Route> routes = {route("/api"), route("/")};
  TestHeaderMap headers;

  EXPECT_EQ(matchRoute(routes, "example.com", "/api/items", headers), 0u);
  EXPECT_EQ(matchRoute(routes, "example.com", "/other", headers), 1u);
}

TEST(RouterTest, NoRouteMatches) {
  std::vector<config::Route> routes = {route("/api")};
  TestHeaderMap headers;

  EXPECT_FALSE(matchRoute(routes, "example.com", "/", headers).has_value());
}

TEST(RouterTest, AuthorityIgnoresPortAndCase) {
  std::vector<config::Route> routes = {route("/", "inventory"), route("/")};
  TestHeaderMap headers;

  EXPECT_EQ(matchRoute(routes, "Inventory:8080", "/x", headers), 0u);
  EXPECT_EQ(matchRoute(routes, "inventory", "/x", headers), 0u);
  EXPECT_EQ(matchRoute(routes, "inventory.other", "/x", headers), 1u);
  EXPECT_EQ(matchRoute(routes, "[::1]:80", "/x", headers), 1u);
}

TEST(RouterTest, HeaderExactAndPresence) {
  std::vector<config::Route> routes = {
      route("/", std::nullopt, {config::HeaderMatcher{"x-canary", std::string("1"), false}}),
      route("/", std::nullopt, {config::HeaderMatcher{"x-debug", std::nullopt, false}}),
      route("/")};

  EXPECT_EQ(matchRoute(routes, "h", "/", TestHeaderMap{{"X-Canary", "1"}}), 0u);
  EXPECT_EQ(matchRoute(routes, "h", "/", TestHeaderMap{{"x-canary", "2"}}), 2u);
  EXPECT_EQ(matchRoute(routes, "h", "/", TestHeaderMap{{"x-debug", ""}}), 1u);
  EXPECT_EQ(matchRoute(routes, "h", "/", TestHeaderMap{}), 2u);
}

TEST(RouterTest, InvertedHeaderMatcher) {
  std::vector<config::Route> routes = {
      route("/", std::nullopt, {config::HeaderMatcher{"x-internal", std::nullopt, true}}),
      route("/")};

  EXPECT_EQ(matchRoute(routes, "h", "/", TestHeaderMap{}), 0u);
  EXPECT_EQ(matchRoute(routes, "h", "/", TestHeaderMap{{"x-internal", "1"}}), 1u);
}

TEST(RouterTest, HostOfAuthority) {
  EXPECT_EQ(hostOf("example.com:8080"), "example.com");
  EXPECT_EQ(hostOf("example.com"), "example.com");
  EXPECT_EQ(hostOf("[::1]:443"), "::1");
  EXPECT_EQ(hostOf("[::1]"), "::1");
}

TEST(RouterTest, AbsoluteTargets) {
  auto plain = parseAbsoluteTarget("http://inventory:8080/items?id=3");
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(plain->authority, "inventory:8080");
  EXPECT_EQ(plain->path, "/items?id=3");

  auto bare = parseAbsoluteTarget("HTTP://inventory");
  ASSERT_TRUE(bare.has_value());
  EXPECT_EQ(bare->authority, "inventory");
  EXPECT_EQ(bare->path, "/");

  auto fragment = parseAbsoluteTarget("http://h/p#frag");
  ASSERT_TRUE(fragment.has_value());
  EXPECT_EQ(fragment->path, "/p");

  EXPECT_FALSE(parseAbsoluteTarget("/origin/form").has_value());
  EXPECT_FALSE(parseAbsoluteTarget("https://h/").has_value());
  EXPECT_FALSE(parseAbsoluteTarget("http://user@h/").has_value());
  EXPECT_FALSE(parseAbsoluteTarget("http:///nohost").has_value());
  EXPECT_FALSE(parseAbsoluteTarget("http://h?q").has_value());
}

TEST(LoadBalancerTest, RoundRobinCyclesAndSkips) {
  std::vector<uint8_t> available = {1, 0, 1};
  size_t cursor = 0;

  EXPECT_EQ(pickRoundRobin(available, cursor), 0u);
  EXPECT_EQ(pickRoundRobin(available, cursor), 2u);
  EXPECT_EQ(pickRoundRobin(available, cursor), 0u);
}

TEST(LoadBalancerTest, RoundRobinNoneAvailable) {
  std::vector<uint8_t> available = {0, 0};
  size_t cursor = 0;

  EXPECT_FALSE(pickRoundRobin(available, cursor).has_value());
}

TEST(LoadBalancerTest, LeastRequestPrefersLessLoaded) {
  // With two endpoints both are always drawn, so the less loaded one must always win.
  std::vector<uint32_t> in_flight = {5, 1};
  std::vector<uint8_t> available = {1, 1};
  LbRandom random(42);

  for (int i = 0; i < 100; i++) {
    EXPECT_EQ(pickLeastRequest(in_flight, available, random), 1u);
  }
}

TEST(LoadBalancerTest, LeastRequestSpreadsEqualLoad) {
  std::vector<uint32_t> in_flight = {0, 0, 0, 0};
  std::vector<uint8_t> available = {1, 1, 1, 1};
  LbRandom random(7);
  std::vector<int> picks(4);

  for (int i = 0; i < 4000; i++) {
    picks[*pickLeastRequest(in_flight, available, random)]++;
  }
  for (int count : picks) {
    EXPECT_GT(count, 700);
    EXPECT_LT(count, 1300);
  }
}

TEST(LoadBalancerTest, LeastRequestSkipsUnavailable) {
  std::vector<uint32_t> in_flight = {0, 9, 0};
  std::vector<uint8_t> available = {0, 1, 0};
  LbRandom random(1);

  for (int i = 0; i < 50; i++) {
    EXPECT_EQ(pickLeastRequest(in_flight, available, random), 1u);
  }
}

TEST(LoadBalancerTest, LeastRequestEmptyCluster) {
  LbRandom random(1);

  EXPECT_FALSE(pickLeastRequest({}, {}, random).has_value());
}

} // namespace
} // namespace deferd
