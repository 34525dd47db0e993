#include "filters/priority/trust.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace deferd::filters::priority {
namespace {

PriorityParseResult parsed(std::string_view value) {
  std::vector<std::string_view> lines{value};
  return parsePriority(lines);
}

IpAddress address(std::string_view text) {
  std::optional<IpAddress> result = IpAddress::parse(text);
  EXPECT_TRUE(result) << text;
  return result.value_or(IpAddress{});
}

std::optional<CidrRange> range(std::string_view text) {
  std::string error;
  std::optional<CidrRange> result = CidrRange::parse(text, error);
  EXPECT_TRUE(result) << error;
  return result;
}

constexpr int kRouteDefault = 4;

const TrustPolicy kTrustedListener{.listener = ListenerTrust::kTrusted, .untrusted_floor = 3};
const TrustPolicy kClampingListener{.listener = ListenerTrust::kUntrusted, .untrusted_floor = 3};
const TrustPolicy kStrippingListener{.listener = ListenerTrust::kUntrusted,
                                     .untrusted_floor = std::nullopt};

TEST(TrustTest, TrustedListenerKeepsPriority) {
  TrustDecision decision = applyTrust(parsed("u=0, hop=2"), kRouteDefault, kTrustedListener,
                                      /*peer_in_trusted_cidrs=*/false);
  EXPECT_EQ(decision.priority, (Priority{.urgency = 0, .hop = 2}));
  EXPECT_EQ(decision.outcome, TrustOutcome::kUnchanged);
}

TEST(TrustTest, TrustedPeerKeepsPriority) {
  TrustDecision decision = applyTrust(parsed("u=0, hop=2"), kRouteDefault, kClampingListener,
                                      /*peer_in_trusted_cidrs=*/true);
  EXPECT_EQ(decision.priority, (Priority{.urgency = 0, .hop = 2}));
  EXPECT_EQ(decision.outcome, TrustOutcome::kUnchanged);
}

TEST(TrustTest, ClampsOutsideCaller) {
  struct Case {
    std::string_view header;
    Priority expected;
    TrustOutcome outcome;
  };
  const Case cases[] = {
      {"u=0", {.urgency = 3, .hop = 0}, TrustOutcome::kClamped},
      {"u=2, hop=0", {.urgency = 3, .hop = 0}, TrustOutcome::kClamped},
      {"u=3", {.urgency = 3, .hop = 0}, TrustOutcome::kUnchanged},
      {"u=7", {.urgency = 7, .hop = 0}, TrustOutcome::kUnchanged},
      {"u=5, hop=2", {.urgency = 5, .hop = 0}, TrustOutcome::kClamped},
      {"hop=1", {.urgency = kRouteDefault, .hop = 0}, TrustOutcome::kClamped},
      {"", {.urgency = kRouteDefault, .hop = 0}, TrustOutcome::kUnchanged},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.header));
    TrustDecision decision = applyTrust(parsed(c.header), kRouteDefault, kClampingListener,
                                        /*peer_in_trusted_cidrs=*/false);
    EXPECT_EQ(decision.priority, c.expected);
    EXPECT_EQ(decision.outcome, c.outcome);
  }
}

TEST(TrustTest, RouteDefaultIsNeverClamped) {
  // The route default is more urgent than the floor, and a caller that sets no urgency gets it.
  TrustDecision decision = applyTrust(parsed("hop=0"), /*default_urgency=*/1, kClampingListener,
                                      /*peer_in_trusted_cidrs=*/false);
  EXPECT_EQ(decision.priority, (Priority{.urgency = 1, .hop = 0}));
  EXPECT_EQ(decision.outcome, TrustOutcome::kUnchanged);
}

TEST(TrustTest, StripsOutsideCallerWithoutFloor) {
  TrustDecision decision = applyTrust(parsed("u=6, hop=1"), kRouteDefault, kStrippingListener,
                                      /*peer_in_trusted_cidrs=*/false);
  EXPECT_EQ(decision.priority, (Priority{.urgency = kRouteDefault, .hop = 0}));
  EXPECT_EQ(decision.outcome, TrustOutcome::kStripped);
}

TEST(TrustTest, AbsentOrMalformedGetsRouteDefault) {
  for (const TrustPolicy& policy : {kTrustedListener, kClampingListener, kStrippingListener}) {
    TrustDecision absent = applyTrust(PriorityParseResult{}, kRouteDefault, policy, false);
    EXPECT_EQ(absent.priority, (Priority{.urgency = kRouteDefault, .hop = 0}));
    EXPECT_EQ(absent.outcome, TrustOutcome::kUnchanged);

    TrustDecision malformed = applyTrust(parsed("u=0,"), kRouteDefault, policy, false);
    EXPECT_EQ(malformed.priority, (Priority{.urgency = kRouteDefault, .hop = 0}));
    EXPECT_EQ(malformed.outcome, TrustOutcome::kUnchanged);
  }
}

TEST(TrustCidrTest, MatchesIpv4Prefixes) {
  struct Case {
    std::string_view cidr;
    std::string_view address;
    bool contained;
  };
  const Case cases[] = {
      {"10.0.0.0/8", "10.255.1.2", true},        {"10.0.0.0/8", "11.0.0.0", false},
      {"192.168.1.0/24", "192.168.1.255", true}, {"192.168.1.0/24", "192.168.2.0", false},
      {"172.16.0.0/12", "172.31.255.255", true}, {"172.16.0.0/12", "172.32.0.0", false},
      {"10.1.2.3/32", "10.1.2.3", true},         {"10.1.2.3/32", "10.1.2.4", false},
      {"0.0.0.0/0", "203.0.113.9", true},        {"0.0.0.0/0", "2001:db8::1", false},
      {"128.0.0.0/1", "127.255.255.255", false}, {"128.0.0.0/1", "128.0.0.0", true},
      {"10.0.0.0/8", "::ffff:10.1.2.3", true},   {"10.0.0.0/8", "::ffff:11.1.2.3", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.cidr) + " " + std::string(c.address));
    std::optional<CidrRange> cidr = range(c.cidr);
    ASSERT_TRUE(cidr);
    EXPECT_EQ(cidr->contains(address(c.address)), c.contained);
  }
}

TEST(TrustCidrTest, MatchesIpv6Prefixes) {
  struct Case {
    std::string_view cidr;
    std::string_view address;
    bool contained;
  };
  const Case cases[] = {
      {"2001:db8::/32", "2001:db8:ffff::1", true},
      {"2001:db8::/32", "2001:db9::1", false},
      {"fd00::/8", "fdff:1::2", true},
      {"fd00::/8", "fe00::", false},
      {"fe80::/10", "febf::1", true},
      {"fe80::/10", "fec0::1", false},
      {"::1/128", "::1", true},
      {"::1/128", "::2", false},
      {"2001:db8::1/128", "2001:db8:0:0:0:0:0:1", true},
      {"::/0", "2001:db8::1", true},
      {"::/0", "10.0.0.1", false},
      {"::/0", "::ffff:10.0.0.1", false},
      {"::ffff:10.0.0.0/104", "10.9.9.9", true},
      {"::ffff:10.0.0.0/104", "::ffff:10.9.9.9", true},
      {"::ffff:10.0.0.0/104", "11.0.0.0", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.cidr) + " " + std::string(c.address));
    std::optional<CidrRange> cidr = range(c.cidr);
    ASSERT_TRUE(cidr);
    EXPECT_EQ(cidr->contains(address(c.address)), c.contained);
  }
}

TEST(TrustCidrTest, NormalizesMappedRangeToIpv4) {
  std::optional<CidrRange> mapped = range("::ffff:10.0.0.0/104");
  ASSERT_TRUE(mapped);
  EXPECT_TRUE(mapped->base().isV4());
  EXPECT_EQ(mapped->prefixLength(), 8);
}

TEST(TrustCidrTest, RejectsMalformedRanges) {
  struct Case {
    std::string_view cidr;
    std::string_view message_part;
  };
  const Case cases[] = {
      {"10.0.0.0", "missing prefix length"},
      {"10.0.0.0/", "prefix length must be 0 to 32"},
      {"10.0.0.0/33", "prefix length must be 0 to 32"},
      {"10.0.0.0/-1", "prefix length must be 0 to 32"},
      {"10.0.0.0/+8", "prefix length must be 0 to 32"},
      {"10.0.0.0/08", "prefix length must be 0 to 32"},
      {"10.0.0.0/8 ", "prefix length must be 0 to 32"},
      {"10.0.0.0/8/8", "prefix length must be 0 to 32"},
      {"2001:db8::/129", "prefix length must be 0 to 128"},
      {"/8", "is not an IPv4 or IPv6 address"},
      {"10.0.0/8", "is not an IPv4 or IPv6 address"},
      {"010.0.0.0/8", "is not an IPv4 or IPv6 address"},
      {"256.0.0.0/8", "is not an IPv4 or IPv6 address"},
      {"10.0.0.0.0/8", "is not an IPv4 or IPv6 address"},
      {"2001:db8:::/32", "is not an IPv4 or IPv6 address"},
      {"fe80::1%eth0/64", "is not an IPv4 or IPv6 address"},
      {"[::1]/128", "is not an IPv4 or IPv6 address"},
      {"example.com/8", "is not an IPv4 or IPv6 address"},
      {"10.1.2.3/8", "did you mean 10.0.0.0/8?"},
      {"192.168.1.1/31", "did you mean 192.168.1.0/31?"},
      {"2001:db8::1/32", "did you mean 2001:db8::/32?"},
      {"::ffff:10.1.0.0/104", "did you mean ::ffff:10.0.0.0/104?"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.cidr));
    std::string error;
    EXPECT_FALSE(CidrRange::parse(c.cidr, error));
    EXPECT_NE(error.find(c.message_part), std::string::npos) << error;
    EXPECT_NE(error.find(std::string(c.cidr)), std::string::npos) << error;
  }
}

TEST(TrustCidrTest, ParsesListAndReportsEachError) {
  CidrListParseResult result =
      parseCidrList({"10.0.0.0/8", "bogus/8", "fd00::/8", "10.0.0.1/24", "127.0.0.1/32"});
  EXPECT_EQ(result.ranges.size(), 3u);
  ASSERT_EQ(result.errors.size(), 2u);
  EXPECT_NE(result.errors[0].find("bogus/8"), std::string::npos);
  EXPECT_NE(result.errors[1].find("10.0.0.1/24"), std::string::npos);

  EXPECT_TRUE(cidrListContains(result.ranges, address("127.0.0.1")));
  EXPECT_TRUE(cidrListContains(result.ranges, address("fd12::1")));
  EXPECT_FALSE(cidrListContains(result.ranges, address("192.0.2.1")));
  EXPECT_FALSE(cidrListContains({}, address("10.0.0.1")));
}

TEST(TrustCidrTest, ParsesAddressesFromBytes) {
  EXPECT_EQ(IpAddress::fromV4({192, 0, 2, 1}), address("192.0.2.1"));
  std::array<uint8_t, 16> mapped{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1};
  EXPECT_EQ(IpAddress::fromV6(mapped), address("192.0.2.1"));
  EXPECT_TRUE(IpAddress::fromV6(mapped).isV4());

  EXPECT_FALSE(IpAddress::parse(""));
  EXPECT_FALSE(IpAddress::parse("1.2.3"));
  EXPECT_FALSE(IpAddress::parse(" 1.2.3.4"));
  EXPECT_FALSE(IpAddress::parse("::1%lo"));
}

} // namespace
} // namespace deferd::filters::priority
