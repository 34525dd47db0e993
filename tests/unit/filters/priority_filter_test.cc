#include "filters/priority/priority_filter.h"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "tests/unit/test_support.h"

namespace deferd::filters::priority {
namespace {

using testing::FakeFilterCallbacks;
using testing::TestHeaderMap;

constexpr const char* kTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// One listener's filter config with real counters, and a table on a manual clock.
class PriorityFilterTest : public ::testing::Test {
protected:
  PriorityFilterTest() {
    auto& requests = prometheus::BuildCounter().Name("requests").Register(registry_);
    for (size_t u = 0; u < stats_.requests.size(); ++u) {
      for (size_t s = 0; s < stats_.requests[u].size(); ++s) {
        stats_.requests[u][s] =
            &requests.Add({{"urgency", std::to_string(u)}, {"source", std::to_string(s)}});
      }
    }
    auto& other = prometheus::BuildCounter().Name("other").Register(registry_);
    stats_.clamped = &other.Add({{"what", "clamped"}});
    stats_.malformed = &other.Add({{"what", "malformed"}});
    stats_.depth_exceeded = &other.Add({{"what", "depth"}});

    InheritanceTableOptions options;
    options.max_entries = 64;
    options.ttl = std::chrono::seconds(30);
    options.release_grace = std::chrono::seconds(1);
    table_ = std::make_shared<InheritanceTable>(options, [this] { return now_; });

    policy_.max_depth = 2;
    inbound_ = routeConfig(config::Direction::kInbound);
    outbound_ = routeConfig(config::Direction::kOutbound);
    outbound_.trust.listener = ListenerTrust::kTrusted;
  }

  PriorityRouteConfig routeConfig(config::Direction direction) {
    PriorityRouteConfig config;
    config.policy = &policy_;
    config.direction = direction;
    config.default_urgency = 3;
    config.trust.listener = ListenerTrust::kUntrusted;
    config.trust.untrusted_floor = 3;
    config.trusted_cidrs = &cidrs_;
    config.correlation = correlationSources(policy_.correlation);
    config.table = table_;
    config.stats = &stats_;
    return config;
  }

  // Runs one request through a filter; returns the filter so the test can end the stream.
  std::unique_ptr<PriorityFilter> run(const PriorityRouteConfig& config, TestHeaderMap& headers,
                                      std::string peer = "127.0.0.1") {
    peer_ = std::move(peer);
    callbacks_.info = RequestInfo{};
    callbacks_.info.request_id = "req-1";
    callbacks_.info.downstream_address = peer_;
    auto filter = std::make_unique<PriorityFilter>(config);
    filter->setCallbacks(callbacks_);
    EXPECT_EQ(filter->onRequestHeaders(headers), FilterStatus::kContinue);
    return filter;
  }

  double requests(int urgency, PrioritySource source) {
    return stats_.requests[urgency][static_cast<size_t>(source)]->Value();
  }

  prometheus::Registry registry_;
  PriorityStats stats_;
  MonotonicTime now_{std::chrono::seconds(100)};
  std::shared_ptr<InheritanceTable> table_;
  config::PriorityPolicy policy_;
  std::vector<CidrRange> cidrs_;
  PriorityRouteConfig inbound_;
  PriorityRouteConfig outbound_;
  FakeFilterCallbacks callbacks_;
  std::string peer_;
};

TEST_F(PriorityFilterTest, InboundHeaderWithinFloorIsKept) {
  TestHeaderMap headers{{"deferd-priority", "u=5"}, {"traceparent", kTraceparent}};
  auto filter = run(inbound_, headers);

  EXPECT_EQ(callbacks_.info.urgency, 5);
  EXPECT_EQ(callbacks_.info.requested_urgency, 5);
  EXPECT_EQ(callbacks_.info.priority_source, "header");
  EXPECT_EQ(headers.get("deferd-priority"), "u=5, hop=0");
  EXPECT_EQ(requests(5, PrioritySource::kHeader), 1);
  EXPECT_EQ(table_->size(), 1u);
}

TEST_F(PriorityFilterTest, ForgedUrgencyIsClampedAtUntrustedListener) {
  TestHeaderMap headers{{"deferd-priority", "u=0, hop=2"}};
  auto filter = run(inbound_, headers, "192.0.2.7");

  EXPECT_EQ(callbacks_.info.urgency, 3);
  EXPECT_EQ(callbacks_.info.requested_urgency, 0);
  EXPECT_EQ(headers.get("deferd-priority"), "u=3, hop=0");
  EXPECT_EQ(stats_.clamped->Value(), 1);
}

TEST_F(PriorityFilterTest, TrustedCidrKeepsUrgency) {
  std::string error;
  cidrs_.push_back(*CidrRange::parse("10.0.0.0/8", error));
  TestHeaderMap headers{{"deferd-priority", "u=0, hop=1"}};
  auto filter = run(inbound_, headers, "10.1.2.3");

  EXPECT_EQ(callbacks_.info.urgency, 0);
  EXPECT_EQ(headers.get("deferd-priority"), "u=0, hop=1");
  EXPECT_EQ(stats_.clamped->Value(), 0);
}

TEST_F(PriorityFilterTest, StripFloorIgnoresOutsideHeader) {
  inbound_.trust.untrusted_floor.reset();
  TestHeaderMap headers{{"deferd-priority", "u=6"}};
  auto filter = run(inbound_, headers, "192.0.2.7");

  EXPECT_EQ(callbacks_.info.urgency, 3);
  EXPECT_EQ(callbacks_.info.priority_source, "default");
  EXPECT_EQ(stats_.clamped->Value(), 1);
}

TEST_F(PriorityFilterTest, MalformedHeaderFallsBackAndCounts) {
  inbound_.default_urgency = 5;
  TestHeaderMap headers{{"deferd-priority", "u=zero"}};
  auto filter = run(inbound_, headers);

  EXPECT_EQ(callbacks_.info.urgency, 5);
  EXPECT_EQ(callbacks_.info.requested_urgency, std::nullopt);
  EXPECT_EQ(callbacks_.info.priority_source, "default");
  EXPECT_EQ(headers.get("deferd-priority"), "u=5, hop=0");
  EXPECT_EQ(stats_.malformed->Value(), 1);
  EXPECT_EQ(requests(5, PrioritySource::kDefault), 1);
}

// Field lines of a dictionary join into one (RFC 8941), where a repeated member's last value
// wins.
TEST_F(PriorityFilterTest, RepeatedMemberLastValueWins) {
  TestHeaderMap headers{{"deferd-priority", "u=1"}, {"deferd-priority", "u=5"}};
  auto filter = run(inbound_, headers);

  EXPECT_EQ(stats_.malformed->Value(), 0);
  EXPECT_EQ(callbacks_.info.urgency, 5);
}

TEST_F(PriorityFilterTest, OutboundInheritsWithHopPlusOne) {
  std::string error;
  cidrs_.push_back(*CidrRange::parse("127.0.0.0/8", error));
  TestHeaderMap inbound{{"deferd-priority", "u=0"}, {"traceparent", kTraceparent}};
  auto held = run(inbound_, inbound);

  TestHeaderMap call{{"traceparent", kTraceparent}};
  auto filter = run(outbound_, call);
  EXPECT_EQ(callbacks_.info.urgency, 0);
  EXPECT_EQ(callbacks_.info.priority_source, "inherited");
  EXPECT_EQ(call.get("deferd-priority"), "u=0, hop=1");
  EXPECT_EQ(requests(0, PrioritySource::kInherited), 1);
}

TEST_F(PriorityFilterTest, OutboundHeaderOfTheAppWins) {
  TestHeaderMap inbound{{"deferd-priority", "u=4"}, {"traceparent", kTraceparent}};
  auto held = run(inbound_, inbound);

  TestHeaderMap call{{"traceparent", kTraceparent}, {"deferd-priority", "u=6"}};
  auto filter = run(outbound_, call);
  EXPECT_EQ(callbacks_.info.urgency, 6);
  EXPECT_EQ(callbacks_.info.priority_source, "header");
}

TEST_F(PriorityFilterTest, DepthLimitEndsTheChain) {
  std::string error;
  cidrs_.push_back(*CidrRange::parse("127.0.0.0/8", error));
  outbound_.default_urgency = 7;
  // The request arrived as the second inheritance step; max_depth is 2.
  TestHeaderMap inbound{{"deferd-priority", "u=0, hop=2"}, {"traceparent", kTraceparent}};
  auto held = run(inbound_, inbound);

  TestHeaderMap call{{"traceparent", kTraceparent}};
  auto filter = run(outbound_, call);
  EXPECT_EQ(callbacks_.info.urgency, 7);
  EXPECT_EQ(callbacks_.info.priority_source, "default");
  EXPECT_EQ(call.get("deferd-priority"), "u=7, hop=3");
  EXPECT_EQ(stats_.depth_exceeded->Value(), 1);
}

TEST_F(PriorityFilterTest, BoostedEntryPassesItsUrgency) {
  TestHeaderMap inbound{{"deferd-priority", "u=6"}, {"traceparent", kTraceparent}};
  auto held = run(inbound_, inbound);
  ASSERT_TRUE(table_->boost("4bf92f3577b34da6a3ce929d0e0e4736", 1));

  TestHeaderMap call{{"traceparent", kTraceparent}};
  auto filter = run(outbound_, call);
  EXPECT_EQ(callbacks_.info.urgency, 1);
  EXPECT_EQ(callbacks_.info.priority_source, "boosted");
}

TEST_F(PriorityFilterTest, StreamEndReleasesTheEntry) {
  TestHeaderMap inbound{{"x-request-id", "abc"}};
  auto held = run(inbound_, inbound);
  held->onStreamEnd(StreamEnd::kCompleted);

  // Within the release grace, a late sub-call still inherits; after it, the entry is gone.
  TestHeaderMap late{{"x-request-id", "abc"}};
  auto filter = run(outbound_, late);
  EXPECT_EQ(callbacks_.info.priority_source, "inherited");

  now_ += std::chrono::seconds(2);
  TestHeaderMap after{{"x-request-id", "abc"}};
  filter = run(outbound_, after);
  EXPECT_EQ(callbacks_.info.priority_source, "default");
  EXPECT_EQ(table_->size(), 0u);
}

TEST_F(PriorityFilterTest, ShadowDecidesWithoutRewriting) {
  inbound_.enforce = false;
  TestHeaderMap headers{{"deferd-priority", "u=0"}};
  auto filter = run(inbound_, headers, "192.0.2.7");

  EXPECT_EQ(callbacks_.info.urgency, 3);
  EXPECT_EQ(headers.get("deferd-priority"), "u=0");
  EXPECT_EQ(stats_.clamped->Value(), 1);
}

TEST_F(PriorityFilterTest, RolloutZeroIsShadow) {
  inbound_.rollout = 0.0;
  TestHeaderMap headers{};
  auto filter = run(inbound_, headers);
  EXPECT_EQ(headers.get("deferd-priority"), std::nullopt);
  EXPECT_EQ(callbacks_.info.urgency, 3);
}

TEST_F(PriorityFilterTest, NoCorrelationIdRecordsNothing) {
  TestHeaderMap headers{{"traceparent", "not-a-traceparent"}};
  auto filter = run(inbound_, headers);
  EXPECT_EQ(table_->size(), 0u);
  filter->onStreamEnd(StreamEnd::kCompleted);
}

} // namespace
} // namespace deferd::filters::priority
