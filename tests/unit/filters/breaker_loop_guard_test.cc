#include "filters/breaker/loop_guard.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/unit/test_support.h"

namespace deferd::filters::breaker {
namespace {

using deferd::testing::TestHeaderMap;

std::vector<std::string> services(std::initializer_list<const char*> names) {
  return std::vector<std::string>(names.begin(), names.end());
}

TEST(BreakerLoopGuardTest, ParsesTokensAndStrings) {
  FallbackPath path = parseFallbackPath(R"(checkout, "cart service",payments ,  a*b:c/d)");
  ASSERT_EQ(path.status, FallbackPathStatus::kValid);
  EXPECT_EQ(path.services, services({"checkout", "cart service", "payments", "a*b:c/d"}));
  EXPECT_TRUE(path.contains("cart service"));
  EXPECT_TRUE(path.contains("payments"));
  EXPECT_FALSE(path.contains("Payments"));
  EXPECT_FALSE(path.contains("cart"));
}

TEST(BreakerLoopGuardTest, StringEscapes) {
  FallbackPath path = parseFallbackPath(R"("a\"b", "c\\d")");
  ASSERT_EQ(path.status, FallbackPathStatus::kValid);
  EXPECT_EQ(path.services, services({"a\"b", "c\\d"}));
}

TEST(BreakerLoopGuardTest, EmptyValueIsEmptyPath) {
  for (std::string_view value : {"", " ", "\t "}) {
    SCOPED_TRACE(value);
    FallbackPath path = parseFallbackPath(value);
    EXPECT_EQ(path.status, FallbackPathStatus::kValid);
    EXPECT_TRUE(path.services.empty());
    EXPECT_FALSE(path.contains("checkout"));
  }
}

TEST(BreakerLoopGuardTest, MalformedCountsAsVisited) {
  const std::string_view cases[] = {
      "checkout,",        // trailing comma
      ",checkout",        // leading comma
      "checkout,,cart",   // empty member
      "checkout cart",    // missing comma
      "1checkout",        // a token must start with a letter or *
      "\"unterminated",   // no closing quote
      "\"bad\\escape\"",  // only \" and \\ are escapes
      "\"\"",             // an empty name
      "checkout;v=1",     // parameters are not part of this header
      "(checkout cart)",  // neither are inner lists
      "?1",               // nor other item types
      "\"tab\there\"",    // control characters in a string
      "caf\xc3\xa9",      // non-ASCII
      "checkout, \"x\"y", // junk after a string
  };
  for (std::string_view value : cases) {
    SCOPED_TRACE(value);
    FallbackPath path = parseFallbackPath(value);
    EXPECT_EQ(path.status, FallbackPathStatus::kMalformed);
    EXPECT_TRUE(path.contains("anything"));
    EXPECT_FALSE(appendToFallbackPath(path, "anything").has_value());
  }
}

TEST(BreakerLoopGuardTest, TooManyEntries) {
  std::string value;
  for (size_t i = 0; i < kMaxFallbackPathEntries; ++i) {
    value += (i == 0 ? "" : ", ") + std::string("svc") + std::to_string(i);
  }
  FallbackPath full = parseFallbackPath(value);
  ASSERT_EQ(full.status, FallbackPathStatus::kValid);
  EXPECT_EQ(full.services.size(), kMaxFallbackPathEntries);
  EXPECT_FALSE(full.contains("other"));
  // Full: nothing more can be appended.
  EXPECT_FALSE(appendToFallbackPath(full, "other").has_value());

  FallbackPath over = parseFallbackPath(value + ", svc16");
  EXPECT_EQ(over.status, FallbackPathStatus::kTooLong);
  EXPECT_TRUE(over.contains("other"));
}

TEST(BreakerLoopGuardTest, EntryTooLong) {
  std::string longest(kMaxServiceNameLength, 'a');
  EXPECT_EQ(parseFallbackPath(longest).status, FallbackPathStatus::kValid);
  EXPECT_EQ(parseFallbackPath("\"" + longest + "\"").status, FallbackPathStatus::kValid);

  std::string too_long(kMaxServiceNameLength + 1, 'a');
  EXPECT_EQ(parseFallbackPath(too_long).status, FallbackPathStatus::kTooLong);
  EXPECT_EQ(parseFallbackPath("\"" + too_long + "\"").status, FallbackPathStatus::kTooLong);
}

TEST(BreakerLoopGuardTest, HugeValueRejectedEarly) {
  std::string huge(kMaxFallbackPathBytes + 1, ' ');
  EXPECT_EQ(parseFallbackPath(huge).status, FallbackPathStatus::kTooLong);
  std::string one_megabyte(1 << 20, 'a');
  EXPECT_EQ(parseFallbackPath(one_megabyte).status, FallbackPathStatus::kTooLong);
}

TEST(BreakerLoopGuardTest, AppendWritesTokenOrString) {
  FallbackPath path = parseFallbackPath("checkout");
  EXPECT_EQ(appendToFallbackPath(path, "cart"), "checkout, cart");
  EXPECT_EQ(appendToFallbackPath(path, "cart service"), "checkout, \"cart service\"");
  EXPECT_EQ(appendToFallbackPath(path, "a\"b\\c"), R"(checkout, "a\"b\\c")");

  FallbackPath quoted = parseFallbackPath(R"("cart service")");
  EXPECT_EQ(appendToFallbackPath(quoted, "payments"), "\"cart service\", payments");

  FallbackPath empty = parseFallbackPath("");
  EXPECT_EQ(appendToFallbackPath(empty, "checkout"), "checkout");
}

TEST(BreakerLoopGuardTest, AppendRoundTrips) {
  const std::string names[] = {"checkout", "cart service", "a\"b", "back\\slash", "*star"};
  FallbackPath path;
  for (const std::string& name : names) {
    std::optional<std::string> value = appendToFallbackPath(path, name);
    ASSERT_TRUE(value.has_value());
    path = parseFallbackPath(*value);
    ASSERT_EQ(path.status, FallbackPathStatus::kValid);
  }
  EXPECT_EQ(path.services, std::vector<std::string>(std::begin(names), std::end(names)));
}

TEST(BreakerLoopGuardTest, InvalidServiceNames) {
  EXPECT_TRUE(isValidServiceName("checkout"));
  EXPECT_TRUE(isValidServiceName("cart service"));
  EXPECT_FALSE(isValidServiceName(""));
  EXPECT_FALSE(isValidServiceName("tab\there"));
  EXPECT_FALSE(isValidServiceName("caf\xc3\xa9"));
  EXPECT_FALSE(isValidServiceName(std::string(kMaxServiceNameLength + 1, 'a')));
  EXPECT_FALSE(appendToFallbackPath(FallbackPath{}, "").has_value());
}

TEST(BreakerLoopGuardTest, JoinsFieldLines) {
  TestHeaderMap headers{{"Deferd-Fallback-Path", "checkout"},
                        {"x-other", "cart"},
                        {"deferd-fallback-path", "payments"}};
  FallbackPath path = readFallbackPath(headers);
  ASSERT_EQ(path.status, FallbackPathStatus::kValid);
  EXPECT_EQ(path.services, services({"checkout", "payments"}));
}

TEST(BreakerLoopGuardTest, MissingHeaderIsEmpty) {
  TestHeaderMap headers{{"x-other", "checkout"}};
  FallbackPath path = readFallbackPath(headers);
  EXPECT_EQ(path.status, FallbackPathStatus::kValid);
  EXPECT_TRUE(path.services.empty());
}

TEST(BreakerLoopGuardTest, ManyFieldLinesTooLong) {
  TestHeaderMap headers;
  for (int i = 0; i < 1000; ++i) {
    headers.append(kFallbackPathHeader, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  }
  EXPECT_EQ(readFallbackPath(headers).status, FallbackPathStatus::kTooLong);
}

TEST(BreakerLoopGuardTest, CheckRedirectsFirstVisit) {
  TestHeaderMap headers{{"deferd-fallback-path", "checkout"}};
  LoopCheck check = checkFallbackLoop(headers, "cart", LoopPolicy::kReject);
  EXPECT_EQ(check.verdict, LoopVerdict::kRedirect);
  EXPECT_EQ(check.fallback_path, "checkout, cart");

  TestHeaderMap none;
  LoopCheck first = checkFallbackLoop(none, "cart", LoopPolicy::kReject);
  EXPECT_EQ(first.verdict, LoopVerdict::kRedirect);
  EXPECT_EQ(first.fallback_path, "cart");
}

TEST(BreakerLoopGuardTest, CheckAppliesPolicyOnLoop) {
  TestHeaderMap headers{{"deferd-fallback-path", "cart, checkout"}};
  LoopCheck rejected = checkFallbackLoop(headers, "cart", LoopPolicy::kReject);
  EXPECT_EQ(rejected.verdict, LoopVerdict::kReject);
  EXPECT_TRUE(rejected.fallback_path.empty());

  LoopCheck primary = checkFallbackLoop(headers, "cart", LoopPolicy::kSendToPrimary);
  EXPECT_EQ(primary.verdict, LoopVerdict::kSendToPrimary);
}

TEST(BreakerLoopGuardTest, CheckFailsClosedOnBadHeader) {
  TestHeaderMap malformed{{"deferd-fallback-path", "checkout,"}};
  EXPECT_EQ(checkFallbackLoop(malformed, "cart", LoopPolicy::kReject).verdict,
            LoopVerdict::kReject);
  EXPECT_EQ(checkFallbackLoop(malformed, "cart", LoopPolicy::kSendToPrimary).verdict,
            LoopVerdict::kSendToPrimary);

  std::string full;
  for (size_t i = 0; i < kMaxFallbackPathEntries; ++i) {
    full += (i == 0 ? "s" : ", s") + std::to_string(i);
  }
  TestHeaderMap full_path{{"deferd-fallback-path", full}};
  EXPECT_EQ(checkFallbackLoop(full_path, "cart", LoopPolicy::kReject).verdict,
            LoopVerdict::kReject);

  TestHeaderMap none;
  EXPECT_EQ(checkFallbackLoop(none, "bad\tname", LoopPolicy::kReject).verdict,
            LoopVerdict::kReject);
}

} // namespace
} // namespace deferd::filters::breaker
