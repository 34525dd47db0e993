#include "filters/common/rollout.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace deferd::filters {
namespace {

TEST(RolloutTest, SameIdSameFraction) {
  EXPECT_EQ(rolloutFraction("a3f1c9e0-request"), rolloutFraction("a3f1c9e0-request"));
  EXPECT_NE(rolloutFraction("request-1"), rolloutFraction("request-2"));
}

TEST(RolloutTest, FixedHashValue) {
  // Other sidecars and versions must agree on the hash, so its value is part of the contract.
  // The expected values come from a separate Python implementation of FNV-1a and splitmix64.
  EXPECT_EQ(rolloutHash(""), 0xf52a15e9a9b5e89bULL);
  EXPECT_EQ(rolloutHash("request-1"), 0x611a2dc6b4f2ee72ULL);
  EXPECT_NEAR(rolloutFraction("request-1"), 0.379305706989679, 1e-12);
}

TEST(RolloutTest, FractionInUnitInterval) {
  for (int i = 0; i < 10'000; ++i) {
    const double fraction = rolloutFraction("id-" + std::to_string(i));
    ASSERT_GE(fraction, 0.0);
    ASSERT_LT(fraction, 1.0);
  }
}

TEST(RolloutTest, SelectsStableShare) {
  int selected = 0;
  for (int i = 0; i < 10'000; ++i) {
    const std::string id = "req-" + std::to_string(i);
    const bool in_ten = inRollout(id, 10.0);
    const bool in_thirty = inRollout(id, 30.0);
    ASSERT_TRUE(!in_ten || in_thirty) << id << ": raising the share dropped a request";
    selected += in_thirty ? 1 : 0;
  }
  EXPECT_NEAR(selected, 3000, 200);
}

TEST(RolloutTest, EdgePercentages) {
  EXPECT_FALSE(inRollout("x", 0.0));
  EXPECT_FALSE(inRollout("x", -5.0));
  EXPECT_FALSE(inRollout("x", std::nan("")));
  EXPECT_TRUE(inRollout("x", 100.0));
  EXPECT_TRUE(inRollout("", 100.0));
  EXPECT_TRUE(inRollout("x", 250.0));
}

} // namespace
} // namespace deferd::filters
