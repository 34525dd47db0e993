#include "proxy/filter_state.h"

#include <chrono>
#include <optional>
#include <string>

#include <gtest/gtest.h>

#include "tests/unit/metrics_text.h"

namespace deferd {
namespace {

using filters::breaker::BreakerState;

using testing::sampleValue;

std::string stateSeries(const std::string& policy, const std::string& state) {
  return "deferd_breaker_state{cluster=\"grpc\",policy=\"" + policy + "\",state=\"" + state + "\"}";
}

// Two policies that each put a breaker on cluster "grpc", built as Snapshot::build does.
class FilterStateTest : public ::testing::Test {
protected:
  FilterStateTest() {
    cluster_.name = "grpc";
    cluster_.endpoints.resize(1);
    trips_.consecutive_failures = 2;
    trips_.cooldown = std::chrono::seconds(30);
    trips_.max_cooldown = std::chrono::seconds(30);
    stays_.consecutive_failures = 5;
  }

  FilterState::ClusterBreaker build(const std::string& policy,
                                    const config::BreakerPolicy& options) {
    return state_.clusterBreaker(policy, cluster_, options, false,
                                 metrics_.breaker(policy, cluster_.name));
  }

  // Fails calls until the breaker opens.
  static void trip(filters::breaker::CircuitBreaker& breaker, uint32_t failures) {
    auto now = std::chrono::steady_clock::now();
    for (uint32_t i = 0; i < failures; ++i) {
      filters::breaker::Admission admission = breaker.allow(now);
      filters::breaker::CallResult result;
      result.http_status = 500;
      admission.record(result, now);
    }
  }

  Metrics metrics_;
  FilterState state_;
  config::Cluster cluster_;
  config::BreakerPolicy trips_;
  config::BreakerPolicy stays_;
};

TEST_F(FilterStateTest, BreakersOfOneClusterExportOwnState) {
  state_.beginBuild();
  FilterState::ClusterBreaker tripped = build("br", trips_);
  FilterState::ClusterBreaker closed = build("br2", stays_);
  state_.endBuild();
  ASSERT_NE(tripped.breaker, closed.breaker);

  trip(*tripped.breaker, trips_.consecutive_failures);
  ASSERT_EQ(tripped.breaker->lastState(), BreakerState::kOpen);
  state_.tick(metrics_);
  std::string text = metrics_.serialize();

  EXPECT_EQ(sampleValue(text, stateSeries("br", "open")), 1);
  EXPECT_EQ(sampleValue(text, stateSeries("br", "closed")), 0);
  EXPECT_EQ(sampleValue(text, stateSeries("br2", "closed")), 1);
  EXPECT_EQ(sampleValue(text, stateSeries("br2", "open")), 0);
  EXPECT_EQ(sampleValue(text, "deferd_breaker_transitions_total{cause=\"consecutive_failures\","
                              "cluster=\"grpc\",policy=\"br\",to=\"open\"}"),
            1);
  EXPECT_EQ(sampleValue(text, "deferd_breaker_transitions_total{cause=\"consecutive_failures\","
                              "cluster=\"grpc\",policy=\"br2\",to=\"open\"}"),
            0);
}

TEST_F(FilterStateTest, DroppedBreakerZeroesOnlyItsGauges) {
  state_.beginBuild();
  trip(*build("br", trips_).breaker, trips_.consecutive_failures);
  build("br2", stays_);
  state_.endBuild();
  state_.tick(metrics_);

  // A reload keeps br2 and drops br's breaker.
  state_.beginBuild();
  build("br2", stays_);
  state_.endBuild();
  state_.tick(metrics_);
  std::string text = metrics_.serialize();

  for (const char* state : {"closed", "open", "half_open"}) {
    EXPECT_EQ(sampleValue(text, stateSeries("br", state)), 0) << state;
  }
  EXPECT_EQ(sampleValue(text, stateSeries("br2", "closed")), 1);
}

} // namespace
} // namespace deferd
